"""Checks of a read product against the cube (orbit, overlap) and against its own rasters.

``product_bounds_in`` transforms with the grid's pinned operation (``grid.pinned_operation``),
the same one the warp uses, so the overlap check and the warp agree on where a product lands.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

from pyproj import Transformer

from ingest.errors import CorruptProductError, MetadataError, OutsideGridError, WrongOrbitError
from ingest.grid import Bounds, CubeGrid, pinned_operation
from ingest.products.model import Product, TileGeocoding
from ingest.variables import VARIABLES


# --------------------------------------------------------------------------------------
# Validation against the cube
# --------------------------------------------------------------------------------------
def check_orbit(product: Product, orbit: int) -> None:
    """The cube holds one relative orbit; refuse products of another."""
    if product.relative_orbit != orbit:
        raise WrongOrbitError(
            product.name, f"relative orbit R{product.relative_orbit:03d}, but the cube holds R{orbit:03d}"
        )


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> Transformer:  # thread-safe since pyproj 3.1
    """The pinned operation ``src -> dst`` (x/y order), as the warp transforms."""
    return Transformer.from_pipeline(pinned_operation(src, dst))


def _data_polygon_utm(product: Product):
    """The data extent in the tile's UTM CRS: footprint ∩ tile square, else the tile square.

    DESIGN CHOICE: the footprint goes to UTM first, where it is continuous even across the
    antimeridian (real sample T01KAB has lon 180/-179.7 in one ring), and is clipped to the
    tile, so a sloppy footprint never claims more than the tile.
    """
    from shapely.geometry import Polygon, box

    tile_box = box(*product.geocoding.bounds(10))
    if len(product.footprint) < 4:
        return tile_box
    to_utm = _transformer("EPSG:4326", product.crs)
    lons, lats = zip(*product.footprint)
    xs, ys = to_utm.transform(lons, lats)
    if not all(map(math.isfinite, list(xs) + list(ys))):
        return tile_box
    poly = Polygon(zip(xs, ys)).buffer(0)
    clipped = poly.intersection(tile_box)
    if clipped.is_empty:
        raise MetadataError(product.name, "the footprint does not overlap the tile bounds of MTD_TL.xml")
    return clipped


def product_bounds_in(product: Product, crs: str) -> Bounds:
    """(left, bottom, right, top) of the product's data extent in ``crs`` (densified edges)."""
    import shapely

    poly = _data_polygon_utm(product)
    if crs == product.crs:
        return tuple(float(v) for v in poly.bounds)  # type: ignore[return-value]
    dense = shapely.segmentize(poly, max_segment_length=1000.0)
    xs, ys = dense.exterior.coords.xy if hasattr(dense, "exterior") else _all_coords(dense)
    tx, ty = _transformer(product.crs, crs).transform(list(xs), list(ys))
    pts = [(x, y) for x, y in zip(tx, ty) if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        raise MetadataError(product.name, f"the tile cannot be transformed to {crs}")
    return (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))


def _all_coords(geom) -> tuple[list[float], list[float]]:
    """Exterior coordinates of every part of a (multi)polygon."""
    xs: list[float] = []
    ys: list[float] = []
    for part in getattr(geom, "geoms", [geom]):
        px, py = part.exterior.coords.xy
        xs.extend(px)
        ys.extend(py)
    return xs, ys


def check_overlaps(product: Product, grid: CubeGrid) -> Bounds:
    """Raise OutsideGridError unless the product's data touches the grid; return the overlap.

    The returned bounds (grid CRS) are the product extent clipped to the grid: planning
    turns them into a window with ``grid.window_for_bounds``.
    """
    left, bottom, right, top = product_bounds_in(product, grid.crs)
    gl, gb, gr, gt = grid.bounds
    overlap = (max(left, gl), max(bottom, gb), min(right, gr), min(top, gt))
    if overlap[0] >= overlap[2] or overlap[1] >= overlap[3]:
        raise OutsideGridError(
            product.name,
            f"tile {product.tile} data extent {tuple(round(v) for v in (left, bottom, right, top))} "
            f"in {grid.crs} does not overlap grid {grid.name} {grid.bounds}",
        )
    return overlap


# --------------------------------------------------------------------------------------
# Consistency with the rasters
# --------------------------------------------------------------------------------------
def check_rasters(product: Product, variables: Iterable[str] | None = None) -> None:
    """Open each needed raster (GDAL, through ``gdal_path``) and check it against MTD_TL.

    CRS, upper-left corner, pixel size, shape and dtype must match what the XML says; the
    warp plans from the XML, so a raster that disagrees would land in the wrong place.
    CorruptProductError when a raster cannot be opened, MetadataError when it disagrees.
    """
    import rasterio
    from rasterio.errors import CRSError, RasterioError

    names = list(variables) if variables is not None else list(VARIABLES)
    geo = product.geocoding
    # headers only: no directory listing beside each file, no pixel decoded
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for var in names:
            spec = VARIABLES[var]
            res = spec.resolution
            rel = product.file_for(var, res)
            try:
                with rasterio.open(product.gdal_path(rel)) as src:
                    _check_one_raster(product, rel, res, spec.dtype, geo, src)
            except (RasterioError, CRSError) as exc:
                raise CorruptProductError(product.name, f"cannot open {rel}: {exc}") from None


def _check_one_raster(product: Product, rel: str, res: int, dtype: str, geo: TileGeocoding, src) -> None:
    def bad(reason: str) -> MetadataError:
        return MetadataError(product.name, f"{rel}: {reason}")

    epsg = src.crs.to_epsg() if src.crs else None
    if epsg != geo.epsg:
        raise bad(f"CRS {src.crs.to_string() if src.crs else None} but MTD_TL says EPSG:{geo.epsg}")
    t = src.transform
    tol = 1e-6 * res
    if abs(t.a - res) > tol or abs(t.e + res) > tol or t.b or t.d:
        raise bad(f"pixel size {t.a}/{t.e} (or rotated), expected {res}/-{res}")
    if abs(t.c - geo.ulx) > tol or abs(t.f - geo.uly) > tol:
        raise bad(f"origin ({t.c}, {t.f}) but MTD_TL ULX/ULY is ({geo.ulx}, {geo.uly})")
    if (src.height, src.width) != geo.sizes[res]:
        raise bad(f"size {src.height}x{src.width} but MTD_TL says {geo.sizes[res][0]}x{geo.sizes[res][1]} at {res} m")
    if src.count != 1 or src.dtypes[0] != dtype:
        raise bad(f"{src.count} band(s) of {src.dtypes[0]}, expected one {dtype} band")
