"""XYZ tiles (Web Mercator) of one variable or an RGB composite, rendered to PNG.

DESIGN CHOICE: the steps of rio-tiler's ``XarrayReader.tile`` (the reader titiler-xarray is
built on; ``warp_tile``: the same bounds, clip and rioxarray reprojection, with one cached PROJ
transformer instead of three GDAL set-ups per tile) do the Web Mercator tile maths; we choose the
overview level ourselves (``CubeReader.level_for_zoom``), so a zoomed-out tile reads a few
hundred level pixels instead of millions of native ones, and we refuse a tile that would read
more than ``MAX_TILE_PIXELS`` (a cube without overviews at a low zoom).
"""
from __future__ import annotations

import math

import morecantile
import numpy as np
import xarray as xr
from functools import lru_cache

from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rio_tiler.colormap import cmap as colormaps
from rio_tiler.utils import normalize_bounds, render

from ingest.variables import VARIABLES
from ingest.serve.reader import COMPOSITES, MAX_TILE_PIXELS, CubeReader, RequestError, check_variable

TMS = morecantile.tms.get("WebMercatorQuad")
TILESIZE = 256
DEFAULT_RANGES = {"reflectance": (0.0, 0.3), "classes": (0, 11), "probability": (0.0, 1.0),
                  "aot": (0.0, 0.5), "wvp": (0.0, 5.0)}


MAX_ZOOM = 24


def check_tile(z: int, x: int, y: int) -> None:
    """A Web Mercator tile that exists: zoom 0..24, x and y 0..2^z - 1 (else a 400)."""
    if not 0 <= z <= MAX_ZOOM:
        raise RequestError(f"no tile {z}/{x}/{y}: zoom must be 0..{MAX_ZOOM}")
    if not (0 <= x < 2 ** z and 0 <= y < 2 ** z):
        raise RequestError(f"no tile {z}/{x}/{y}: x and y must be 0..{2 ** z - 1} at zoom {z}")


def empty_png() -> bytes:
    return render(np.zeros((1, TILESIZE, TILESIZE), dtype="uint8"),
                  mask=np.zeros((TILESIZE, TILESIZE), dtype="uint8"), img_format="PNG")


def _lut(name: str) -> np.ndarray:
    try:
        cm = colormaps.get(name.lower())
    except Exception:
        raise RequestError(f"unknown colour map {name!r}; e.g. viridis, rdylgn, greys, terrain") from None
    lut = np.zeros((256, 4), dtype="uint8")
    for k, v in cm.items():
        lut[int(k)] = v
    return lut


def scl_lut() -> np.ndarray:
    """The usual SCL palette (ESA's colours per class)."""
    colours = {1: (255, 0, 0), 2: (47, 47, 47), 3: (100, 50, 0), 4: (0, 160, 0), 5: (255, 230, 90),
               6: (0, 0, 255), 7: (128, 128, 128), 8: (192, 192, 192), 9: (255, 255, 255),
               10: (100, 200, 255), 11: (255, 150, 255)}
    lut = np.zeros((256, 4), dtype="uint8")
    for k, (r, g, b) in colours.items():
        lut[k] = (r, g, b, 255)
    return lut


def tile_png(reader: CubeReader, group: str, z: int, x: int, y: int, *, time: str | None,
             variable: str | None, composite: str | None, vmin: float | None, vmax: float | None,
             colormap: str | None, overviews: bool = True) -> tuple[bytes, int]:
    """(PNG bytes, overview factor used) of tile z/x/y."""
    check_tile(z, x, y)
    for name, v in (("vmin", vmin), ("vmax", vmax)):
        if v is not None and not math.isfinite(v):
            raise RequestError(f"{name} {v} is not a finite number")
    if composite:
        if composite not in COMPOSITES:
            raise RequestError(f"unknown composite {composite!r}; one of {', '.join(COMPOSITES)}")
        bands, (lo, hi) = COMPOSITES[composite]
    else:
        spec = check_variable(variable or "B04")
        bands, (lo, hi) = (spec.name,), DEFAULT_RANGES[spec.kind]
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    if not hi > lo:
        raise RequestError(f"empty range {lo} .. {hi}")
    t = reader.time_index(group, time)
    bounds = TMS.bounds(morecantile.Tile(x, y, z))
    lat = (bounds.bottom + bounds.top) / 2
    level = reader.level_for_zoom(group, z, lat, overviews)
    ds = reader.dataset(level.path)
    # bounded work: read only the level pixels under this tile (plus a margin), never more
    # than MAX_TILE_PIXELS; the window is sliced lazily before anything is loaded
    xy = TMS.xy_bounds(morecantile.Tile(x, y, z))
    left, bottom, right, top = reader.to_grid_from_mercator.transform_bounds(
        xy.left, xy.bottom, xy.right, xy.top)
    gl, _, _, gt = reader.grid.bounds
    rf = reader.grid.resolution * level.factor
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    r0, r1 = max(0, math.floor((gt - top) / rf) - 2), min(ny, math.ceil((gt - bottom) / rf) + 2)
    c0, c1 = max(0, math.floor((left - gl) / rf) - 2), min(nx, math.ceil((right - gl) / rf) + 2)
    if r1 - r0 < 2 or c1 - c0 < 2:
        return empty_png(), level.factor
    if (r1 - r0) * (c1 - c0) > MAX_TILE_PIXELS:
        raise RequestError(f"tile {z}/{x}/{y} would read {(r1 - r0) * (c1 - c0)} pixels at level "
                           f"{level.factor}; zoom in (or build overviews: s2ingest overviews)")
    fills = [VARIABLES[b].fill_value for b in bands]
    planes = []
    for b, f in zip(bands, fills):
        raw = reader.window(level.path, b, t, slice(r0, r1), slice(c0, c1))
        plane = raw.astype("float32")
        plane[raw == f] = np.nan
        planes.append(plane)
    da = xr.DataArray(np.stack(planes), dims=("band", "y", "x"),
                      coords={"band": np.arange(1, len(bands) + 1),
                              "y": ds["y"].values[r0:r1], "x": ds["x"].values[c0:c1]})
    da = da.rio.write_crs(_crs(reader.grid.crs)).rio.write_nodata(np.nan)
    arr = warp_tile(da, x, y, z, reader.grid.crs)
    if arr is None:
        return empty_png(), level.factor
    data = np.ma.filled(arr.astype("float64"), np.nan)
    scales = [VARIABLES[b].scale_factor or 1.0 for b in bands]
    phys = np.stack([d * s for d, s in zip(data, scales)])
    valid = ~np.isnan(phys).any(axis=0)
    if composite == "ndvi":
        with np.errstate(invalid="ignore", divide="ignore"):
            nd = (phys[0] - phys[1]) / (phys[0] + phys[1])
        valid &= ~np.isnan(nd)
        rgba = _lut(colormap or "rdylgn")[_scale(nd, lo, hi)]
    elif composite:
        rgba = np.dstack([_scale(b, lo, hi) for b in phys] + [np.full(valid.shape, 255, "uint8")])
    elif VARIABLES[bands[0]].kind == "classes" and not colormap:
        rgba = scl_lut()[np.nan_to_num(data[0], nan=0).astype("uint8")]
    else:
        rgba = _lut(colormap or "viridis")[_scale(phys[0], lo, hi)]
    rgba = rgba.copy()
    rgba[..., 3] = np.where(valid, rgba[..., 3], 0)
    png = render(np.moveaxis(rgba[..., :3], -1, 0).astype("uint8"), mask=rgba[..., 3], img_format="PNG")
    return png, level.factor


@lru_cache(maxsize=8)
def _crs(crs: str):
    from rasterio.crs import CRS

    return CRS.from_user_input(crs)


@lru_cache(maxsize=8)
def _from_mercator(crs: str):
    """One PROJ transformer per server process (creating one costs tens of milliseconds)."""
    from pyproj import Transformer

    return Transformer.from_crs(TMS.rasterio_crs.to_wkt(), _crs(crs).to_wkt(), always_xy=True)


def warp_tile(da: xr.DataArray, x: int, y: int, z: int, crs: str) -> np.ma.MaskedArray | None:
    """The 256 x 256 Web Mercator tile z/x/y of ``da`` (band, y, x; CRS ``crs``, NaN nodata),
    nearest neighbour; None where the tile misses ``da``.

    DESIGN CHOICE: the steps of rio-tiler's ``XarrayReader.tile`` (tile_exists, clip_box,
    rio.reproject onto the tile's bounds), without its three GDAL transformer set-ups per tile:
    the tile's bounds go to the grid's CRS through one cached PROJ transformer (the same
    operation, the same densified bounds to the bit as GDAL's ``transform_bounds``), and the
    default-resolution transform rio-tiler computes is not used for a tile of fixed size.
    Same pixels, same PNG."""
    bbox = tuple(TMS.xy_bounds(morecantile.Tile(x, y, z)))
    grid_bbox = _from_mercator(crs).transform_bounds(*bbox, densify_pts=21)
    if all(np.isfinite(grid_bbox)):
        tb, db = normalize_bounds(grid_bbox), normalize_bounds(tuple(da.rio.bounds()))
        if not (tb[0] < db[2] and tb[2] > db[0] and tb[3] > db[1] and tb[1] < db[3]):
            return None
    da = da.rio.clip_box(*grid_bbox, auto_expand=True)
    w, s, e, n = bbox
    da = da.rio.reproject(TMS.rasterio_crs, shape=(TILESIZE, TILESIZE),
                          transform=from_bounds(w, s, e, n, TILESIZE, TILESIZE),
                          resampling=Resampling.nearest, nodata=np.nan)
    arr = da.to_masked_array()
    arr.mask |= arr.data == da.rio.nodata
    return arr


def _scale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        s = np.clip((a - lo) / (hi - lo), 0, 1) * 255
    return np.nan_to_num(s, nan=0).astype("uint8")
