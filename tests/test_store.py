"""The store owner (``ingest.store``): layout, grid check, refusals, transactions, recovery,
locking, versions and manifests, empty chunks, ``verify`` (locally and over HTTP).

Most tests use a one-chunk synthetic grid and ``Transaction.put``/``create_array`` directly;
the end-to-end cases at the end ingest the session's synthetic products (``conftest``).
"""
from __future__ import annotations

import errno
import functools
import hashlib
from datetime import timedelta
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from conftest import cli_env
from ingest.publish.engine import Cube
from ingest.errors import GridMismatchError, NotACubeError, StalePlanError, StoreBusyError, StoreError
from ingest.grid import NL_GRID, CubeGrid
from ingest.store import (
    COMPRESSOR, MANIFEST_HISTORY, CubeStore, LocalBackend, chunk_key, read_published,
)
from ingest.store import transaction as transaction_mod
from ingest.store.bookkeeping.codec import POINTER_KEYS, ROOT_ATTR, root_key, strip_pointer
from ingest.store.manifests import full_listing
from ingest.store.verify import verify_store
from ingest.variables import VARIABLES

GROUP = "S2/R051"
GRID = CubeGrid("t", "EPSG:28992", 10, (0, 300000, 5000, 306250))  # 625 x 500: one chunk
TINY = CubeGrid("tiny", "EPSG:28992", 10.0, (0.0, 0.0, 130.0, 70.0), chunk_shape=(4, 5), time_chunk=3)
LOCK = ".s2ingest/lock"


# -- helpers ---------------------------------------------------------------------------------
def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``path`` except the lock file: relative path -> (bytes, mtime_ns)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            rel = p.relative_to(path).as_posix()
            if rel != LOCK:
                out[rel] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def contents(path: Path, *, meta: bool = False) -> dict[str, bytes]:
    """Bytes of every file under ``path`` (outside ``.s2ingest/`` unless ``meta``); the root
    documents without the root hash unless ``meta`` (it names the version's bookkeeping,
    which records when it was made, so two runs differ there)."""
    out = {k: v for k, (v, _) in snapshot(path).items() if meta or not k.startswith(".s2ingest/")}
    return out if meta else strip_pointer(out)


def new_store(path: Path, grid: CubeGrid = GRID) -> CubeStore:
    store, created = CubeStore.create(path, grid)
    assert created
    return store


# One step of a small synthetic writer: the same code runs in-process and (killed at a fault
# point) in a subprocess, so a crashed and a clean run can be compared.
STEP = textwrap.dedent('''
    import numpy as np
    from ingest.grid import CubeGrid
    from ingest.store import COMPRESSOR, CubeStore, chunk_key
    from datetime import datetime, timedelta, timezone
    from ingest.store.imagery import ensure_imagery_group, resize_variables, write_time_axis

    def step(location, grid_dict, value):
        """Stage two data chunks, the time axis, metadata and a new array; commit."""
        grid = CubeGrid.from_dict(grid_dict)
        store = CubeStore.for_writing(location, grid)
        with store.transaction(timeout=10) as tx:
            ensure_imagery_group(tx, grid, "S2/R051")
            resize_variables(tx, "S2/R051", value, grid)
            for var in ("B04", "B08"):
                meta = tx.array(f"S2/R051/{var}")
                chunk = meta.empty_chunk()
                chunk[(value - 1) % 5, :10, :10] = value
                tx.put(chunk_key("S2/R051", var, (value - 1) // 5, 0, 0), meta.encode(chunk))
            tx.create_array(f"extra/v{value}", shape=(3,), chunks=(3,), dtype="i4", fill_value=0,
                            compressor=COMPRESSOR, attrs={"_ARRAY_DIMENSIONS": ["n"]},
                            data=np.arange(1, 4, dtype="i4") * value)
            times = [datetime(2023, 5, 1, tzinfo=timezone.utc) + timedelta(days=i) for i in range(value)]
            write_time_axis(tx, "S2/R051", times, {
                "platform": ["S2A"] * value, "datatake_id": [f"dt{i}" for i in range(value)],
                "tiles": ["31UET"] * value, "baselines": ["05.09"] * value,
                "products": [f"p{i}" for i in range(value)]})
            tx.update_attrs("S2/R051", {"step": value})
            return tx.commit()
''')
_ns: dict = {}
exec(STEP, _ns)
step = _ns["step"]


def step_in_subprocess(location: Path, value: int, fault: str | None = None) -> subprocess.CompletedProcess:
    code = STEP + f"\nstep({str(location)!r}, {GRID.to_dict()!r}, {value})\n"
    return subprocess.run([sys.executable, "-c", code], env=cli_env(**({"S2INGEST_FAULT": fault} if fault else {})),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path) -> CubeStore:
    """A cube of the one-chunk grid holding one step (version 1)."""
    path = tmp_path / "cube.zarr"
    step(path, GRID.to_dict(), 1)
    return CubeStore.open(path, GRID)


# -- layout ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty_nl_cube(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "cube.zarr"
    Cube(path, NL_GRID, 51).ensure()
    return path


def test_empty_group_opens_with_xarray_and_has_the_contract_layout(empty_nl_cube):
    ds = xr.open_zarr(empty_nl_cube, group="/S2/R051", consolidated=True)
    assert set(ds.data_vars) == set(VARIABLES)
    assert {"B01", "B02", "B8A", "B12", "SCL", "CLD", "SNW", "WVP", "AOT"} <= set(ds.data_vars)
    assert set(ds.coords) >= {"time", "x", "y", "spatial_ref", "platform", "datatake_id", "tiles",
                              "baselines", "products"}
    assert ds.B04.dims == ("time", "y", "x") and ds.sizes["time"] == 0
    assert ds.sizes["x"] == 30000 and ds.sizes["y"] == 34375
    np.testing.assert_array_equal(ds.x.values, NL_GRID.x)
    np.testing.assert_array_equal(ds.y.values, NL_GRID.y)
    assert ds.y.values[0] > ds.y.values[-1], "y descends"
    for name, spec in VARIABLES.items():
        enc = ds[name].encoding
        assert ds[name].dims == ("time", "y", "x"), name
        assert enc["chunks"] == (5, 625, 500), name
        assert enc["dtype"] == np.dtype(spec.dtype), name
        assert enc["_FillValue"] == spec.fill_value, name
        (blosc,) = enc["compressors"]
        assert blosc.get_config() == COMPRESSOR.get_config() == {
            "id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 2, "blocksize": 512 * 1024}, name
        assert ds[name].attrs["grid_mapping"] == "spatial_ref"
    assert ds.B04.encoding["scale_factor"] == 1e-4
    assert ds.CLD.encoding["scale_factor"] == 0.01 and ds.CLD.encoding["_FillValue"] == 255
    assert ds.spatial_ref.attrs["crs_wkt"].startswith('PROJCRS["Amersfoort / RD New"')
    assert ds.spatial_ref.attrs["spatial_ref"] == ds.spatial_ref.attrs["crs_wkt"]
    assert ds.spatial_ref.attrs["GeoTransform"].split() == ["0.0", "10.0", "0.0", "643750.0", "0.0", "-10.0"]
    assert ds.SCL.attrs["flag_meanings"].split()[4] == "vegetation"
    raw = xr.open_zarr(empty_nl_cube, group="/S2/R051", consolidated=True, mask_and_scale=False)
    assert raw.B04.dtype == np.uint16 and raw.SCL.dtype == np.uint8 and raw.CLD.dtype == np.uint8


def test_every_group_has_consolidated_metadata_in_zarr_format_2(empty_nl_cube):
    root_doc = json.loads((empty_nl_cube / ".zmetadata").read_text())
    assert root_doc["zarr_consolidated_format"] == 1
    root = root_doc["metadata"]
    groups = sorted(p.parent for p in empty_nl_cube.rglob(".zgroup") if ".s2ingest" not in p.parts)
    assert [g.relative_to(empty_nl_cube).as_posix() for g in groups] == [".", "S2", "S2/R051"]
    for g in groups:
        rel = g.relative_to(empty_nl_cube).as_posix()
        prefix = "" if rel == "." else rel + "/"
        meta = json.loads((g / ".zmetadata").read_text())["metadata"]
        # the group's own view is the root's, relative to the group
        assert meta == {k[len(prefix):]: v for k, v in root.items() if k.startswith(prefix)}, rel
        assert meta[".zgroup"] == {"zarr_format": 2}
    assert not list(empty_nl_cube.rglob("zarr.json")), "format 2 only"
    arrays = list(empty_nl_cube.rglob(".zarray"))
    assert len(arrays) == len(VARIABLES) + 4 + 5  # + x, y, spatial_ref, time + provenance
    for a in arrays:
        doc = json.loads(a.read_text())
        assert doc["zarr_format"] == 2 and doc.get("dimension_separator", ".") == "."
        assert root[f"{a.parent.relative_to(empty_nl_cube).as_posix()}/.zarray"] == doc
    # the grid, beside the root attributes
    assert CubeGrid.from_dict(json.loads((empty_nl_cube / "grid.json").read_text())) == NL_GRID
    assert root[".zattrs"]["grid"] == NL_GRID.to_dict()
    # zarr-python 3 opens the root and the group from their consolidated metadata
    g = zarr.open_consolidated(str(empty_nl_cube), mode="r")
    assert g.metadata.zarr_format == 2 and g["S2/R051/B04"].shape == (0, 34375, 30000)


def test_chunk_keys_use_dots(tmp_path):
    assert chunk_key(GROUP, "B04", 0, 33, 17) == "S2/R051/B04/0.33.17"


def test_keys_are_replaced_by_rename(tmp_path, monkeypatch):
    """A reader sees the old bytes or the new ones, never a torn file."""
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((str(a), str(b))), real(a, b)))
    backend = LocalBackend(tmp_path / "s")
    backend.put("S2/R051/B04/0.0.0", b"x" * 10)
    assert len(calls) == 1 and calls[0][1].endswith("/S2/R051/B04/0.0.0") and calls[0][0] != calls[0][1]
    assert (tmp_path / "s/S2/R051/B04/0.0.0").read_bytes() == b"x" * 10
    assert [p.name for p in (tmp_path / "s/S2/R051/B04").iterdir()] == ["0.0.0"]


# -- grid and refusals -----------------------------------------------------------------------
def test_grid_is_checked_on_open(tmp_path):
    path = tmp_path / "c.zarr"
    Cube(path, GRID, 51).ensure()
    before = snapshot(path)
    other = GRID.replace(chunk_shape=(125, 100))
    with pytest.raises(GridMismatchError):
        CubeStore.open(path, other)
    with pytest.raises(GridMismatchError):
        CubeStore.for_writing(path, other)
    with pytest.raises(GridMismatchError):
        CubeStore.create(path, other)
    with pytest.raises(GridMismatchError):
        Cube(path, other, 51).ensure()
    with pytest.raises(GridMismatchError):
        Cube(path, other, 37).ensure()
    assert snapshot(path) == before
    assert CubeStore.open(path).grid == GRID  # without a grid: the stored one
    assert CubeStore.open(path, GRID).grid == GRID


def _foreign_zarr2(p: Path) -> None:
    zarr.open_group(str(p), mode="w", zarr_format=2).create_array("a", shape=(3,), dtype="i4")


def _foreign_zarr3(p: Path) -> None:
    zarr.open_group(str(p), mode="w", zarr_format=3).create_array("a", shape=(3,), dtype="i4")


def _other_files(p: Path) -> None:
    p.mkdir()
    (p / "notes.txt").write_text("mine")
    (p / "sub").mkdir()
    (p / "sub" / "data.bin").write_bytes(b"\0" * 10)


def _a_file(p: Path) -> None:
    p.write_text("not a folder")


@pytest.mark.parametrize("make", [_foreign_zarr2, _foreign_zarr3, _other_files, _a_file],
                         ids=["zarr2-store", "zarr3-store", "other-files", "a-file"])
def test_what_is_not_a_cube_is_refused_and_left_untouched(tmp_path, make):
    path = tmp_path / "x.zarr"
    make(path)
    before = snapshot(path) if path.is_dir() else path.read_bytes()
    for attempt in (lambda: CubeStore.open(path), lambda: CubeStore.open(path, GRID),
                    lambda: CubeStore.for_writing(path, GRID), lambda: CubeStore.create(path, GRID),
                    lambda: Cube(path, GRID, 51).ensure()):
        with pytest.raises(NotACubeError, match="not an s2ingest cube|is a file"):
            attempt()
    after = snapshot(path) if path.is_dir() else path.read_bytes()
    assert after == before
    assert not (path / ".s2ingest").exists()


def test_an_empty_folder_becomes_a_cube(tmp_path):
    path = tmp_path / "c.zarr"
    path.mkdir()
    store, created = CubeStore.create(path, GRID)
    assert created and store.version() == 1 and CubeStore.open(path, GRID).grid == GRID


# -- transactions that fail ------------------------------------------------------------------
def test_a_failed_first_transaction_leaves_no_directory(tmp_path):
    path = tmp_path / "new.zarr"
    store = CubeStore.for_writing(path, GRID)
    assert not path.exists(), "nothing is written before the first commit"
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            assert tx.creates_store and path.exists()
            tx.create_group("NL")
            tx.put("NL/.zattrs", b"{}")
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_first_transaction_in_a_new_subfolder_leaves_the_store_path_free(tmp_path):
    path = tmp_path / "a" / "new.zarr"
    store = CubeStore.for_writing(path, GRID)
    with pytest.raises(RuntimeError):
        with store.transaction():
            raise RuntimeError("boom")
    assert not path.exists()


def test_a_transaction_that_fails_after_staging_leaves_the_store_byte_identical(store):
    path = store.backend.root
    before = snapshot(path)
    with pytest.raises(RuntimeError, match="after staging"):
        with store.transaction() as tx:
            meta = tx.resize("S2/R051/B04", (2, *GRID.shape))
            chunk = meta.empty_chunk()
            chunk[:2] = 7
            tx.put("S2/R051/B04/0.0.0", meta.encode(chunk))
            tx.delete("S2/R051/B08/0.0.0")
            tx.update_attrs("", {"note": "never published"})
            tx.create_group("NL/BRP")  # a group and an array created in the transaction
            tx.create_array("NL/BRP/crop", shape=(1, 10, 10), chunks=(1, 10, 10), dtype="u2",
                            fill_value=0, compressor=COMPRESSOR, attrs={},
                            data=np.full((1, 10, 10), 7, dtype="u2"))
            assert tx.get("S2/R051/B08/0.0.0") is None and tx.is_group("NL/BRP")
            assert (path / tx.stage / "S2/R051/B04/0.0.0").exists()
            raise RuntimeError("after staging")
    assert snapshot(path) == before
    assert not (path / ".s2ingest/txn").exists()
    assert not (path / "NL").exists()
    assert read_published(path, GROUP).length == 1
    assert store.version() == 1 and not store.has_unfinished_commit()


def test_a_disk_full_at_the_journal_publishes_nothing(store, monkeypatch):
    from ingest.store import faults

    path = store.backend.root
    before = snapshot(path)
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("S2INGEST_FAULT", "journal.write=enospc")
    with pytest.raises(OSError) as err:
        step(path, GRID.to_dict(), 2)
    assert err.value.errno == errno.ENOSPC
    assert snapshot(path) == before and not (path / ".s2ingest/txn").exists()
    monkeypatch.delenv("S2INGEST_FAULT")
    assert step(path, GRID.to_dict(), 2).version == 2


# -- recovery --------------------------------------------------------------------------------
def test_a_staging_area_left_by_a_crash_is_discarded(store):
    path = store.backend.root
    before = contents(path)
    stage = path / ".s2ingest/txn/stage"
    (stage / "S2/R051/B04").mkdir(parents=True)
    (stage / "S2/R051/B04/0.0.0").write_bytes(b"half written")
    (stage / "S2/R051/.zmetadata").write_bytes(b"{}")
    (stage / "junk").write_bytes(b"x")
    assert store.has_unfinished_commit()
    assert any("staging area" in p for p in verify_store(store))
    assert contents(path) == before, "readers never see staged keys"
    with store.transaction() as tx:
        assert tx.base_version == 1
        assert not (path / ".s2ingest/txn").exists(), "discarded before anything else"
    assert contents(path) == before and not store.has_unfinished_commit()
    assert verify_store(store, deep=True) == []
    # and a commit after it publishes its own keys only
    step(path, GRID.to_dict(), 2)
    assert b"half written" not in contents(path).values() and not (path / "junk").exists()


# every point after the journal is durable: the next writer rolls the commit forward
ROLL_FORWARD = ["journal.written", "switch.data", "switch.coords", "switch.metadata",
                "switch.group-zmetadata", "switch.root-zmetadata", "commit.marked"]


@pytest.fixture(scope="module")
def clean_two_steps(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "cube.zarr"
    step(path, GRID.to_dict(), 1)
    step(path, GRID.to_dict(), 2)
    return path


@pytest.mark.parametrize("point", ROLL_FORWARD)
def test_a_journal_left_by_a_crash_is_rolled_forward(tmp_path, clean_two_steps, point):
    path = tmp_path / "cube.zarr"
    step(path, GRID.to_dict(), 1)
    before = contents(path)
    r = step_in_subprocess(path, 2, fault=point)
    assert r.returncode == -9, r.stderr
    assert (path / ".s2ingest/txn/journal.json").exists()
    store = CubeStore.open(path, GRID)
    assert store.has_unfinished_commit()
    assert any("unfinished commit" in p for p in verify_store(store))
    if point == "journal.written":
        assert contents(path) == before, "nothing switched yet"
    else:
        assert contents(path) != before
    with store.transaction(timeout=10) as tx:  # any next writer recovers first
        assert tx.base_version == 2
    assert not (path / ".s2ingest/txn").exists()
    assert contents(path) == contents(clean_two_steps)
    assert store.version() == 2 and read_published(path, GROUP).length == 2
    assert verify_store(store, deep=True) == []
    m = store.manifest(2)
    clean = CubeStore.open(clean_two_steps).manifest(2)
    assert m["keys"] == clean["keys"] and m["changes"] == clean["changes"] and m["parent"] == 1
    assert step(path, GRID.to_dict(), 3).version == 3


@pytest.mark.parametrize("point", ["txn.locked", "stage.chunk", "stage.done"])
def test_a_crash_before_the_journal_changes_nothing(tmp_path, point):
    path = tmp_path / "cube.zarr"
    step(path, GRID.to_dict(), 1)
    before = contents(path, meta=True)
    r = step_in_subprocess(path, 2, fault=point)
    assert r.returncode == -9, r.stderr
    assert contents(path) == strip_pointer({k: v for k, v in before.items() if not k.startswith(".s2ingest/")})
    store = CubeStore.open(path, GRID)
    with store.transaction(timeout=10) as tx:
        assert tx.base_version == 1
    assert contents(path, meta=True) == before
    assert verify_store(store, deep=True) == []


def test_a_journal_rolled_forward_by_recover_directly(tmp_path, clean_two_steps, monkeypatch):
    """The same by monkeypatching (no subprocess): the switch dies after the first data key."""
    path = tmp_path / "cube.zarr"
    step(path, GRID.to_dict(), 1)
    calls = {"n": 0}
    real_move = LocalBackend.move

    def dying_move(self, src, dst):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # not an Exception: as abrupt as it gets in-process
        return real_move(self, src, dst)

    monkeypatch.setattr(LocalBackend, "move", dying_move)
    monkeypatch.setattr(transaction_mod, "recover", lambda backend: None)  # __exit__ must not finish it
    with pytest.raises(KeyboardInterrupt):
        step(path, GRID.to_dict(), 2)
    monkeypatch.undo()
    assert (path / ".s2ingest/txn/journal.json").exists()
    store = CubeStore.open(path)
    assert store.complete_unfinished() == "rolled forward"
    assert store.complete_unfinished() is None
    assert contents(path) == contents(clean_two_steps)


# -- locking ---------------------------------------------------------------------------------
HOLDER = textwrap.dedent('''
    import sys, time
    from ingest.store import CubeStore
    store = CubeStore.open(sys.argv[1])
    with store.transaction(timeout=600):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
''')


def test_a_second_writer_waits_for_the_lock_then_proceeds(store):
    path = store.backend.root
    holding, release = threading.Event(), threading.Event()
    result = {}

    def first():
        with store.transaction(timeout=600) as tx:
            holding.set()
            release.wait(600)
            tx.put("a/.zattrs", b"{}")
            result["first"] = tx.commit().version

    t = threading.Thread(target=first)
    t.start()
    assert holding.wait(600)
    told = []

    def waiting(message: str) -> None:  # the second writer says it waits: now the first finishes
        told.append(message)
        release.set()

    with CubeStore.open(path).transaction(timeout=600, on_wait=waiting) as tx:
        assert release.is_set(), "the second writer got the lock while the first held it"
        assert tx.base_version == 2, "sees what the first writer published"
        result["second"] = tx.commit().version
    t.join(600)
    assert result == {"first": 2, "second": 3}
    assert len(told) == 1 and "another process" in told[0] and "is writing it" in told[0]


def test_a_second_writer_gives_up_naming_the_holder(store):
    path = store.backend.root
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "3600"], env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        t0 = time.monotonic()
        with pytest.raises(StoreBusyError, match=rf"another process \(.+:{holder.pid}\).*gave up after") as err:
            with store.transaction(timeout=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5  # it did wait its timeout (however loaded the machine)
        assert str(path) in str(err.value)
        holder.kill()  # a dead holder's lock is dropped by the kernel
        holder.wait(120)
        with store.transaction(timeout=120) as tx:
            assert tx.base_version == 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(120)


def test_a_plan_from_another_version_is_stale(store):
    with store.transaction() as tx:
        tx.check_base(1)
        with pytest.raises(StalePlanError, match="version 0.*version 1"):
            tx.check_base(0)
        with pytest.raises(StalePlanError):
            tx.check_base(2)


# -- versions and manifests ------------------------------------------------------------------
def _check_manifest(path: Path, store: CubeStore, version: int, before: dict[str, bytes]) -> dict:
    root_raw = (path / ".s2ingest/roots" / f"v{version:08d}.json").read_bytes()
    assert hashlib.sha256(root_raw).hexdigest() == store.root_sha() == store.manifest_sha256(version)
    m = store.manifest(version)
    after = contents(path)
    assert m["version"] == version and m["parent"] == version - 1
    keys = dict(m["keys"].items())
    assert keys == {k: {"size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                    for k, v in after.items() if k not in POINTER_KEYS}
    assert keys == {k: v for k, v in full_listing(store.backend).items() if k not in POINTER_KEYS}
    assert len(m["keys"]) == len(keys)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - POINTER_KEYS
    assert changed <= set(m["changes"]), sorted(changed - set(m["changes"]))
    for key, entry in m["changes"].items():
        if entry is None:
            assert key not in after, key
        else:
            assert entry == keys[key], key
    return m


def test_every_commit_bumps_the_version_and_writes_its_bookkeeping(tmp_path):
    path = tmp_path / "cube.zarr"
    store = CubeStore.for_writing(path, GRID)
    for v in (1, 2, 3, 6):
        before = contents(path) if path.exists() else {}
        report = step(path, GRID.to_dict(), v)
        version = store.version()
        assert report.version == version and report.parent == version - 1
        m = _check_manifest(path, store, version, before)
        assert report.n_keys == len(m["keys"])
        assert report.manifest_sha256 == hashlib.sha256(
            (path / root_key(version)).read_bytes()).hexdigest() == store.manifest_sha256(version)
        assert f"S2/R051/B04/{(v - 1) // 5}.0.0" in m["changes"]
        root = json.loads((path / ".zmetadata").read_text())["metadata"]
        assert root[".zattrs"]["s2ingest_store_version"] == version
        assert root[".zattrs"][ROOT_ATTR] == report.manifest_sha256
    assert store.version() == 4
    # a deletion is a change named with None
    before = contents(path)
    with store.transaction() as tx:
        tx.delete("S2/R051/B08/0.0.0")
        tx.commit()
    m = _check_manifest(path, store, 5, before)
    assert m["changes"]["S2/R051/B08/0.0.0"] is None and "S2/R051/B08/0.0.0" not in m["keys"]
    # an empty commit is a version too
    before = contents(path)
    with store.transaction() as tx:
        assert tx.commit().version == 6
    _check_manifest(path, store, 6, before)


def test_versions_are_kept_until_expired(tmp_path):
    path = tmp_path / "cube.zarr"
    store = new_store(path, CubeGrid("t", "EPSG:28992", 10, (0, 300000, 50, 300050)))
    n = MANIFEST_HISTORY + 3
    for i in range(2, n + 1):
        with store.transaction() as tx:
            tx.put(f"k/{i % 4}", str(i).encode())
            assert tx.commit().version == i
    assert store.version() == n
    assert store.manifest_versions() == list(range(1, n + 1))
    report = store.expire_versions(keep=MANIFEST_HISTORY, grace=timedelta(0))
    assert report.expired == [1, 2, 3]
    assert store.manifest_versions() == list(range(n - MANIFEST_HISTORY + 1, n + 1))
    with pytest.raises(StoreError, match="no bookkeeping of version 1"):
        store.manifest(1)
    assert store.manifest(n)["parent"] == n - 1
    assert verify_store(store, deep=True) == []
    with pytest.raises(StoreError, match="no bookkeeping of version 1"):
        store.metadata_snapshot(1)


def test_metadata_snapshot_is_each_version_as_published(tmp_path):
    """A past version's metadata stays readable after later versions rewrote it: the snapshot
    of version v holds exactly the metadata bytes its manifest names (sha256)."""
    path = tmp_path / "cube.zarr"
    store = new_store(path, CubeGrid("t", "EPSG:28992", 10, (0, 300000, 50, 300050)))
    seen = {}
    for i in range(3):
        with store.transaction() as tx:
            tx.create_group(f"g{i}", {"n": i})
            tx.update_attrs("", {"step": i})
            version = tx.commit().version
        seen[version] = contents(path, meta=True)
    for version, files in seen.items():
        docs = store.metadata_snapshot(version)
        keys = store.manifest(version)["keys"]
        assert set(docs) == {k for k in keys if k.rsplit("/", 1)[-1].startswith((".z"))} | POINTER_KEYS
        for key, raw in docs.items():
            if key in POINTER_KEYS:  # the root documents name the root: kept without that name
                assert raw == strip_pointer(files)[key]
                continue
            assert hashlib.sha256(raw).hexdigest() == keys[key]["sha256"], key
            assert raw == files[key]


# -- chunks holding fill only ---------------------------------------------------------------
def _tiny_array(tmp_path, fill) -> tuple[CubeStore, str]:
    store = new_store(tmp_path / "tiny.zarr", TINY)
    ny, nx = TINY.shape
    with store.transaction() as tx:
        tx.create_group("g")
        tx.create_array("g/v", shape=(3, ny, nx), chunks=(3, 4, 5), dtype="u2", fill_value=fill,
                        compressor=COMPRESSOR, attrs={"_ARRAY_DIMENSIONS": ["time", "y", "x"]})
        tx.commit()
    return store, "g/v"


def _write(store: CubeStore, path: str, slots_data: dict[int, np.ndarray]) -> None:
    """Merge full-grid arrays for the given time steps (one block: the whole grid)."""
    from ingest.publish.plan import SlotWrite
    from ingest.publish.write import _write_var_block

    chunks = set(TINY.chunks_in_window(TINY.full_window))
    slots = [SlotWrite(datatake=None, index=i, products=(), chunks=frozenset(chunks), is_new=True)
             for i in slots_data]
    computed = {i: {"v": data} for i, data in slots_data.items()}
    with store.transaction() as tx:
        n = _write_var_block(tx, tx.array(path), path, TINY, "v", 0, chunks, slots, computed,
                             TINY.full_window)
        assert n == len(chunks)
        tx.commit()


def _stored(store: CubeStore, path: str) -> list[str]:
    return sorted(p.name for p in (store.backend.root / path).iterdir() if not p.name.startswith("."))


def _read(store: CubeStore, path: str) -> np.ndarray:
    return zarr.open_consolidated(str(store.backend.root), mode="r")[path][...]


def test_merges_time_steps_and_keeps_the_others(tmp_path):
    store, path = _tiny_array(tmp_path, fill=0)
    n_chunks = len(list(TINY.chunks_in_window(TINY.full_window)))
    a = np.arange(1, 7 * 13 + 1, dtype="u2").reshape(TINY.shape)
    _write(store, path, {0: a})
    _write(store, path, {2: a * 2})
    arr = _read(store, path)
    assert np.array_equal(arr[0], a) and np.array_equal(arr[2], a * 2)
    assert (arr[1] == 0).all()
    # edge chunks (13 = 5 + 5 + 3 columns, 7 = 4 + 3 rows) are stored whole and read back clipped
    assert arr.shape == (3, 7, 13) and len(_stored(store, path)) == n_chunks == 6
    assert verify_store(store, deep=True) == []


def test_chunks_holding_only_fill_values_are_never_stored(tmp_path):
    store, path = _tiny_array(tmp_path, fill=255)
    empty = np.full(TINY.shape, 255, dtype="u2")
    _write(store, path, {0: empty})
    assert _stored(store, path) == []
    some = empty.copy()
    some[0, 0] = 7  # only chunk (0, 0) holds data
    _write(store, path, {1: some})
    assert _stored(store, path) == ["0.0.0"]
    _write(store, path, {0: some})  # the same time chunk, another step: still one chunk
    assert _stored(store, path) == ["0.0.0"]
    _write(store, path, {0: empty, 1: empty})  # empties the chunk: the key is deleted
    assert _stored(store, path) == []
    assert (_read(store, path) == 255).all()
    m = store.manifest()
    assert {k: v for k, v in m["changes"].items() if k.startswith("g/v/")} == {"g/v/0.0.0": None}
    assert not any(k.startswith("g/v/0") for k in m["keys"])
    assert verify_store(store, deep=True) == []


# -- verify --------------------------------------------------------------------------------------
def test_verify_is_empty_on_a_fresh_cube(empty_nl_cube):
    assert verify_store(CubeStore.open(empty_nl_cube), deep=True) == []
    assert verify_store(CubeStore.open(empty_nl_cube)) == []


def test_verify_names_damaged_missing_and_extra_keys(store):
    path = store.backend.root
    assert verify_store(store, deep=True) == []
    b04, b08 = path / "S2/R051/B04/0.0.0", path / "S2/R051/B08/0.0.0"
    raw = bytearray(b04.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the deep check sees it
    b04.write_bytes(bytes(raw))
    assert verify_store(store) == []
    (problem,) = verify_store(store, deep=True)
    assert problem.startswith("S2/R051/B04/0.0.0: sha256 differs")
    b08.unlink()
    (path / "S2/R051/B04/0.1.0").write_bytes(b"extra")
    problems = verify_store(store, deep=True)
    assert len(problems) == 3, problems
    assert any(p.startswith("S2/R051/B04/0.0.0: sha256 differs") for p in problems)
    assert any(p.startswith("S2/R051/B08/0.0.0: missing") for p in problems)
    assert any(p.startswith("S2/R051/B04/0.1.0: in the store but not in the manifest") for p in problems)
    b04.write_bytes(b"short")
    assert any(p.startswith("S2/R051/B04/0.0.0: 5 bytes, the manifest says") for p in verify_store(store))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # verify reads with 8 threads: the default backlog (5) drops SYNs


@pytest.fixture
def serve():
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = _Server(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def test_verify_works_read_only_over_http(store, serve):
    path = store.backend.root
    url = f"{serve(path.parent)}/{path.name}"
    remote = CubeStore.open(url, GRID)
    assert remote.version() == 1 and remote.grid == GRID
    assert remote.published(GROUP).length == 1
    assert verify_store(remote, deep=True) == [] and verify_store(remote) == []
    with pytest.raises(StoreError, match="read only"):
        CubeStore.for_writing(url, GRID)
    with pytest.raises(StoreError, match="read only"):
        with remote.transaction(timeout=1):
            pass
    raw = bytearray((path / "S2/R051/B04/0.0.0").read_bytes())
    raw[-1] ^= 0x01
    (path / "S2/R051/B04/0.0.0").write_bytes(bytes(raw))
    (path / "S2/R051/B08/0.0.0").unlink()
    problems = verify_store(remote, deep=True)
    assert sorted(p.split(":")[0] for p in problems) == ["S2/R051/B04/0.0.0", "S2/R051/B08/0.0.0"], problems
    assert [p.split(":")[0] for p in verify_store(remote)] == ["S2/R051/B08/0.0.0"]
    with pytest.raises(NotACubeError):
        CubeStore.open(f"{serve(path.parent)}/missing.zarr")


def test_a_crashed_commit_is_completed_and_expires_like_any(tmp_path):
    """A writer killed after its switch leaves its version complete; expiring counts it."""
    path = tmp_path / "cube.zarr"
    store = new_store(path, CubeGrid("t", "EPSG:28992", 10, (0, 300000, 50, 300050)))
    for i in range(2, MANIFEST_HISTORY + 2):
        with store.transaction() as tx:
            tx.put("k/0", str(i).encode())
            tx.commit()
    code = textwrap.dedent(f'''
        from ingest.store import CubeStore
        store = CubeStore.open({str(path)!r})
        with store.transaction(timeout=10) as tx:
            tx.put("k/1", b"crash")
            tx.commit()
    ''')
    r = subprocess.run([sys.executable, "-c", code], env=cli_env(S2INGEST_FAULT="commit.marked"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    n = MANIFEST_HISTORY + 2
    assert store.version() == n
    with store.transaction() as tx:
        tx.put("k/2", b"next")
        assert tx.commit().version == n + 1
    store.expire_versions(keep=MANIFEST_HISTORY, grace=timedelta(0))
    assert store.manifest_versions() == list(range(n + 2 - MANIFEST_HISTORY, n + 2))
    assert verify_store(store, deep=True) == []


# -- end to end: ingests of the session's synthetic products ---------------------------------
def test_the_manifest_names_every_key_an_insertion_changed(tmp_path, products):
    from conftest import D1, D2, build_cube, ingest

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, t)] for t in ("31UET", "31UFT")], products)
    store = CubeStore.open(cube.path, NL_GRID)
    before = contents(cube.path)
    _, report = ingest(cube, [products.scene[(D1, "31UET")]], products)  # a late datatake: moves D2 too
    version = store.version()
    assert report.version == version == 2  # first ingest (creates the store) + this one
    m = _check_manifest(cube.path, store, version, before)
    changed = {k for k in before.keys() | contents(cube.path).keys()
               if before.get(k) != contents(cube.path).get(k)}
    assert any("/B04/0." in k for k in changed), "the test must change image chunks"
    assert report.commit.changes.keys() == {k for k in m["changes"] if k.rsplit("/", 1)[-1] not in (
        ".zmetadata", ".zattrs", ".zarray", ".zgroup")}
    assert set(report.commit.metadata) >= {".zmetadata", f"{GROUP}/.zmetadata", f"{GROUP}/B04/.zarray"}
    assert verify_store(store, deep=True) == []


def test_a_full_disk_mid_write_raises_one_store_error_and_publishes_nothing(tmp_path, products, monkeypatch):
    from conftest import D1, D2, build_cube, ingest

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, "31UET")]], products)
    before = snapshot(cube.path)
    real = LocalBackend.write_new
    writes = {"n": 0}

    def filling_up(self, key, data):
        writes["n"] += 1
        if writes["n"] > 20 and not key.rsplit("/", 1)[-1].startswith("."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, data)

    monkeypatch.setattr(LocalBackend, "write_new", filling_up)
    new = [products.scene[(D1, "31UET")], products.scene[(D2, "31UFT")]]
    with pytest.raises(StoreError, match="No space left on device"):
        ingest(cube, new, products)
    assert writes["n"] > 20, "the failure must happen in the middle of the write"
    monkeypatch.setattr(LocalBackend, "write_new", real)
    assert snapshot(cube.path) == before, "the published cube must be exactly as it was"
    ingest(cube, new, products)  # the rerun completes
    assert read_published(cube.path, GROUP).length == 2


def test_a_damaged_store_chunk_is_named_and_nothing_is_published(tmp_path, products):
    from conftest import D1, D2, D3, build_cube, ingest

    cube = build_cube(tmp_path / "cube.zarr", [products.scene[(D2, "31UET")]], products)
    victim = sorted((cube.path / "S2" / "R051" / "B04").glob("0.*"))[0]
    victim.write_bytes(b"not a blosc frame" * 10)
    before = snapshot(cube.path)
    (problem,) = verify_store(CubeStore.open(cube.path), deep=True)
    assert problem.startswith(f"S2/R051/B04/{victim.name}: ")
    # a later datatake merges into the chunk; an earlier one moves the published step
    for when in (D3, D1):
        with pytest.raises(StoreError, match=rf"B04/{victim.name} is damaged"):
            ingest(cube, [products.scene[(when, "31UET")]], products)
        assert snapshot(cube.path) == before


def test_a_transaction_left_by_the_previous_release_is_rolled_back(tmp_path):
    """s2ingest 0.1 wrote keys in place behind an undo log (txn/keys.log + hard links)."""
    import json as _json
    import os as _os

    from ingest.publish.engine import Cube
    from ingest.grid import NL_GRID

    store = Cube(tmp_path / "c.zarr", NL_GRID, 51).ensure()
    root = tmp_path / "c.zarr"
    old = (root / "S2/R051/.zattrs").read_bytes()
    txn = root / ".s2ingest" / "txn"
    (txn / "undo").mkdir(parents=True)
    _os.link(root / "S2/R051/.zattrs", txn / "undo" / "b1")
    (root / "tmp").write_bytes(b'{"half": "written"}')
    _os.replace(root / "tmp", root / "S2/R051/.zattrs")  # replaced by rename, as zarr 2 did
    (root / "S2/R051/B04/0.0.0").write_bytes(b"new key")
    (txn / "state").write_text(_json.dumps({"state": "open", "group": "S2/R051"}))
    (txn / "keys.log").write_text(
        _json.dumps({"key": "S2/R051/.zattrs", "backup": "b1"}) + "\n"
        + _json.dumps({"key": "S2/R051/B04/0.0.0", "backup": None}) + "\n{\"torn")
    assert store.complete_unfinished() == "rolled back (legacy)"
    assert (root / "S2/R051/.zattrs").read_bytes() == old
    assert not (root / "S2/R051/B04/0.0.0").exists() and not txn.exists()


def test_a_store_that_cannot_be_locked_gives_one_store_error(tmp_path, monkeypatch):
    import errno as _errno

    from ingest.errors import StoreError
    from ingest.store import CubeStore
    from ingest.store import LocalBackend

    grid = CubeGrid("t", "EPSG:28992", 10, (0, 300000, 5000, 306250))
    store, _ = CubeStore.create(tmp_path / "c.zarr", grid)

    import contextlib

    @contextlib.contextmanager
    def full(*a, **k):  # as LocalBackend.lock when .s2ingest/lock cannot be created
        raise OSError(_errno.ENOSPC, "No space left on device")
        yield

    monkeypatch.setattr(LocalBackend, "lock", full)
    with pytest.raises(StoreError, match="cannot lock .* No space left on device; nothing was published"):
        with store.transaction():
            pass


def test_completing_an_unfinished_commit_never_waits_for_a_live_writer(tmp_path):
    """A writer that is staging holds the lock; another command must not queue behind it
    just to "recover" (the live writer finishes its own commit)."""
    from ingest.store import CubeStore

    grid = CubeGrid("t", "EPSG:28992", 10, (0, 300000, 5000, 306250))
    store, _ = CubeStore.create(tmp_path / "c.zarr", grid)
    with store.transaction() as tx:
        tx.put("S2/x", b"staged")  # a staging area exists while this writer works
        assert store.has_unfinished_commit()
        got = []
        other = threading.Thread(
            target=lambda: got.append(CubeStore.open(tmp_path / "c.zarr").complete_unfinished()))
        other.start()
        # a call queued behind the lock would wait for this writer (which holds it until the
        # call returns): the join would time out instead of the call returning
        other.join(300)
        assert not other.is_alive() and got == [None]
