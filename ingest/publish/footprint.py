"""Where a product lands on the grid: its outline in the grid CRS and the chunks it touches."""
from __future__ import annotations

import math

from pyproj import CRS, Transformer
from shapely.geometry import Polygon, box
from shapely.prepared import prep

from ingest.grid import ChunkIndex, CubeGrid, pinned_operation
from ingest.publish.plan import PlannedProduct
from ingest.products.model import Product


def tile_outline(product: Product, grid: CubeGrid, densify: int = 16) -> Polygon:
    """The product's raster extent as a polygon in the grid CRS (edges densified: the
    UTM -> RD mapping bends straight lines slightly)."""
    left, bottom, right, top = product.geocoding.bounds(60 if 60 in product.geocoding.sizes else 10)
    xs, ys = [], []
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        for i in range(densify):
            f = i / densify
            xs.append(x0 + (x1 - x0) * f)
            ys.append(y0 + (y1 - y0) * f)
    t = Transformer.from_pipeline(pinned_operation(product.crs, grid.crs))
    gx, gy = t.transform(xs, ys)
    return Polygon(zip(gx, gy))


def chunks_touched(product: Product, grid: CubeGrid) -> frozenset[ChunkIndex]:
    """Spatial chunks of the grid that the product's rasters overlap."""
    outline = tile_outline(product, grid)
    candidates = grid.chunks_in_bounds(outline.bounds)
    shape = prep(outline)
    result = set()
    for c in candidates:
        b = grid.window_bounds(grid.chunk_window(c))
        if shape.intersects(box(*b)):
            result.add(c)
    return frozenset(result)


def majority_epsg(grid: CubeGrid) -> int:
    """The UTM zone (WGS 84, north) of the grid centre: the zone most of the grid lies in."""
    left, bottom, right, top = grid.bounds
    t = Transformer.from_crs(CRS.from_user_input(grid.crs), "EPSG:4326", always_xy=True)
    lon, lat = t.transform((left + right) / 2, (bottom + top) / 2)
    zone = int(math.floor((lon + 180) / 6)) + 1
    return (32600 if lat >= 0 else 32700) + zone


def planned(product: Product, grid: CubeGrid) -> PlannedProduct:
    """The planning view of a product."""
    return PlannedProduct(
        name=product.name, datatake=(product.datatake_start, product.platform), tile=product.tile,
        epsg=product.geocoding.epsg, baseline=product.baseline,
        generation_time=product.generation_time, chunks=chunks_touched(product, grid),
    )
