"""The warp's fast path for nearest and bilinear: exact coordinates on a lattice, OpenCV remap.

DESIGN CHOICE: GDAL's warper spends most of its time per output pixel and band (a bilinear
uint16 warp of UTM 31N -> RD runs at 20-45 Mpix/s on one core, however the calls are cut),
which made the warp cost more than decoding the JP2 files (DESIGN.md §8). The geometry of a
warp is the same for every band of a product, so we compute it once:

* the pinned PROJ operation (``grid.pinned_operation``) transforms the grid pixel centres
  exactly on a lattice every ``LATTICE`` pixels, anchored to the grid origin, and the
  coordinates are interpolated bilinearly in between (positions are exact to 1e-3 pixel,
  float32 rounding included, tested; GDAL's approximate transformer, which rasterio fixes
  at 0.125 pixel, is far coarser). Each output pixel's source position depends only on its own grid position,
  never on how the work is cut, so the cube does not depend on arrival order;
* OpenCV's ``remap`` (SIMD, ~0.6-2.6 ns per pixel and band) samples every band from those
  maps. It quantises sub-pixel positions to 1/32 pixel, well inside the half-pixel
  agreement with an independent GDAL warp that the tests hold it to.

Nodata follows GDAL's rules: an output pixel whose centre falls outside the raster or on a
nodata source pixel is nodata; otherwise source pixels equal to the nodata value and pixels
beyond the raster's edge carry no weight and the remaining bilinear weights are renormalised.
Other resampling methods (cubic, lanczos, average, ...) go through GDAL (``warp``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from ingest.grid import CubeGrid

#: grid pixels between exactly transformed lattice nodes
LATTICE = 16

#: the methods this module implements; everything else is warped by GDAL
FAST_METHODS = frozenset({Resampling.nearest, Resampling.bilinear})

_CV_METHOD = {Resampling.nearest: cv2.INTER_NEAREST, Resampling.bilinear: cv2.INTER_LINEAR}


def lattice_coordinates(grid: CubeGrid, window: Window, transformer) -> tuple[np.ndarray, np.ndarray]:
    """Source-CRS coordinates (x, y) of the lattice nodes that enclose ``window``.

    Nodes sit on grid pixel centres whose row and column are multiples of ``LATTICE``; the
    node rows span ``[r0 // L, (r1 - 1) // L + 1]`` (and likewise the columns), so every
    pixel of the window lies in a cell with nodes on all four corners.
    """
    L = LATTICE
    r0, c0 = int(window.row_off), int(window.col_off)
    r1, c1 = r0 + int(window.height), c0 + int(window.width)
    rows = np.arange(r0 // L, (r1 - 1) // L + 2) * L
    cols = np.arange(c0 // L, (c1 - 1) // L + 2) * L
    left, _, _, top = grid.bounds
    gx = left + (cols + 0.5) * grid.resolution
    gy = top - (rows + 0.5) * grid.resolution
    xx, yy = np.meshgrid(gx, gy)
    sx, sy = transformer.transform(xx, yy)
    return np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)


def _interpolate(start: int, count: int, first_node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the lower node and the weights of both nodes for pixels ``start..start+count``."""
    pix = np.arange(start, start + count)
    lower = pix // LATTICE - first_node
    frac = (pix % LATTICE) / LATTICE
    return lower, 1.0 - frac, frac


def densify(nodes: np.ndarray, window: Window) -> np.ndarray:
    """Bilinear interpolation of lattice values (float64) to every pixel of ``window`` (float32).

    Separable: along columns on the few node rows first (float64), then along rows.
    """
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    ci, cw0, cw1 = _interpolate(c0, w, c0 // LATTICE)
    across = nodes[:, ci] * cw0 + nodes[:, ci + 1] * cw1  # (node rows, w), float64
    ri, rw0, rw1 = _interpolate(r0, h, r0 // LATTICE)
    across = across.astype(np.float32)
    out = across[ri] * rw0[:, None].astype(np.float32)
    out += across[ri + 1] * rw1[:, None].astype(np.float32)
    return out


@dataclass
class PixelMaps:
    """Where each output pixel of a window falls in one source raster (OpenCV conventions).

    ``x``/``y`` are float32 pixel-centre coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5)``)
    relative to the raster; ``inside`` marks output pixels whose centre falls inside the
    raster (None: all of them); ``rows``/``cols`` are raster ranges that hold every pixel a
    bilinear kernel reads (None: the window misses the raster); ``size`` is the raster's
    (height, width); ``transform`` its geotransform; ``rel_x``/``rel_y`` the positions
    relative to the piece ``rows`` x ``cols``.
    """

    x: np.ndarray
    y: np.ndarray
    inside: np.ndarray | None
    rows: tuple[int, int] | None
    cols: tuple[int, int] | None
    size: tuple[int, int]
    transform: Affine
    rel_x: np.ndarray | None = None
    rel_y: np.ndarray | None = None


def pixel_maps(sx: np.ndarray, sy: np.ndarray, window: Window, transform: Affine,
               size: tuple[int, int], like: PixelMaps | None = None) -> PixelMaps:
    """Maps into a raster with geotransform ``transform`` and (height, width) ``size``,
    from lattice coordinates ``sx``/``sy`` in the raster's CRS.

    ``like``: maps of the same window into another raster of the product; when the two
    rasters differ only in pixel size and offset (every resolution of a Sentinel-2 tile
    shares its corner), the maps are derived from it with one multiply-add per pixel.
    """
    inv = ~transform
    col = inv.a * sx + inv.b * sy + inv.c - 0.5  # pixel-centre convention
    row = inv.d * sx + inv.e * sy + inv.f - 0.5
    h, w = size
    # Bilinear interpolation stays within the range of a cell's corners, so the nodes bound
    # every pixel's position: ranges and the all-inside test need no pass over the pixels.
    if col.max() < -0.5 or col.min() >= w - 0.5 or row.max() < -0.5 or row.min() >= h - 0.5:
        return PixelMaps(col[:0], row[:0], None, None, None, size, transform)
    rel = (~like.transform) @ transform if like is not None else None
    if rel is not None and rel.b == 0 and rel.d == 0:
        # x_like = rel.a * (x + 0.5) + rel.c - 0.5, inverted: x = (x_like + 0.5 - rel.c) / rel.a - 0.5
        x = like.x * np.float32(1 / rel.a) + np.float32((0.5 - rel.c) / rel.a - 0.5)
        y = like.y * np.float32(1 / rel.e) + np.float32((0.5 - rel.f) / rel.e - 0.5)
    else:
        x, y = densify(col, window), densify(row, window)
    inside = None
    if not (col.min() >= -0.5 and col.max() < w - 0.5 and row.min() >= -0.5 and row.max() < h - 0.5):
        lo = np.float32(-0.5)
        inside = (x >= lo) & (x < np.float32(w - 0.5)) & (y >= lo) & (y < np.float32(h - 0.5))
        if not inside.any():
            return PixelMaps(x, y, inside, None, None, size, transform)
    rows = max(0, int(np.floor(row.min())) - 1), min(h, int(np.ceil(row.max())) + 2)
    cols = max(0, int(np.floor(col.min())) - 1), min(w, int(np.ceil(col.max())) + 2)
    # Positions relative to the piece the kernel reads. Every pixel that is sampled lies
    # right of cols[0] and below rows[0], so float32 minus the integer offset is exact: a
    # position does not depend on the piece, nor does the pixel's value.
    rel_x = x - np.float32(cols[0]) if cols[0] else x
    rel_y = y - np.float32(rows[0]) if rows[0] else y
    return PixelMaps(x, y, inside, rows, cols, size, transform, rel_x, rel_y)


_NEIGHBOURS = np.ones((3, 3), np.uint8)
_BATCH = 4096  # flagged pixels are sampled through maps of this width


def remap(strip: np.ndarray, row0: int, maps: PixelMaps, method: Resampling,
          nodata: int | None, fill: int) -> np.ndarray:
    """Sample ``strip`` (full-width raster rows from ``row0`` on, covering ``maps.rows``) at
    ``maps``; ``fill`` where there is no data.

    ``nodata``: the source value that carries no weight (None: every value is valid).

    DESIGN CHOICE: every output pixel is a function of its own source neighbours only (never
    of how much of the raster this call was given), so the result does not depend on the
    window. A pixel whose neighbours are all valid takes OpenCV's direct value (a neighbour
    beyond the raster's edge replicates the edge pixel: the same as renormalising the
    weights); a pixel near nodata takes the renormalised weighted mean of its valid
    neighbours, computed for those pixels only.
    """
    (r0, r1), (c0, c1) = maps.rows, maps.cols
    source = strip[r0 - row0:r1 - row0, c0:c1]
    x, y = maps.rel_x, maps.rel_y
    if method is Resampling.nearest:
        # the source pixel under the centre, from exact integer positions: OpenCV would round
        # x.5 to even, which would depend on the piece's offset
        x, y = np.floor(x + np.float32(0.5)), np.floor(y + np.float32(0.5))
    out = cv2.remap(source, x, y, _CV_METHOD[method], borderMode=cv2.BORDER_REPLICATE)
    if nodata is not None:
        bad = source == nodata
        if method is Resampling.bilinear and bad.any():
            _renormalise(out, source, bad, x, y, fill)
        elif fill != nodata:
            out[out == nodata] = fill
    if maps.inside is not None:
        out[~maps.inside] = fill
    return out


def _renormalise(out: np.ndarray, source: np.ndarray, bad: np.ndarray,
                 x: np.ndarray, y: np.ndarray, fill: int) -> None:
    """GDAL's rules for the pixels next to nodata, in place: ``fill`` where the source pixel
    under the centre is nodata, else the weighted mean of the valid neighbours."""
    # a pixel's bilinear neighbours lie within one pixel of the source pixel under its centre
    near_bad = cv2.dilate(bad.view(np.uint8), _NEIGHBOURS)
    flagged = np.flatnonzero(cv2.remap(near_bad, np.floor(x + np.float32(0.5)), np.floor(y + np.float32(0.5)),
                                       cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    if flagged.size == 0:
        return
    n = flagged.size
    fx, fy = x.ravel()[flagged], y.ravel()[flagged]
    h, w = source.shape
    centre_bad = bad[np.clip(np.floor(fy + np.float32(0.5)).astype(np.intp), 0, h - 1),
                     np.clip(np.floor(fx + np.float32(0.5)).astype(np.intp), 0, w - 1)]
    pad = -n % _BATCH
    px = np.concatenate([fx, np.full(pad, -10, np.float32)]).reshape(-1, _BATCH)
    py = np.concatenate([fy, np.full(pad, -10, np.float32)]).reshape(-1, _BATCH)
    valid = ~bad
    values = np.where(valid, source, 0).astype(np.float32)
    total = cv2.remap(values, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    weight = cv2.remap(valid.astype(np.float32), px, py, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # weights are multiples of 1/1024; dividing in float64 keeps the mean's rounding stable
    t, wt = total.ravel()[:n].astype(np.float64), weight.ravel()[:n].astype(np.float64)
    info = np.iinfo(source.dtype)
    mean = np.clip(np.rint(t / np.maximum(wt, 1e-5)), info.min, info.max).astype(source.dtype)
    out.ravel()[flagged] = np.where(centre_bad | (wt <= 1e-5), fill, mean)
