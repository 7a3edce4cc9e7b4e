"""``s2ingest mirror``: a copy is exactly one published version, verified, incremental,
resumable, and itself a cube (issue: consistent copies)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import xarray as xr

from conftest import D1, D2, D3, GROUP, build_cube, cli_env, ingest, new_cube
from ingest.copies.fetch import Fetcher
from ingest.copies.mirror import mirror
from ingest.copies.subset import Selection
from ingest.errors import ConfigError, NotACubeError
from ingest.store.bookkeeping.codec import POINTER_KEYS, strip_pointer
from ingest.store import CubeStore

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request
        pass


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([S2INGEST, *args], env=cli_env(**env), capture_output=True, text=True,
                          timeout=300)


def manifest_keys(path: Path, version: int | None = None) -> dict:
    return CubeStore.open(path).manifest(version)["keys"]


def files(path: Path) -> dict[str, str]:
    """sha256 of every file of a cube outside .s2ingest/ (what readers read)."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in path.rglob("*") if p.is_file() and ".s2ingest" not in p.relative_to(path).parts}


def same_as_version(copy: Path, source: Path, version: int) -> None:
    """The copy holds exactly the keys of ``version`` of the source, byte for byte."""
    keys = manifest_keys(source, version)
    assert CubeStore.open(copy).version() == version
    got = files(copy)
    assert {k: v for k, v in got.items() if k not in POINTER_KEYS} == {k: e["sha256"] for k, e in keys.items()}
    # the root documents: the version's, naming the copy's own bookkeeping
    docs = CubeStore.open(source).metadata_snapshot(version)
    assert strip_pointer({k: (copy / k).read_bytes() for k in POINTER_KEYS}) == {k: docs[k] for k in POINTER_KEYS}
    assert run("verify", "--deep", "--no-catalog", str(copy)).returncode == 0


@pytest.fixture
def source(tmp_path, products) -> Path:
    """A small cube at version 1 (D1 and D3 of one tile)."""
    path = tmp_path / "src.zarr"
    build_cube(path, [products.scene[(D1, "31UET")], products.scene[(D3, "31UET")]], products)
    return path


@pytest.fixture
def http_root(tmp_path):
    """A plain static web server over tmp_path (as the public cube is served)."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_a_mirror_is_the_version_byte_for_byte_and_a_rerun_copies_only_what_changed(
        tmp_path, source, products):
    copy = tmp_path / "copy.zarr"
    r = run("mirror", str(source), str(copy), "--no-progress")
    assert r.returncode == 0, r.stderr
    v1 = CubeStore.open(source).version()
    same_as_version(copy, source, v1)
    assert f"now version {v1}" in r.stdout
    assert CubeStore.open(copy).manifest()["source"]["version"] == v1
    # every client opens the copy
    a = xr.open_zarr(source, group=GROUP, consolidated=True)
    b = xr.open_zarr(copy, group=GROUP, consolidated=True)
    xr.testing.assert_identical(a.B04.isel(y=slice(27000, 28000), x=slice(0, 1000)).load(),
                                b.B04.isel(y=slice(27000, 28000), x=slice(0, 1000)).load())
    # nothing changed: nothing fetched, nothing written
    before = files(copy)
    r = run("mirror", str(source), str(copy), "--no-progress", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["fetched"] == 0 and not report["changed"]
    assert files(copy) == before
    # an insertion (D2 before D3) and a late tile rewrite chunks; the rerun copies only those
    ingest(new_cube(source), [products.scene[(D2, "31UET")], products.scene[(D3, "31UFT")]], products)
    v2 = CubeStore.open(source).version()
    old, new = manifest_keys(source, v1), manifest_keys(source, v2)
    changed = {k for k, e in new.items() if old.get(k) != e and not k.endswith((".zarray", ".zattrs", ".zgroup", ".zmetadata"))}
    gone = set(old) - set(new)
    r = run("mirror", str(source), str(copy), "--no-progress", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert report["version"] == v2 and report["fetched"] == len(changed) > 0
    assert report["deleted"] == len(gone)
    assert report["kept"] == len(new) - len(changed) - sum(
        1 for k in new if k.endswith((".zarray", ".zattrs", ".zgroup")) and old.get(k) != new[k]) \
        - sum(1 for k in new if k.endswith(".zmetadata"))
    same_as_version(copy, source, v2)


def test_a_damaged_key_in_the_copy_is_found_by_verify_and_fetched_again(tmp_path, source):
    copy = tmp_path / "copy.zarr"
    assert run("mirror", str(source), str(copy), "--no-progress").returncode == 0
    r = run("status", "--store", str(copy))  # a copy has no catalog: status says what it is
    assert r.returncode == 0 and f"copy of {source} version 1" in r.stdout, r.stdout + r.stderr
    chunks = sorted((copy / GROUP / "B04").glob("0.*"))
    flipped, truncated = chunks[0], chunks[-1]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:10])
    r = run("verify", "--deep", "--no-catalog", str(copy))
    assert r.returncode == 9 and flipped.name in r.stdout and truncated.name in r.stdout
    # --quick (sizes only) repairs the truncated key; the default check finds the other one too
    r = run("mirror", str(source), str(copy), "--no-progress", "--json", "--quick")
    assert json.loads(r.stdout)["repaired"] == 1
    r = run("mirror", str(source), str(copy), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["repaired"] == 1
    same_as_version(copy, source, CubeStore.open(source).version())


def test_an_interrupted_mirror_resumes_and_publishes_nothing_half_done(tmp_path, source):
    copy = tmp_path / "copy.zarr"
    r = run("mirror", str(source), str(copy), "--no-progress", "--jobs", "1", S2INGEST_FAULT="mirror.fetched@20")
    assert r.returncode == -9, r.stderr
    assert not (copy / ".zmetadata").exists()  # nothing published: not yet a cube
    r = run("mirror", str(source), str(copy), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["resumed"] >= 19 and report["fetched"] > 0
    same_as_version(copy, source, CubeStore.open(source).version())
    assert not (copy / ".s2ingest" / "mirror" / "fetched").exists()


def test_a_mirror_over_http_holds_its_version_while_the_source_publishes(tmp_path, source, products,
                                                                         http_root, monkeypatch):
    """The source publishes an insertion while the copy is being fetched: the keys it
    rewrote are fetched from the bytes the source kept, so the copy holds the version it
    started with, whole; a retained version can be mirrored after later commits."""
    v1 = CubeStore.open(source).version()
    copy = tmp_path / "copy.zarr"
    url = f"{http_root}/src.zarr"
    state = {"done": False}
    real_fetch = Fetcher.fetch

    def fetch(self, key, size, sha, write):  # another writer publishes once the copy is under way
        with lock:
            if not state["done"]:
                state["done"] = True
                ingest(new_cube(source), [products.scene[(D2, "31UET")]], products)
        return real_fetch(self, key, size, sha, write)

    lock = threading.Lock()
    monkeypatch.setattr(Fetcher, "fetch", fetch)
    report = mirror(url, str(copy), jobs=2)
    v2 = CubeStore.open(source).version()
    assert v2 > v1 and report.version == v1 and report.moves == []
    same_as_version(copy, source, v1)
    ingest(new_cube(source), [products.scene[(D3, "31UFT")]], products)
    monkeypatch.setattr(Fetcher, "fetch", real_fetch)
    other = tmp_path / "other.zarr"
    assert mirror(url, str(other), version=v1).version == v1
    same_as_version(other, source, v1)


def test_a_subset_copy_is_a_smaller_valid_cube(tmp_path, source, products, http_root):
    copy = tmp_path / "part.zarr"
    # a lon/lat box inside the written area (chunks that hold data), two variables, one month
    r = run("mirror", f"{http_root}/src.zarr", str(copy), "--no-progress",
            "--bbox", "4.42,51.885,4.46,51.905", "--bbox-crs", "EPSG:4326",
            "--variables", "B04,SCL", "--time", "2023-05-01/2023-05-31")
    assert r.returncode == 0, r.stderr
    assert run("verify", "--deep", "--no-catalog", str(copy)).returncode == 0
    src = xr.open_zarr(source, group=GROUP, consolidated=True)
    part = xr.open_zarr(copy, group=GROUP, consolidated=True)
    assert sorted(part.data_vars) == ["B04", "SCL"]
    assert (source / GROUP / "quality").is_dir() and not (copy / GROUP / "quality").exists()
    grid = CubeStore.open(copy).grid
    cy, cx = grid.chunk_shape
    assert part.sizes["y"] % cy == 0 and part.sizes["x"] % cx == 0  # whole chunks
    assert 0 < part.sizes["y"] * part.sizes["x"] < src.sizes["y"] * src.sizes["x"] / 100
    xr.testing.assert_identical(part[["B04", "SCL"]].drop_vars("spatial_ref"),
                                src[["B04", "SCL"]].sel(x=part.x, y=part.y, time=part.time).drop_vars("spatial_ref"))
    import rioxarray  # noqa: F401  (the copy's georeferencing is its own grid)
    assert part.B04.rio.crs.to_epsg() == 28992
    assert part.B04.rio.transform().c == grid.bounds[0] and part.B04.rio.transform().f == grid.bounds[3]
    attrs = json.loads((copy / ".zattrs").read_text())
    assert attrs["s2ingest_subset_of"]["version"] == CubeStore.open(source).version()
    # unchanged rerun: nothing fetched
    r = run("mirror", str(source), str(copy), "--no-progress", "--json",
            "--bbox", "4.42,51.885,4.46,51.905", "--bbox-crs", "EPSG:4326",
            "--variables", "B04,SCL", "--time", "2023-05-01/2023-05-31")
    assert r.returncode == 0 and json.loads(r.stdout)["fetched"] == 0, r.stderr


def test_mirror_refuses_bad_input_without_damage(tmp_path, source, products):
    own = tmp_path / "own.zarr"
    build_cube(own, [products.scene[(D2, "31UET")]], products)
    before = files(own)
    r = run("mirror", str(source), str(own), "--no-progress")
    assert r.returncode == 6 and "not a copy" in r.stderr
    assert files(own) == before
    r = run("mirror", str(source), str(source), "--no-progress")
    assert r.returncode == 3 and "must not be the source" in r.stderr
    r = run("mirror", str(source), str(tmp_path / "x.zarr"), "--variables", "B99")
    assert r.returncode == 3 and "B99" in r.stderr
    assert not (tmp_path / "x.zarr").exists()
    r = run("mirror", str(tmp_path / "nothing"), str(tmp_path / "y.zarr"))
    assert r.returncode == 6 and not (tmp_path / "y.zarr").exists()
    r = run("mirror", str(source), str(tmp_path / "z.zarr"), "--bbox", "0,0,1,1")
    assert r.returncode == 3 and "does not overlap" in r.stderr
    with pytest.raises(ConfigError):
        mirror(str(source), str(tmp_path / "w.zarr"), selection=Selection(groups=("NOPE",)))
    with pytest.raises(NotACubeError):
        mirror(str(source), str(own))


@pytest.mark.slow
def test_mirrors_over_http_during_a_sync_that_appends_and_inserts_are_each_one_version(
        tmp_path, products, empty_config, http_root):
    """Real processes: a sync publishes an insertion and an append while mirrors of the served
    cube run back to back; each copy is byte for byte the version it reports."""
    from test_commit import _folder, _sync

    src = tmp_path / "src.zarr"
    first = _folder([products.scene[(D1, "31UET")], products.scene[(D3, "31UET")]], tmp_path / "first")
    assert _sync(src, first, empty_config).returncode == 0
    more = _folder([products.scene[(D2, t)] for t in ("31UET", "31UFT")]
                   + [products.scene[(D3, "31UFT")]], tmp_path / "more")
    writer = subprocess.Popen([S2INGEST, "sync", "--config", str(empty_config), "--store", str(src),
                               "--source", str(more), "--no-progress", "--settle", "0"],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    copy = tmp_path / "copy.zarr"
    try:
        while True:
            done = writer.poll() is not None
            r = run("mirror", f"{http_root}/src.zarr", str(copy), "--no-progress", "--json", "--jobs", "4")
            assert r.returncode == 0, r.stderr
            version = json.loads(r.stdout)["version"]
            same_as_version(copy, src, version)
            seen.append(version)
            if done:
                break
    finally:
        writer.wait(timeout=300)
    assert writer.returncode == 0, writer.stderr.read()
    assert seen[-1] == CubeStore.open(src).version() and seen == sorted(seen)


def test_a_rerun_reads_each_bookkeeping_piece_a_bounded_number_of_times(tmp_path, source, monkeypatch):
    """A rerun with nothing changed reads the version's records in four passes (checked, planned,
    compared with the copy, deleted keys found), each piece once per pass: its bookkeeping work
    follows the number of keys, not a multiple of it per phase or per thread."""
    import ingest.store.bookkeeping.index as index
    from ingest.copies.mirror import mirror

    copy = tmp_path / "copy.zarr"
    mirror(str(source), str(copy))
    idx = CubeStore.open(source).index()
    pieces = sum(len(idx.array_list(a)) for a in idx.arrays())
    decoded = []
    real = index.decode_piece
    monkeypatch.setattr(index, "decode_piece", lambda raw: decoded.append(1) or real(raw))
    monkeypatch.setattr(index.VersionIndex, "PIECES_CACHED", 4)  # far fewer than the pieces, as at scale
    report = mirror(str(source), str(copy))
    assert not report.changed and report.fetched == 0
    assert pieces <= len(decoded) <= 4.2 * pieces, (len(decoded), pieces)
