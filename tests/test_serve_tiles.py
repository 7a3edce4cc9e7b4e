"""Tiles of ``s2ingest serve`` are byte for byte those of the rioxarray/GDAL implementation.

``reference_tile_png`` below is the tile renderer as it was before ``ingest.serve.warp``
(rio-tiler's steps: the window read through xarray, ``clip_box`` and ``rio.reproject`` by
GDAL, nearest neighbour). The server's tiles (numpy picks where GDAL's are known, GDAL
elsewhere; chunks decoded by the reader's own cache) must give the same PNG bytes for every
kind of tile: several zooms and levels, composites, NDVI, a variable with a colour map, SCL
classes, tiles across the edge of the imagery, tiles with no imagery, tiles outside the grid.
"""
from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import morecantile
import numpy as np
import pytest
import xarray as xr

from conftest import D2, D3, GROUP, ingest, new_cube
from ingest.grid import NL_GRID
from ingest.overviews import build_overviews
from ingest.store import CubeStore
from ingest.variables import VARIABLES

pytest.importorskip("fastapi")

from ingest.serve import tiles as tiles_mod  # noqa: E402
from ingest.serve import warp  # noqa: E402
from ingest.serve.reader import COMPOSITES, CubeReader, check_variable  # noqa: E402

TMS = morecantile.tms.get("WebMercatorQuad")
QUERIES = [  # (composite, variable, vmin, vmax, colormap)
    ("true_color", None, None, None, None),
    ("ndvi", None, None, None, None),
    (None, "SCL", None, None, None),
    (None, "B08", 0.0, 0.5, "greys"),
    ("false_color", None, None, None, None),
    (None, "SCL", None, None, "viridis"),
    (None, "AOT", None, None, None),
]


# -- the reference: the renderer before ingest.serve.warp ----------------------------------------
def reference_warp(da: xr.DataArray, x: int, y: int, z: int, crs: str):
    """rio-tiler's XarrayReader.tile steps: tile_exists, clip_box, rio.reproject (GDAL)."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import from_bounds
    from rio_tiler.utils import normalize_bounds

    bbox = tuple(TMS.xy_bounds(morecantile.Tile(x, y, z)))
    grid_bbox = warp.from_mercator(crs).transform_bounds(*bbox, densify_pts=21)
    if all(np.isfinite(grid_bbox)):
        tb, db = normalize_bounds(grid_bbox), normalize_bounds(tuple(da.rio.bounds()))
        if not (tb[0] < db[2] and tb[2] > db[0] and tb[3] > db[1] and tb[1] < db[3]):
            return None
    da = da.rio.clip_box(*grid_bbox, auto_expand=True)
    w, s, e, n = bbox
    da = da.rio.reproject(CRS.from_user_input(TMS.rasterio_crs), shape=(256, 256),
                          transform=from_bounds(w, s, e, n, 256, 256),
                          resampling=Resampling.nearest, nodata=np.nan)
    arr = da.to_masked_array()
    arr.mask |= arr.data == da.rio.nodata
    return arr


def reference_tile_png(reader: CubeReader, group: str, z: int, x: int, y: int, *, time,
                       composite=None, variable=None, vmin=None, vmax=None, colormap=None,
                       overviews=True) -> tuple[bytes, int]:
    from rasterio.crs import CRS
    from rio_tiler.utils import render

    if composite:
        bands, (lo, hi) = COMPOSITES[composite]
    else:
        spec = check_variable(variable)
        bands, (lo, hi) = (spec.name,), tiles_mod.DEFAULT_RANGES[spec.kind]
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    t = reader.time_index(group, time)
    bounds = TMS.bounds(morecantile.Tile(x, y, z))
    level = reader.level_for_zoom(group, z, (bounds.bottom + bounds.top) / 2, overviews)
    ds = reader.dataset(level.path)
    xy = TMS.xy_bounds(morecantile.Tile(x, y, z))
    left, bottom, right, top = reader.to_grid_from_mercator.transform_bounds(*xy)
    gl, _, _, gt = reader.grid.bounds
    rf = reader.grid.resolution * level.factor
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    r0, r1 = max(0, math.floor((gt - top) / rf) - 2), min(ny, math.ceil((gt - bottom) / rf) + 2)
    c0, c1 = max(0, math.floor((left - gl) / rf) - 2), min(nx, math.ceil((right - gl) / rf) + 2)
    if r1 - r0 < 2 or c1 - c0 < 2:
        return tiles_mod.empty_png(), level.factor
    planes = []
    for b in bands:
        raw = ds[b].isel(time=t, y=slice(r0, r1), x=slice(c0, c1)).values  # zarr-python
        plane = raw.astype("float32")
        plane[raw == VARIABLES[b].fill_value] = np.nan
        planes.append(plane)
    da = xr.DataArray(np.stack(planes), dims=("band", "y", "x"),
                      coords={"band": np.arange(1, len(bands) + 1),
                              "y": ds["y"].values[r0:r1], "x": ds["x"].values[c0:c1]})
    da = da.rio.write_crs(CRS.from_user_input(reader.grid.crs)).rio.write_nodata(np.nan)
    arr = reference_warp(da, x, y, z, reader.grid.crs)
    if arr is None:
        return tiles_mod.empty_png(), level.factor
    data = np.ma.filled(arr.astype("float64"), np.nan)
    phys = np.stack([d * (VARIABLES[b].scale_factor or 1.0) for d, b in zip(data, bands)])
    valid = ~np.isnan(phys).any(axis=0)

    def scale(a, lo, hi):
        with np.errstate(invalid="ignore"):
            s = np.clip((a - lo) / (hi - lo), 0, 1) * 255
        return np.nan_to_num(s, nan=0).astype("uint8")

    if composite == "ndvi":
        with np.errstate(invalid="ignore", divide="ignore"):
            nd = (phys[0] - phys[1]) / (phys[0] + phys[1])
        valid &= ~np.isnan(nd)
        rgba = tiles_mod._lut(colormap or "rdylgn")[scale(nd, lo, hi)]
    elif composite:
        rgba = np.dstack([scale(b, lo, hi) for b in phys] + [np.full(valid.shape, 255, "uint8")])
    elif VARIABLES[bands[0]].kind == "classes" and not colormap:
        rgba = tiles_mod.scl_lut()[np.nan_to_num(data[0], nan=0).astype("uint8")]
    else:
        rgba = tiles_mod._lut(colormap or "viridis")[scale(phys[0], lo, hi)]
    rgba = rgba.copy()
    rgba[..., 3] = np.where(valid, rgba[..., 3], 0)
    png = render(np.moveaxis(rgba[..., :3], -1, 0).astype("uint8"), mask=rgba[..., 3], img_format="PNG")
    return png, level.factor


# -- a cube, and tiles over it ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cube(tmp_path_factory, products) -> Path:
    """One datatake of 31UET and 31UFT (the overlap and both edges of the imagery), overviews."""
    c = new_cube(tmp_path_factory.mktemp("serve_tiles") / "cube.zarr")
    ingest(c, [products.scene[(D3, "31UET")], products.scene[(D3, "31UFT")]], products)
    store = CubeStore.open(c.path)
    with store.transaction() as tx:
        build_overviews(tx, store.grid, GROUP)
        tx.commit()
    return c.path


def _imagery_bounds(reader: CubeReader) -> tuple[float, float, float, float]:
    """lon/lat bounds of the pixels holding imagery (SCL not its fill value)."""
    ds = reader.dataset(GROUP)
    win = NL_GRID.window_for_bounds((85_000.0, 431_250.0, 105_000.0, 437_500.0))
    rows = slice(int(win.row_off), int(win.row_off + win.height))
    cols = slice(int(win.col_off), int(win.col_off + win.width))
    rr, cc = np.nonzero(ds["SCL"].isel(time=-1, y=rows, x=cols).values != VARIABLES["SCL"].fill_value)
    left, _, _, top = NL_GRID.bounds
    r = NL_GRID.resolution
    box = (left + (cols.start + cc.min()) * r, top - (rows.start + rr.max() + 1) * r,
           left + (cols.start + cc.max() + 1) * r, top - (rows.start + rr.min()) * r)
    return reader.bounds_wgs84(box)


def _tiles(reader: CubeReader, seed: int = 0) -> list[tuple[int, int, int]]:
    """Every tile over the imagery at zooms 8-13, a sample at 14-17 (inside, across the edges,
    just outside), and two tiles outside the grid."""
    w, s, e, n = _imagery_bounds(reader)
    rng = random.Random(seed)
    out = set()
    for z in range(8, 14):
        out.update((t.z, t.x, t.y) for t in TMS.tiles(w, s, e, n, [z]))
    for z in range(14, 18):
        mw, ms = (e - w) * 0.1, (n - s) * 0.1
        for _ in range(25):
            t = TMS.tile(rng.uniform(w - mw, e + mw), rng.uniform(s - ms, n + ms), z)
            out.add((t.z, t.x, t.y))
    out.update({(12, 2048, 1360), (13, 4300, 2600)})  # Spain's latitude, east of the grid
    return sorted(out)


def test_tiles_are_byte_for_byte_those_of_rioxarray_and_gdal(cube, monkeypatch):
    reader = CubeReader(str(cube))
    reader.refresh()
    picked = {"numpy": 0, "gdal": 0}
    real_indices = warp.MercatorToGrid.indices

    def counting(self, *args, **kwargs):
        picked["numpy"] += 1
        return real_indices(self, *args, **kwargs)

    real_warp = tiles_mod.warp_tile

    def counting_gdal(*args, **kwargs):
        picked["gdal"] += 1
        return real_warp(*args, **kwargs)

    real_transparent = tiles_mod._transparent_png

    def counting_transparent(rgb):
        picked["transparent"] += 1
        return real_transparent(rgb)

    picked["transparent"] = 0
    monkeypatch.setattr(warp.MercatorToGrid, "indices", counting)
    monkeypatch.setattr(tiles_mod, "warp_tile", counting_gdal)
    monkeypatch.setattr(tiles_mod, "_transparent_png", counting_transparent)
    tiles = _tiles(reader)
    compared = 0
    for k, (z, x, y) in enumerate(tiles):
        composite, variable, vmin, vmax, colormap = QUERIES[k % len(QUERIES)]
        kw = dict(time=None, composite=composite, variable=variable, vmin=vmin, vmax=vmax,
                  colormap=colormap)
        ours = tiles_mod.tile_png(reader, GROUP, z, x, y, **kw)
        assert ours == reference_tile_png(reader, GROUP, z, x, y, **kw), (z, x, y, kw)
        compared += 1
    assert compared >= 100
    # the fast path did the work (the GDAL path is compared in the next test)
    assert picked["numpy"] > 0.8 * compared and picked["gdal"] <= 0.1 * compared, picked
    assert 0 < picked["transparent"] < compared / 3, picked  # some tiles with no imagery


def test_the_gdal_path_gives_the_same_bytes_too(cube, monkeypatch):
    """Tiles outside the area of use of the coordinate operation are warped by GDAL: forced here
    for tiles over the imagery (with the rest of the server's reading path)."""
    monkeypatch.setattr(warp.MercatorToGrid, "covers", lambda self, tile, bounds=None: False)
    reader = CubeReader(str(cube))
    for k, (z, x, y) in enumerate(_tiles(reader, seed=1)[::4]):
        composite, variable, vmin, vmax, colormap = QUERIES[k % len(QUERIES)]
        kw = dict(time="0", composite=composite, variable=variable, vmin=vmin, vmax=vmax,
                  colormap=colormap)
        assert tiles_mod.tile_png(reader, GROUP, z, x, y, **kw) == \
            reference_tile_png(reader, GROUP, z, x, y, **kw), (z, x, y, kw)


def test_numpy_picks_equal_gdal_picks_over_the_netherlands():
    """On windows of the NL grid at every level, the fast path's pick of source pixel for every
    tile pixel is GDAL's (``rio.reproject`` of an array holding each pixel's index), at zooms
    6-19; a window cut short (the edge of an array under the tile) is left to GDAL."""
    from rasterio.crs import CRS

    fast = warp.mercator_to_grid(NL_GRID.crs)
    assert fast.agrees_with_gdal()
    rng = random.Random(3)
    gl, _, _, gt = NL_GRID.bounds
    to_grid = warp.from_mercator(NL_GRID.crs)
    checked, left_to_gdal = 0, 0
    while checked < 80:
        z = rng.randint(6, 19)
        tile = TMS.tile(rng.uniform(3.3, 7.1), rng.uniform(50.8, 53.6), z)
        if not fast.covers(tile):
            continue
        lat = math.radians(TMS.bounds(tile).top)
        ground = 2 * math.pi * 6378137 / 256 / 2 ** z * math.cos(lat)
        factor = max([f for f in (1, 2, 4, 8, 16, 32, 64, 128) if 10 * f <= ground], default=1)
        rf = 10.0 * factor
        left, bottom, right, top = to_grid.transform_bounds(*TMS.xy_bounds(tile))
        r0, r1 = math.floor((gt - top) / rf) - 2, math.ceil((gt - bottom) / rf) + 2
        c0, c1 = math.floor((left - gl) / rf) - 2, math.ceil((right - gl) / rf) + 2
        cut = rng.random() < 0.25
        if cut:  # an array edge under the tile
            r0, c1 = r0 + rng.randint(1, (r1 - r0) // 2), c1 - rng.randint(1, (c1 - c0) // 2)
        xs = gl + (np.arange(c0, c1) + 0.5) * rf
        ys = gt - (np.arange(r0, r1) + 0.5) * rf
        h, w = len(ys), len(xs)
        grid_bbox = to_grid.transform_bounds(*TMS.xy_bounds(tile), densify_pts=21)
        rows, cols = warp.clip_window(xs, ys, grid_bbox)
        try:
            flat = fast.indices(tile, warp.centre_transform(xs[cols], ys[rows]),
                                rows.stop - rows.start, cols.stop - cols.start)
        except warp.Fallback:
            assert cut, tile
            left_to_gdal += 1
            continue
        index = np.arange(h * w, dtype="float32").reshape(1, h, w)
        da = xr.DataArray(index, dims=("band", "y", "x"), coords={"band": [1], "y": ys, "x": xs})
        da = da.rio.write_crs(CRS.from_user_input(NL_GRID.crs)).rio.write_nodata(np.nan)
        ref = np.ma.filled(reference_warp(da, tile.x, tile.y, tile.z, NL_GRID.crs)[0], np.nan)
        assert np.array_equal(index[0, rows, cols].ravel()[flat], ref), (tile, cut)
        checked += 1
    assert left_to_gdal > 0


def test_window_reads_the_stored_values_and_keys_chunks_by_version(cube):
    reader = CubeReader(str(cube))
    reader.refresh()
    ds = reader.dataset(GROUP)
    win = NL_GRID.window_for_bounds((88_000.0, 432_000.0, 103_000.0, 437_600.0))  # past the imagery
    rows = slice(int(win.row_off), int(win.row_off + win.height))
    cols = slice(int(win.col_off), int(win.col_off + win.width))
    for var in ("B04", "SCL"):
        got = reader.window(GROUP, var, 0, rows, cols)
        assert np.array_equal(got, ds[var].isel(time=0, y=rows, x=cols).values)
    assert {k[0] for k in reader._chunks._items} == {reader.store.version()}


def test_a_new_version_is_served_after_refresh(cube, products, tmp_path):
    """Chunks cached for one version are not served once the reader serves the next."""
    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube, copy)
    reader = CubeReader(str(copy))
    reader.refresh()
    w, s, e, n = reader.data_bounds_wgs84(GROUP)
    tile = TMS.tile((w + e) / 2, (s + n) / 2, 13)
    kw = dict(time="0", composite="true_color", variable=None, vmin=None, vmax=None, colormap=None)
    before = tiles_mod.tile_png(reader, GROUP, tile.z, tile.x, tile.y, **kw)
    cube2 = new_cube(copy)
    ingest(cube2, [products.scene[(D2, "31UFT")]], products)  # an earlier date: time step 0
    reader._checked = -math.inf
    reader.refresh()
    after = tiles_mod.tile_png(reader, GROUP, tile.z, tile.x, tile.y, **kw)
    assert after != before
    fresh = CubeReader(str(copy))
    assert after == tiles_mod.tile_png(fresh, GROUP, tile.z, tile.x, tile.y, **kw)
    assert after == reference_tile_png(fresh, GROUP, tile.z, tile.x, tile.y,
                                       **{k: v for k, v in kw.items() if v is not None})


def test_a_damaged_chunk_is_a_503_naming_it_and_the_store_is_untouched(cube, tmp_path):
    """The reader decodes chunks itself now: damaged bytes are one JSON line naming the key
    (HTTP 503), not a traceback, and serving writes nothing."""
    from fastapi.testclient import TestClient

    from ingest.serve.app import create_app

    copy = tmp_path / "cube.zarr"
    shutil.copytree(cube, copy)
    reader = CubeReader(str(copy))
    reader.refresh()
    w, s, e, n = reader.data_bounds_wgs84(GROUP)
    tile = TMS.tile((w + e) / 2, (s + n) / 2, 14)
    url = f"/tiles/{tile.z}/{tile.x}/{tile.y}.png?variable=B04&time=0&overviews=false"
    client = TestClient(create_app(str(copy)))
    assert client.get(url).status_code == 200
    chunks = sorted(p for p in (copy / GROUP / "B04").iterdir() if p.name[0].isdigit())
    for p in chunks:
        p.write_bytes(b"\x00not blosc" + p.read_bytes()[:20])
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    client = TestClient(create_app(str(copy)))  # a fresh process: nothing cached
    r = client.get(url)
    assert r.status_code == 503, r.text
    msg = r.json()["error"]
    assert "damaged" in msg and "B04/" in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
