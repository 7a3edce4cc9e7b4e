"""The Zarr store: layout, CF encoding, grid check, consolidated metadata, published state.

Layout (DESIGN.md §3, a contract): Zarr format 2; root attributes and ``grid.json`` hold the
grid; ``/S2/R{orbit:03d}`` holds the variables of ``ingest.variables`` with dims
(time, y, x), per-time provenance coordinates and a CF ``spatial_ref`` grid mapping.
Consolidated metadata (``.zmetadata``) sits in every group and at the root; it is the
readers' view of what is published and is always written last (see ``ingest.commit``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from pyproj import CRS

from . import __version__
from .errors import GridMismatchError, StoreError
from .grid import CubeGrid
from .variables import VARIABLES, VariableSpec

STORE_FORMAT = 1
GRID_FILE = "grid.json"
META_DIR = ".s2ingest"  # transaction journal, version change lists (not Zarr keys)
# DESIGN CHOICE: Blosc zstd with bit-shuffle (DESIGN.md §8: the best ratio at a few hundred
# MB/s), level 1 in 512 KiB blocks. Measured on (5, 625, 500) uint16 chunks of our cubes:
# against level 2 with Blosc's automatic (small) blocks, a chunk holding one time step and
# four empty ones compresses in 2.5 instead of 3.4 ms and a full chunk in 4.8 instead of
# 6.8 ms, at the same or a slightly better ratio. Compression is most of the cost of a
# write, and every reader (zarr 2/3, GDAL) decodes any Blosc block size.
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE,
                             blocksize=512 * 1024)
TIME_UNITS = "milliseconds since 1970-01-01T00:00:00"
COORD_CHUNK = 64

# per-time provenance coordinates: name -> (fixed string width, description)
PROVENANCE: dict[str, tuple[int, str]] = {
    "platform": (8, "Sentinel-2 unit (S2A, S2B, S2C)"),
    "datatake_id": (64, "datatake identifier"),
    "tiles": (512, "comma-separated MGRS tiles that contribute"),
    "baselines": (256, "comma-separated processing baselines of the contributing products"),
    "products": (4096, "comma-separated names of the contributing products"),
}


def group_path(orbit: int) -> str:
    """Zarr path of an orbit's group, e.g. ``S2/R051`` (xarray accepts ``/S2/R051`` too)."""
    return f"S2/R{orbit:03d}"


def _store(path: str | Path) -> zarr.storage.DirectoryStore:
    # DESIGN CHOICE: zarr 2's DirectoryStore writes every key to a temporary file and renames
    # it into place, so each chunk switches atomically from old to new content
    # (tests/test_store.py checks this property).
    return zarr.storage.DirectoryStore(str(path), dimension_separator=".")


# -- root and grid -------------------------------------------------------------------------
def read_grid(path: str | Path) -> CubeGrid | None:
    """The grid a store was written with, or None for a store that does not exist yet."""
    grid_file = Path(path) / GRID_FILE
    if not grid_file.exists():
        if (Path(path) / ".zgroup").exists():
            raise StoreError(f"{path}: a Zarr store without {GRID_FILE}; not an s2ingest cube")
        return None
    try:
        return CubeGrid.from_dict(json.loads(grid_file.read_text()))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable {GRID_FILE}: {exc}") from exc


def init_store(path: str | Path, grid: CubeGrid) -> bool:
    """Create the root group with its grid, or check an existing store's grid. True if created."""
    path = Path(path)
    existing = read_grid(path)
    if existing is not None:
        grid.check_same(existing, f"store {path}")
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(_store(path), mode="a")
        root.attrs.update({
            "title": "Sentinel-2 L2A surface reflectance cube",
            "Conventions": "CF-1.8",
            "source": "Sentinel-2 Level-2A (sen2cor) SAFE products",
            "s2ingest_format": STORE_FORMAT,
            "s2ingest_version": __version__,
            "grid": grid.to_dict(),
        })
        (path / GRID_FILE).write_text(grid.to_json())
        consolidate(path, "")
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc}") from exc
    return True


def open_checked(path: str | Path, grid: CubeGrid) -> None:
    """Refuse to touch a store written with another grid (DESIGN.md §2)."""
    existing = read_grid(path)
    if existing is None:
        raise StoreError(f"{path} is not an s2ingest store; run `s2ingest init` first")
    if existing.to_dict() != grid.to_dict():
        raise GridMismatchError(
            f"store {path} has grid {existing.name} {existing.to_dict()}, not {grid.name}"
        )


# -- the imagery group ---------------------------------------------------------------------
def cf_grid_mapping(grid: CubeGrid) -> dict:
    """CF grid-mapping attributes that rioxarray and GDAL recognise."""
    crs = CRS.from_user_input(grid.crs)
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["GeoTransform"] = " ".join(str(v) for v in grid.transform.to_gdal())
    return attrs


def _gdal_crs_attr(grid: CubeGrid) -> dict:
    crs = CRS.from_user_input(grid.crs)
    auth = crs.to_authority()
    attr = {"wkt": crs.to_wkt()}
    if auth:
        attr["url"] = f"http://www.opengis.net/def/crs/{auth[0]}/0/{auth[1]}"
    return attr


def _array(group: zarr.Group, name: str, **kw) -> zarr.Array:
    return group.create(name, compressor=COMPRESSOR, overwrite=True, **kw)


def _variable_attrs(spec: VariableSpec, grid: CubeGrid) -> dict:
    attrs = spec.cf_attrs()
    if spec.scale_factor is not None:
        attrs["scale_factor"] = spec.scale_factor
        attrs["add_offset"] = 0.0
    attrs["_ARRAY_DIMENSIONS"] = ["time", "y", "x"]
    attrs["grid_mapping"] = "spatial_ref"
    attrs["coordinates"] = " ".join(["spatial_ref", *PROVENANCE])
    attrs["_CRS"] = _gdal_crs_attr(grid)  # GDAL's Zarr driver reads the CRS from here
    return attrs


def create_group(path: str | Path, grid: CubeGrid, group: str, variables=VARIABLES) -> None:
    """Create an empty imagery group (time length 0) and publish it."""
    root = zarr.open_group(_store(path), mode="a")
    g = root.require_group(group)
    g.attrs.update({"title": f"Sentinel-2 L2A, relative orbit {group.rsplit('R', 1)[-1]}",
                    "Conventions": "CF-1.8", "s2ingest_cube_version": 0})
    ny, nx = grid.shape
    x = _array(g, "x", shape=(nx,), chunks=(nx,), dtype="f8")
    x[:] = grid.x
    x.attrs.update({"_ARRAY_DIMENSIONS": ["x"], "standard_name": "projection_x_coordinate",
                    "long_name": "x coordinate of pixel centre", "units": "m", "axis": "X"})
    y = _array(g, "y", shape=(ny,), chunks=(ny,), dtype="f8")
    y[:] = grid.y
    y.attrs.update({"_ARRAY_DIMENSIONS": ["y"], "standard_name": "projection_y_coordinate",
                    "long_name": "y coordinate of pixel centre", "units": "m", "axis": "Y"})
    sr = _array(g, "spatial_ref", shape=(), dtype="i4", fill_value=None)
    sr.attrs.update({"_ARRAY_DIMENSIONS": [], **cf_grid_mapping(grid)})
    t = _array(g, "time", shape=(0,), chunks=(COORD_CHUNK,), dtype="i8", fill_value=-1)
    t.attrs.update({"_ARRAY_DIMENSIONS": ["time"], "standard_name": "time", "axis": "T",
                    "long_name": "datatake sensing start", "units": TIME_UNITS,
                    "calendar": "proleptic_gregorian"})
    for name, (width, desc) in PROVENANCE.items():
        a = _array(g, name, shape=(0,), chunks=(COORD_CHUNK,), dtype=f"<U{width}", fill_value="")
        a.attrs.update({"_ARRAY_DIMENSIONS": ["time"], "long_name": desc})
    tc = grid.time_chunk
    cy, cx = grid.chunk_shape
    for spec in variables.values():
        a = _array(g, spec.name, shape=(0, ny, nx), chunks=(tc, cy, cx), dtype=spec.dtype,
                   fill_value=spec.fill_value, write_empty_chunks=False)
        a.attrs.update(_variable_attrs(spec, grid))
    consolidate(path, group)


def _metadata_under(root: Path, prefix: str) -> dict[str, dict]:
    """Metadata documents of the hierarchy below ``prefix``, keyed relative to it.

    Walks groups only and never lists an array's directory, so its cost does not grow with
    the number of chunks (zarr's own consolidate_metadata lists every key of the store).
    """
    out: dict[str, dict] = {}
    pending = [""]
    base = root / prefix if prefix else root
    while pending:
        rel = pending.pop()
        here = base / rel if rel else base
        for name in (".zgroup", ".zattrs", ".zarray"):
            f = here / name
            if f.exists():
                out[f"{rel}/{name}" if rel else name] = json.loads(f.read_text())
        if not (here / ".zgroup").exists():
            continue
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir() and not entry.name.startswith("."):
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    if (base / child / ".zarray").exists() or (base / child / ".zgroup").exists():
                        pending.append(child)
    return out


def consolidate(path: str | Path, group: str) -> None:
    """Rewrite ``.zmetadata`` of ``group`` and of every ancestor up to the root, root last.

    DESIGN CHOICE: every group gets its own ``.zmetadata`` (keys relative to the group):
    zarr-python 3 and GDAL look for it in the group they open, zarr-python 2 and xarray
    with zarr 2 read the root one. Each file is replaced atomically.
    """
    root = Path(path)
    parts = [p for p in group.strip("/").split("/") if p]
    store = _store(root)
    for depth in range(len(parts), -1, -1):
        prefix = "/".join(parts[:depth])
        doc = {"zarr_consolidated_format": 1, "metadata": _metadata_under(root, prefix)}
        key = f"{prefix}/.zmetadata" if prefix else ".zmetadata"
        store[key] = json.dumps(doc, indent=1, sort_keys=True, allow_nan=True).encode()


def group_exists(path: str | Path, group: str) -> bool:
    return (Path(path) / group.strip("/") / ".zmetadata").exists()


# -- what readers see ----------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedState:
    """The time axis and provenance as seen through the consolidated metadata."""

    times: tuple[datetime, ...]
    platforms: tuple[str, ...]
    datatake_ids: tuple[str, ...]
    products: tuple[tuple[str, ...], ...]
    version: int

    @property
    def length(self) -> int:
        return len(self.times)


def open_published(path: str | Path, group: str, mode: str = "r") -> zarr.Group:
    """The group as readers see it: metadata from ``.zmetadata`` only."""
    try:
        return zarr.open_consolidated(_store(path), path=group.strip("/"), mode=mode)
    except (KeyError, ValueError, OSError) as exc:
        raise StoreError(f"{path}: cannot open group {group}: {exc}") from exc


def read_published(path: str | Path, group: str) -> PublishedState:
    g = open_published(path, group)
    n = g["time"].shape[0]
    ms = g["time"][:n] if n else np.array([], "i8")
    times = tuple(datetime.fromtimestamp(int(v) / 1000, tz=timezone.utc) for v in ms)

    def col(name: str) -> tuple[str, ...]:
        return tuple(str(v) for v in g[name][:n]) if n else ()

    products = tuple(tuple(p for p in s.split(",") if p) for s in col("products"))
    return PublishedState(times, col("platform"), col("datatake_id"), products,
                          int(g.attrs.get("s2ingest_cube_version", 0)))


def to_ms(t: datetime) -> int:
    return int(round(t.timestamp() * 1000))
