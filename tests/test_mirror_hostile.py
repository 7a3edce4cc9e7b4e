"""``s2ingest mirror`` against hostile sources and destinations (issue: what a hostile tester
broke in the copies): a body that never ends, a trickling server, full disks, nested and
symlinked destinations, tampered bookkeeping, empty selections."""
from __future__ import annotations

import http.server
import json
import shutil
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import D1, D3, build_cube, cli_env

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))


def run(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([S2INGEST, *args], env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr
    return [line for line in r.stderr.splitlines() if line.startswith("s2ingest:")]


@pytest.fixture
def source(tmp_path, products) -> Path:
    path = tmp_path / "src.zarr"
    build_cube(path, [products.scene[(D1, "31UET")], products.scene[(D3, "31UET")]], products)
    return path


def _is_data(path: str) -> bool:
    """A data or coordinate chunk (not metadata, not the store's bookkeeping)."""
    name = path.rsplit("/", 1)[-1]
    return ".s2ingest" not in path and name.replace(".", "").isdigit()


class HostileHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; data chunks as the server's ``mode`` says: ``endless`` (no length, a body
    that never ends) or ``trickle`` (the right length, one byte every 0.2 s)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.translate_path(self.path)
        if not (_is_data(self.path) and os.path.isfile(path)):
            return super().do_GET()
        data = Path(path).read_bytes()
        self.send_response(200)
        if self.server.mode == "trickle":
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            if self.server.mode == "trickle":
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                block = (data * (1 + 65536 // max(1, len(data))))[:65536]
                while True:
                    self.wfile.write(block)
                    self.server.sent += len(block)
        except OSError:  # the client gave up
            self.close_connection = True


@pytest.fixture
def hostile(tmp_path):
    def start(mode: str) -> str:
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: HostileHandler(*a, directory=str(tmp_path)))
        server.daemon_threads = True
        server.mode, server.sent = mode, 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/src.zarr"

    servers: list = []
    yield start
    for s in servers:
        s.shutdown()


def _peak_rss_mb(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``s2ingest ARGS`` from a fresh wrapper process: (result, peak RSS in MB, seconds)."""
    code = ("import json, resource, subprocess, sys, time\n"
            "t = time.monotonic()\n"
            f"r = subprocess.run({[S2INGEST, *args]!r}, capture_output=True, text=True, timeout={timeout})\n"
            "print(json.dumps([r.returncode, r.stdout, r.stderr, time.monotonic() - t,\n"
            "                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True,
                         timeout=timeout + 30)
    assert out.returncode == 0, out.stderr
    rc, stdout, stderr, seconds, rss = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, rc, stdout, stderr), rss, seconds


def test_a_body_that_never_ends_is_refused_past_the_recorded_size_in_bounded_memory(
        tmp_path, source, hostile):
    url = hostile("endless")
    copy = tmp_path / "copy.zarr"
    r, rss, _ = _peak_rss_mb(["mirror", url, str(copy), "--no-progress", "--retries", "1"], 120)
    assert r.returncode == 6, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and "more than the" in lines[0] and url in lines[0], r.stderr
    print(f"peak RSS {rss:.0f} MB")
    assert rss < 600, f"peak RSS {rss:.0f} MB"
    assert not (copy / ".zmetadata").exists()


def test_a_trickling_source_is_given_up_within_the_transfer_timeout(tmp_path, source, hostile):
    url = hostile("trickle")
    copy = tmp_path / "copy.zarr"
    r, _, seconds = _peak_rss_mb(["mirror", url, str(copy), "--no-progress",
                                  "--transfer-timeout", "3"], 150)
    assert r.returncode == 6, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and "--transfer-timeout 3 s" in lines[0] and url in lines[0], r.stderr
    print(f"gave up after {seconds:.1f} s")
    assert seconds < 120  # a generous bound: without a total deadline it runs for hours
    assert not (copy / ".zmetadata").exists()


# -- item 3: where the copy goes -------------------------------------------------------------
def test_a_copy_inside_its_source_or_holding_it_is_refused_before_any_work(tmp_path, source):
    from conftest import snapshot_files

    before = snapshot_files(source)
    r = run("mirror", str(source), str(source / "inner"), "--no-progress")
    assert r.returncode == 3 and len(error_lines(r)) == 1 and "inside its source" in r.stderr, r.stderr
    assert not (source / "inner").exists() and snapshot_files(source) == before
    outer = tmp_path / "outer"
    moved = outer / "src.zarr"
    outer.mkdir()
    source.rename(moved)
    r = run("mirror", str(moved), str(outer), "--no-progress")
    assert r.returncode == 3 and "inside its source" in r.stderr, r.stderr
    assert sorted(p.name for p in outer.iterdir()) == ["src.zarr"]


def test_a_destination_whose_bookkeeping_folder_is_a_link_is_refused(tmp_path, source):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = tmp_path / "copy.zarr"
    copy.mkdir()
    (copy / ".s2ingest").symlink_to(elsewhere)
    r = run("mirror", str(source), str(copy), "--no-progress")
    assert r.returncode == 3 and len(error_lines(r)) == 1 and "symbolic link" in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []
    # a link deeper down, where the mirror keeps its downloads, too
    (copy / ".s2ingest").unlink()
    (copy / ".s2ingest").mkdir()
    (copy / ".s2ingest" / "mirror").symlink_to(elsewhere)
    r = run("mirror", str(source), str(copy), "--no-progress")
    assert r.returncode == 3 and "symbolic link" in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []


# -- item 4: a full disk ---------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["mirror.fetched@5=enospc", "journal.write=enospc"])
def test_a_full_disk_during_a_mirror_is_exit_6_in_one_line_and_a_rerun_resumes(
        tmp_path, source, fault):
    from test_mirror import same_as_version

    copy = tmp_path / "copy.zarr"
    r = run("mirror", str(source), str(copy), "--no-progress", "--jobs", "1", S2INGEST_FAULT=fault)
    assert r.returncode == 6, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(copy) in lines[0], r.stderr
    assert not (copy / ".zmetadata").exists()  # nothing published
    r = run("mirror", str(source), str(copy), "--no-progress")
    assert r.returncode == 0, r.stderr
    from ingest.store import CubeStore

    same_as_version(copy, source, CubeStore.open(source).version())


# -- item 5: damaged or tampered bookkeeping of the source -----------------------------------
@pytest.mark.parametrize("damage", ["root", "list", "piece", "snapshot", "traversal"])
def test_damaged_bookkeeping_of_the_source_is_one_line_naming_the_file(tmp_path, source, damage):
    """Any bookkeeping file of the source's version with a flipped bit (root, array list, piece,
    metadata snapshot), or a root re-signed by whoever also rewrote the root attributes that
    names a key leaving the cube: one line naming the file, exit 6, nothing copied."""
    import hashlib

    from ingest.store import CubeStore

    copy = tmp_path / "copy.zarr"
    src = source.parent / "damaged.zarr"
    shutil.copytree(source, src)
    store = CubeStore.open(src)
    v = store.version()
    idx = store.index(v)
    meta = src / ".s2ingest"
    array = next(a for a in idx.root["arrays"] if not a.startswith("stac"))
    if damage == "root":
        target = meta / "roots" / f"v{v:08d}.json"
    elif damage == "list":
        target = meta / "lists" / idx.root["arrays"][array]
    elif damage == "piece":
        target = meta / "pieces" / next(iter(idx.array_list(array).values()))
    elif damage == "snapshot":
        target = meta / "meta" / idx.root["metadata"]
    if damage != "traversal":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 1  # one flipped bit
        target.write_bytes(bytes(raw))
        name = target.name
    else:  # a consistent chain that names "../../escaped/..." (a hostile source, not a bit flip)
        root_path = meta / "roots" / f"v{v:08d}.json"
        doc = json.loads(root_path.read_bytes())
        doc["arrays"]["../../escaped"] = doc["arrays"].pop(array)
        raw = json.dumps(doc).encode()
        root_path.write_bytes(raw)
        sha = hashlib.sha256(raw).hexdigest()
        for key in (".zattrs", ".zmetadata"):
            text = (src / key).read_text()
            (src / key).write_text(text.replace(idx.root_sha, sha))
        name = "escaped"
    r = run("mirror", str(src), str(copy), "--no-progress")
    assert r.returncode == 6, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and name in lines[0], r.stderr
    assert not (copy / ".zmetadata").exists() and not (tmp_path / "escaped").exists()


# -- item 13: a selection with no data -------------------------------------------------------
def test_a_time_range_or_bbox_without_data_is_an_error_not_an_empty_copy(tmp_path, source):
    import s2ingest
    from ingest.errors import EmptySelectionError

    copy = tmp_path / "copy.zarr"
    r = run("mirror", str(source), str(copy), "--no-progress", "--time", "1990-01-01/1990-12-31")
    assert r.returncode == 3 and "holds no data" in r.stderr and "--time 1990-01-01/1990-12-31" in r.stderr, r.stderr
    assert not copy.exists()
    from ingest.store import CubeStore

    grid = CubeStore.open(source).grid
    left, bottom, _, top = grid.bounds
    corner = (left + 10, top - 2000, left + 2000, top - 10)  # inside the grid, far from the data
    r = run("mirror", str(source), str(copy), "--no-progress", "--bbox", ",".join(map(str, corner)))
    assert r.returncode == 3 and "holds no data" in r.stderr, r.stderr
    with pytest.raises(EmptySelectionError, match="no time step"):
        s2ingest.open_cube(source, time_range=("1990-01-01", "1990-12-31"))
    with pytest.raises(EmptySelectionError, match="no data in bbox"):
        s2ingest.open_cube(source, bbox=corner)
    r = run("rechunk", str(source), str(tmp_path / "r.zarr"), "--time", "1990-01-01/1990-12-31",
            "--chunks", "time=-1")
    assert r.returncode == 3 and "no time step" in r.stderr, r.stderr
    assert not (tmp_path / "r.zarr").exists()


# -- item 2: a commit killed in the middle of its switch -------------------------------------
def test_a_commit_killed_mid_switch_is_never_served_half_done_and_writers_complete_it(
        tmp_path, source, products):
    import s2ingest
    from fastapi.testclient import TestClient

    from conftest import D2, ingest, new_cube
    from ingest.copies.access import SwitchingWarning
    from ingest.serve import create_app
    from ingest.store import CubeStore
    from ingest.store.layout import VERSION_ATTR

    copy = tmp_path / "copy.zarr"
    assert run("mirror", str(source), str(copy), "--no-progress").returncode == 0
    v1 = CubeStore.open(copy).version()
    ingest(new_cube(source), [products.scene[(D2, "31UET")]], products)
    v2 = CubeStore.open(source).version()
    r = run("mirror", str(source), str(copy), "--no-progress", "--jobs", "1",
            S2INGEST_FAULT="switch.data@3")
    assert r.returncode == -9, r.stderr
    store = CubeStore.open(copy)
    assert store.switching() == v2 and store.version() == v1
    # open_cube says so and reads the last complete version; serve refuses to serve a mix
    with pytest.warns(SwitchingWarning, match=f"version {v2} was interrupted"):
        ds = s2ingest.open_cube(copy, variables=["B04"])
    assert ds.attrs[VERSION_ATTR] == v1
    answer = TestClient(create_app(str(copy))).get("/api/meta")
    assert answer.status_code == 503 and "not finished" in answer.json()["error"]
    # a command that writes the cube completes the commit before anything else
    r = run("overviews", "--store", str(copy), "--no-progress")
    assert "completed the unfinished commit" in r.stderr, r.stderr
    assert CubeStore.open(copy).switching() is None


def test_reference_layers_do_not_make_an_empty_time_range_hold_data():
    """The demo cube holds layers (edition, y, x) beside the imagery: a --time range without
    imagery is still empty, while a bbox over layer chunks alone holds data."""
    from datetime import datetime, timezone

    from ingest.copies.mirror import _refuse_empty
    from ingest.copies.subset import CopyPlan, FromSource, Selection
    from ingest.errors import EmptySelectionError
    from ingest.grid import NL_GRID

    docs = {"NL/BRP/parcel/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["edition", "y", "x"]}).encode(),
            "S2/R051/B04/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["time", "y", "x"]}).encode()}
    plan = CopyPlan(3, NL_GRID, {"NL/BRP/parcel/0.1.2": FromSource("NL/BRP/parcel/0.1.2", 10, "0" * 64)})
    t = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(EmptySelectionError, match="holds no data in --time 2030-01-01/2030-01-01"):
        _refuse_empty(plan, Selection(time=(t, t)), "cube", docs)
    _refuse_empty(plan, Selection(bbox=(0, 0, 1, 1)), "cube", docs)  # layer chunks: data
    plan.keys["S2/R051/B04/0.1.2"] = FromSource("S2/R051/B04/0.1.2", 10, "0" * 64)
    _refuse_empty(plan, Selection(time=(t, t)), "cube", docs)
