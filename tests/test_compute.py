"""`sync --workers N` (a local process pool) and `sync --scheduler` / `--local-cluster` (dask):
the same cube as a single-process run, and a dask worker lost mid-task does not fail the sync."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import cli_env
from hub_fixtures import GROUP, T1, make_products, run, store_snapshot, sync_args  # noqa: F401
from ingest.store.bookkeeping.codec import POINTER_KEYS, strip_pointer
from ingest.grid import CubeGrid
from ingest.publish.plan import SlotWrite
from ingest.variables import VARIABLES

pytestmark = pytest.mark.slow
S2INGEST = str(Path(sys.executable).with_name("s2ingest"))  # as a user runs it

FIRST = [T1 + timedelta(days=5 * i) for i in (0, 2, 3, 4, 6)]  # 0..4 in time chunk 0, 6 in chunk 1
LATER = [T1 + timedelta(days=5 * i) for i in (1, 5)]  # a late datatake (moves 2..6) and one inside


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> tuple[Path, Path]:
    """Two folders of small products (two overlapping tiles per datatake): a first sync, then
    a second that inserts a late datatake and merges into published time chunks."""
    root = tmp_path_factory.mktemp("compute")
    first, later = root / "first", root / "later"
    make_products(first, times=FIRST)
    make_products(later, times=LATER)
    return first, later


@pytest.fixture(scope="module")
def single(batches, tmp_path_factory) -> Path:
    """The reference: both syncs in this process, no workers."""
    store = tmp_path_factory.mktemp("single") / "cube.zarr"
    for folder in batches:
        r = run(*sync_args(store, "--source", folder, "--settle", "0"))
        assert r.exit_code == 0, r.output
    return store


def cli(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([S2INGEST, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or cli_env(), **kw)


def finish(p: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


def same_cube(a: Path, b: Path) -> None:
    """Identical arrays (read with xarray) and identical keys, byte for byte (the manifests
    differ only in their creation time)."""
    # only the area that holds chunks: the cube spans the whole national grid
    stored = [tuple(map(int, p.name.split("."))) for p in (a / GROUP / "B04").glob("*.*.*")]
    rows = slice(min(c[1] for c in stored) * 625, (max(c[1] for c in stored) + 1) * 625)
    cols = slice(min(c[2] for c in stored) * 500, (max(c[2] for c in stored) + 1) * 500)
    xa, xb = (xr.open_zarr(s, group=GROUP, consolidated=True, mask_and_scale=False).isel(y=rows, x=cols)
              for s in (a, b))
    assert list(xa.time.values) == list(xb.time.values)
    assert xa.sizes["time"] == len(FIRST) + len(LATER)
    for var in VARIABLES:
        na, nb = xa[var].values, xb[var].values
        assert (na != VARIABLES[var].fill_value).any()
        np.testing.assert_array_equal(na, nb, err_msg=var)
    sa, sb = store_snapshot(a), store_snapshot(b)
    # the roots record when they were made, and the root documents name the root
    differ = {k for k in sa | sb if k.startswith((".s2ingest/manifests/", ".s2ingest/roots/"))} | POINTER_KEYS
    differ |= {".s2ingest/id.json"}  # each store's own identity
    assert {k: v for k, v in sa.items() if k not in differ} == \
        {k: v for k, v in sb.items() if k not in differ}
    assert strip_pointer({k: (a / k).read_bytes() for k in POINTER_KEYS}) == \
        strip_pointer({k: (b / k).read_bytes() for k in POINTER_KEYS})


def test_reused_blosc_blocks_give_the_cube_that_whole_encodes_give(batches, single, tmp_path, monkeypatch):
    """Chunks are encoded by reusing the Blosc blocks of the steps a commit did not change
    (``ingest.store.blosc_frames``): the cube, a late datatake and merges into published
    time chunks included, is byte for byte the cube of encoding every chunk whole."""
    from ingest.store import zarrdocs

    monkeypatch.setattr(zarrdocs, "_splicer", lambda meta: None)
    store = tmp_path / "cube.zarr"
    for folder in batches:
        r = run(*sync_args(store, "--source", folder, "--settle", "0"))
        assert r.exit_code == 0, r.output
    same_cube(single, store)


def test_workers_build_the_same_cube_as_one_process(batches, single, tmp_path):
    store = tmp_path / "cube.zarr"
    outputs = [finish(cli(*sync_args(store, "--source", folder, "--settle", "0", "--workers", "2")))
               for folder in batches]
    assert "published 10" in outputs[0] and "published 4" in outputs[1], outputs
    same_cube(single, store)


def test_dask_worker_killed_mid_task_is_retried_and_the_cube_is_the_same(batches, single, tmp_path,
                                                                         monkeypatch):
    from distributed import Client, LocalCluster

    store = tmp_path / "cube.zarr"
    finish(cli(*sync_args(store, "--source", batches[0], "--settle", "0", "--local-cluster", "2")))
    # the second sync on a cluster of our own, whose tasks wait long enough to be killed
    monkeypatch.setenv("S2INGEST_TEST_TASK_DELAY", "1.5")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        p = cli(*sync_args(store, "--source", batches[1], "--settle", "0",
                           "--scheduler", cluster.scheduler_address))
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and p.poll() is None:
            for worker, keys in client.processing().items():
                if any(str(k).startswith("s2ingest-part-") for k in keys):
                    victim = worker
                    break
            time.sleep(0.05)
        assert victim is not None, "no task was seen running"
        os.kill(pids[victim], signal.SIGKILL)
        out = finish(p)
    assert "published 4" in out, out
    same_cube(single, store)


def test_parts_cover_every_block_once_in_order():
    from ingest.publish.chunks import blocks_of as _blocks
    from ingest.publish.parts import split_parts

    grid = CubeGrid("t", "EPSG:28992", 10, (0, 0, 8000, 12000), chunk_shape=(100, 100), time_chunk=5)
    chunks = frozenset((r, c) for r in range(12) for c in range(r % 4, 8))
    by_k = {0: [SlotWrite((T1, "S2A"), 0, (), chunks, True)],
            1: [SlotWrite((T1 + timedelta(days=30), "S2A"), 5, (), frozenset(list(chunks)[:5]), True)]}
    for workers, cap in [(1, None), (2, None), (5, None), (2, 4), (64, None)]:
        parts = split_parts(grid, by_k, workers, cap)
        for k, slots in by_k.items():
            mine = [b for kk, blocks in parts if kk == k for b in blocks]
            assert mine == _blocks(grid, set().union(*(s.chunks for s in slots)))
        want = -(-workers // 2)
        expected = min(12, want if cap is None else max(want, -(-12 // cap)))
        assert sum(1 for k, _ in parts if k == 0) == expected
        if cap:
            assert max(len(b) for _, b in parts) <= cap


def test_one_way_of_running_workers_at_a_time(batches, tmp_path):
    r = run(*sync_args(tmp_path / "c.zarr", "--source", batches[0], "--workers", "2",
                       "--scheduler", "tcp://127.0.0.1:1"))
    assert r.exit_code == 3 and "exclude each other" in r.output
    assert not (tmp_path / "c.zarr").exists()


def test_nothing_to_write_starts_no_workers(batches, single):
    """A rerun with nothing new neither spawns processes nor connects to a scheduler (none
    listens at this address: connecting would fail)."""
    r = run(*sync_args(single, "--source", batches[0], "--settle", "0", "--scheduler", "tcp://127.0.0.1:9"))
    assert r.exit_code == 0 and "nothing new" in r.output, r.output


def test_a_product_found_corrupt_in_a_worker_is_rejected_and_the_rest_published(tmp_path):
    """The worker's ProductError crosses the process boundary intact (product and reason)."""
    from hub_fixtures import WINDOWS
    from ingest.synth import make_product
    from ingest.synth.hostile import corrupt_raster

    folder = tmp_path / "products"
    good = make_product(folder, tile="31UET", datatake_start=T1, window=WINDOWS["31UET"])
    bad = make_product(folder, tile="31UFT", datatake_start=T1, window=WINDOWS["31UFT"])
    rel = corrupt_raster(bad, "B04", "truncate")  # opens; decoding fails half way, in the worker
    out, _ = cli(*sync_args(tmp_path / "cube.zarr", "--source", folder, "--settle", "0",
                            "--workers", "2")).communicate(timeout=240)
    assert f"rejected {bad.name[:-5]}" in out and rel.split("/")[-1] in out, out
    assert "published 1," in out, out
    from ingest.store import read_published

    assert read_published(tmp_path / "cube.zarr", GROUP).products == ((good.name[:-5],),)


# -- workers stage their chunks themselves (ingest/publish/parts.py) -----------------------------
class InlineExecutor:
    """The executor interface run in this process, every task and every block through pickle
    (what crosses a process boundary), each block recorded with its pickled size."""

    workers, max_part_blocks = 2, None

    def __init__(self) -> None:
        self.blocks: list = []
        self.sizes: list[int] = []

    def describe(self) -> str:
        return "inline"

    def stream(self, fn, tasks):
        import pickle

        for task in tasks:
            out: list = []
            fn(pickle.loads(pickle.dumps(task)), out.append)
            for block in out:
                raw = pickle.dumps(block)
                self.sizes.append(len(raw))
                self.blocks.append(pickle.loads(raw))
                yield self.blocks[-1]

    def close(self) -> None:
        pass


@pytest.fixture
def inline(monkeypatch) -> InlineExecutor:
    from contextlib import contextmanager

    import ingest.publish.sync as sync_module

    executor = InlineExecutor()

    @contextmanager
    def open_executor(options):
        yield None if options is None or options.in_process else executor

    monkeypatch.setattr(sync_module, "open_executor", open_executor)
    return executor


def test_workers_stage_chunks_themselves_and_send_back_only_digests(batches, single, tmp_path, inline):
    """Workers that see the store write every chunk (fresh and merged into published ones)
    into the transaction's staging area; the committer gets key, size and sha256 (and the
    atlas' sums), never chunk bytes; the cube is byte for byte the single-process one."""
    store = tmp_path / "cube.zarr"
    for folder in batches:
        r = run(*sync_args(store, "--source", folder, "--settle", "0", "--workers", "2"))
        assert r.exit_code == 0, r.output
    same_cube(single, store)
    blocks = inline.blocks
    assert blocks and all(b.direct for b in blocks)
    assert not any(b.encoded or b.to_merge for b in blocks)
    staged = sum(len(b.staged) for b in blocks)
    assert staged > 0 and any(b.atlas is not None for b in blocks)
    stored = sum(p.stat().st_size for p in store.glob(f"{GROUP}/*/*.*.*"))
    # what crossed back is a small fraction of the chunks the workers wrote
    assert sum(inline.sizes) < stored / 20, (sum(inline.sizes), stored)
    assert not (store / ".s2ingest" / "txn").exists()


def test_workers_that_cannot_see_the_store_send_their_chunks_back(batches, single, tmp_path, inline,
                                                                  monkeypatch, caplog):
    import ingest.publish.parts as parts

    monkeypatch.setattr(parts, "_staging_writer", lambda area: None)
    store = tmp_path / "cube.zarr"
    for folder in batches:
        r = run(*sync_args(store, "--source", folder, "--settle", "0", "--workers", "2"))
        assert r.exit_code == 0, r.output
    same_cube(single, store)
    assert inline.blocks and not any(b.direct or b.staged for b in inline.blocks)
    assert any(b.to_merge for b in inline.blocks)  # the second batch merges into published chunks
    assert "workers cannot see the store" in caplog.text


def test_a_worker_sees_the_staging_area_only_where_the_committers_token_is(tmp_path):
    """The probe: another token, another folder, a store it cannot reach: not seen (the
    worker then sends its chunks back instead of writing them)."""
    from ingest.publish.parts import StagingArea, _staging_writer
    from ingest.store.backends import LocalBackend

    LocalBackend(tmp_path).put(".s2ingest/txn/stage/x/.workers", b"abc")
    assert _staging_writer(StagingArea(str(tmp_path), ".s2ingest/txn/stage/x", "abc")) is not None
    assert _staging_writer(StagingArea(str(tmp_path), ".s2ingest/txn/stage/x", "abd")) is None
    assert _staging_writer(StagingArea(str(tmp_path / "elsewhere"), ".s2ingest/txn/stage/x", "abc")) is None
    assert _staging_writer(StagingArea("s3://", "p", "abc")) is None  # a URL without a bucket


def test_a_worker_that_fails_to_stage_publishes_nothing(batches, single, tmp_path, inline, monkeypatch):
    """A full disk while a worker writes into the staging area: one line naming the chunk,
    the store's exit code, the store exactly as it was, no staging left behind."""
    import errno
    import shutil

    from ingest.store.backends import LocalBackend

    store = tmp_path / "cube.zarr"
    shutil.copytree(single, store)
    before = store_snapshot(store)
    real = LocalBackend.put

    def full(self, key, data):
        if key.startswith(".s2ingest/txn/stage/") and "/B8A/" in key:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, data)

    monkeypatch.setattr(LocalBackend, "put", full)
    later = tmp_path / "later"
    make_products(later, times=[T1 + timedelta(days=5 * 40)])
    r = run(*sync_args(store, "--source", later, "--settle", "0", "--workers", "2"))
    assert r.exit_code == 6, r.output
    assert "cannot stage chunk" in r.output and "No space left on device" in r.output, r.output
    assert store_snapshot(store) == before


def test_many_workers_take_several_time_chunks_per_transaction():
    """Parts of different time chunks are independent; cuts inside one decode strips twice:
    32 workers get 8 time chunks of datatakes per transaction (4 parts each), 2 workers one."""
    from types import SimpleNamespace

    from ingest.publish.sync import batches_of, time_chunks_per_batch

    assert [time_chunks_per_batch(n) for n in (1, 2, 4, 5, 16, 32)] == [1, 1, 1, 2, 4, 8]
    products = {f"p{d}-{t}": SimpleNamespace(datatake_start=T1 + timedelta(days=5 * d), platform="S2A")
                for d in range(12) for t in range(2)}
    for size, expected in [(5, [10, 10, 4]), (10, [20, 4]), (60, [24])]:
        batches = batches_of(products, size)
        assert [len(b) for b in batches] == expected
        starts = [min(p.datatake_start for p in b.values()) for b in batches]
        assert starts == sorted(starts)  # oldest first
        assert {n for b in batches for n in b} == set(products)
