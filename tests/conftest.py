"""Shared fixtures for the end-to-end ingest tests: small synthetic products and cubes.

Every product is a small window (300 x 780 px at 10 m) of 31UET or 31UFT around their overlap,
near RD x 89 000-101 600, y 433 700-437 200. That lies in one chunk row of the NL grid (row 33,
y 431 250-437 500) and four chunk columns (17-20), so one ingest warps one 625 x 2000 px block
per product and takes seconds.

    UTM 31N x:  598 200 ........ 603 000 ...... 606 000 ........ 610 800
    31UET       |================================|
    31UFT                        |=================================|
                 ET only          overlap         FT only

Products are session-scoped (built once); cubes that several tests read are session-scoped too
and must be treated as read-only by the tests that use them.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pytest
import zarr
from pyproj import Transformer

from ingest.publish.engine import Cube, ingest_products
from ingest.grid import NL_GRID
from ingest.products.safe import read_product
from ingest.store import read_published
from ingest.synth import make_product, make_twins, swath_edge_across
from ingest.warping.warp import parse_resampling

ORBIT = 51
GROUP = "S2/R051"
ROWS, HEIGHT = 4704, 300  # 10 m rows of the tile (both tiles share ULY 5 800 020)
WINDOWS = {"31UET": (ROWS, 9822, HEIGHT, 780), "31UFT": (ROWS, 300, HEIGHT, 780)}

D1 = datetime(2023, 5, 10, 10, 56, 19, tzinfo=timezone.utc)
D2 = datetime(2023, 5, 15, 10, 46, 21, tzinfo=timezone.utc)
D3 = datetime(2023, 5, 20, 10, 56, 19, tzinfo=timezone.utc)
D_COORDS = datetime(2023, 6, 2, 10, 56, 19, tzinfo=timezone.utc)
# (datatake, platform, {tile: baseline}, cloudiness)
DATATAKES = [
    (D1, "S2A", {"31UET": "02.14", "31UFT": "02.14"}, 0.0),
    (D2, "S2B", {"31UET": "05.09", "31UFT": "05.09"}, 0.9),
    (D3, "S2A", {"31UET": "05.09", "31UFT": "04.00"}, 0.15),
]

_TO_RD = Transformer.from_crs("EPSG:32631", "EPSG:28992", always_xy=True)


def utm_to_cell(x: float, y: float) -> tuple[int, int]:
    """(row, col) of the NL grid cell holding a UTM 31N point."""
    rx, ry = _TO_RD.transform(x, y)
    left, _, _, top = NL_GRID.bounds
    return int((top - ry) // NL_GRID.resolution), int((rx - left) // NL_GRID.resolution)


Y_PROBE = 5_751_500.0
PROBES = {  # grid (row, col) of pixels in each part of the layout
    "ET_ONLY": utm_to_cell(600_500.0, Y_PROBE),
    "OVERLAP": utm_to_cell(603_600.0, Y_PROBE),
    "FT_ONLY": utm_to_cell(609_000.0, Y_PROBE),
}


@dataclass
class ProductSet:
    """Paths of the session's synthetic products and a resolver over all of them."""

    root: Path
    scene: dict[tuple[datetime, str], Path] = field(default_factory=dict)  # (datatake, tile) -> path
    twins: tuple[Path, Path] | None = None  # (PB 02.14, PB 05.09), datatake D1, tile 31UFT
    older_other: Path | None = None  # PB 02.12, D1/31UFT, older generation, other content (seed 1)
    coords: dict[str, Path] = field(default_factory=dict)  # tile -> content="coords" product

    @property
    def scene_dir(self) -> Path:
        return self.root / "scene"

    def all_paths(self) -> list[Path]:
        paths = list(self.scene.values()) + list(self.coords.values())
        paths += list(self.twins or ()) + ([self.older_other] if self.older_other else [])
        return paths

    def resolve(self, name: str):
        for p in self.all_paths():
            if p.name.removesuffix(".SAFE").removesuffix(".zip") == name:
                return read_product(p)
        raise KeyError(name)


@pytest.fixture(scope="session")
def products(tmp_path_factory) -> ProductSet:
    root = tmp_path_factory.mktemp("products")
    ps = ProductSet(root)
    twin_dir = root / "twins"
    for when, platform, baselines, cloud in DATATAKES:
        for tile, baseline in baselines.items():
            kw = dict(tile=tile, datatake_start=when, platform=platform, window=WINDOWS[tile],
                      cloudiness=cloud)
            if when == D1 and tile == "31UFT":
                # the scene product of D1/31UFT is the old half of a PB twin pair
                old, new = make_twins(twin_dir, old_baseline=baseline, new_baseline="05.09", **kw)
                ps.twins = (ps.scene_dir / old.name, new)
                ps.scene_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(old, ps.twins[0])
                ps.scene[(when, tile)] = ps.twins[0]
            else:
                ps.scene[(when, tile)] = make_product(ps.scene_dir, baseline=baseline, **kw)
    ps.older_other = make_product(
        root / "older", tile="31UFT", datatake_start=D1, platform="S2A", window=WINDOWS["31UFT"],
        cloudiness=0.0, baseline="02.12", seed=1,
        generation_time=datetime(2023, 5, 10, 12, 0, 0, tzinfo=timezone.utc))
    edge = swath_edge_across("31UET", 0.95, 0.955)  # inside the overlap
    for tile in WINDOWS:
        ps.coords[tile] = make_product(
            root / "coords", tile=tile, datatake_start=D_COORDS, platform="S2A", window=WINDOWS[tile],
            content="coords", baseline="05.09", swath_edge=edge if tile == "31UET" else None)
    return ps


# -- cubes ----------------------------------------------------------------------------------
def new_cube(path: Path) -> Cube:
    return Cube(Path(path), NL_GRID, ORBIT)


def ingest(cube: Cube, paths: Iterable[Path], products: ProductSet, resampling=None):
    """Ingest product paths into ``cube``; returns (plan, report)."""
    models = [read_product(p) for p in paths]
    return ingest_products(cube, models, products.resolve, parse_resampling(resampling), progress=False)


def build_cube(path: Path, paths: Sequence[Path], products: ProductSet, resampling=None) -> Cube:
    cube = new_cube(path)
    ingest(cube, paths, products, resampling)
    return cube


def open_group(path: Path) -> zarr.Group:
    """The published group as readers see it (consolidated metadata only)."""
    return zarr.open_consolidated(str(path), path=GROUP, mode="r")


def chunk_keys(path: Path, var: str) -> set[str]:
    d = Path(path) / GROUP / var
    return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.exists() else set()


def written_window(*paths: Path) -> tuple[slice, slice]:
    """Rows/cols spanning every spatial chunk written in any of the stores (any variable)."""
    cy, cx = NL_GRID.chunk_shape
    rows, cols = set(), set()
    for path in paths:
        for var_dir in (Path(path) / GROUP).iterdir():
            if (var_dir / ".zarray").exists() and len(zarr.open_array(str(var_dir), mode="r").shape) == 3:
                for key in chunk_keys(path, var_dir.name):
                    _, iy, ix = (int(v) for v in key.split("."))
                    rows.add(iy)
                    cols.add(ix)
    assert rows, "no chunk written at all"
    return slice(min(rows) * cy, (max(rows) + 1) * cy), slice(min(cols) * cx, (max(cols) + 1) * cx)


def cube_arrays(path: Path, window: tuple[slice, slice]) -> dict[str, np.ndarray]:
    """Every array of the group, raw (undecoded): 3-D variables over ``window``, 1-D whole."""
    g = open_group(path)
    out = {}
    for name, arr in g.arrays():
        if arr.ndim == 3:
            out[name] = arr[:, window[0], window[1]]
        else:
            out[name] = arr[...]
    return out


def assert_cubes_equal(a: Path, b: Path, *, ignore: Sequence[str] = ()) -> None:
    """Same decoded content of every array (and the same set of chunk keys per variable)."""
    window = written_window(a, b)
    xa, xb = cube_arrays(a, window), cube_arrays(b, window)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        if name in ignore:
            continue
        assert xa[name].shape == xb[name].shape, name
        assert np.array_equal(xa[name], xb[name]), f"{name} differs"
        if xa[name].ndim == 3:
            assert chunk_keys(a, name) == chunk_keys(b, name), f"{name}: different chunks written"


def snapshot_files(path: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under ``path``: relative path -> (sha256, size, mtime_ns)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            st = p.stat()
            out[str(p.relative_to(path))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


# -- the session cubes ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def empty_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "s2ingest.toml"
    path.write_text("# empty: every setting comes from the command line\n")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment (no S2INGEST_*) whose ``s2ingest`` subprocess imports the same ingest
    package as this process; ``extra`` adds variables (e.g. ``S2INGEST_FAULT``)."""
    import ingest

    env = {k: v for k, v in os.environ.items() if not k.startswith("S2INGEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(ingest.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(args: Sequence[str], config: Path):
    """Invoke ``s2ingest`` in-process with an explicit (empty) config and a clean environment."""
    from click.testing import CliRunner

    from ingest.cli.main import cli

    env = {k: None for k in os.environ if k.startswith("S2INGEST_")}
    cmd, *rest = args
    return CliRunner().invoke(cli, [cmd, "--config", str(config), *rest], env=env, catch_exceptions=False)


@pytest.fixture(scope="session")
def synced_cube(tmp_path_factory, products, empty_config) -> Path:
    """All six scene products published by one ``s2ingest sync`` (default resampling)."""
    store = tmp_path_factory.mktemp("synced") / "cube.zarr"
    r = run_cli(["init", "--store", str(store)], empty_config)
    assert r.exit_code == 0, r.output
    r = run_cli(["sync", "--store", str(store), "--source", str(products.scene_dir), "--no-progress"],
                empty_config)
    assert r.exit_code == 0, r.output
    assert read_published(store, GROUP).length == 3
    return store


@dataclass
class Step:
    """What readers saw after one incremental ingest."""

    added: str
    plan: object
    times: tuple
    products: tuple
    probes: dict[str, np.ndarray]  # probe -> B04 at that pixel for every time step


# Arrival order of the incremental cube: a late datatake older than the newest (D1 after D3),
# late tiles of already published datatakes (D2/ET, D3/FT, D1/FT), two platforms.
INCREMENTAL_ORDER = [(D2, "31UFT"), (D3, "31UET"), (D1, "31UET"), (D2, "31UET"), (D3, "31UFT"), (D1, "31UFT")]


@pytest.fixture(scope="session")
def incremental_cube(tmp_path_factory, products) -> tuple[Path, list[Step]]:
    """The same six products, one ingest each, in ``INCREMENTAL_ORDER``; records every step."""
    cube = new_cube(tmp_path_factory.mktemp("incremental") / "cube.zarr")
    steps = []
    for key in INCREMENTAL_ORDER:
        path = products.scene[key]
        plan, _ = ingest(cube, [path], products)
        state = read_published(cube.path, GROUP)
        b04 = open_group(cube.path)["B04"]
        probes = {k: b04[:, r, c] for k, (r, c) in PROBES.items()}
        steps.append(Step(path.name.removesuffix(".SAFE"), plan, state.times, state.products, probes))
    return cube.path, steps
