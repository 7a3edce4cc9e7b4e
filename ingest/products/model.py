"""The product model: what the ingest needs to know about one L2A SAFE product.

Produced by ``ingest.products.safe.read_product`` (from a folder or zip) and by the synthetic product
writer; consumed by planning and warping. Pure data, no I/O. Product names (the identity a name
encodes, all the catalog needs) are parsed in ``ingest.products.names``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingest.errors import MetadataError


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
class Product:
    """One L2A tile product, as read from its metadata."""

    name: str  # without .SAFE
    source: Path  # the .SAFE folder or the .zip
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
    files: dict[str, dict[int, str]]
    boa_add_offset: dict[str, int] = field(default_factory=dict)  # band -> offset (PB >= 04.00)
    boa_quantification: float = 10000.0
    aot_quantification: float = 1000.0
    wvp_quantification: float = 1000.0
    cloud_cover: float | None = None
    footprint: tuple[tuple[float, float], ...] = ()  # (lon, lat) ring, EPSG:4326
    # path relative to SAFE root -> (algorithm as in manifest, e.g. "MD5"/"SHA3-256", hex digest)
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)
    safe_root: str = ""  # inside a zip: the "<name>.SAFE" member prefix; "" for a folder

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
