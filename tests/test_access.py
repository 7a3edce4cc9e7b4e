"""The data-store API (``s2ingest.open_cube``, ``list_versions``): one version, pinned
(DESIGN.md §10)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pyproj import Transformer

import s2ingest
from conftest import D1, D2, D3, GROUP, ingest, new_cube
from ingest.errors import ConfigError, UnknownVariableError
from ingest.store import CubeStore
from ingest.testing.httpserve import serve

# one chunk row and four chunk columns hold the test products (conftest)
WINDOW = dict(y=slice(33 * 625, 34 * 625), x=slice(17 * 500, 21 * 500))


def _published(path: Path) -> dict:
    """What a plain reader sees now (the consolidated metadata of the group)."""
    ds = xr.open_zarr(path, group=GROUP, consolidated=True)
    return {"time": ds.time.values, "platform": ds.platform.values.astype(str),
            "B04": ds.B04.isel(**WINDOW).values, "SCL": ds.SCL.isel(**WINDOW).values}


def _read(ds: xr.Dataset) -> dict:
    return {"time": ds.time.values, "platform": ds.platform.values.astype(str),
            "B04": ds.B04.isel(**WINDOW).values, "SCL": ds.SCL.isel(**WINDOW).values}


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def history(tmp_path_factory, products):
    """v_a: D1; v_b: D3 appended (same time chunk); then a copy of the store as it was; then
    v_c: D2 inserted between them (rewrites the time chunk of every variable)."""
    root = tmp_path_factory.mktemp("history")
    cube = new_cube(root / "cube.zarr")
    seen = {}
    for name, when in (("a", D1), ("b", D3)):
        ingest(cube, [products.scene[(when, t)] for t in ("31UET", "31UFT")], products)
        seen[name] = (CubeStore.open(cube.path).version(), _published(cube.path))
    before_insert = root / "before" / "cube.zarr"
    shutil.copytree(cube.path, before_insert)
    ingest(cube, [products.scene[(D2, t)] for t in ("31UET", "31UFT")], products)
    seen["c"] = (CubeStore.open(cube.path).version(), _published(cube.path))
    return cube.path, before_insert, seen


def test_open_latest_equals_what_readers_see(history):
    path, _, seen = history
    v, expected = seen["c"]
    ds = s2ingest.open_cube(path)
    assert ds.attrs["s2ingest_store_version"] == v
    assert ds.B04.chunks is not None, "lazy (dask)"
    _equal(_read(ds), expected)
    assert len(expected["time"]) == 3
    assert ds.B04.attrs["grid_mapping"] == "spatial_ref"
    assert "Amersfoort / RD New" in ds.spatial_ref.attrs["crs_wkt"]


def test_a_past_version_reads_as_published_after_later_appends(history):
    _, before_insert, seen = history
    (va, expected_a), (vb, expected_b) = seen["a"], seen["b"]
    assert vb > va
    # version a's time chunk 0 (coordinates and every variable) was rewritten by the append
    # of D3; its steps were copied bit for bit, so version a is still there
    _equal(_read(s2ingest.open_cube(before_insert, version=va)), expected_a)
    _equal(_read(s2ingest.open_cube(before_insert, version=vb)), expected_b)
    assert len(expected_a["time"]) == 1 and len(expected_b["time"]) == 2


def test_a_past_version_rewritten_by_an_insertion_reads_as_published(history):
    path, _, seen = history
    vb, expected = seen["b"]
    # the insertion rewrote time chunk 0 of the coordinates and of every variable: the
    # commit kept the bytes it overwrote, so version b reads exactly as it was published
    _equal(_read(s2ingest.open_cube(path, version=vb)), expected)


def test_open_cube_over_plain_http(history):
    path, before_insert, seen = history
    assert before_insert.parent.parent == path.parent
    with serve(path.parent) as server:
        url = f"{server.url}/{path.name}"
        _equal(_read(s2ingest.open_cube(url)), seen["c"][1])
        old = f"{server.url}/before/{before_insert.name}"
        _equal(_read(s2ingest.open_cube(old, version=seen["a"][0])), seen["a"][1])
        _equal(_read(s2ingest.open_cube(url, version=seen["b"][0])), seen["b"][1])
        assert [v["version"] for v in s2ingest.list_versions(url)] == \
            [v["version"] for v in s2ingest.list_versions(path)]


def test_list_versions(history):
    path, _, seen = history
    versions = s2ingest.list_versions(path)
    assert [v["version"] for v in versions][-3:] == [seen[k][0] for k in "abc"]
    last = versions[-1]
    assert last["parent"] == seen["b"][0] and last["keys"] > last["changed"] > 0
    assert last["created"].startswith("20")


def test_bbox_in_rd_is_expanded_to_whole_pixels(history):
    path, _, _ = history
    ds = s2ingest.open_cube(path, bbox=(90_003, 433_702, 90_047, 433_798))
    assert ds.x.values.tolist() == [90_005.0 + 10 * i for i in range(5)]
    assert ds.y.values.tolist() == [433_795.0 - 10 * i for i in range(10)]
    full = s2ingest.open_cube(path)
    np.testing.assert_array_equal(ds.B04.values, full.B04.sel(x=ds.x, y=ds.y).values)


def test_bbox_in_lon_lat_covers_the_same_area(history):
    path, _, _ = history
    rd = (90_000, 433_700, 92_000, 435_000)
    lon_lat = Transformer.from_crs("EPSG:28992", "EPSG:4326", always_xy=True).transform_bounds(*rd)
    ds = s2ingest.open_cube(path, bbox=lon_lat, crs="EPSG:4326", variables=["B04"])
    x, y = ds.x.values, ds.y.values
    # covers the RD box (the lon/lat box around it is a little larger), on grid pixel centres
    assert x[0] - 5 <= rd[0] and x[-1] + 5 >= rd[2] and y[-1] - 5 <= rd[1] and y[0] + 5 >= rd[3]
    assert x[0] - 5 > rd[0] - 100 and y[0] + 5 < rd[3] + 100
    assert ((x - 5) % 10 == 0).all() and ((y - 5) % 10 == 0).all()
    assert list(ds.data_vars) == ["B04"] and "spatial_ref" in ds.coords


def test_time_range_is_inclusive_and_variables_are_checked(history):
    path, _, _ = history
    ds = s2ingest.open_cube(path, time_range=(D1.date().isoformat(), D2.date().isoformat()))
    assert ds.sizes["time"] == 2
    with pytest.raises(UnknownVariableError, match=r"no variable B99, NDVI \(has AOT, B01"):
        s2ingest.open_cube(path, variables=["B04", "B99", "NDVI"])
    with pytest.raises(ConfigError, match="does not overlap grid NL"):
        s2ingest.open_cube(path, bbox=(-50.0, -40.0, -49.0, -39.0), crs="EPSG:4326")
    with pytest.raises(s2ingest.StoreError, match="no bookkeeping of version"):
        s2ingest.open_cube(path, version=99)


def test_chunks_a_version_does_not_list_read_as_fill(history, tmp_path):
    """Fill-only chunks are never stored, so no manifest lists them; a key a version does not
    list is never fetched for that version, even if something is stored under it now."""
    path, _, seen = history
    va = seen["a"][0]
    manifest = CubeStore.open(path).manifest(seen["c"][0])
    stored = {p.name for p in (path / GROUP / "B04").iterdir() if not p.name.startswith(".")}
    assert {k.rsplit("/", 1)[1] for k in manifest["keys"] if k.startswith(f"{GROUP}/B04/")
            and not k.endswith((".zarray", ".zattrs"))} == stored
    copy = tmp_path / "cube.zarr"
    shutil.copytree(path.parent / "before" / "cube.zarr", copy)
    (copy / GROUP / "B04" / "0.0.0").write_bytes(b"not a chunk of any version")
    ds = s2ingest.open_cube(copy, version=va, variables=["B04"])
    assert np.isnan(ds.B04.isel(x=slice(0, 500), y=slice(0, 625)).values).all()
    with pytest.raises(Exception):  # a plain reader fetches the stray key and fails to decode
        xr.open_zarr(copy, group=GROUP, consolidated=True).B04.isel(x=slice(0, 500), y=slice(0, 625)).values
