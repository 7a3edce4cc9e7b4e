"""Nearest-neighbour Web Mercator tiles of a grid window, pixel for pixel as GDAL warps them.

A tile used to be warped by rioxarray (``clip_box`` then ``rio.reproject``, i.e. GDAL's warper
through ``rasterio.warp.reproject``): about 20 ms of GDAL per tile, most of it GDAL searching
the PROJ database for the coordinate operation of the tile's area of interest (its cache is
keyed by that area, so it misses for every new tile), plus as much again of xarray objects.
Nearest neighbour only picks, for each tile pixel, one source pixel; this module computes
those picks with numpy and one cached PROJ operation, following GDAL's arithmetic step by step:

- the source window and its transform as rioxarray derives them from the centre coordinates
  (``centre_transform``, ``centre_bounds``, ``clip_window``: the first attempt of
  ``clip_box``; anything unusual, e.g. a window one pixel wide, raises ``Fallback``);
- GDAL's approximate transformer (``GDALApproxTransform``, error threshold 0.125 source pixel,
  rasterio's default): per row of destination pixel centres the exact transform of the first,
  middle and last point, linear interpolation where the middle point is within the threshold,
  otherwise the same halving GDAL does (``source_coords``);
- the exact transform as ``GDALGenImgProjTransform`` does it: destination pixel -> Web
  Mercator by the tile's geotransform, the coordinate operation, grid -> source pixel by the
  inverted geotransform (``GDALInvGeoTransform``'s no-rotation formulas);
- the nearest kernel's pick: truncation of the source coordinate + 1e-10, points outside the
  source dropped (``nearest_indices``); a tile with such points (one reaching past the edge of
  the array) is left to GDAL, which may then split it into smaller warp chunks (other end
  points for its rows).

DESIGN CHOICE: the fast path is taken only where it is known to agree with GDAL. GDAL chooses
the coordinate operation for each tile's area of interest; we use the operation PROJ ranks
first for the pair of CRSs, and only for tiles (with a margin) inside that operation's area of
use, where GDAL picks the same one (EPSG:28992: "Amersfoort to WGS 84 (4)" over the
Netherlands; outside it GDAL falls back to another operation, ~100 m away). Every other tile,
and every process where a probe warp (``MercatorToGrid.agrees_with_gdal``, once per process)
does not give GDAL's pixels, is warped by GDAL as before. Tests compare the two paths tile by
tile (``tests/test_serve_tiles.py``).
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache

import morecantile
import numpy as np
from affine import Affine

TMS = morecantile.tms.get("WebMercatorQuad")
TILESIZE = 256
TOLERANCE = 0.125  # GDAL's approximate transformer: max error in source pixels (rasterio's default)
# a tile's lon/lat bounds, widened by this share of its size and by this many degrees, must lie
# in the operation's area of use (GDAL's area of interest is the source window's extent in the
# source CRS's own datum: ~100 m from WGS 84 for RD New, a little larger than the tile)
AREA_MARGIN = 0.1
AREA_MARGIN_DEG = 0.01


class Fallback(Exception):
    """This tile is warped by GDAL (the reference path), not by ``MercatorToGrid.indices``."""


# -- the source window, as rioxarray derives it from the centre coordinates -----------------------
def _centres(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """rioxarray's ``_internal_bounds`` and ``resolution(recalc=True)``: first and last centres,
    and the resolution from them."""
    left, right, top, bottom = float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])
    return left, right, top, bottom, (right - left) / (len(xs) - 1), (bottom - top) / (len(ys) - 1)


def centre_transform(xs: np.ndarray, ys: np.ndarray) -> Affine:
    """The geotransform rioxarray's ``rio.transform(recalc=True)`` gives an array with these
    centre coordinates (two or more each), the same floating-point operations."""
    left, _, top, _, rx, ry = _centres(xs, ys)
    left -= rx / 2.0
    top -= ry / 2.0
    return Affine.translation(left, top) @ Affine.scale(rx, ry)


def centre_bounds(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) as rioxarray's ``rio.bounds()`` gives them."""
    left, right, top, bottom, rx, ry = _centres(xs, ys)
    left -= rx / 2.0
    right += rx / 2.0
    top -= ry / 2.0
    bottom += ry / 2.0
    top, bottom = (top, bottom) if ry < 0 else (bottom, top)
    left, right = (left, right) if rx >= 0 else (right, left)
    return left, bottom, right, top


def clip_window(xs: np.ndarray, ys: np.ndarray, bbox) -> tuple[slice, slice]:
    """(rows, cols) of the window rioxarray's ``clip_box(*bbox, auto_expand=True)`` keeps, when
    its first attempt keeps at least 2 x 2 pixels; else ``Fallback`` (its retries and errors
    are left to rioxarray itself)."""
    import rasterio.windows
    from rasterio.errors import WindowError

    if len(xs) < 2 or len(ys) < 2:
        raise Fallback("one-pixel window")
    _, _, _, _, rx, ry = _centres(xs, ys)
    minx, miny, maxx, maxy = bbox
    top, bottom = (maxy, miny) if ry < 0 else (miny, maxy)
    left, right = (minx, maxx) if rx >= 0 else (maxx, minx)
    try:
        w = rasterio.windows.from_bounds(left=float(left), bottom=float(bottom), right=float(right),
                                         top=float(top), transform=centre_transform(xs, ys))
    except WindowError:
        raise Fallback("no window") from None
    (r0, r1), (c0, c1) = w.toranges()  # rioxarray's isel_window: floor/ceil, negatives to 0
    r0, r1 = (0 if r0 < 0 else math.floor(r0)), (0 if r1 < 0 else math.ceil(r1))
    c0, c1 = (0 if c0 < 0 else math.floor(c0)), (0 if c1 < 0 else math.ceil(c1))
    rows, cols = range(len(ys))[int(r0):int(r1)], range(len(xs))[int(c0):int(c1)]
    if len(rows) <= 1 or len(cols) <= 1:
        raise Fallback("thin window")
    return slice(rows.start, rows.stop), slice(cols.start, cols.stop)


# -- GDAL's approximate and exact transforms, and its nearest pick ----------------------------------
def _exact(transform, dst_gt, inv_gt, px: np.ndarray,
           py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Destination pixel coordinates -> source pixel coordinates (``GDALGenImgProjTransform``,
    destination to source; ``transform(x, y)`` the coordinate operation); ``Fallback`` where
    the operation fails."""
    gx = dst_gt[0] + px * dst_gt[1] + py * dst_gt[2]
    gy = dst_gt[3] + px * dst_gt[4] + py * dst_gt[5]
    sx, sy = transform(gx, gy)
    sx, sy = np.asarray(sx, dtype="f8"), np.asarray(sy, dtype="f8")
    if not (np.isfinite(sx).all() and np.isfinite(sy).all()):
        raise Fallback("the coordinate operation failed for a pixel")
    return inv_gt[0] + sx * inv_gt[1] + sy * inv_gt[2], inv_gt[3] + sx * inv_gt[4] + sy * inv_gt[5]


def source_coords(transform, dst_gt, inv_gt, n: int = TILESIZE,
                  tolerance: float = TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (x, y) of the centres of an n x n destination, as GDAL's
    approximate transformer computes them row by row (``GDALApproxTransformInternal``).

    Every row is a segment of n points; a segment whose middle point lies within ``tolerance``
    of the straight line between its end points is interpolated (start + slope * distance in
    destination pixels), else it is cut in two halves ([0, m) and [m, n), m = (n - 1) // 2) and
    each half treated alike, a half of 5 points or fewer transformed exactly. Rows are
    independent; all rows at one step of the halving are done in one numpy pass."""
    xs = np.arange(n) + 0.5  # GDAL: iDstX + 0.5 (the whole tile is one warp chunk)
    ys = np.arange(n) + 0.5
    out_x, out_y = np.empty((n, n)), np.empty((n, n))
    m = (n - 1) // 2
    ends = np.array([0, m, n - 1])
    sx, sy = _exact(transform, dst_gt, inv_gt, np.tile(xs[ends], n), np.repeat(ys, 3))
    todo = [(np.arange(n), 0, n, sx.reshape(n, 3), sy.reshape(n, 3))]
    while todo:
        rows, s, ln, ex, ey = todo.pop()
        m = (ln - 1) // 2
        span = xs[s + ln - 1] - xs[s]
        dx, dy = (ex[:, 2] - ex[:, 0]) / span, (ey[:, 2] - ey[:, 0]) / span
        mid = xs[s + m] - xs[s]
        error = np.abs(ex[:, 0] + dx * mid - ex[:, 1]) + np.abs(ey[:, 0] + dy * mid - ey[:, 1])
        ok = ~(error > tolerance)
        dist = xs[s:s + ln] - xs[s]
        if ok.all() and s == 0 and ln == n:  # the usual case: every row a straight line
            out_x[:] = ex[:, :1] + dx[:, None] * dist
            out_y[:] = ey[:, :1] + dy[:, None] * dist
            continue
        if ok.any():
            out_x[rows[ok], s:s + ln] = ex[ok, :1] + dx[ok, None] * dist
            out_y[rows[ok], s:s + ln] = ey[ok, :1] + dy[ok, None] * dist
        if ok.all():
            continue
        rows, ex, ey = rows[~ok], ex[~ok], ey[~ok]
        k = len(rows)
        for start, length, first in ((s, m, True), (s + m, ln - m, False)):
            if length <= 5:  # GDAL transforms short halves exactly
                px, py = _exact(transform, dst_gt, inv_gt, np.tile(xs[start:start + length], k),
                                np.repeat(ys[rows], length))
                out_x[rows, start:start + length] = px.reshape(k, length)
                out_y[rows, start:start + length] = py.reshape(k, length)
                continue
            hm = start + (length - 1) // 2
            if first:  # ends: the segment's start, the half's middle and last points
                px, py = _exact(transform, dst_gt, inv_gt, np.tile(xs[[hm, start + length - 1]], k),
                                np.repeat(ys[rows], 2))
                px, py = px.reshape(k, 2), py.reshape(k, 2)
                todo.append((rows, start, length, np.column_stack([ex[:, 0], px]),
                              np.column_stack([ey[:, 0], py])))
            else:  # ends: the segment's middle, the half's middle, the segment's end
                px, py = _exact(transform, dst_gt, inv_gt, np.full(k, xs[hm]), ys[rows])
                todo.append((rows, start, length, np.column_stack([ex[:, 1], px, ex[:, 2]]),
                             np.column_stack([ey[:, 1], py, ey[:, 2]])))
    return out_x, out_y


def nearest_indices(px: np.ndarray, py: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flat indices (row * width + col) into a height x width source of GDAL's nearest pick
    for source coordinates (px, py); -1 where GDAL leaves the pixel empty (outside the source)."""
    with np.errstate(invalid="ignore"):
        inside = (px >= 0) & (py >= 0) & ~(px + 1e-10 > width) & ~(py + 1e-10 > height)
    cols = np.where(inside, px + 1e-10, 0).astype(np.int64)  # truncation, as GDAL's cast
    rows = np.where(inside, py + 1e-10, 0).astype(np.int64)
    np.minimum(cols, width - 1, out=cols)  # GDAL: a coordinate of exactly width picks width - 1
    np.minimum(rows, height - 1, out=rows)
    return np.where(inside, rows * width + cols, -1)


# -- the coordinate operation ------------------------------------------------------------------------
class MercatorToGrid:
    """The coordinate operation Web Mercator -> the grid's CRS that GDAL picks for tiles inside
    its area of use, created once per process (PROJ's search takes ~15 ms)."""

    def __init__(self, crs: str) -> None:
        from pyproj.transformer import TransformerGroup
        from rasterio.crs import CRS

        self.crs = crs
        group = TransformerGroup(TMS.rasterio_crs.to_wkt(), CRS.from_user_input(crs).to_wkt(),
                                 always_xy=True)
        self.op = group.transformers[0] if group.transformers else None
        aou = getattr(self.op, "area_of_use", None)
        self.area = (aou.west, aou.south, aou.east, aou.north) if aou is not None else None
        self._agrees: bool | None = None
        self._lock = threading.Lock()
        self._op_lock = threading.Lock()

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Web Mercator -> grid CRS by the operation. DESIGN CHOICE: one PROJ object shared by
        the threads of the process, one call at a time (a TransformerGroup's operations are
        not thread-local as ``Transformer.from_crs`` ones are; a call takes ~0.1 ms)."""
        with self._op_lock:
            return self.op.transform(x, y, errcheck=False)

    def covers(self, tile: morecantile.Tile, bounds=None) -> bool:
        """Whether ``tile`` (with a margin) lies inside the operation's area of use;
        ``bounds``: its lon/lat bounds (``TMS.bounds(tile)``), when known."""
        if self.op is None or self.area is None:
            return False
        b = bounds or TMS.bounds(tile)
        mx = (b.right - b.left) * AREA_MARGIN + AREA_MARGIN_DEG
        my = (b.top - b.bottom) * AREA_MARGIN + AREA_MARGIN_DEG
        w, s, e, n = self.area
        return w <= b.left - mx and b.right + mx <= e and s <= b.bottom - my and b.top + my <= n

    def agrees_with_gdal(self) -> bool:
        """Once per process: whether our picks equal GDAL's for two probe tiles at the centre
        of the area of use (a zoom-14 tile of 10 m pixels, and a zoom-8 tile of 640 m pixels
        whose rows need the approximate transformer's halving)."""
        with self._lock:
            if self._agrees is None:
                try:
                    self._agrees = self.op is not None and self.area is not None and all(
                        self._probe(z, res) for z, res in ((14, 10.0), (8, 640.0)))
                except Exception:  # noqa: BLE001 -- any failure: GDAL warps every tile
                    self._agrees = False
            return self._agrees

    def _probe(self, z: int, res: float) -> bool:
        from rasterio.crs import CRS
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        w, s, e, n = self.area
        tile = TMS.tile((w + e) / 2, (s + n) / 2, z)
        xy = TMS.xy_bounds(tile)
        left, bottom, right, top = from_mercator(self.crs).transform_bounds(*xy, densify_pts=21)
        x0, y0 = math.floor(left / res) * res - 2 * res, math.ceil(top / res) * res + 2 * res
        width, height = int((right - x0) / res) + 3, int((y0 - bottom) / res) + 3
        src_gt = Affine(res, 0.0, x0, 0.0, -res, y0)
        index = np.arange(height * width, dtype="float32").reshape(1, height, width)
        dst = np.full((1, TILESIZE, TILESIZE), np.nan, "float32")
        reproject(index, dst, src_transform=src_gt, src_crs=CRS.from_user_input(self.crs),
                  src_nodata=np.nan, dst_transform=_tile_transform(tile), dst_crs=TMS.rasterio_crs,
                  dst_nodata=np.nan, resampling=Resampling.nearest)
        return bool(np.array_equal(self.indices(tile, src_gt, height, width), dst[0]))

    def indices(self, tile: morecantile.Tile, src_gt: Affine, height: int, width: int) -> np.ndarray:
        """Flat source indices of the 256 x 256 pixels of ``tile`` over a source of ``height`` x
        ``width`` pixels with geotransform ``src_gt`` (no rotation).

        ``Fallback`` where some tile pixel has no source pixel (the tile reaches past the edge
        of the array): GDAL then splits the tile into smaller warp chunks when the source
        covers little of it, and interpolates its rows between other end points."""
        g = src_gt.to_gdal()
        if g[2] != 0.0 or g[4] != 0.0 or g[1] == 0.0 or g[5] == 0.0:
            raise Fallback("a rotated source")
        inv = (-g[0] / g[1], 1.0 / g[1], 0.0, -g[3] / g[5], 0.0, 1.0 / g[5])
        px, py = source_coords(self.transform, _tile_transform(tile).to_gdal(), inv)
        flat = nearest_indices(px, py, height, width)
        if (flat < 0).any():
            raise Fallback("the tile reaches past the source")
        return flat


def _tile_transform(tile: morecantile.Tile) -> Affine:
    """The tile's geotransform, as ``rasterio.transform.from_bounds`` gives it."""
    from rasterio.transform import from_bounds

    w, s, e, n = TMS.xy_bounds(tile)
    return from_bounds(w, s, e, n, TILESIZE, TILESIZE)


@lru_cache(maxsize=8)
def mercator_to_grid(crs: str) -> MercatorToGrid:
    return MercatorToGrid(crs)


@lru_cache(maxsize=8)
def from_mercator(crs: str):
    """PROJ's transformer Web Mercator -> ``crs`` (all operations, chosen per point), for the
    tile's bounds in the grid's CRS: the same densified bounds to the bit as GDAL's
    ``transform_bounds``."""
    from pyproj import Transformer
    from rasterio.crs import CRS

    return Transformer.from_crs(TMS.rasterio_crs.to_wkt(), CRS.from_user_input(crs).to_wkt(),
                                always_xy=True)
