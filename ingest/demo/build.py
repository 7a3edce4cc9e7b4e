"""The demo: a small real cube from synthetic products, built on this machine in minutes.

Two adjacent tiles of relative orbit 51 (31UET and 31UFT, both UTM 31N) cut to the area
around Delft and the Hoeksche Waard, a handful of datatakes of one season from two
platforms and both baseline families (PB 02.14 without and 05.09 with BOA_ADD_OFFSET), the
reference layers of that area, and a PNG quick-look.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pyproj import Transformer

from ingest.config import Settings
from ingest.grid import NL_GRID
from ingest.synth import make_product
from ingest.synth.tiles import get_tile

# RD bounds of the demo area (left, bottom, right, top): Delft in the north, the Hoeksche
# Waard in the south; the 31UET/31UFT overlap runs through it.
DEMO_BOUNDS = (80_000.0, 412_000.0, 96_000.0, 450_000.0)
DEMO_POINT = (94_005.0, 420_245.0)  # a field in the Hoeksche Waard: green-up, harvest
DEMO_TILES = ("31UET", "31UFT")
UTC = timezone.utc
# (datatake sensing start, platform, processing baseline)
DEMO_DATATAKES = (
    (datetime(2021, 3, 22, 10, 56, 31, tzinfo=UTC), "S2A", "02.14"),
    (datetime(2021, 4, 26, 10, 56, 19, tzinfo=UTC), "S2B", "05.00"),
    (datetime(2021, 5, 21, 10, 56, 21, tzinfo=UTC), "S2A", "02.14"),
    (datetime(2021, 6, 20, 10, 56, 21, tzinfo=UTC), "S2B", "05.00"),
    (datetime(2021, 7, 25, 10, 56, 19, tzinfo=UTC), "S2A", "05.00"),
    (datetime(2021, 9, 3, 10, 56, 19, tzinfo=UTC), "S2B", "02.14"),
)


def tile_window(tile: str, bounds_rd: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """The window (row, col, height, width; multiples of 6 px) of ``tile`` covering RD bounds."""
    info = get_tile(tile)
    t = Transformer.from_crs("EPSG:28992", f"EPSG:{info.epsg}", always_xy=True)
    left, bottom, right, top = bounds_rd
    xs, ys = t.transform([left, right, right, left], [top, top, bottom, bottom])
    c0 = max(0, math.floor((min(xs) - info.ulx) / 60) * 6)
    c1 = min(10980, math.ceil((max(xs) - info.ulx) / 60) * 6)
    r0 = max(0, math.floor((info.uly - max(ys)) / 60) * 6)
    r1 = min(10980, math.ceil((info.uly - min(ys)) / 60) * 6)
    if c1 <= c0 or r1 <= r0:
        return None
    return (r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def products(self) -> Path:
        return self.root / "products"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def store(self) -> Path:
        return self.root / "cube.zarr"

    @property
    def quicklook(self) -> Path:
        return self.root / "quicklook.png"


def make_demo_products(directory: Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Write the demo products; those already there are reused as they are (a rerun is quick)."""
    out = []
    reused = 0
    for when, platform, baseline in DEMO_DATATAKES:
        for tile in DEMO_TILES:
            window = tile_window(tile, DEMO_BOUNDS)
            if window is None:
                continue
            before = set(directory.iterdir()) if directory.is_dir() else set()
            path = make_product(directory, tile=tile, datatake_start=when, platform=platform,
                                baseline=baseline, window=window, exist_ok=True)
            if path in before:
                reused += 1
            else:
                echo(f"  synth {platform} {when:%Y-%m-%d} {tile} PB {baseline}")
            out.append(path)
    if reused:
        echo(f"  reused {reused} products already in {directory}")
    return out


def _published_same(published: list[dict], group: str, edition: int, variable: str | None,
                    source: Path, sha256: str) -> bool:
    """Whether ``source`` (by name and sha256) is already published as this edition."""
    return any(row["group"] == group and int(row["edition"]) == int(edition)
               and (variable is None or row["variable"] == variable)
               and row.get("source") == source.name and row.get("sha256") == sha256
               for row in published)


def publish_demo_layers(paths: DemoPaths, settings: Settings, echo: Callable[[str], None] = print) -> int:
    """Rasterise the synthetic reference layers into /NL, /NL/BBG and /NL/BRP; an edition
    already published from the same file (name and sha256) is skipped. Returns how many
    layer files were published."""
    from ingest.errors import LayerError
    from ingest.layers import list_layers
    from ingest.publish.commits import publish_layer
    from ingest.layers.synth import make_demo_files
    from ingest.layers.vector import file_sha256

    files = make_demo_files(paths.layers, reuse=True)
    jobs = [
        ("NL", files["gemeenten"], 2023, "statcode", "municipality"),
        ("NL", files["provincies"], 2023, "statcode", "province"),
        ("NL", files["nederland"], 2023, None, "border"),
        ("NL/BBG", files["bbg"], 2015, "BG2015", None),
    ] + [("NL/BRP", path, int(name[3:]), "gewascode", None)
         for name, path in files.items() if name.startswith("brp")]
    try:
        published = list_layers(settings.store)
    except LayerError:  # no consolidated store yet
        published = []
    done = 0
    for group, path, edition, attribute, variable in jobs:
        if _published_same(published, group, edition, variable, path, file_sha256(path)):
            what = f"/{group} {variable}" if variable else f"/{group}"
            echo(f"  layer {what} {edition} from {path.name}: already published")
            continue
        records = publish_layer(settings.store, group, path, catalog=settings.db_url, edition=edition,
                                attribute=attribute, variable=variable, force=True, grid=NL_GRID)
        done += 1
        echo(f"  layer /{group} {', '.join(r.variable for r in records)} {edition} from {path.name}")
    return done


def _ensure_overviews(settings: Settings, echo: Callable[[str], None]) -> None:
    """The demo cube has multiscale overviews from the start (one commit, once, recorded in
    its catalog), so the viewer shows imagery at every zoom; every sync then keeps them current."""
    from ingest.overviews import level_factors
    from ingest.publish.commits import publish_overviews
    from ingest.store import CubeStore

    store = CubeStore.open(settings.store)
    if store.group_exists("S2/R051/overviews"):  # published already: a rerun takes no lock
        return
    (done,) = publish_overviews(store, orbit=51, catalog=settings.db_url)
    factors = level_factors(NL_GRID.shape)
    echo(f"  overview levels {factors[0]} … {factors[-1]} (version {done.version}; kept current by every sync)")


def run_demo(root: str | Path, *, progress: bool = True, echo: Callable[[str], None] = print) -> DemoPaths:
    """Build the demo cube under ``root``; returns where everything went. A rerun reuses the
    products, publishes nothing already published and says so."""
    from catalog.db import upgrade

    from ingest.publish.commits import create_cube
    from ingest.publish.engine import Cube
    from ingest.demo.quicklook import write_quicklook
    from ingest.sources import make_source
    from ingest.store import read_published
    from ingest.publish.sync import SyncOptions, sync

    paths = DemoPaths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    settings = Settings(store=paths.store)
    echo(f"1/4 synthetic products -> {paths.products}")
    make_demo_products(paths.products, echo)
    echo(f"2/4 cube -> {paths.store}")
    upgrade(settings.db_url)  # first: every commit below is recorded in it
    create_cube(Cube(paths.store, NL_GRID, 51), catalog=settings.db_url)
    _ensure_overviews(settings, echo)
    report = sync(settings, make_source("local", directory=paths.products),
                  SyncOptions(orbit=51, progress=progress), echo=echo)
    state = read_published(paths.store, "S2/R051")
    if report.published:
        echo(f"  published {len(report.published)} products: {state.length} time steps, "
             f"version {state.version}")
    else:
        echo(f"  no new products: /S2/R051 has {state.length} time steps "
             f"(last written in version {state.group_version})")
    echo("3/4 reference layers")
    n_layers = publish_demo_layers(paths, settings, echo)
    state = read_published(paths.store, "S2/R051")
    if report.published or n_layers or not paths.quicklook.exists():
        echo(f"4/4 quick-look -> {paths.quicklook}")
        write_quicklook(paths.store, paths.quicklook, DEMO_BOUNDS, DEMO_POINT,
                        title="s2ingest demo: synthetic Sentinel-2 L2A, relative orbit 51, RD New 10 m")
    else:
        echo(f"4/4 quick-look {paths.quicklook} is current")
    if not (report.published or n_layers):
        echo(f"nothing new: cube at version {state.version}, {state.length} time steps")
    return paths
