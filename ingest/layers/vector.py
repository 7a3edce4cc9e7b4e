"""Read, validate and reproject a polygon vector file for rasterising onto the cube grid.

Everything that can make a layer unpublishable is found here, before a single byte is written
to the store: unreadable file, no features, missing attribute, non-polygon geometries, no CRS,
no overlap with the grid.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from pyproj import CRS, Transformer

from ingest.errors import LayerError
from ingest.grid import Bounds, CubeGrid

POLYGONAL = {shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON}
# Companion files that belong to a Shapefile's content (hashed together with the .shp).
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


@dataclass
class VectorSource:
    """Polygons in the grid CRS with the attribute values to burn, plus provenance."""

    path: Path
    sha256: str
    source_crs: str
    geometries: np.ndarray  # shapely geometries in the grid CRS, one per feature
    values: np.ndarray | None  # attribute value per feature (None for mask layers)
    names: np.ndarray | None  # human-readable name per feature, when the file has one
    attribute: str | None
    bounds: Bounds  # of all geometries, in the grid CRS

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_features(self) -> int:
        return len(self.geometries)


def file_sha256(path: Path) -> str:
    """Checksum of the file's content; a Shapefile's sidecars count as content."""
    parts = [path]
    if path.suffix.lower() == ".shp":
        parts = [p for ext in _SHAPEFILE_PARTS if (p := path.with_suffix(ext)).exists()]
    h = hashlib.sha256()
    for p in parts:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_vector(path: str | Path, attribute: str | None, grid: CubeGrid, *,
                name_attribute: str | None = None, layer: str | None = None) -> VectorSource:
    """Read polygons and one attribute from ``path`` and reproject them to the grid's CRS."""
    path = Path(path)
    if not path.exists():
        raise LayerError(f"{path}: no such file")
    info = _info(path, layer)
    if info["features"] == 0:
        raise LayerError(f"{path.name}: the file has no features")
    fields = [str(f) for f in info["fields"]]
    attr = _match_field(path.name, attribute, fields, required=True) if attribute else None
    name_attr = _match_field(path.name, name_attribute, fields, required=False) if name_attribute else None
    if not info.get("crs"):
        raise LayerError(f"{path.name}: the file has no coordinate reference system")
    columns = [c for c in dict.fromkeys([attr, name_attr]) if c]
    meta, _, wkb, field_data = pyogrio.raw.read(path, layer=layer, columns=columns, force_2d=True)
    geoms = shapely.from_wkb(wkb)
    data = dict(zip(meta["fields"], field_data))
    values = np.asarray(data[attr], dtype=object) if attr else None
    names = np.asarray(data[name_attr], dtype=object) if name_attr else None
    geoms, values, names = _drop_empty(path.name, geoms, values, names)
    _check_polygonal(path.name, geoms)
    geoms = shapely.make_valid(geoms)
    geoms = _to_grid_crs(geoms, meta["crs"], grid)
    bounds = tuple(float(b) for b in shapely.total_bounds(geoms))
    _check_overlap(path.name, geoms, grid)
    return VectorSource(path, file_sha256(path), str(meta["crs"]), geoms, values, names, attr,
                        bounds)  # type: ignore[arg-type]


def _info(path: Path, layer: str | None) -> dict:
    try:
        return pyogrio.read_info(path, layer=layer, force_feature_count=True)
    except (DataSourceError, DataLayerError, OSError) as exc:
        raise LayerError(f"{path.name}: cannot read as a vector file ({exc})") from None


def _match_field(fname: str, wanted: str, fields: list[str], required: bool) -> str | None:
    """The file's field named ``wanted``, matched case-insensitively.

    DESIGN CHOICE: case-insensitive, because the same dataset ships as ``BG2015`` in one
    edition's Shapefile and ``bg2015`` in another's GeoPackage. An ambiguous match is an error.
    """
    if wanted in fields:
        return wanted
    hits = [f for f in fields if f.lower() == wanted.lower()]
    if len(hits) == 1:
        return hits[0]
    if required:
        raise LayerError(f"{fname}: no attribute {wanted!r}; the file has {', '.join(fields) or 'no attributes'}")
    return None


def _drop_empty(fname: str, geoms, values, names):
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if not keep.any():
        raise LayerError(f"{fname}: every geometry is empty; nothing to rasterise")
    pick = (lambda a: a[keep] if a is not None else None)
    return geoms[keep], pick(values), pick(names)


def _check_polygonal(fname: str, geoms: np.ndarray) -> None:
    kinds = shapely.get_type_id(geoms)
    bad = ~np.isin(kinds, [int(k) for k in POLYGONAL])
    if bad.any():
        found = sorted({shapely.GeometryType(int(k)).name.title() for k in kinds[bad]})
        raise LayerError(
            f"{fname}: expected polygons, found {int(bad.sum())} feature(s) of type {', '.join(found)}"
        )


def _to_grid_crs(geoms: np.ndarray, src_crs: str, grid: CubeGrid) -> np.ndarray:
    """Reproject with PROJ; densify first so straight edges in the source stay straight there."""
    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(grid.crs)
    if src.equals(dst):
        return geoms
    # DESIGN CHOICE: edges are straight lines in the *source* CRS (as every GIS draws them), so we
    # add vertices every ~10 pixels before transforming; the deviation left is far below a pixel.
    step = 10 * grid.resolution
    if src.is_geographic:
        step = step / 111_000.0
    geoms = shapely.segmentize(geoms, step)
    t = Transformer.from_crs(src, dst, always_xy=True)

    def fwd(xy: np.ndarray) -> np.ndarray:
        x, y = t.transform(xy[:, 0], xy[:, 1], errcheck=False)
        return np.column_stack([x, y])

    out = shapely.transform(geoms, fwd)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise LayerError(f"some coordinates cannot be transformed from {src.to_string()} to {grid.crs}")
    return out


def _check_overlap(fname: str, geoms: np.ndarray, grid: CubeGrid) -> None:
    box = shapely.box(*grid.bounds)
    hits = shapely.intersects(geoms, box) & (shapely.area(geoms) > 0)
    if not hits.any():
        b = shapely.total_bounds(geoms)
        raise LayerError(
            f"{fname}: no feature overlaps grid {grid.name} {grid.bounds} "
            f"(features span {tuple(round(v, 1) for v in b)} in {grid.crs})"
        )
