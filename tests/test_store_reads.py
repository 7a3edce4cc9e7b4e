"""What the store owner offers the code outside it: reads, capabilities, a tool's private keys."""
from __future__ import annotations

import numpy as np
import pytest

from ingest.errors import StoreError
from ingest.grid import CubeGrid
from ingest.store.bookkeeping.codec import POINTER_KEYS
from ingest.store import COMPRESSOR, CubeStore

GRID = CubeGrid("t", "EPSG:28992", 10, (0, 300000, 5000, 306250))  # 625 x 500: one chunk


@pytest.fixture
def store(tmp_path):
    store, _ = CubeStore.create(tmp_path / "c.zarr", GRID)
    with store.transaction() as tx:
        tx.create_group("G")
        tx.create_array("G/v", shape=(5,), chunks=(2,), dtype="<i4", fill_value=0,
                        compressor=COMPRESSOR, attrs={}, data=np.arange(5, dtype="<i4"))
        tx.commit()
    return CubeStore.open(tmp_path / "c.zarr")


def test_reads_through_the_store(store):
    assert store.supports_writes and store.supports_listing
    assert store.read_array("G", "v").tolist() == [0, 1, 2, 3, 4]
    assert store.read_array("G", "v", store.consolidated("G")).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(StoreError, match="no array w"):
        store.read_array("G", "w")
    assert sorted(store.chunk_names("G/v")) == ["0", "1", "2"]  # no .zarray, .zattrs
    assert store.size("G/v/0") == len(store.read("G/v/0")) and store.read("G/v/9") is None
    assert store.key_reader()("G/v/0") == store.read("G/v/0")
    assert set(store.full_listing()) - POINTER_KEYS == set(store.manifest()["keys"])


def test_a_tool_writes_only_its_own_private_keys(store, tmp_path):
    store.write_private(".s2ingest/mirror/fetched/G/v/0", b"x")
    assert store.read(".s2ingest/mirror/fetched/G/v/0") == b"x"
    store.delete_private(".s2ingest/mirror/fetched")
    assert store.read(".s2ingest/mirror/fetched/G/v/0") is None
    for key in ("G/v/0", ".s2ingest/lock", ".s2ingest/txn/journal.json", ".s2ingest/txn",
                ".s2ingest/manifests/v00000001.json", "grid.json", ".s2ingest/id.json"):
        with pytest.raises(StoreError, match="not a private key"):
            store.write_private(key, b"x")
        with pytest.raises(StoreError, match="not a private key"):
            store.delete_private(key)
    assert store.read("G/v/0") is not None and store.manifest_versions() == [1, 2]


def test_make_location_keeps_a_failed_first_commit_folder(tmp_path):
    """A folder made beforehand is not the first commit's to remove (a mirror's downloads)."""
    path = tmp_path / "new.zarr"
    store = CubeStore.for_writing(path, GRID)
    store.make_location()
    store.write_private(".s2ingest/mirror/fetched/k", b"kept")
    with pytest.raises(RuntimeError):
        with store.transaction():
            raise RuntimeError("the first commit fails")
    assert (path / ".s2ingest/mirror/fetched/k").read_bytes() == b"kept"
    assert not (path / "grid.json").exists()
