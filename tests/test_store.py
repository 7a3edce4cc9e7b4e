"""Store layout, grid check and the commit protocol's all-or-nothing property."""
import os

import numpy as np
import pytest
import xarray as xr
import zarr

from ingest.commit import Transaction, recover
from ingest.errors import GridMismatchError, StoreError
from ingest.grid import NL_GRID
from ingest.store import _store, create_group, init_store, read_published

GROUP = "S2/R051"


@pytest.fixture
def cube(tmp_path):
    path = tmp_path / "cube.zarr"
    init_store(path, NL_GRID)
    create_group(path, NL_GRID, GROUP)
    return path


def _snapshot(path):
    out = {}
    for root, _, files in os.walk(path):
        if ".s2ingest" in root:
            continue
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


def test_empty_group_opens_with_xarray_and_has_the_contract_layout(cube):
    ds = xr.open_zarr(cube, group="/S2/R051", consolidated=True)
    assert set(ds.data_vars) >= {"B01", "B02", "B8A", "B12", "SCL", "CLD", "SNW", "WVP", "AOT"}
    assert ds.B04.dims == ("time", "y", "x") and ds.sizes["time"] == 0
    assert ds.sizes["x"] == 30000 and ds.sizes["y"] == 34375
    np.testing.assert_array_equal(ds.x.values, NL_GRID.x)
    assert ds.y.values[0] > ds.y.values[-1], "y descends"
    assert ds.B04.encoding["chunks"] == (5, 625, 500)
    assert ds.spatial_ref.attrs["crs_wkt"].startswith("PROJCRS[\"Amersfoort / RD New\"")
    assert ds.SCL.attrs["flag_meanings"].split()[4] == "vegetation"


def test_grid_is_checked_on_open(tmp_path):
    path = tmp_path / "c.zarr"
    init_store(path, NL_GRID)
    other = NL_GRID.replace(chunk_shape=(500, 500))
    with pytest.raises(GridMismatchError):
        init_store(path, other)
    assert (path / "grid.json").exists()


def test_foreign_zarr_store_is_refused(tmp_path):
    zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an s2ingest cube"):
        init_store(tmp_path / "x.zarr", NL_GRID)


def _grow(g, n):
    for name, arr in g.arrays():
        if (arr.attrs.get("_ARRAY_DIMENSIONS") or [None])[0] == "time":
            arr.resize(n, *arr.shape[1:])


def _append_one(cube, value, fail=False):
    with Transaction(cube, GROUP) as tx:
        g = zarr.open_group(_store(cube), path=GROUP, mode="r+")
        tx.protect_metadata()
        tx.protect_tree(f"{GROUP}/time")
        n = g["time"].shape[0]
        _grow(g, n + 1)
        g["time"][n] = 1_700_000_000_000 + n
        tx.protect([f"{GROUP}/B04/{n // 5}.30.10"])
        g["B04"][n, 30 * 625:31 * 625, 10 * 500:11 * 500] = value
        if fail:
            raise RuntimeError("simulated crash before commit")
        tx.commit()


def test_failed_write_leaves_store_byte_identical(cube):
    _append_one(cube, 100)
    before = _snapshot(cube)
    with pytest.raises(RuntimeError):
        _append_one(cube, 200, fail=True)
    assert _snapshot(cube) == before
    assert read_published(cube, GROUP).length == 1


def test_leftover_journal_is_rolled_back_on_next_open(cube):
    _append_one(cube, 100)
    before = _snapshot(cube)
    tx = Transaction(cube, GROUP).__enter__()
    g = zarr.open_group(_store(cube), path=GROUP, mode="r+")
    tx.protect_metadata()
    tx.protect([f"{GROUP}/B04/0.30.10"])
    tx.protect_tree(f"{GROUP}/time")
    _grow(g, 2)
    g["B04"][0:2, 30 * 625:31 * 625, 10 * 500:11 * 500] = 7  # also clobbers published data
    # simulate kill -9: no __exit__, release only the OS lock
    import fcntl
    fcntl.flock(tx._lock_fd, fcntl.LOCK_UN)
    assert recover(cube)
    assert _snapshot(cube) == before
    ds = xr.open_zarr(cube, group="/S2/R051", consolidated=True)
    assert float(ds.B04.isel(time=0, y=30 * 625, x=10 * 500)) == pytest.approx(0.0100)


def test_second_writer_is_refused_while_first_holds_the_store(cube):
    with Transaction(cube, GROUP):
        with pytest.raises(StoreError, match="another process"):
            Transaction(cube, GROUP).__enter__()


def test_chunk_writes_are_atomic_renames(cube, monkeypatch):
    """zarr's DirectoryStore must keep writing chunks to a temp file and renaming them."""
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real(a, b)))
    store = _store(cube)
    store["S2/R051/B04/0.0.0"] = b"x" * 10
    assert calls and str(calls[-1][1]).endswith("0.0.0") and calls[-1][0] != calls[-1][1]


def test_rollback_removes_arrays_and_groups_created_in_the_transaction(cube):
    before = _snapshot(cube)
    with pytest.raises(RuntimeError):
        with Transaction(cube, "NL/BRP") as tx:
            root = zarr.open_group(_store(cube), mode="a")
            g = root.require_group("NL/BRP")
            tx.protect(["NL/BRP/crop/0.0.0"])
            a = g.create("crop", shape=(1, 10, 10), chunks=(1, 10, 10), dtype="u2")
            a[:] = 7
            raise RuntimeError("crash before commit")
    assert _snapshot(cube) == before
    assert not (cube / "NL").exists()
