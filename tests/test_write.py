"""``write._write_var_block``: chunk-by-chunk merge through the array's own codec.

It bypasses ``zarr.Array.__setitem__`` (which decodes partly written chunks a second time),
so it must keep zarr's semantics: the other time steps of a chunk survive, edge chunks keep
their padding, and an all-fill chunk is not stored (``write_empty_chunks=False``).
"""
from __future__ import annotations

import numpy as np
import zarr
from rasterio.windows import Window

from ingest.grid import CubeGrid
from ingest.plan import SlotWrite
from ingest.store import COMPRESSOR
from ingest.write import _write_var_block

GRID = CubeGrid("tiny", "EPSG:28992", 10.0, (0.0, 0.0, 130.0, 70.0), chunk_shape=(4, 5), time_chunk=3)


def make_array(tmp_path, fill=0) -> zarr.Array:
    store = zarr.storage.DirectoryStore(str(tmp_path / "c.zarr"), dimension_separator=".")
    ny, nx = GRID.shape
    return zarr.open_array(store, path="g/v", mode="w", shape=(3, ny, nx), chunks=(3, 4, 5),
                           dtype="u2", fill_value=fill, compressor=COMPRESSOR, write_empty_chunks=False)


def slot(index: int, chunks) -> SlotWrite:
    return SlotWrite(datatake=None, index=index, products=(), chunks=frozenset(chunks), is_new=True)


def write(arr, slots_data: dict[int, np.ndarray], chunks) -> None:
    """Write full-grid arrays for the given time steps over the chunks (one block: all rows)."""
    window = GRID.full_window
    slots = [slot(i, chunks) for i in slots_data]
    computed = {i: {"v": data} for i, data in slots_data.items()}
    _write_var_block(arr, GRID, "v", 0, set(chunks), slots, computed, window)


def test_merges_time_steps_and_keeps_the_others(tmp_path):
    arr = make_array(tmp_path)
    chunks = list(GRID.chunks_in_window(GRID.full_window))
    a = np.arange(1, 7 * 13 + 1, dtype="u2").reshape(GRID.shape)
    write(arr, {0: a}, chunks)
    write(arr, {2: a * 2}, chunks)
    assert np.array_equal(arr[0], a) and np.array_equal(arr[2], a * 2)
    assert (arr[1] == 0).all()
    # edge chunks (13 = 5 + 5 + 3 columns, 7 = 4 + 3 rows) are stored whole and read back clipped
    assert arr.shape == (3, 7, 13) and arr.nchunks_initialized == len(chunks)


def test_all_fill_chunks_are_not_stored_and_emptied_ones_are_deleted(tmp_path):
    arr = make_array(tmp_path, fill=255)
    chunks = list(GRID.chunks_in_window(GRID.full_window))
    empty = np.full(GRID.shape, 255, dtype="u2")
    write(arr, {0: empty}, chunks)
    assert arr.nchunks_initialized == 0
    some = empty.copy()
    some[0, 0] = 7  # only chunk (0, 0) holds data
    write(arr, {1: some}, chunks)
    assert sorted(arr.store.listdir("g/v")) == [".zarray", "0.0.0"]
    write(arr, {1: empty}, chunks)
    assert arr.nchunks_initialized == 0
    assert (arr[:] == 255).all()


# -- the per-version change list (DESIGN.md §5: chunk key -> size, hash) ----------------------
def test_change_list_names_every_changed_file_with_its_size_and_hash(tmp_path, products):
    import hashlib
    import json

    from conftest import D1, D2, build_cube, ingest, snapshot_files
    from ingest.store import META_DIR, read_published

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, t)] for t in ("31UET", "31UFT")], products)
    before = snapshot_files(cube.path)
    ingest(cube, [products.scene[(D1, "31UET")]], products)  # a late datatake: moves D2 too
    after = snapshot_files(cube.path)
    version = read_published(cube.path, "S2/R051").version
    listing = json.loads((cube.path / META_DIR / "versions" / f"S2_R051-v{version:06d}.json").read_text())
    assert listing["version"] == version and listing["group"] == "S2/R051"
    changed = {k for k in before.keys() | after.keys()
               if not k.startswith(META_DIR) and before.get(k, (None,))[0] != after.get(k, (None,))[0]}
    listed = set(listing["chunks"]) | set(listing["metadata"])
    assert changed <= listed, sorted(changed - listed)[:5]
    assert any("/B04/0." in k for k in changed), "the test must change image chunks"
    for key, entry in listing["chunks"].items():
        f = cube.path / key
        if entry is None:
            assert not f.exists(), key
        else:
            data = f.read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, key
    assert all(k.rsplit("/", 1)[-1] in (".zmetadata", ".zattrs", ".zarray", ".zgroup") for k in listing["metadata"])


def test_a_full_disk_mid_write_raises_one_store_error_and_publishes_nothing(tmp_path, products, monkeypatch):
    import errno

    import pytest

    from conftest import D1, D2, build_cube, ingest, snapshot_files
    from ingest.errors import StoreError
    from ingest.store import META_DIR

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, "31UET")]], products)
    before = {k: v[:2] for k, v in snapshot_files(cube.path).items() if not k.startswith(META_DIR)}
    original = zarr.storage.DirectoryStore.__setitem__
    writes = {"n": 0}

    def filling_up(self, key, value):
        writes["n"] += 1
        if writes["n"] > 20 and not key.rsplit("/", 1)[-1].startswith("."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(zarr.storage.DirectoryStore, "__setitem__", filling_up)
    with pytest.raises(StoreError, match="No space left on device"):
        ingest(cube, [products.scene[(D1, "31UET")], products.scene[(D2, "31UFT")]], products)
    assert writes["n"] > 20, "the failure must happen in the middle of the write"
    monkeypatch.setattr(zarr.storage.DirectoryStore, "__setitem__", original)
    after = {k: v[:2] for k, v in snapshot_files(cube.path).items() if not k.startswith(META_DIR)}
    assert after == before, "the published cube must be exactly as it was"
    ingest(cube, [products.scene[(D1, "31UET")], products.scene[(D2, "31UFT")]], products)  # the rerun completes


def test_a_damaged_store_chunk_is_named_and_nothing_is_published(tmp_path, products):
    import pytest

    from conftest import D1, D2, D3, build_cube, ingest, snapshot_files
    from ingest.errors import StoreError
    from ingest.store import META_DIR

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, "31UET")]], products)
    victim = sorted((cube.path / "S2" / "R051" / "B04").glob("0.*"))[0]
    victim.write_bytes(b"not a blosc frame" * 10)
    before = {k: v[:2] for k, v in snapshot_files(cube.path).items() if not k.startswith(META_DIR)}
    # a later datatake merges into the chunk; an earlier one moves the published step
    for when, pattern in ((D3, rf"B04/{victim.name} is damaged"), (D1, r"B04 at \d+\.\d+ .* is damaged")):
        with pytest.raises(StoreError, match=pattern):
            ingest(cube, [products.scene[(when, "31UET")]], products)
        after = {k: v[:2] for k, v in snapshot_files(cube.path).items() if not k.startswith(META_DIR)}
        assert after == before
