"""The product-source interface (DESIGN.md §7): search -> records, fetch -> verified local path.

DESIGN CHOICE: a record's identity (platform, datatake start, tile, baseline, generation time,
relative orbit) is parsed from the product *name* with ``ProductName``, never taken from hub
attributes: every hub spells attributes differently (DHuS ``tileid`` is missing for L2A on old
nodes, CDSE ``processingBaseline`` is a number), but the name is the same everywhere and is what
the catalog keys on. Hub-specific facts (id, checksum, size, online, cloud cover) ride along.

DESIGN CHOICE: hub results are filtered again on the client with ``record_matches``. Hubs are
lenient (DHuS footprints are coarse, an older CDSE filter form silently matched nothing), and a
product of the wrong orbit or tile that slipped through would otherwise be downloaded for nothing.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence, Union

from ingest.errors import CorruptProductError
from ingest.grid import NL_GRID, CubeGrid
from ingest.products.names import ProductName

LonLat = tuple[float, float]
AreaLike = Union[CubeGrid, Sequence[LonLat], None]
Checksum = tuple[str, str]  # (algorithm as the hub/manifest spells it, hex value)


@dataclass(frozen=True)
class ProductRecord:
    """One product as a hub lists it: identity from the name plus hub facts."""

    name: str  # without .SAFE/.zip
    platform: str  # S2A/S2B/S2C
    datatake_start: datetime  # UTC, to the second (from the name)
    tile: str  # "31UFU"
    baseline: str  # "05.09"
    generation_time: datetime  # UTC (the name's discriminator)
    relative_orbit: int
    hub: str  # "local" | "dhus" | "cdse"
    hub_id: str  # uuid on DHuS/CDSE, the path on "local"
    checksum: Checksum | None = None
    size: int | None = None  # bytes, when the hub says
    online: bool = True
    cloud_cover: float | None = None
    product_type: str = "S2MSI2A"

    @classmethod
    def from_name(cls, name: str, *, hub: str, hub_id: str, **facts) -> "ProductRecord":
        """Build a record whose identity comes from the product name (raises MetadataError)."""
        pn = ProductName.parse(name)
        return cls(
            name=pn.name, platform=pn.platform, datatake_start=pn.datatake_start, tile=pn.tile,
            baseline=pn.baseline, generation_time=pn.discriminator, relative_orbit=pn.relative_orbit,
            hub=hub, hub_id=hub_id, **facts,
        )

    @property
    def zip_name(self) -> str:
        return f"{self.name}.zip"


@dataclass(frozen=True)
class DeletedProduct:
    """A product the hub removed (CDSE ``DeletedProducts``): the catalog must forget or replace it."""

    name: str
    hub_id: str
    deleted_at: datetime | None
    cause: str = ""


@dataclass
class FetchOutcome:
    """Per-record result of ``fetch_many`` (one bad product never aborts the run)."""

    record: ProductRecord
    status: str  # "fetched" | "offline" | "quarantined" | "rejected" (a permanent ProductError) | "failed"
    path: Path | None = None
    error: BaseException | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "fetched"

    @property
    def message(self) -> str:
        return "" if self.error is None else str(self.error)


class ProductQuarantinedError(CorruptProductError):
    """A download kept failing verification; it was moved to ``<cache>/quarantine/``.

    Permanent for this product version (the catalog marks it rejected with the reason); the
    file is kept for a human to inspect, never deleted silently.
    """

    def __init__(self, product: str, reason: str, path: Path) -> None:
        super().__init__(product, f"quarantined at {path}: {reason}")
        self.path = path


def utc(dt: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC (what every hub means)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def area_polygon(area: AreaLike = None, points_per_edge: int = 8) -> list[LonLat]:
    """A closed lon/lat ring for the search area: a grid's bounds densified and transformed.

    Densified because a straight RD edge is curved in lon/lat; 8 points per edge keep the error far
    below one Sentinel-2 tile while the query stays short (DHuS limits the query length).
    """
    if area is None:
        area = NL_GRID
    if not isinstance(area, CubeGrid):
        ring = [(float(x), float(y)) for x, y in area]
        return ring if ring[0] == ring[-1] else ring + [ring[0]]
    from pyproj import Transformer

    left, bottom, right, top = area.bounds
    n = points_per_edge
    xs: list[float] = []
    ys: list[float] = []
    for (x0, y0), (x1, y1) in [((left, bottom), (right, bottom)), ((right, bottom), (right, top)),
                               ((right, top), (left, top)), ((left, top), (left, bottom))]:
        for i in range(n):
            xs.append(x0 + (x1 - x0) * i / n)
            ys.append(y0 + (y1 - y0) * i / n)
    lon, lat = Transformer.from_crs(area.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    ring = [(round(a, 6), round(b, 6)) for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def polygon_wkt(ring: Sequence[LonLat]) -> str:
    return "POLYGON((" + ",".join(f"{x} {y}" for x, y in ring) + "))"


def record_matches(
    record: ProductRecord, orbit: int | None = None, since: datetime | None = None,
    until: datetime | None = None, tiles: Sequence[str] | None = None, max_cloud: float | None = None,
) -> bool:
    """Client-side filter on identity: since inclusive, until exclusive, on the datatake start."""
    return mismatch(record, orbit, since, until, tiles, max_cloud) is None


def mismatch(
    record: ProductRecord, orbit: int | None = None, since: datetime | None = None,
    until: datetime | None = None, tiles: Sequence[str] | None = None, max_cloud: float | None = None,
) -> str | None:
    """Why ``record_matches`` leaves a record out (None: it matches)."""
    if orbit is not None and record.relative_orbit != orbit:
        return f"of relative orbit {record.relative_orbit} (the cube is {orbit})"
    if since is not None and record.datatake_start < utc(since):
        return f"before --since {utc(since):%Y-%m-%d}"
    if until is not None and record.datatake_start >= utc(until):
        return f"not before --until {utc(until):%Y-%m-%d}"
    if tiles and record.tile not in {t.upper().lstrip("T") for t in tiles}:
        return f"tile {record.tile} not in --tiles"
    if max_cloud is not None and record.cloud_cover is not None and record.cloud_cover > max_cloud:
        return f"cloud cover above --max-cloud {max_cloud:g} %"
    return None


class Source(ABC):
    """A place products come from. Implementations: local, dhus, cdse."""

    hub: str = "?"

    @abstractmethod
    def search(
        self, orbit: int, area: AreaLike = None, since: datetime | None = None,
        until: datetime | None = None, tiles: Sequence[str] | None = None,
        max_cloud: float | None = None, product_type: str = "S2MSI2A",
    ) -> list[ProductRecord]:
        """Products of one relative orbit over the area, sorted by datatake start then name."""

    @abstractmethod
    def fetch(self, record: ProductRecord, cache_dir: str | Path, progress: bool = True) -> Path:
        """A verified local zip or .SAFE folder for the record.

        Raises ProductOfflineError (retrieval was requested: come back later),
        ProductQuarantinedError (verification kept failing), AuthenticationError,
        HubUnreachableError, HubError.
        """

    def deleted_products(self, since: datetime) -> list[DeletedProduct]:
        """Products the hub deleted since a time (hub drift). Hubs without that API return []."""
        return []


def sort_records(records: Sequence[ProductRecord]) -> list[ProductRecord]:
    return sorted(records, key=lambda r: (r.datatake_start, r.name))
