"""End to end: SAFE products -> consolidated EPSG:28992 cube (DESIGN.md §2-§5).

Geometry and pixels are checked against independent references (GDAL's own warp of the whole
JP2 through ``rio warp``, coordinate-encoding products decoded with pyproj); the time-axis and
mosaic rules against cubes built in different arrival orders.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.warp import reproject
from rasterio.enums import Resampling
from rasterio.windows import Window

from conftest import (
    D1, D2, D3, D_COORDS, GROUP, PROBES, assert_cubes_equal, build_cube, cube_arrays, ingest,
    new_cube, open_group, run_cli, snapshot_files, written_window,
)
from ingest.grid import NL_GRID, pinned_operation
from ingest.products.safe import read_product
from ingest.store import read_published
from ingest.synth import decode_coords, get_tile
from ingest.variables import VARIABLES
from ingest.warping.warp import WarpTarget, warp_variable

RIO = str(Path(sys.executable).with_name("rio"))
RD = "EPSG:28992"


# -- helpers --------------------------------------------------------------------------------
def _name(path: Path) -> str:
    return path.name.removesuffix(".SAFE").removesuffix(".zip")


def _time_index(store: Path, product_name: str) -> int:
    state = read_published(store, GROUP)
    hits = [i for i, names in enumerate(state.products) if product_name in names]
    assert len(hits) == 1, f"{product_name} is in time steps {hits}"
    return hits[0]


def _grid_bounds_of(product, margin: float = 30.0) -> tuple[float, float, float, float]:
    """NL-grid-aligned RD bounds around the product's rasters (own corner transform)."""
    left, bottom, right, top = product.geocoding.bounds(10)
    t = Transformer.from_crs(product.crs, RD, always_xy=True)
    xs = np.concatenate([np.linspace(left, right, 50), np.full(50, right), np.linspace(left, right, 50), np.full(50, left)])
    ys = np.concatenate([np.full(50, top), np.linspace(bottom, top, 50), np.full(50, bottom), np.linspace(bottom, top, 50)])
    gx, gy = t.transform(xs, ys)
    r = NL_GRID.resolution
    return (np.floor((gx.min() - margin) / r) * r, np.floor((gy.min() - margin) / r) * r,
            np.ceil((gx.max() + margin) / r) * r, np.ceil((gy.max() + margin) / r) * r)


def _grid_slices(bounds) -> tuple[slice, slice]:
    left, bottom, right, top = bounds
    gl, _, _, gt = NL_GRID.bounds
    r = NL_GRID.resolution
    return (slice(int(round((gt - top) / r)), int(round((gt - bottom) / r))),
            slice(int(round((left - gl) / r)), int(round((right - gl) / r))))


def _rio_warp(src: str, dst: Path, bounds, resampling: str, *, pin: str | None) -> np.ndarray:
    """GDAL's warp of the whole raster (``rio warp``) onto NL-grid-aligned bounds."""
    cmd = [RIO, "warp", src, str(dst), "--dst-crs", RD, "--res", "10", "--bounds", *map(str, bounds),
           "--resampling", resampling, "--src-nodata", "0", "--dst-nodata", "0", "--overwrite"]
    if pin:
        # rio's --to lower-cases values, and PROJ ellipsoid names are case-sensitive ("wgs84"
        # is unknown): spell WGS 84 by its defining constants, which survive lower-casing.
        pin = pin.replace("+ellps=WGS84", "+a=6378137 +rf=298.257223563")
        assert pin == pin.lower(), pin
        cmd += ["--to", f"COORDINATE_OPERATION={pin}"]
    subprocess.run(cmd, check=True, capture_output=True)
    with rasterio.open(dst) as ds:
        assert ds.crs.to_epsg() == 28992
        assert ds.transform.a == 10 and ds.transform.e == -10
        assert (ds.transform.c, ds.transform.f) == (bounds[0], bounds[3])
        return ds.read(1)


def _erode(mask: np.ndarray, n: int) -> np.ndarray:
    """Pixels of ``mask`` at least ``n`` pixels (8-neighbourhood) inside it."""
    out = mask.copy()
    for _ in range(n):
        m = np.zeros_like(out)
        m[1:-1, 1:-1] = out[1:-1, 1:-1]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                m[1:-1, 1:-1] &= out[1 + dy:out.shape[0] - 1 + dy, 1 + dx:out.shape[1] - 1 + dx]
        out = m
    return out


# -- 1. warped pixels agree with an independent GDAL warp --------------------------------------
# D1/31UET is PB 02.14 (no offset), D2/31UET PB 05.09 (BOA_ADD_OFFSET -1000). 31UET wins the
# mosaic wherever it has data, so the cube shows exactly this product in its interior.
@pytest.mark.parametrize("key", [(D1, "31UET"), (D2, "31UET")], ids=["PB02.14", "PB05.09"])
@pytest.mark.parametrize("var,res,method", [("B04", 10, "bilinear"), ("B05", 20, "bilinear"), ("SCL", 20, "nearest")])
def test_warp_agrees_with_gdal_warp_of_the_whole_file(products, synced_cube, tmp_path, key, var, res, method):
    path = products.scene[key]
    product = read_product(path)
    bounds = _grid_bounds_of(product)
    src = product.gdal_path(product.file_for(var, res))
    pin = pinned_operation(product.crs, RD)
    ref = _rio_warp(src, tmp_path / "ref.tif", bounds, method, pin=pin).astype(np.int64)
    offset = product.boa_add_offset.get(var, 0)
    if var != "SCL":
        assert offset == (-1000 if product.baseline >= "04.00" else 0)
        ref = np.where(ref != 0, np.clip(ref + offset, 1, None), 0)
    rows, cols = _grid_slices(bounds)
    t = _time_index(synced_cube, _name(path))
    got = open_group(synced_cube)[var][t, rows, cols].astype(np.int64)
    assert got.shape == ref.shape

    valid = ref != 0
    interior = _erode(valid, 2)
    assert interior.sum() > 100_000, "the comparison must cover most of the product"
    diff = np.abs(got - ref)
    equal = float((diff[interior] == 0).mean())
    print(f"\n{_name(path)} {var} {method}: {interior.sum()} interior px, "
          f"{equal:.6f} equal, max |diff| {diff[interior].max()}; "
          f"all valid px: {float((diff[valid] == 0).mean()):.6f} equal")
    # GDAL's reference warps through an approximate transformer (error <= 0.125 source px,
    # rasterio's fixed default), our positions are exact to 1e-4 px (ingest.warping.remap), so a pixel
    # can be sampled up to ~1/8 px apart. Bound the differences by that shift.
    if method == "nearest":
        assert equal >= 0.999
        # a mismatch must be a neighbouring source pixel's value, i.e. present around it in the reference
        rr, cc = np.nonzero((diff != 0) & interior)
        around = np.stack([ref[rr + dy, cc + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        assert (around == got[rr, cc]).any(axis=0).all()
    else:
        assert float((diff[interior] <= 1).mean()) >= 0.99
        grad = np.zeros_like(ref)
        grad[1:-1, 1:-1] = np.max([np.abs(ref[1 + dy:ref.shape[0] - 1 + dy, 1 + dx:ref.shape[1] - 1 + dx] - ref[1:-1, 1:-1])
                                   for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], axis=0)
        assert (diff[interior] <= np.ceil(0.125 * grad[interior]) + 1).all()
    # the product's data is never lost at its edge either: where GDAL has data, so does the cube
    assert (got[valid] != 0).all()


def test_gdal_default_operation_is_the_pinned_helmert(products, tmp_path):
    """Without --to, GDAL picks the same UTM -> RD operation as our pinned one (no grids here)."""
    product = read_product(products.scene[(D1, "31UET")])
    bounds = _grid_bounds_of(product)
    src = product.gdal_path(product.file_for("B04", 10))
    pinned = _rio_warp(src, tmp_path / "a.tif", bounds, "nearest", pin=pinned_operation(product.crs, RD))
    default = _rio_warp(src, tmp_path / "b.tif", bounds, "nearest", pin=None)
    assert np.array_equal(pinned, default)


# -- 2. geometry: coordinate-encoding products ------------------------------------------------
@pytest.fixture(scope="module")
def coords_cube(tmp_path_factory, products) -> Path:
    """Both coords products (31UET cut by a swath edge inside the overlap), all nearest."""
    cube = build_cube(tmp_path_factory.mktemp("coords") / "cube.zarr", list(products.coords.values()),
                      products, {"*": "nearest"})
    return cube.path


def _cell_centres_utm(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = NL_GRID.bounds[0] + (cols + 0.5) * NL_GRID.resolution
    y = NL_GRID.bounds[3] - (rows + 0.5) * NL_GRID.resolution
    return Transformer.from_crs(RD, "EPSG:32631", always_xy=True).transform(x, y)


# (variable, source resolution): X variables encode the column, Y variables the row
@pytest.mark.parametrize("xvar,yvar,res", [("B02", "B03", 10), ("B06", "B05", 20), ("B01", "B09", 60)])
def test_coords_products_land_within_half_a_source_pixel(coords_cube, xvar, yvar, res):
    window = written_window(coords_cube)
    g = open_group(coords_cube)
    assert read_published(coords_cube, GROUP).times[0] == D_COORDS
    vx = g[xvar][0, window[0], window[1]].astype(np.int64)
    vy = g[yvar][0, window[0], window[1]].astype(np.int64)
    assert ((vx != 0) == (vy != 0)).all(), "X and Y bands of one product share their footprint"
    rr, cc = np.nonzero(vx)
    assert rr.size > 200_000
    ux, uy = _cell_centres_utm(rr + window[0].start, cc + window[1].start)
    # Which tile a pixel came from is the mosaic test's business; here each value must decode to
    # a source pixel centre within half a pixel in *its* tile's grid (the tiles' x grids are
    # ~100 km apart in value, so the choice is unambiguous). Stored values are harmonised DNs.
    dx = np.min([np.abs(decode_coords(xvar, vx[rr, cc], get_tile(t), res) - ux) for t in ("31UET", "31UFT")], axis=0)
    dy = np.abs(decode_coords(yvar, vy[rr, cc], get_tile("31UET"), res) - uy)  # same ULY for both
    # half a pixel, plus 1 cm for float32 positions (the lattice geometry is exact to 1e-4 px;
    # a half-pixel or wrong-operation error would be metres)
    half = res / 2 + 0.01
    print(f"\n{xvar}/{yvar} ({res} m): {rr.size} px, max |dx| {dx.max():.3f} m, max |dy| {dy.max():.3f} m, "
          f"max distance {np.hypot(dx, dy).max():.3f} m")
    assert dx.max() <= half and dy.max() <= half


# -- 7. the mosaic rule -----------------------------------------------------------------------
def _reference_nearest(product, var: str, res: int, window) -> np.ndarray:
    """Independent warp of the whole file in one call (rasterio.warp.reproject)."""
    rows, cols = window
    out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype="uint16")
    with rasterio.open(product.gdal_path(product.file_for(var, res))) as src:
        reproject(rasterio.band(src, 1), out, src_nodata=0, dst_nodata=0, dst_crs=RD,
                  dst_transform=NL_GRID.window_transform(
                      rasterio.windows.Window(cols.start, rows.start, out.shape[1], out.shape[0])),
                  resampling=Resampling.nearest, COORDINATE_OPERATION=pinned_operation(product.crs, RD))
    return out.astype(np.int64)


@pytest.mark.parametrize("var,res", [("B02", 10), ("SCL", 20)])
def test_mosaic_priority_and_no_nodata_over_data(coords_cube, products, var, res):
    window = written_window(coords_cube)
    got = open_group(coords_cube)[var][0, window[0], window[1]].astype(np.int64)
    refs = []
    for tile in ("31UET", "31UFT"):
        product = read_product(products.coords[tile])
        ref = _reference_nearest(product, var, res, window)
        offset = product.boa_add_offset.get(var, 0)  # PB 05.09: raw DN = harmonised + 1000
        refs.append(np.where(ref != 0, ref + offset, 0))
    et, ft = refs
    et_in, ft_in = _erode(et != 0, 1), _erode(ft != 0, 1)
    both = et_in & ft_in
    ft_alone = _erode(et == 0, 1) & ft_in  # at least a pixel away from any 31UET data
    assert both.sum() > 10_000, "the overlap where both tiles have data must not be empty"
    assert ft_alone.sum() > 10_000, "31UET's swath edge must leave 31UFT alone in part of the overlap"
    expected = np.where(et != 0, et, ft)
    data = (et != 0) | (ft != 0)
    print(f"\n{var}: equal to first-valid-wins of whole-file warps on "
          f"{float((got[data] == expected[data]).mean()):.6f} of {data.sum()} px with data; "
          f"overlap px {both.sum()}, 31UFT-alone-in-overlap px {ft_alone.sum()}")
    # nodata never overwrites data
    assert (got[et_in | ft_in] != 0).all()
    assert (got[~data & _erode(~data, 1)] == 0).all(), "no data invented far from both products"
    # where 31UET has data it wins (same zone, tile id order 31UET < 31UFT); where it has none,
    # 31UFT shows through. Whole-file and windowed nearest warps may pick a neighbouring source
    # pixel at ties (approximate transformer), hence the tolerance of one value step.
    assert float((got[et_in] == et[et_in]).mean()) >= 0.999
    assert float((got[ft_alone] == ft[ft_alone]).mean()) >= 0.999
    if var == "B02":  # X variable: 1 + column in its own tile; the tiles' columns are ~10 000 apart
        assert (got[et_in] > 5000).all() and (np.abs(got[et_in] - et[et_in]) <= 1).all()
        assert (got[ft_alone] < 5000).all() and (np.abs(got[ft_alone] - ft[ft_alone]) <= 1).all()
        assert (ft[both] < 5000).all(), "31UFT had data there too, and lost"
    else:  # SCL = 1 + column % 11; the tiles' 20 m columns differ by 5001 (= 7 mod 11)
        assert float((got[both] == et[both]).mean()) >= 0.999
        assert float((got[both] == ft[both]).mean()) <= 0.01


# -- 3. order independence ------------------------------------------------------------------
def test_arrival_order_gives_the_same_time_axis_and_provenance(synced_cube, incremental_cube):
    inc_path, steps = incremental_cube
    assert [s.plan.shifts for s in steps] == [False, False, True, False, False, False]
    a, b = read_published(synced_cube, GROUP), read_published(inc_path, GROUP)
    assert a.times == b.times and a.platforms == b.platforms and a.datatake_ids == b.datatake_ids
    assert [sorted(p) for p in a.products] == [sorted(p) for p in b.products]
    window = written_window(synced_cube, inc_path)
    xa, xb = cube_arrays(synced_cube, window), cube_arrays(inc_path, window)
    for name in ("time", "platform", "datatake_id", "tiles", "baselines", "products", "x", "y"):
        assert np.array_equal(xa[name], xb[name]), name


def test_arrival_order_does_not_change_the_cube(synced_cube, incremental_cube):
    """All six products in one sync == one ingest each, late datatake and late tiles included:
    every variable array and coordinate identical."""
    inc_path, _ = incremental_cube
    assert_cubes_equal(synced_cube, inc_path)


# -- 4. re-running writes nothing -----------------------------------------------------------
def test_rerun_writes_nothing(synced_cube, products, empty_config):
    before = snapshot_files(synced_cube)
    version = read_published(synced_cube, GROUP).version
    plan, report = ingest(new_cube(synced_cube), list(products.scene.values()), products)
    assert plan.is_empty and report is None
    assert snapshot_files(synced_cube) == before
    r = run_cli(["sync", "--store", str(synced_cube), "--source", str(products.scene_dir), "--no-progress"],
                empty_config)
    assert r.exit_code == 0, r.output
    assert "published 0" in r.output
    after = snapshot_files(synced_cube)
    assert after.keys() == before.keys(), "files appeared or vanished"
    assert after == before, "a file's bytes or mtime changed"
    assert read_published(synced_cube, GROUP).version == version


# -- 5. processing-baseline twins -------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_cubes(tmp_path_factory, products) -> tuple[Path, Path]:
    old, new = products.twins
    root = tmp_path_factory.mktemp("twins")
    return (build_cube(root / "old.zarr", [old], products).path,
            build_cube(root / "new.zarr", [new], products).path)


def test_pb_twins_give_identical_cubes(twin_cubes, products):
    a, b = twin_cubes
    old, new = (read_product(p) for p in products.twins)
    assert old.baseline == "02.14" and new.baseline == "05.09"
    assert not old.boa_add_offset.get("B04") and new.boa_add_offset["B04"] == -1000
    # every variable identical; only the provenance naming the product and baseline differs
    assert_cubes_equal(a, b, ignore=("products", "baselines", "datatake_id"))
    pa, pb = cube_arrays(a, written_window(a)), cube_arrays(b, written_window(b))
    assert pa["baselines"].tolist() == ["02.14"] and pb["baselines"].tolist() == ["05.09"]
    assert (pa["B04"] != 0).sum() > 100_000


# -- 6. time rules ----------------------------------------------------------------------------
def test_time_axis_sorted_unique_after_every_step(incremental_cube):
    _, steps = incremental_cube
    expected = [[D2], [D2, D3], [D1, D2, D3], [D1, D2, D3], [D1, D2, D3], [D1, D2, D3]]
    for step, exp in zip(steps, expected):
        assert list(step.times) == exp, step.added
        assert all(a < b for a, b in zip(step.times, step.times[1:]))


def test_late_datatake_moves_published_steps_with_their_data(incremental_cube):
    _, steps = incremental_cube
    before, after = steps[1], steps[2]  # D1/31UET arrives after D2 and D3
    assert after.plan.old_to_new == {0: 1, 1: 2}
    for probe in ("OVERLAP", "FT_ONLY", "ET_ONLY"):
        np.testing.assert_array_equal(after.probes[probe][1:], before.probes[probe], err_msg=probe)
    assert after.probes["ET_ONLY"][0] != 0, "the late datatake's own pixels are in slot 0"
    assert before.probes["FT_ONLY"][0] != 0 and before.probes["ET_ONLY"][0] == 0


def test_late_tile_merges_into_its_time_step(incremental_cube, products):
    _, steps = incremental_cube
    before, after = steps[2], steps[3]  # D2/31UET joins D2, which holds 31UFT only
    et = _name(products.scene[(D2, "31UET")])
    ft = _name(products.scene[(D2, "31UFT")])
    assert before.products[1] == (ft,)
    assert sorted(after.products[1]) == sorted([et, ft])
    assert len(after.times) == 3 and after.plan.slots[0].index == 1 and not after.plan.slots[0].is_new
    assert before.probes["ET_ONLY"][1] == 0 and after.probes["ET_ONLY"][1] != 0  # new tile's pixels
    assert after.probes["FT_ONLY"][1] != 0  # the old tile's stay
    # the other steps are untouched
    for probe in PROBES:
        assert after.probes[probe][0] == before.probes[probe][0]
        assert after.probes[probe][2] == before.probes[probe][2]


def test_late_tile_leaves_the_other_tiles_pixels_unchanged(incremental_cube):
    _, steps = incremental_cube
    before, after = steps[2], steps[3]  # D2/31UET joins D2; 31UFT-only pixels must not change
    assert after.probes["FT_ONLY"][1] == before.probes["FT_ONLY"][1]


def test_provenance_coordinates(synced_cube, products):
    state = read_published(synced_cube, GROUP)
    g = open_group(synced_cube)
    assert list(state.platforms) == ["S2A", "S2B", "S2A"]
    for i, when in enumerate([D1, D2, D3]):
        models = [read_product(products.scene[(when, t)]) for t in ("31UET", "31UFT")]
        assert sorted(state.products[i]) == sorted(m.name for m in models)
        # the highest-priority product's id; ids differ only in their baseline suffix (N05.09)
        assert state.datatake_ids[i] == models[0].datatake_id
        assert {m.datatake_id.rsplit("_", 1)[0] for m in models} == {state.datatake_ids[i].rsplit("_", 1)[0]}
        assert str(g["tiles"][i]) == "31UET,31UFT"
        assert str(g["baselines"][i]) == ",".join(sorted({m.baseline for m in models}))
        assert g["time"][i] == int(when.timestamp() * 1000)


def test_reprocessed_product_supersedes_older_never_the_reverse(tmp_path, products, twin_cubes):
    older, newer = products.older_other, products.twins[1]  # PB 02.12 seed 1 / PB 05.09 seed 0
    cube = new_cube(tmp_path / "cube.zarr")
    ingest(cube, [older], products)
    _, only_newer = twin_cubes
    w = written_window(cube.path, only_newer)
    assert not np.array_equal(cube_arrays(cube.path, w)["B04"], cube_arrays(only_newer, w)["B04"]), \
        "the two versions must differ in content for this test to mean anything"

    plan, report = ingest(cube, [newer], products)
    assert plan.superseded == (_name(older),)
    assert not plan.slots[0].is_new
    # pixels recomputed from the newer version alone: nothing of the older one remains
    assert_cubes_equal(cube.path, only_newer)
    state = read_published(cube.path, GROUP)
    assert state.products == ((_name(newer),),)

    # the older version (and the PB 02.14 twin, also older) arriving late changes nothing
    before = snapshot_files(cube.path)
    for late in (older, products.twins[0]):
        plan, report = ingest(cube, [late], products)
        assert report is None and plan.superseded == (_name(late),)
    assert snapshot_files(cube.path) == before


def test_methods_without_a_fast_path_warp_through_gdal(products, tmp_path):
    """cubic has no fast path (``ingest.warping.remap`` does nearest and bilinear): GDAL warps it,
    and the result agrees with GDAL's own whole-file warp up to its 1/8 px approximation."""
    product = read_product(products.scene[(D1, "31UET")])
    bounds = _grid_bounds_of(product)
    src = product.gdal_path(product.file_for("B05", 20))
    ref = _rio_warp(src, tmp_path / "ref.tif", bounds, "cubic",
                    pin=pinned_operation(product.crs, RD)).astype(np.int64)
    rows, cols = _grid_slices(bounds)
    target = WarpTarget(NL_GRID, Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start))
    got = warp_variable(product, VARIABLES["B05"], target, Resampling.cubic).astype(np.int64)
    bilinear = warp_variable(product, VARIABLES["B05"], target).astype(np.int64)
    interior = _erode(ref != 0, 3)
    assert interior.sum() > 100_000
    diff = np.abs(got - ref)
    grad = np.zeros_like(ref)
    grad[1:-1, 1:-1] = np.max([np.abs(ref[1 + dy:ref.shape[0] - 1 + dy, 1 + dx:ref.shape[1] - 1 + dx] - ref[1:-1, 1:-1])
                               for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))], axis=0)
    print(f"\ncubic: {float((diff[interior] == 0).mean()):.4f} equal, max |diff| {diff[interior].max()}")
    assert (diff[interior] <= np.ceil(0.125 * 1.5 * grad[interior]) + 1).all()
    assert (got[ref != 0] != 0).all(), "cubic overshoot must never turn a valid pixel into nodata"
    assert not np.array_equal(got[interior], bilinear[interior]), "cubic must not fall back to bilinear"
