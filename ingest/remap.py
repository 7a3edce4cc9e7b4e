"""The warp's fast path for nearest and bilinear: exact coordinates on a lattice, OpenCV remap.

DESIGN CHOICE: GDAL's warper spends most of its time per output pixel and band (a bilinear
uint16 warp of UTM 31N -> RD runs at 20-45 Mpix/s on one core, however the calls are cut),
which made the warp cost more than decoding the JP2 files (DESIGN.md §8). The geometry of a
warp is the same for every band of a product, so we compute it once:

* the pinned PROJ operation (``warp.pinned_operation``) transforms the grid pixel centres
  exactly on a lattice every ``LATTICE`` pixels, anchored to the grid origin, and the
  coordinates are interpolated bilinearly in between (the error is below 1e-4 pixel, a
  test checks it; GDAL's approximate transformer, which rasterio fixes at 0.125 pixel, is
  far coarser). Each output pixel's source position depends only on its own grid position,
  never on how the work is cut, so the cube does not depend on arrival order;
* OpenCV's ``remap`` (SIMD, ~0.6-2.6 ns per pixel and band) samples every band from those
  maps. It quantises sub-pixel positions to 1/32 pixel, well inside the half-pixel
  agreement with an independent GDAL warp that the tests hold it to.

Nodata follows GDAL's rules: source pixels equal to the nodata value and pixels beyond the
raster's edge carry no weight, the remaining bilinear weights are renormalised, and an
output pixel whose centre maps outside the raster, or that has no valid neighbour, is
nodata. Other resampling methods (cubic, lanczos, average, ...) go through GDAL (``warp``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from .grid import CubeGrid

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


def _interpolate(nodes: np.ndarray, start: int, count: int, first_node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    ci, cw0, cw1 = _interpolate(nodes, c0, w, c0 // LATTICE)
    across = nodes[:, ci] * cw0 + nodes[:, ci + 1] * cw1  # (node rows, w), float64
    ri, rw0, rw1 = _interpolate(nodes, r0, h, r0 // LATTICE)
    across = across.astype(np.float32)
    out = across[ri] * rw0[:, None].astype(np.float32)
    out += across[ri + 1] * rw1[:, None].astype(np.float32)
    return out


@dataclass
class PixelMaps:
    """Where each output pixel of a window falls in one source raster (OpenCV conventions).

    ``x``/``y`` are float32 pixel-centre coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5)``)
    relative to the raster; ``inside`` marks output pixels whose centre falls inside the
    raster (None: all of them); ``rows``/``cols`` are the raster ranges a bilinear kernel
    reads (None: the window misses the raster); ``size`` is the raster's (height, width).
    """

    x: np.ndarray
    y: np.ndarray
    inside: np.ndarray | None
    rows: tuple[int, int] | None
    cols: tuple[int, int] | None
    size: tuple[int, int]


def pixel_maps(sx: np.ndarray, sy: np.ndarray, window: Window, transform: Affine,
               size: tuple[int, int]) -> PixelMaps:
    """Maps into a raster with geotransform ``transform`` and (height, width) ``size``,
    from lattice coordinates ``sx``/``sy`` in the raster's CRS."""
    inv = ~transform
    col = inv.a * sx + inv.b * sy + inv.c - 0.5  # pixel-centre convention
    row = inv.d * sx + inv.e * sy + inv.f - 0.5
    x, y = densify(col, window), densify(row, window)
    h, w = size
    lo = np.float32(-0.5)
    inside = (x >= lo) & (x < np.float32(w - 0.5)) & (y >= lo) & (y < np.float32(h - 0.5))
    if not inside.any():
        return PixelMaps(x, y, inside, None, None, size)
    everywhere = bool(inside.all())
    xs, ys = (x, y) if everywhere else (x[inside], y[inside])
    rows = max(0, int(np.floor(ys.min())) - 1), min(h, int(np.ceil(ys.max())) + 2)
    cols = max(0, int(np.floor(xs.min())) - 1), min(w, int(np.ceil(xs.max())) + 2)
    return PixelMaps(x, y, None if everywhere else inside, rows, cols, size)


def remap(strip: np.ndarray, row0: int, maps: PixelMaps, method: Resampling,
          nodata: int | None, fill: int) -> np.ndarray:
    """Sample ``strip`` (full-width raster rows from ``row0`` on, covering ``maps.rows``) at
    ``maps``; ``fill`` where there is no data.

    ``nodata``: the source value that carries no weight (None: every value is valid).

    DESIGN CHOICE: every output pixel is a function of its own four source neighbours only
    (never of how much of the raster this call was given), so the result does not depend on
    the window: a pixel whose four neighbours are valid and inside the raster takes OpenCV's
    direct value; one with a missing neighbour takes the renormalised weighted mean, and the
    weights are only computed when the piece holds nodata or touches the raster's edge.
    """
    (r0, r1), (c0, c1) = maps.rows, maps.cols
    source = strip[r0 - row0:r1 - row0, c0:c1]
    # float32 minus an integer is exact here, so positions do not depend on the piece either
    x = maps.x if c0 == 0 else maps.x - np.float32(c0)
    y = maps.y if r0 == 0 else maps.y - np.float32(r0)
    flag = _CV_METHOD[method]
    out = cv2.remap(source, x, y, flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if method is Resampling.bilinear:
        holes = nodata is not None and bool((source == nodata).any())
        height, width = maps.size
        edge = r0 == 0 or c0 == 0 or r1 == height or c1 == width
        if holes or edge:
            valid = (source != nodata) if holes else np.ones(source.shape, dtype=bool)
            weight = cv2.remap(valid.astype(np.float32), x, y, flag,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            partial = weight < 1.0
            if partial.any():
                values = np.where(valid, source, 0).astype(np.float32)
                total = cv2.remap(values, x, y, flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                # weights are multiples of 1/1024 and the sums of integers times them are
                # exact in float32; dividing in float64 keeps the mean exact to the last bit,
                # so a constant offset in the source (BOA_ADD_OFFSET) shifts it exactly
                w, t = weight[partial].astype(np.float64), total[partial].astype(np.float64)
                info = np.iinfo(source.dtype)
                mean = np.clip(np.rint(t / np.maximum(w, 1e-5)), info.min, info.max).astype(source.dtype)
                out[partial] = np.where(w > 1e-5, mean, fill)
    elif nodata is not None and fill != nodata:
        out[out == nodata] = fill
    if maps.inside is not None:
        out[~maps.inside] = fill
    return out
