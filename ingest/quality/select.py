"""Scene selection over an area from the quality group alone (no imagery chunk is read).

For an area of interest (AOI) every H3 cell gets a weight: the share of its area (within the
grid) that lies inside the AOI, as the H3 tools weight cells by overlap. For each time step:

- cloud fraction = sum_c w_c * cloud_c / sum_c w_c * valid_c (cloud_c, valid_c: pixel counts);
- clear fraction likewise, with the clear count;
- valid fraction = sum_c w_c * valid_c / (AOI area within the grid / pixel area).

Accuracy (DESIGN.md, quality atlas): a pixel belongs to the cell holding its centre exactly
(``cells``), so when the AOI is a union of cells every weight is 0 or 1 and the cloud and clear
fractions equal the pixel counts over the AOI exactly. Otherwise only the cells cut by the
AOI's outline are estimated (their pixels are taken as spread evenly over the cell);
``uncertainty`` is the share of the AOI's valid pixels that lie in such cells, and bounds the
error of the cloud fraction when the valid pixels of a cut cell are spread evenly over it.
The valid fraction divides by the AOI's geometric area, so it may differ from a pixel count by
the pixels along the outline (< 0.1 % for a cell of resolution 7); it is capped at 1.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer

from ingest.errors import ConfigError, StoreError
from ingest.grid import CubeGrid
from ingest.store import CubeStore
from ingest.quality.cells import cells_in_bounds, rings_xy
from ingest.quality.group import RESOLUTION_ATTR, quality_path


@dataclass(frozen=True)
class DateQuality:
    time: datetime
    cloud: float  # fraction of the AOI's valid pixels that are cloud (SCL 8, 9, 10); NaN: none valid
    clear: float  # fraction of the AOI's valid pixels with a clear view (SCL 4, 5, 6)
    valid: float  # fraction of the AOI's pixels that hold data
    uncertainty: float  # share of the valid pixels in cells cut by the AOI's outline
    selected: bool

    def to_json(self) -> dict:
        d = asdict(self)
        d["time"] = self.time.isoformat().replace("+00:00", "Z")
        for k in ("cloud", "clear", "valid", "uncertainty"):
            d[k] = None if np.isnan(d[k]) else round(float(d[k]), 6)
        return d


# -- the area of interest -------------------------------------------------------------------
def _to_grid(geom, crs, grid: CubeGrid, *, densify: bool = False):
    """``geom`` in the grid's CRS. DESIGN CHOICE: only the vertices are transformed (edges stay
    straight lines in the grid's CRS, as the cells' edges are, see ``cells``), so an AOI drawn
    from cell outlines selects exactly those cells; a box given by its bounds is densified
    first (its edges are meant along the parallels and meridians of its CRS)."""
    if crs is None or CRS.from_user_input(crs) == CRS.from_user_input(grid.crs):
        return geom
    t = Transformer.from_crs(crs, grid.crs, always_xy=True)
    if densify:
        geom = shapely.segmentize(geom, _densify_step(geom))
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def _densify_step(geom) -> float:
    x0, y0, x1, y1 = geom.bounds
    return max(x1 - x0, y1 - y0, 1e-9) / 64


def aoi_from_bbox(bbox, grid: CubeGrid, crs: str | None = None):
    """A (left, bottom, right, top) box in ``crs`` (default: the grid's) as a grid-CRS polygon."""
    try:
        left, bottom, right, top = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ConfigError(f"bbox {bbox!r}: give four numbers LEFT,BOTTOM,RIGHT,TOP") from None
    if not (left < right and bottom < top):
        raise ConfigError(f"bbox {bbox!r}: LEFT < RIGHT and BOTTOM < TOP are required")
    return _to_grid(shapely.box(left, bottom, right, top), crs, grid, densify=True)


def aoi_from_file(path: str | Path, grid: CubeGrid):
    """The union of every geometry of a vector file (GeoPackage, GeoJSON, shapefile, ...),
    in the grid's CRS."""
    import pyogrio

    try:
        meta, _, geometry, _ = pyogrio.raw.read(str(path), read_geometry=True, columns=[])
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, ...
        raise ConfigError(f"cannot read the AOI file {path}: {exc}") from exc
    geoms = [g for g in shapely.from_wkb(geometry) if g is not None and not g.is_empty]
    if not geoms:
        raise ConfigError(f"the AOI file {path} holds no geometry")
    geom = shapely.union_all(shapely.make_valid(np.array(geoms)))
    if geom.area == 0:
        raise ConfigError(f"the AOI file {path} holds no area (points or lines only)")
    return _to_grid(geom, meta.get("crs") or "EPSG:4326", grid)


def cell_weights(grid: CubeGrid, resolution: int, aoi) -> tuple[np.ndarray, np.ndarray, float]:
    """(cell ids, weights, AOI area within the grid in m²): each cell's share of its own area
    (within the grid) that lies inside the AOI.

    DESIGN CHOICE: a cell whose part inside (or outside) the AOI is under 1 m² (a hundredth
    of a 10 m pixel) gets weight 0 (or 1): an AOI drawn from cell outlines in WGS 84 and
    densified on its way to the grid's CRS follows the cells' straight edges only to a few
    millimetres, and such slivers hold no pixel centre."""
    box = shapely.box(*grid.bounds)
    area_aoi = shapely.intersection(aoi, box)
    if area_aoi.is_empty or area_aoi.area == 0:
        raise ConfigError(f"the area of interest does not overlap the grid {grid.name} {list(grid.bounds)}")
    cand = cells_in_bounds(grid, area_aoi.bounds, resolution)
    x, y = rings_xy(grid, cand)
    polys = shapely.polygons(np.stack([x, y], axis=-1))
    inside = shapely.area(shapely.intersection(polys, box))
    with np.errstate(invalid="ignore", divide="ignore"):
        part = shapely.area(shapely.intersection(polys, area_aoi))
        w = np.where(inside > 0, part / inside, 0.0)
    w = np.where(part < 1.0, 0.0, np.where(inside - part < 1.0, 1.0, w))
    import h3

    ids = np.array([h3.str_to_int(c) for c in cand], dtype=np.uint64)
    keep = w > 0
    return ids[keep], w[keep], float(area_aoi.area)


# -- the selection ------------------------------------------------------------------------------
class QualityReader:
    """Reads the arrays of one quality group through the store's backend (chunks as needed)."""

    def __init__(self, store: CubeStore, group: str) -> None:
        self.store = store
        self.path = quality_path(group)
        meta = store.consolidated(self.path)
        if meta is None or "valid/.zarray" not in meta:
            raise StoreError(f"{store.url}: no quality atlas in /{group} (run `s2ingest quality "
                             f"rebuild --store {store.url}` to compute it)")
        self.meta = meta
        self.resolution = int(meta.get(".zattrs", {}).get(RESOLUTION_ATTR, 7))

    def array(self, name: str) -> np.ndarray:
        if f"{name}/.zarray" not in self.meta:
            raise StoreError(f"{self.store.url}/{self.path}: no array {name}")
        return np.asarray(self.store.read_array(self.path, name, self.meta))

    def times(self) -> list[datetime]:
        return [datetime.fromtimestamp(int(v) / 1000, tz=timezone.utc) for v in self.array("time")]


def _store(store) -> CubeStore:
    return store if isinstance(store, CubeStore) else CubeStore.open(store)


def date_quality(store, group: str, aoi, *, aoi_crs: str | None = None) -> list[DateQuality]:
    """Cloud, clear and valid fractions of every time step over ``aoi`` (a shapely geometry in
    ``aoi_crs``, default the grid's CRS; None: the whole grid), all marked selected."""
    store = _store(store)
    grid = store.grid
    reader = QualityReader(store, group)
    times = reader.times()
    cells = reader.array("cell")
    if aoi is None:
        aoi = shapely.box(*grid.bounds)
    elif aoi_crs is not None:
        aoi = _to_grid(aoi, aoi_crs, grid)
    ids, w, area = cell_weights(grid, reader.resolution, aoi)
    pos = np.searchsorted(cells, ids)
    pos = np.clip(pos, 0, max(len(cells) - 1, 0))
    on_axis = (cells[pos] == ids) if len(cells) else np.zeros(len(ids), bool)
    pos, w = pos[on_axis], w[on_axis]
    partial = (w > 0) & (w < 1)
    valid = reader.array("valid")[:, pos].astype(np.float64)
    cloud = np.rint(np.nan_to_num(reader.array("cloud")[:, pos].astype(np.float64)) * valid)
    clear = np.rint(np.nan_to_num(reader.array("clear")[:, pos].astype(np.float64)) * valid)
    wv = valid * w
    total = wv.sum(axis=1)
    aoi_pixels = area / grid.resolution ** 2
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        cf = (cloud * w).sum(axis=1) / total
        kf = (clear * w).sum(axis=1) / total
        unc = wv[:, partial].sum(axis=1) / total
    for t, time in enumerate(times):
        out.append(DateQuality(time, float(cf[t]), float(kf[t]), float(min(1.0, total[t] / aoi_pixels)),
                               float(unc[t]) if total[t] > 0 else float("nan"), True))
    return out


def select_dates(store, *, group: str = "S2/R051", aoi=None, aoi_crs: str | None = None,
                 max_cloud: float | None = None, min_valid: float | None = None,
                 time_range: tuple[datetime | None, datetime | None] | None = None) -> list[DateQuality]:
    """The time steps of ``group`` whose area-weighted cloud fraction over ``aoi`` is below
    ``max_cloud`` percent and whose valid share is at least ``min_valid`` percent (each
    optional), from the quality group only. Every step is returned, with ``selected``;
    ``[d.time for d in select_dates(...) if d.selected]`` are the chosen dates."""
    for name, v in (("max_cloud", max_cloud), ("min_valid", min_valid)):
        if v is not None and not 0 <= v <= 100:
            raise ConfigError(f"{name} {v} is not a percentage (0..100)")
    rows = date_quality(store, group, aoi, aoi_crs=aoi_crs)
    out = []
    for d in rows:
        ok = d.valid > 0 and not np.isnan(d.cloud)
        if max_cloud is not None:
            ok = ok and d.cloud * 100 < max_cloud
        if min_valid is not None:
            ok = ok and d.valid * 100 >= min_valid
        if time_range is not None:
            lo, hi = time_range
            ok = ok and (lo is None or d.time >= lo) and (hi is None or d.time <= hi)
        out.append(DateQuality(d.time, d.cloud, d.clear, d.valid, d.uncertainty, bool(ok)))
    return out


def dumps(rows: list[DateQuality]) -> str:
    return json.dumps([r.to_json() for r in rows], indent=1)
