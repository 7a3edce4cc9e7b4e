"""The warp's fast path (``ingest.warping.remap``): geometry, purity and GDAL's nodata rules.

Small in-memory rasters on the real tile grid of 31UFT (20 m), warped onto windows of the NL
grid; references are exact pyproj transforms, closed-form fields and GDAL's own warp.
"""
from __future__ import annotations

import numpy as np
import pytest
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from ingest.warping import remap
from ingest.grid import NL_GRID, pinned_operation
from ingest.synth import get_tile
from ingest.warping.warp import _inverse_transformer, harmonise

TILE = get_tile("31UFT")
CRS = TILE.crs
RES = 20
SIZE = (1200, 1500)  # (rows, cols) of the test raster: the tile's north-west 24 x 30 km
TRANSFORM = TILE.transform(RES)


def raster_window(margin: int = 40) -> Window:
    """The NL-grid window around the test raster, ``margin`` grid pixels wider on every side."""
    h, w = SIZE
    xs = np.array([0, w, 0, w]) * RES + TRANSFORM.c
    ys = TRANSFORM.f - np.array([0, 0, h, h]) * RES
    gx, gy = Transformer.from_pipeline(pinned_operation(CRS, NL_GRID.crs)).transform(xs, ys)
    win = NL_GRID.window_for_bounds((gx.min(), gy.min(), gx.max(), gy.max()))
    return Window(win.col_off - margin, win.row_off - margin, win.width + 2 * margin, win.height + 2 * margin)


def maps_for(window: Window) -> remap.PixelMaps:
    sx, sy = remap.lattice_coordinates(NL_GRID, window, _inverse_transformer(CRS, NL_GRID.crs))
    return remap.pixel_maps(sx, sy, window, TRANSFORM, SIZE)


def sample(source: np.ndarray, window: Window, method=Resampling.bilinear, nodata=0, fill=0) -> np.ndarray:
    maps = maps_for(window)
    if maps.rows is None:
        return np.full((int(window.height), int(window.width)), fill, source.dtype)
    return remap.remap(source, 0, maps, method, nodata, fill)


def field(seed: int = 0, holes: bool = True) -> np.ndarray:
    """A smooth uint16 field with a ragged nodata corner and scattered nodata holes."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    coarse = rng.integers(200, 6000, (h // 8 + 2, w // 8 + 2)).astype(np.float64)
    data = np.kron(coarse, np.ones((8, 8)))[:h, :w] + rng.integers(0, 50, (h, w))
    data = data.astype(np.uint16)
    if holes:
        rr, cc = np.mgrid[0:h, 0:w]
        data[cc + 0.6 * rr < 300 + 20 * np.sin(rr / 25)] = 0  # a swath edge
        data[rng.random((h, w)) < 0.002] = 0  # isolated nodata pixels
    return data


def test_lattice_positions_are_exact_to_a_thousandth_of_a_pixel():
    window = raster_window()
    maps = maps_for(window)
    rows = np.arange(int(window.height))[::37]
    cols = np.arange(int(window.width))[::41]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    gx = NL_GRID.bounds[0] + (cc + window.col_off + 0.5) * NL_GRID.resolution
    gy = NL_GRID.bounds[3] - (rr + window.row_off + 0.5) * NL_GRID.resolution
    ux, uy = Transformer.from_pipeline(pinned_operation(NL_GRID.crs, CRS)).transform(gx, gy)
    col, row = ~TRANSFORM @ (ux, uy)
    assert np.abs(maps.x[rr, cc] - (col - 0.5)).max() < 1e-3
    assert np.abs(maps.y[rr, cc] - (row - 0.5)).max() < 1e-3


@pytest.mark.parametrize("method", [Resampling.bilinear, Resampling.nearest], ids=["bilinear", "nearest"])
def test_a_pixel_does_not_depend_on_the_window_it_is_computed_in(method):
    source = field()
    big = raster_window()
    whole = sample(source, big, method)
    rng = np.random.default_rng(1)
    for _ in range(12):
        h, w = rng.integers(1, 700, 2)
        r0 = int(rng.integers(0, big.height - h))
        c0 = int(rng.integers(0, big.width - w))
        sub = Window(big.col_off + c0, big.row_off + r0, int(w), int(h))
        got = sample(source, sub, method)
        assert np.array_equal(got, whole[r0:r0 + h, c0:c0 + w]), (r0, c0, h, w)


def test_bilinear_of_a_constant_with_holes_is_the_constant_or_fill():
    """Renormalised weights: a pixel next to nodata still gets the mean of its valid
    neighbours, so a constant field stays exactly constant; nodata never leaks in, and a
    pixel whose centre falls on a nodata pixel is nodata (GDAL's rule)."""
    source = np.where(field() == 0, 0, 1234).astype(np.uint16)
    window = raster_window()
    out = sample(source, window, fill=0)
    assert set(np.unique(out)) == {0, 1234}
    maps = maps_for(window)
    yi = np.floor(maps.y + 0.5).astype(int)
    xi = np.floor(maps.x + 0.5).astype(int)
    h, w = SIZE
    centre = np.where(maps.inside, source[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0)
    assert np.array_equal(out != 0, centre != 0)


def test_bilinear_reproduces_a_linear_field():
    h, w = SIZE
    rr, cc = np.mgrid[0:h, 0:w]
    source = (1000 + 2 * cc + 3 * rr).astype(np.uint16)
    window = raster_window()
    maps = maps_for(window)
    out = remap.remap(source, 0, maps, Resampling.bilinear, 0, 0).astype(np.float64)
    expect = 1000 + 2 * maps.x + 3 * maps.y
    inside = maps.inside & (maps.x >= 0) & (maps.x <= w - 1) & (maps.y >= 0) & (maps.y <= h - 1)
    # OpenCV quantises positions to 1/32 pixel: at most 1/64 pixel off along each axis
    assert np.abs(out - expect)[inside].max() <= (2 + 3) / 64 + 0.5 + 1e-6
    assert (out[~maps.inside] == 0).all()


def test_nearest_picks_the_source_pixel_under_the_centre():
    h, w = SIZE
    cols = np.broadcast_to(np.arange(w, dtype=np.uint16), SIZE).copy()
    rows = np.broadcast_to(np.arange(h, dtype=np.uint16)[:, None], SIZE).copy()
    window = raster_window()
    maps = maps_for(window)
    got_c = remap.remap(cols, 0, maps, Resampling.nearest, None, 0).astype(float)
    got_r = remap.remap(rows, 0, maps, Resampling.nearest, None, 0).astype(float)
    inside = maps.inside
    assert np.abs(got_c - maps.x)[inside].max() <= 0.5 + 1e-3
    assert np.abs(got_r - maps.y)[inside].max() <= 0.5 + 1e-3


@pytest.mark.parametrize("method", [Resampling.bilinear, Resampling.nearest], ids=["bilinear", "nearest"])
def test_agrees_with_gdal_warp(method):
    """Against GDAL (same pinned operation, src nodata 0): the same footprint and, where both
    have data, values within what GDAL's approximate transformer (<= 1/8 px) explains."""
    source = field()
    window = raster_window()
    got = sample(source, window, method).astype(np.int64)
    ref = np.zeros(got.shape, np.uint16)
    reproject(source, ref, src_transform=TRANSFORM, src_crs=CRS, src_nodata=0,
              dst_transform=NL_GRID.window_transform(window), dst_crs=NL_GRID.crs, dst_nodata=0,
              resampling=method, COORDINATE_OPERATION=pinned_operation(CRS, NL_GRID.crs))
    ref = ref.astype(np.int64)
    both = (got != 0) & (ref != 0)
    footprint_agrees = float(((got != 0) == (ref != 0)).mean())
    assert footprint_agrees > 0.999, footprint_agrees
    diff = np.abs(got - ref)
    if method is Resampling.nearest:
        # a mismatch is a source pixel next to the one under the centre (GDAL's positions
        # are off by up to 1/8 px), i.e. one of the values around that pixel
        maps = maps_for(window)
        rr, cc = np.nonzero(both & (diff != 0))
        yi = np.floor(maps.y[rr, cc] + 0.5).astype(int)
        xi = np.floor(maps.x[rr, cc] + 0.5).astype(int)
        h, w = SIZE
        around = np.stack([source[np.clip(yi + dy, 0, h - 1), np.clip(xi + dx, 0, w - 1)]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        assert (around == ref[rr, cc]).any(axis=0).all()
        assert float((diff[both] == 0).mean()) > 0.95
        return
    grad = np.zeros_like(ref)
    grad[1:-1, 1:-1] = np.max([np.abs(ref[1 + dy:ref.shape[0] - 1 + dy, 1 + dx:ref.shape[1] - 1 + dx] - ref[1:-1, 1:-1])
                               for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], axis=0)
    inner = both.copy()
    inner[[0, -1], :] = inner[:, [0, -1]] = False
    # GDAL renormalises next to nodata as we do; the bound holds there too
    assert (diff[inner] <= np.ceil(0.125 * grad[inner]) + 1).all()
    assert np.median(diff[both]) <= 1


def test_a_window_beside_the_raster_is_all_fill():
    window = raster_window()
    beside = Window(window.col_off + window.width + 100, window.row_off, 300, 200)
    out = sample(field(), beside, fill=0)
    assert (out == 0).all()


def test_harmonise_shifts_valid_pixels_and_never_makes_nodata():
    data = np.array([0, 1, 500, 1000, 1001, 5000, 65535], np.uint16)
    assert harmonise(data.copy(), -1000).tolist() == [0, 1, 1, 1, 1, 4000, 64535]
    assert harmonise(data.copy(), 1000).tolist() == [0, 1001, 1500, 2000, 2001, 6000, 65535]
    assert harmonise(data.copy(), 0).tolist() == data.tolist()
