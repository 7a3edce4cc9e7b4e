"""The layout of a cube store: key names, encoding constants, CF attributes (a contract).

Zarr format 2; root attributes and ``grid.json`` hold the grid; ``/S2/R{orbit:03d}`` holds
the variables of ``ingest.variables`` with dims (time, y, x), per-time provenance coordinates
and a CF ``spatial_ref`` grid mapping; ``/NL…`` hold reference layers. ``.s2ingest/`` holds
the writer's lock, the journal of an unfinished commit and the version manifests
(DESIGN.md §3, §5). Keys are built only with these names and helpers, and only
``ingest.store`` reads or writes them (the pipeline stages chunks through a ``Transaction``).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.grid import CubeGrid
    from ingest.variables import VariableSpec

STORE_FORMAT = 1
GRID_FILE = "grid.json"
META_DIR = ".s2ingest"  # lock, journal, manifests (not Zarr keys; readable over HTTP)
TXN_DIR = f"{META_DIR}/txn"
MANIFEST_DIR = f"{META_DIR}/manifests"
# the store's identity: {"store_id": random hex}, written by its first commit (a store from
# before identities gets one with its next commit); not in manifests, so a copy has its own
ID_FILE = f"{META_DIR}/id.json"
METADATA_NAMES = (".zmetadata", ".zattrs", ".zarray", ".zgroup")
VERSION_ATTR = "s2ingest_store_version"  # root attribute: the store-wide version
GROUP_VERSION_ATTR = "s2ingest_cube_version"  # group attribute: the version that last changed it

# DESIGN CHOICE: Blosc zstd with bit-shuffle (DESIGN.md §8: the best ratio at a few hundred
# MB/s), level 1 in 512 KiB blocks. Measured on (5, 625, 500) uint16 chunks of our cubes:
# against level 2 with Blosc's automatic (small) blocks, a chunk holding one time step and
# four empty ones compresses in 2.5 instead of 3.4 ms and a full chunk in 4.8 instead of
# 6.8 ms, at the same or a slightly better ratio. Compression is most of the cost of a
# write, and every reader (zarr 2/3, GDAL) decodes any Blosc block size.


@lru_cache(maxsize=1)
def compressor():
    """The cube's Blosc codec (numcodecs is imported on first use: reading a store's
    bookkeeping, e.g. ``status``, needs no codec)."""
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE,
                           blocksize=512 * 1024)


def __getattr__(name: str):  # ``COMPRESSOR`` on first use (PEP 562)
    if name == "COMPRESSOR":
        return compressor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
TIME_COORDS = ("time", *PROVENANCE)


def new_identity() -> bytes:
    """The bytes of a new store's ``ID_FILE``: a random identity."""
    import json
    import uuid

    return json.dumps({"store_id": uuid.uuid4().hex}).encode()


def group_path(orbit: int) -> str:
    """Zarr path of an orbit's group, e.g. ``S2/R051`` (xarray accepts ``/S2/R051`` too)."""
    return f"S2/R{orbit:03d}"


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def chunk_key(group: str, var: str, *index: int) -> str:
    return f"{join(group, var)}/{'.'.join(str(i) for i in index)}"


def manifest_key(version: int) -> str:
    return f"{MANIFEST_DIR}/v{version:08d}.json"


def metadata_key(version: int) -> str:
    """The metadata snapshot of ``version``: the bytes of every Zarr metadata document
    (``.zgroup``, ``.zattrs``, ``.zarray``, ``.zmetadata``) as that version published them, so a
    past version can be opened or mirrored after later versions rewrote its metadata."""
    return f"{MANIFEST_DIR}/v{version:08d}.meta.json"


def version_of_key(name: str) -> int | None:
    """The version a manifest-folder file name belongs to (``v00000012.json`` or
    ``v00000012.meta.json``), None for anything else."""
    m = _VERSION_FILE.fullmatch(name)
    return int(m.group(1)) if m else None


_VERSION_FILE = re.compile(r"v(\d{8})(?:\.meta)?\.json")


def is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


def cf_grid_mapping(grid: CubeGrid) -> dict:
    """CF grid-mapping attributes that rioxarray and GDAL recognise."""
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["GeoTransform"] = " ".join(str(v) for v in grid.transform.to_gdal())
    return attrs


def gdal_crs_attr(grid: CubeGrid) -> dict:
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    auth = crs.to_authority()
    attr = {"wkt": crs.to_wkt()}
    if auth:
        attr["url"] = f"http://www.opengis.net/def/crs/{auth[0]}/0/{auth[1]}"
    return attr


def variable_attrs(spec: VariableSpec, grid: CubeGrid) -> dict:
    attrs = spec.cf_attrs()
    if spec.scale_factor is not None:
        attrs["scale_factor"] = spec.scale_factor
        attrs["add_offset"] = 0.0
    attrs["_ARRAY_DIMENSIONS"] = ["time", "y", "x"]
    attrs["grid_mapping"] = "spatial_ref"
    attrs["coordinates"] = " ".join(["spatial_ref", *PROVENANCE])
    attrs["_CRS"] = gdal_crs_attr(grid)  # GDAL's Zarr driver reads the CRS from here
    return attrs
