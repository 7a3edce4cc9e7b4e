"""The product model: what the ingest needs to know about one L2A SAFE product.

Produced by ``ingest.products.safe.read_product`` (from a folder or zip) and by the synthetic product
writer; consumed by planning, warping and the catalog. Pure data, no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ingest.errors import MetadataError

# S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759(.SAFE)(.zip)
PRODUCT_NAME_RE = re.compile(
    r"^(?P<platform>S2[A-D])_MSI(?P<level>L2A|L1C|L2Ap)_(?P<start>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R(?P<orbit>\d{3})_T(?P<tile>\d{2}[A-Z]{3})_(?P<discriminator>\d{8}T\d{6})$"
)


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)


def strip_product_suffix(name: str) -> str:
    """Product name without directory, ``.zip`` and ``.SAFE``."""
    name = Path(name).name
    for suffix in (".zip", ".SAFE"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class ProductName:
    """The fields encoded in a product name (enough to plan before downloading)."""

    name: str
    platform: str
    level: str
    datatake_start: datetime  # to the second, as in the name
    baseline: str  # "05.09"
    relative_orbit: int
    tile: str
    discriminator: datetime

    @classmethod
    def parse(cls, name: str) -> "ProductName":
        bare = strip_product_suffix(name)
        m = PRODUCT_NAME_RE.match(bare)
        if not m:
            raise MetadataError(bare, "not a Sentinel-2 product name (S2x_MSIL2A_<start>_Nxxxx_Rxxx_Txxxxx_<gen>)")
        b = m["baseline"]
        return cls(
            name=bare, platform=m["platform"], level=m["level"], datatake_start=_ts(m["start"]),
            baseline=f"{b[:2]}.{b[2:]}", relative_orbit=int(m["orbit"]), tile=m["tile"],
            discriminator=_ts(m["discriminator"]),
        )


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
