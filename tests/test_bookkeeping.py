"""Bookkeeping format 2 (DESIGN.md §5): pieces, lists and roots; commits that cost what they
change; listings from the bookkeeping; pinned reads across rewrites; the hash chain."""
from __future__ import annotations

import hashlib

import pytest

from ingest.store.bookkeeping import build, codec
from ingest.store.bookkeeping.index import LazyKeys, VersionIndex


def _rec(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def _write(objects: dict, draft, root_raw, version):
    objects.update(draft.objects)
    objects[codec.root_key(version)] = root_raw


# -- the format, pure ---------------------------------------------------------------------------
def test_codecs_round_trip():
    recs = {"0.1.2": (12, "a" * 64), "10.0.0": (0, "b" * 64), ".zarray": (5, "c" * 64)}
    assert codec.decode_piece(codec.encode_piece(recs)) == recs
    assert codec.encode_piece(recs) == codec.encode_piece(dict(reversed(recs.items())))  # canonical
    assert codec.decode_list(codec.encode_list({-1: "d" * 64, 3: "e" * 64})) == {-1: "d" * 64, 3: "e" * 64}
    ch = {"S2/a/0.0": (3, "f" * 64), "S2/a/1.0": None}
    assert codec.decode_changes(codec.encode_changes(ch)) == ch
    assert sorted(codec.decode_kept(codec.encode_kept(["1" * 64, "2" * 64]))) == ["1" * 64, "2" * 64]
    docs = {".zgroup": b'{"zarr_format": 2}'}
    assert codec.decode_snapshot(codec.encode_snapshot(docs)) == docs
    with pytest.raises(codec.CorruptError):
        codec.decode_piece(b"S2P2garbage")
    assert codec.piece_id("3.1.7") == 3 and codec.piece_id(".zarray") == -1 and codec.piece_id("grid.json") == -1


def test_apply_touches_only_the_changed_pieces():
    keys = {f"S2/R051/B{v:02d}/{t}.{y}.{x}": _rec(f"{v}{t}{y}{x}".encode())
            for v in range(3) for t in range(20) for y in range(4) for x in range(4)}
    keys["grid.json"] = _rec(b"g")
    objects: dict[str, bytes] = {}
    draft = build.bulk(keys.items())
    raw, _ = build.finish(draft, version=1, parent=None, parent_root=None, snapshot={}, changes={}, kept=[])
    _write(objects, draft, raw, 1)
    parent = VersionIndex.load(objects.get, 1)
    assert parent.n_keys == len(keys) and dict(LazyKeys(parent).items()) == \
        {k: {"size": s, "sha256": h} for k, (s, h) in keys.items()}
    reads = []
    parent = VersionIndex.load(lambda k: reads.append(k) or objects.get(k), 1)
    reads.clear()
    ops = {"S2/R051/B00/19.0.0": _rec(b"new"), "S2/R051/B00/20.0.0": _rec(b"more"),
           "S2/R051/B01/19.3.3": None}
    draft = build.apply(parent, ops)
    # two lists and two pieces (B00/19, B01/19) read; three pieces and two lists written
    assert len(reads) == 4
    assert sorted(k.split("/")[1] for k in draft.objects) == ["lists", "lists", "pieces", "pieces", "pieces"]
    assert set(draft.replaced) == {"S2/R051/B00/19.0.0", "S2/R051/B01/19.3.3"}
    raw, root = build.finish(draft, version=2, parent=1, parent_root=parent.root_sha, snapshot={},
                             changes=ops, kept=[r[1] for r in draft.replaced.values()])
    _write(objects, draft, raw, 2)
    v2 = VersionIndex.load(objects.get, 2)
    assert v2.n_keys == len(keys)  # one added, one deleted
    assert v2.record("S2/R051/B00/19.0.0") == _rec(b"new") and v2.record("S2/R051/B01/19.3.3") is None
    assert v2.record("S2/R051/B02/5.1.1") == keys["S2/R051/B02/5.1.1"]
    assert v2.changes() == ops and len(v2.kept()) == 2
    # unchanged arrays share their list with the parent
    assert root["arrays"]["S2/R051/B02"] == parent.root["arrays"]["S2/R051/B02"]


def test_threads_asking_for_the_same_piece_read_it_once():
    """Eight threads checking keys of one piece at once (a copy's compare) read and decode
    each list and piece once, not once per thread."""
    import threading
    import time

    keys = {f"a/{t}.{y}.0": _rec(f"{t}{y}".encode()) for t in range(3) for y in range(40)}
    draft = build.bulk(keys.items())
    raw, _ = build.finish(draft, version=1, parent=None, parent_root=None, snapshot={}, changes={}, kept=[])
    objects = {**draft.objects, codec.root_key(1): raw}
    reads: list[str] = []

    def slow_get(key: str):
        reads.append(key)
        time.sleep(0.02)  # every reader arrives while the first is still reading
        return objects.get(key)

    idx = VersionIndex.load(slow_get, 1)
    reads.clear()
    start = threading.Barrier(8)
    got: list = []

    def check(names):
        start.wait()
        got.extend(idx.record(f"a/{n}") for n in names)

    names = sorted(k[2:] for k in keys)
    threads = [threading.Thread(target=check, args=(names[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(keys.values())
    assert len(reads) == len(set(reads)) == 1 + 3  # the list, then each of the 3 pieces once


def test_an_object_that_does_not_match_its_name_is_refused():
    draft = build.bulk([("a/0.0", _rec(b"x"))])
    raw, root = build.finish(draft, version=1, parent=None, parent_root=None, snapshot={}, changes={}, kept=[])
    objects = dict(draft.objects)
    objects[codec.root_key(1)] = raw
    lk = codec.list_key(root["arrays"]["a"])
    objects[lk] = objects[lk][:-1] + bytes([objects[lk][-1] ^ 1])
    with pytest.raises(codec.CorruptError, match="lists/"):
        VersionIndex.load(objects.get, 1).record("a/0.0")
    with pytest.raises(codec.CorruptError, match="differs"):
        VersionIndex.load(objects.get, 1, expect_sha="0" * 64)


# -- through the store ----------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from conftest import cli_env  # noqa: E402
from ingest.errors import StoreError  # noqa: E402
from ingest.grid import CubeGrid  # noqa: E402
from ingest.store import COMPRESSOR, CubeStore, LocalBackend  # noqa: E402
from ingest.store.verify import verify_store  # noqa: E402
from ingest.store.zarr_view import VersionStore  # noqa: E402
from ingest.testing.httpserve import serve  # noqa: E402

GRID = CubeGrid("t", "EPSG:28992", 10, (0, 300000, 40, 300040))
ARRAYS = ("a", "b", "c")


def _bookkeeping_files(path: Path) -> dict[str, int]:
    out = {}
    for sub in ("pieces", "lists", "meta", "roots", "manifests"):
        d = path / ".s2ingest" / sub
        if d.is_dir():
            out.update({f"{sub}/{e.name}": e.stat().st_size for e in os.scandir(d)})
    return out


def _cube(path: Path, time_chunks: int) -> CubeStore:
    """Arrays g/a, g/b, g/c of (time, y, x) with chunks (2, 2, 2): 4 chunks per time chunk."""
    store, _ = CubeStore.create(path, GRID)
    with store.transaction() as tx:
        tx.create_group("g")
        for name in ARRAYS:
            data = (np.arange(time_chunks * 2 * 16, dtype="u2").reshape(time_chunks * 2, 4, 4) % 251) + 1
            tx.create_array(f"g/{name}", shape=data.shape, chunks=(2, 2, 2), dtype="u2", fill_value=0,
                            compressor=COMPRESSOR, attrs={"_ARRAY_DIMENSIONS": ["time", "y", "x"]}, data=data)
        tx.commit()
    return store


def _rewrite(store: CubeStore, t: int, value: int) -> int:
    """Rewrite time chunk ``t`` of every array with ``value``; the new version."""
    with store.transaction() as tx:
        for name in ARRAYS:
            meta = tx.array(f"g/{name}")
            for j in range(2):
                for i in range(2):
                    tx.put(f"g/{name}/{t}.{j}.{i}", meta.encode(np.full((2, 2, 2), value, "u2")))
        return tx.commit().version


def test_a_commit_writes_bookkeeping_in_proportion_to_its_change(tmp_path):
    small, big = _cube(tmp_path / "small.zarr", 2), _cube(tmp_path / "big.zarr", 60)
    written = {}
    for name, store in (("small", small), ("big", big)):
        path = store.backend.root
        before = _bookkeeping_files(path)
        t_last = store.manifest()["keys"]["g/a/.zarray"] and json.loads(store.read("g/a/.zarray"))["shape"][0] // 2 - 1
        _rewrite(store, t_last, 7)
        after = _bookkeeping_files(path)
        written[name] = sum(size for k, size in after.items() if before.get(k) != size)
        total = sum(after.values())
        if name == "big":
            assert written[name] < total / 5, (written, total)
    # the big cube has 30 times the keys; what a one-chunk commit writes grows by its lists only
    assert written["big"] < 2.5 * written["small"], written


def test_chunk_listings_in_a_commit_never_list_the_backend(tmp_path, monkeypatch):
    store = _cube(tmp_path / "cube.zarr", 3)
    real_list_dir, real_list = LocalBackend.list_dir, LocalBackend.list

    def no_array_listing(self, prefix=""):
        if (self.root / prefix / ".zarray").exists():
            raise AssertionError(f"listed the chunks of {prefix}")
        return real_list_dir(self, prefix)

    def no_full_listing(self, prefix=""):
        if not prefix.startswith(".s2ingest"):
            raise AssertionError(f"listed {prefix!r}")
        return real_list(self, prefix)

    monkeypatch.setattr(LocalBackend, "list_dir", no_array_listing)
    monkeypatch.setattr(LocalBackend, "list", no_full_listing)
    with store.transaction() as tx:
        assert tx.chunk_keys("g/a") == sorted(f"{t}.{j}.{i}" for t in range(3) for j in range(2) for i in range(2))
        assert tx.chunk_keys("g/a", lambda k: k == 1) == [f"1.{j}.{i}" for j in range(2) for i in range(2)]
        tx.delete("g/a/2.1.1")
        assert "2.1.1" not in tx.chunk_keys("g/a")
        assert tx.changes_anything()
        tx.commit()
    assert "g/a/2.1.1" not in store.manifest()["keys"]


def _read(view: VersionStore, name: str = "a") -> np.ndarray:
    return xr.open_zarr(view, group="g", consolidated=True)[name].values


def test_a_pinned_version_reads_the_same_after_later_commits_rewrote_its_chunks(tmp_path):
    store = _cube(tmp_path / "cube.zarr", 3)
    v1 = store.version()
    expected = _read(VersionStore(str(store.backend.root), v1))
    held = xr.open_zarr(VersionStore(str(store.backend.root), v1), group="g", consolidated=True)
    _rewrite(store, 1, 99)  # an insertion or supersede rewrites published chunks
    with store.transaction() as tx:
        tx.delete("g/b/0.0.0")
        tx.commit()
    _rewrite(store, 1, 100)
    for name in ARRAYS:
        np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v1), name),
                                      expected if name == "a" else _read(VersionStore(str(store.backend.root), v1), name))
    np.testing.assert_array_equal(held["a"].values, expected)  # opened before, read after
    assert (_read(VersionStore(str(store.backend.root)))[2:4] == 100).all()
    with serve(store.backend.root.parent) as server:
        url = f"{server.url}/cube.zarr"
        np.testing.assert_array_equal(_read(VersionStore(url, v1)), expected)
    assert verify_store(store, deep=True) == []


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["roots", "lists", "pieces", "meta", "old-root"])
def test_a_flipped_byte_in_any_bookkeeping_file_is_found_over_http(tmp_path, kind):
    store = _cube(tmp_path / "cube.zarr", 2)
    _rewrite(store, 1, 5)
    path = store.backend.root
    if kind == "roots":
        victim = path / ".s2ingest/roots" / f"v{store.version():08d}.json"
    elif kind == "old-root":
        victim = path / ".s2ingest/roots" / f"v{store.version() - 1:08d}.json"
    else:
        idx = store.index()
        if kind == "lists":
            h = idx.root["arrays"]["g/a"]
        elif kind == "pieces":
            h = idx.array_list("g/a")[1]
        else:
            h = idx.root["metadata"]
        victim = path / ".s2ingest" / kind / h
    with serve(path.parent) as server:
        remote = CubeStore.open(f"{server.url}/cube.zarr")
        assert verify_store(remote, deep=True) == []
        _flip(victim)
        problems = verify_store(remote, deep=True)
    assert problems, kind
    name = victim.name if kind not in ("roots", "old-root") else f"v{int(victim.stem[1:]):08d}"
    assert any(name in p for p in problems), problems


def test_expire_keeps_the_retained_versions_readable_and_waits_for_the_grace(tmp_path):
    store = _cube(tmp_path / "cube.zarr", 2)
    path = store.backend.root
    seen = {store.version(): _read(VersionStore(str(path)))}
    for value in (11, 12, 13, 14):
        v = _rewrite(store, 1, value)
        seen[v] = _read(VersionStore(str(path)))
    objects = path / ".s2ingest/objects"
    n_objects = len(list(objects.iterdir()))
    assert n_objects >= 4  # every rewrite kept the (distinct) bytes it overwrote
    report = store.expire_versions(keep=2, grace=timedelta(days=1))
    assert report.expired == [] and report.waiting  # out of retention, inside the grace period
    assert len(list(objects.iterdir())) == n_objects
    report = store.expire_versions(keep=2, grace=timedelta(0))
    vs = sorted(seen)
    assert report.expired == list(range(1, vs[-2])) and store.manifest_versions() == vs[-2:]
    # only the bytes the oldest retained version still needs are left
    # the 12 identical chunks and the STAC Collection of the version before: both rewritten since
    assert len(list(objects.iterdir())) == 2
    for v in vs[-2:]:
        np.testing.assert_array_equal(_read(VersionStore(str(path), v)), seen[v])
    with pytest.raises(Exception, match="no bookkeeping of version"):
        VersionStore(str(path), vs[0])
    assert verify_store(store, deep=True) == []
    left = _bookkeeping_files(path)
    assert not any(k.startswith("roots/") and int(k[7:15]) < vs[-2] for k in left)


def _as_format_1(store: CubeStore) -> None:
    """Turn a cube into what an earlier release left: one format 1 manifest and metadata
    snapshot per version, no pieces, lists or roots, no root hash in the root attributes."""
    from ingest.store.bookkeeping.codec import ROOT_ATTR
    from ingest.store.zarrdocs import dumps

    path = store.backend.root
    v = store.version()
    attrs = json.loads((path / ".zattrs").read_text())
    attrs.pop(ROOT_ATTR)
    zmeta = json.loads((path / ".zmetadata").read_text())
    zmeta["metadata"][".zattrs"] = attrs
    (path / ".zattrs").write_bytes(dumps(attrs))
    (path / ".zmetadata").write_bytes(dumps(zmeta))
    idx = store.index(v)
    keys = {k: {"size": s, "sha256": h} for k, (s, h) in idx.items()}
    docs = idx.snapshot()
    for k in codec.POINTER_KEYS:
        raw = (path / k).read_bytes()
        keys[k] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        docs[k] = raw
    for sub in ("pieces", "lists", "meta", "roots", "objects"):
        shutil.rmtree(path / ".s2ingest" / sub, ignore_errors=True)
    (path / ".s2ingest/manifests").mkdir(parents=True)
    (path / f".s2ingest/manifests/v{v:08d}.json").write_text(json.dumps(
        {"format": 1, "version": v, "parent": v - 1, "created": "2026-01-01T00:00:00+00:00",
         "keys": dict(sorted(keys.items())), "changes": {}}))
    (path / f".s2ingest/manifests/v{v:08d}.meta.json").write_text(json.dumps(
        {"format": 1, "version": v, "documents": {k: d.decode() for k, d in sorted(docs.items())}}))


def _upgrade_in_subprocess(path: Path, fault: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        from ingest.store import CubeStore
        CubeStore.open({str(path)!r}).upgrade(timeout=10)
    """)
    return subprocess.run([sys.executable, "-c", code], env=cli_env(S2INGEST_FAULT=fault),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fault", ["bookkeeping.written", "journal.written", "switch.root-zmetadata"])
def test_the_upgrade_of_a_format_1_cube_survives_a_kill(tmp_path, fault):
    from ingest.store.bookkeeping.index import VersionIndex
    from ingest.store.versions import FlatIndex

    store = _cube(tmp_path / "cube.zarr", 2)
    v = store.version()
    expected = _read(VersionStore(str(store.backend.root), v))
    _as_format_1(store)
    assert isinstance(store.index(), FlatIndex) and store.root_sha() is None
    np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v)), expected)
    assert verify_store(store, deep=True) == []
    r = _upgrade_in_subprocess(store.backend.root, fault)
    assert r.returncode == -9, r.stderr
    np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v)), expected)
    store.complete_unfinished()
    upgraded = store.upgrade() if isinstance(store.index(), FlatIndex) else False
    assert upgraded == (fault == "bookkeeping.written")
    assert isinstance(store.index(), VersionIndex) and store.version() == v
    assert not store.upgrade()
    np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v)), expected)
    assert verify_store(store, deep=True) == []
    # a format 1 version stays readable after later commits rewrote its chunks
    _rewrite(store, 0, 42)
    np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v)), expected)


def test_a_format_1_cube_upgrades_on_its_next_commit(tmp_path):
    from ingest.store.bookkeeping.index import VersionIndex

    store = _cube(tmp_path / "cube.zarr", 2)
    v = store.version()
    expected = _read(VersionStore(str(store.backend.root), v))
    _as_format_1(store)
    _rewrite(store, 1, 9)
    assert isinstance(store.index(), VersionIndex) and store.manifest_versions() == [v, v + 1]
    np.testing.assert_array_equal(_read(VersionStore(str(store.backend.root), v)), expected)
    assert verify_store(store, deep=True) == []


def test_serve_exposes_each_retained_version_as_a_plain_zarr_url(tmp_path):
    import socket
    import threading
    import time

    import uvicorn

    from ingest.serve.app import create_app

    store = _cube(tmp_path / "cube.zarr", 2)
    v = store.version()
    expected = _read(VersionStore(str(store.backend.root), v))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(str(store.backend.root)), host="127.0.0.1",
                                           port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/versions/{v}"
        held = xr.open_zarr(url, group="/g", consolidated=True)
        _rewrite(store, 1, 77)  # a later commit rewrites what the open dataset reads
        np.testing.assert_array_equal(held["a"].values, expected)
        np.testing.assert_array_equal(xr.open_zarr(url, group="g", consolidated=True)["a"].values, expected)
        now = xr.open_zarr(f"http://127.0.0.1:{port}/versions/{v + 1}", group="g", consolidated=True)
        assert (now["a"].values[2:4] == 77).all()
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_mirror_rerun_fetches_bookkeeping_in_proportion_to_the_change(tmp_path, monkeypatch):
    from ingest.copies.mirror import mirror
    from ingest.store.backends.http import HTTPBackend

    store = _cube(tmp_path / "src" / "cube.zarr", 30)
    fetched = {"n": 0}
    real_get = HTTPBackend.get

    def get(self, key):
        raw = real_get(self, key)
        if key.startswith(".s2ingest/") and raw is not None:
            fetched["n"] += len(raw)
            fetched.setdefault("keys", []).append((key, len(raw)))
        return raw

    monkeypatch.setattr(HTTPBackend, "get", get)
    with serve(tmp_path / "src") as server:
        url = f"{server.url}/cube.zarr"
        mirror(url, str(tmp_path / "copy.zarr"))
        first = {k for k, _ in fetched["keys"] if k.startswith(".s2ingest/pieces/")}
        _rewrite(store, 29, 3)  # one time chunk changes at the source
        fetched["keys"] = []
        mirror(url, str(tmp_path / "copy.zarr"))
        rerun = {k for k, _ in fetched["keys"] if k.startswith(".s2ingest/pieces/")}
    assert CubeStore.open(tmp_path / "copy.zarr").version() == store.version()
    np.testing.assert_array_equal(_read(VersionStore(str(tmp_path / "copy.zarr"))),
                                  _read(VersionStore(str(store.backend.root))))
    # the first run read every (distinct) piece, one per time chunk at least; the rerun the changed ones
    # (and the commit's change list), whatever the size of the cube
    assert len(first) >= 30 and len(rerun) <= 4, (len(rerun), len(first))


def test_a_retained_version_is_mirrored_after_later_commits_rewrote_it(tmp_path):
    from ingest.copies.mirror import mirror

    store = _cube(tmp_path / "src" / "cube.zarr", 2)
    v = store.version()
    expected = _read(VersionStore(str(store.backend.root), v))
    _rewrite(store, 0, 61)
    with serve(tmp_path / "src") as server:
        mirror(f"{server.url}/cube.zarr", str(tmp_path / "copy.zarr"), version=v)
    copy = CubeStore.open(tmp_path / "copy.zarr")
    assert copy.version() == v
    np.testing.assert_array_equal(_read(VersionStore(str(tmp_path / "copy.zarr"))), expected)
    assert verify_store(copy, deep=True) == []


def _swept_files(path: Path) -> set[str]:
    out = set()
    for sub in ("pieces", "lists", "meta", "objects"):
        d = path / ".s2ingest" / sub
        if d.is_dir():
            out |= {f"{sub}/{e.name}" for e in os.scandir(d)}
    return out


def _killed_rewrite(path: Path, fault: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import numpy as np
        from ingest.store import CubeStore
        with CubeStore.open({str(path)!r}).transaction(timeout=10) as tx:
            for name in {list(ARRAYS)!r}:
                meta = tx.array("g/" + name)
                tx.put("g/" + name + "/0.0.0", meta.encode(np.full((2, 2, 2), 77, "u2")))
            tx.commit()
    """)
    return subprocess.run([sys.executable, "-c", code], env=cli_env(S2INGEST_FAULT=fault),
                          capture_output=True, text=True, timeout=120)


def test_expire_sweep_deletes_exactly_what_a_commit_killed_before_its_journal_left(tmp_path, empty_config):
    from click.testing import CliRunner

    from ingest.cli.main import cli

    def run_cli(args, config):
        env = {k: None for k in os.environ if k.startswith("S2INGEST_")}
        return CliRunner().invoke(cli, [*args[:2], "--config", str(config), *args[2:]], env=env,
                                  catch_exceptions=False)

    store = _cube(tmp_path / "cube.zarr", 2)
    path, first = store.backend.root, store.version()
    for value in (11, 12):
        _rewrite(store, 1, value)
    seen = {v: _read(VersionStore(str(path), v)) for v in store.manifest_versions() if v >= first}
    records = {v: dict(store.index(v).items()) for v in store.manifest_versions()}
    before = _swept_files(path)
    r = _killed_rewrite(path, "bookkeeping.written")
    assert r.returncode != 0 and store.version() == max(seen), r.stderr
    left = _swept_files(path) - before
    # the kept old bytes, the pieces, lists, snapshot, changes and kept list of the dead commit
    assert {k.split("/")[0] for k in left} == {"pieces", "lists", "meta", "objects"}, left
    args = ["versions", "expire", "--store", str(path), "--keep", "20", "--sweep"]
    r = run_cli([*args, "--dry-run"], empty_config)
    assert r.exit_code == 0 and f"would sweep {len(left)} unreferenced object(s)" in r.output, r.output
    assert _swept_files(path) - before == left  # a dry run deletes nothing
    plain = store.expire_versions(keep=20)  # expire alone never finds what nothing names
    assert plain.expired == [] and _swept_files(path) - before == left
    r = run_cli(args, empty_config)
    assert r.exit_code == 0 and f"swept {len(left)} unreferenced object(s)" in r.output, r.output
    assert _swept_files(path) == before
    assert store.manifest_versions() == sorted(records)
    assert {v: dict(store.index(v).items()) for v in records} == records
    for v, expected in seen.items():
        np.testing.assert_array_equal(_read(VersionStore(str(path), v)), expected)
    assert verify_store(store, deep=True) == []
    assert store.expire_versions(keep=20, sweep=True).swept == {}  # nothing left to sweep


def test_expire_sweep_after_expiring_keeps_what_the_retained_versions_need(tmp_path):
    store = _cube(tmp_path / "cube.zarr", 2)
    path = store.backend.root
    for value in (11, 12, 13):
        _rewrite(store, 1, value)
    stray = codec.encode_piece({"0.0.0": (1, "0" * 64)})  # as a writer fenced out would leave
    (path / ".s2ingest/pieces" / codec.sha(stray)).write_bytes(stray)
    (path / ".s2ingest/objects" / ("9" * 64)).write_bytes(b"orphan")
    report = store.expire_versions(keep=2, grace=timedelta(0), sweep=True)
    assert report.expired and report.swept == {"objects": 1, "pieces": 1}, report
    assert report.swept_bytes == len(stray) + len(b"orphan")
    assert store.manifest_versions() == report.retained
    for v in report.retained:
        _read(VersionStore(str(path), v))
    assert verify_store(store, deep=True) == []
    with serve(path.parent) as server:
        remote = CubeStore.open(f"{server.url}/cube.zarr")
        with pytest.raises(StoreError, match="cannot sweep"):
            remote.expire_versions(keep=2, dry_run=True, sweep=True)


def test_expire_keeps_a_piece_another_array_of_a_retained_version_shares(tmp_path):
    store = _cube(tmp_path / "cube.zarr", 2)  # g/a, g/b, g/c hold equal data: equal pieces
    path = store.backend.root
    with store.transaction() as tx:  # g/a changes in time chunk 1, g/b and g/c in time chunk 0:
        for name, t in (("a", 1), ("b", 0), ("c", 0)):  # every list changes, no piece is unshared
            meta = tx.array(f"g/{name}")
            tx.put(f"g/{name}/{t}.0.0", meta.encode(np.full((2, 2, 2), 5, "u2")))
        tx.commit()
    with store.transaction() as tx:
        tx.commit()
    report = store.expire_versions(keep=2, grace=timedelta(0))
    assert report.expired
    for v in report.retained:
        _read(VersionStore(str(path), v), "b")
    assert verify_store(store, deep=True) == []
