"""The product model: what the ingest needs to know about one L2A product, SAFE or EOPF Zarr.

Produced by ``ingest.products.formats.read_product`` (the SAFE reader ``ingest.products.safe`` or
the EOPF reader ``ingest.products.eopf``, from a folder or zip); consumed by planning and warping.
Pure data, no I/O. Product names (the identity a name encodes, all the catalog needs) are
parsed in ``ingest.products.names``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingest.errors import MetadataError
from ingest.products.names import SAFE


@dataclass(frozen=True)
class TileGeocoding:
    """Georeferencing of the tile at every resolution, from MTD_TL.xml."""

    epsg: int
    ulx: float
    uly: float
    sizes: dict[int, tuple[int, int]]  # resolution (m) -> (nrows, ncols)

    def bounds(self, resolution: int = 10) -> tuple[float, float, float, float]:
        nrows, ncols = self.sizes[resolution]
        return (self.ulx, self.uly - nrows * resolution, self.ulx + ncols * resolution, self.uly)


@dataclass(frozen=True)
class ZarrArray:
    """One array of an EOPF Zarr product as its (validated) ``.zarray`` describes it."""

    path: str  # relative to the store root, e.g. "measurements/reflectance/r10m/b02"
    resolution: int  # metres (from the group name r10m/r20m/r60m)
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str  # numpy dtype string as stored, e.g. "<u2", "|u1", "<f4"
    fill_value: int | float | None
    compressor: str  # the compressor configuration as canonical JSON ("null": none)
    separator: str  # chunk key separator, "." or "/"

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        """Number of chunks along each dimension."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    def chunk_key(self, *index: int) -> str:
        """The key of one chunk relative to the store root."""
        return f"{self.path}/{self.separator.join(str(i) for i in index) or '0'}"


@dataclass(frozen=True)
class Product:
    """One L2A tile product, as read from its metadata."""

    name: str  # SAFE: without .SAFE; EOPF: the legacy name + ".zarr" (ingest.products.names)
    source: Path  # the .SAFE or .zarr folder, or the .zip
    platform: str  # S2A, S2B, S2C
    datatake_id: str  # GS2B_20230823T095559_033753_N05.09
    datatake_start: datetime  # DATATAKE_SENSING_START (UTC)
    product_start: datetime  # PRODUCT_START_TIME (UTC)
    generation_time: datetime  # GENERATION_TIME (UTC)
    baseline: str  # "05.09"
    relative_orbit: int
    absolute_orbit: int | None
    tile: str  # "31UFU"
    geocoding: TileGeocoding
    # variable name -> resolution (m) -> path of the raster relative to the SAFE root
    # (EOPF: the path of the array relative to the store root)
    files: dict[str, dict[int, str]]
    boa_add_offset: dict[str, int] = field(default_factory=dict)  # band -> offset (PB >= 04.00)
    boa_quantification: float = 10000.0
    aot_quantification: float = 1000.0
    wvp_quantification: float = 1000.0
    cloud_cover: float | None = None
    footprint: tuple[tuple[float, float], ...] = ()  # (lon, lat) ring, EPSG:4326
    # path relative to SAFE root -> (algorithm as in manifest, e.g. "MD5"/"SHA3-256", hex digest)
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)
    # inside a zip: the member prefix of the product root ("<name>.SAFE", "<name>.zarr"); "" else
    safe_root: str = ""
    format: str = SAFE  # "SAFE" or "EOPF"
    # EOPF: array path -> its layout (every array of ``files``); SAFE: empty
    arrays: dict[str, ZarrArray] = field(default_factory=dict)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.geocoding.epsg}"

    @property
    def datatake_key(self) -> tuple[str, datetime]:
        """Identity of the time step this product belongs to (DESIGN.md §4)."""
        return (self.platform, self.datatake_start)

    def gdal_path(self, relpath: str) -> str:
        """A path GDAL can open for a file inside the product (``/vsizip/`` for zips)."""
        if self.source.suffix.lower() == ".zip":
            inner = f"{self.safe_root}/{relpath}" if self.safe_root else relpath
            return f"/vsizip/{self.source.resolve()}/{inner}"
        return str(self.source / relpath)

    def file_for(self, variable: str, resolution: int) -> str:
        try:
            return self.files[variable][resolution]
        except KeyError:
            raise MetadataError(
                self.name, f"no {variable} raster at {resolution} m in the product metadata"
            ) from None
