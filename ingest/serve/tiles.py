"""XYZ tiles (Web Mercator) of one variable or an RGB composite, rendered to PNG.

DESIGN CHOICE: the pixels are those of rio-tiler's ``XarrayReader.tile`` (the reader
titiler-xarray is built on: its bounds, ``clip_box`` and rioxarray reprojection, nearest
neighbour). We choose the overview level ourselves (``CubeReader.level_for_zoom``), so a
zoomed-out tile reads a few hundred level pixels instead of millions of native ones, and we
refuse a tile that would read more than ``MAX_TILE_PIXELS`` (a cube without overviews at a low
zoom). Where ``ingest.serve.warp`` knows GDAL's picks (tiles inside the area of use of the
coordinate operation: the Netherlands for EPSG:28992) they are computed with numpy and the
stored integers are gathered directly; elsewhere ``warp_tile`` warps with GDAL as rio-tiler
does. Both give the same PNG bytes (``tests/test_serve_tiles.py``).
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
from ingest.serve.warp import (Fallback, from_mercator, centre_bounds, centre_transform,
                               clip_window, mercator_to_grid)

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


@lru_cache(maxsize=1)
def empty_png() -> bytes:
    """A fully transparent tile (the same bytes every time: rendered once per process)."""
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
    tile = morecantile.Tile(x, y, z)
    bounds = TMS.bounds(tile)
    lat = (bounds.bottom + bounds.top) / 2
    level = reader.level_for_zoom(group, z, lat, overviews)
    xs, ys = reader.coords(level.path)
    # bounded work: read only the level pixels under this tile (plus a margin), never more
    # than MAX_TILE_PIXELS
    xy = TMS.xy_bounds(tile)
    left, bottom, right, top = reader.to_grid_from_mercator.transform_bounds(
        xy.left, xy.bottom, xy.right, xy.top)
    gl, _, _, gt = reader.grid.bounds
    rf = reader.grid.resolution * level.factor
    ny, nx = len(ys), len(xs)
    r0, r1 = max(0, math.floor((gt - top) / rf) - 2), min(ny, math.ceil((gt - bottom) / rf) + 2)
    c0, c1 = max(0, math.floor((left - gl) / rf) - 2), min(nx, math.ceil((right - gl) / rf) + 2)
    if r1 - r0 < 2 or c1 - c0 < 2:
        return empty_png(), level.factor
    if (r1 - r0) * (c1 - c0) > MAX_TILE_PIXELS:
        raise RequestError(f"tile {z}/{x}/{y} would read {(r1 - r0) * (c1 - c0)} pixels at level "
                           f"{level.factor}; zoom in (or build overviews: s2ingest overviews)")
    data = warped_bands(reader, level.path, bands, t, slice(r0, r1), slice(c0, c1), tile, bounds)
    if data is None:
        return empty_png(), level.factor
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
    if not valid.any() and (rgba[..., :3] == rgba[0, 0, :3]).all():  # e.g. no imagery that day
        return _transparent_png(tuple(int(v) for v in rgba[0, 0, :3])), level.factor
    rgba = rgba.copy()
    rgba[..., 3] = np.where(valid, rgba[..., 3], 0)
    png = render(np.moveaxis(rgba[..., :3], -1, 0).astype("uint8"), mask=rgba[..., 3], img_format="PNG")
    return png, level.factor


@lru_cache(maxsize=64)
def _transparent_png(rgb: tuple[int, int, int]) -> bytes:
    """The PNG ``tile_png`` renders for a tile with no valid pixel whose colour under the
    transparent alpha is ``rgb`` everywhere (rendered once per colour: the same bytes)."""
    data = np.empty((3, TILESIZE, TILESIZE), dtype="uint8")
    data[:] = np.array(rgb, dtype="uint8")[:, None, None]
    return render(data, mask=np.zeros((TILESIZE, TILESIZE), dtype="uint8"), img_format="PNG")


def warped_bands(reader: CubeReader, path: str, bands, t: int, rows: slice, cols: slice,
                 tile: morecantile.Tile, bounds=None) -> np.ndarray | None:
    """(band, 256, 256) float64 stored values of ``bands`` at time step ``t`` on ``tile``, NaN
    where there is none (fill value, or no source pixel); None where the tile misses the
    window ``rows`` x ``cols`` of the array group at ``path``. ``bounds``: the tile's lon/lat
    bounds, when known."""
    crs = reader.grid.crs
    xs, ys = reader.coords(path)
    xs, ys = xs[cols], ys[rows]
    grid_bbox = from_mercator(crs).transform_bounds(*TMS.xy_bounds(tile), densify_pts=21)
    if all(np.isfinite(grid_bbox)):  # rio-tiler's tile_exists
        tb, db = normalize_bounds(grid_bbox), normalize_bounds(centre_bounds(xs, ys))
        if not (tb[0] < db[2] and tb[2] > db[0] and tb[3] > db[1] and tb[1] < db[3]):
            return None
    fills = [VARIABLES[b].fill_value for b in bands]
    fast = mercator_to_grid(crs)
    if fast.covers(tile, bounds) and fast.agrees_with_gdal():
        try:
            r, c = clip_window(xs, ys, grid_bbox)
            h, w = r.stop - r.start, c.stop - c.start
            flat = fast.indices(tile, centre_transform(xs[c], ys[r]), h, w).ravel()
        except Fallback:
            flat = None
        if flat is not None:  # every tile pixel picks a pixel of the clipped window
            out = np.empty((len(bands), TILESIZE * TILESIZE))
            sub_rows = slice(rows.start + r.start, rows.start + r.stop)
            sub_cols = slice(cols.start + c.start, cols.start + c.stop)
            for i, (b, f) in enumerate(zip(bands, fills)):
                picked = reader.window(path, b, t, sub_rows, sub_cols).ravel().take(flat)
                out[i] = picked
                out[i][picked == f] = np.nan
            return out.reshape(len(bands), TILESIZE, TILESIZE)
    planes = []  # GDAL warps the window, as rio-tiler's XarrayReader.tile does
    for b, f in zip(bands, fills):
        raw = reader.window(path, b, t, rows, cols)
        plane = raw.astype("float32")
        plane[raw == f] = np.nan
        planes.append(plane)
    da = xr.DataArray(np.stack(planes), dims=("band", "y", "x"),
                      coords={"band": np.arange(1, len(bands) + 1), "y": ys, "x": xs})
    da = da.rio.write_crs(_crs(crs)).rio.write_nodata(np.nan)
    arr = warp_tile(da, tile.x, tile.y, tile.z, crs)
    return None if arr is None else np.ma.filled(arr.astype("float64"), np.nan)


@lru_cache(maxsize=8)
def _crs(crs: str):
    from rasterio.crs import CRS

    return CRS.from_user_input(crs)


def warp_tile(da: xr.DataArray, x: int, y: int, z: int, crs: str) -> np.ma.MaskedArray | None:
    """The 256 x 256 Web Mercator tile z/x/y of ``da`` (band, y, x; CRS ``crs``, NaN nodata),
    nearest neighbour, warped by GDAL; None where the tile misses ``da``.

    DESIGN CHOICE: the steps of rio-tiler's ``XarrayReader.tile`` (tile_exists, clip_box,
    rio.reproject onto the tile's bounds), without its three GDAL transformer set-ups per tile:
    the tile's bounds go to the grid's CRS through one cached PROJ transformer (the same
    operation, the same densified bounds to the bit as GDAL's ``transform_bounds``), and the
    default-resolution transform rio-tiler computes is not used for a tile of fixed size.
    Same pixels, same PNG."""
    bbox = tuple(TMS.xy_bounds(morecantile.Tile(x, y, z)))
    grid_bbox = from_mercator(crs).transform_bounds(*bbox, densify_pts=21)
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
    """0..255 over lo..hi, clipped; NaN -> 0 (in place: the clipped values are finite)."""
    with np.errstate(invalid="ignore"):
        s = np.clip((a - lo) / (hi - lo), 0, 1) * 255
    s[np.isnan(s)] = 0
    return s.astype("uint8")
