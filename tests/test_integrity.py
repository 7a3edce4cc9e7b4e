"""The cube tells the truth: plans bound to versions, concurrent writers, readers during
rewrites, the settling window (DESIGN.md §5).

Writers run as real ``s2ingest`` processes where the property is about processes (the lock,
the catalog, what a reader sees while another process writes).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zarr

from catalog_fixtures import pg_database_url, pg_fresh_url  # noqa: F401 (fixtures)
from conftest import D1, D2, D3, GROUP, PROBES, assert_cubes_equal, new_cube, ingest
from ingest.publish.engine import ingest_products, plan_products, write_plan
from ingest.errors import StalePlanError
from ingest.products.safe import read_product
from ingest.store import CubeStore, read_published
from ingest.synth import make_product
from ingest.warping.warp import parse_resampling
from conftest import cli_env
from test_commit import _folder, _sync, catalog_rows

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))


# -- a plan names the version it was made from ------------------------------------------------
def test_a_stale_plan_never_reaches_the_store(tmp_path, products):
    cube = new_cube(tmp_path / "cube.zarr")
    ingest(cube, [products.scene[(D1, "31UET")]], products)
    store = CubeStore.open(cube.path)
    a = [read_product(products.scene[(D2, "31UET")])]
    b = [read_product(products.scene[(D3, "31UET")])]
    plan_a = plan_products(cube, store, a, products.resolve)
    plan_b = plan_products(cube, store, b, products.resolve)  # made from the same version
    assert plan_a.base_version == plan_b.base_version == store.version()
    write_plan(cube, store, plan_a, a, products.resolve, parse_resampling(None), progress=False)
    before = read_published(cube.path, GROUP)
    with pytest.raises(StalePlanError, match=f"made from version {plan_b.base_version}"):
        write_plan(cube, store, plan_b, b, products.resolve, parse_resampling(None), progress=False)
    assert read_published(cube.path, GROUP) == before  # nothing written, D2 not dropped
    # the engine's own path plans under the lock, so the same products simply go in
    ingest_products(cube, b, products.resolve, parse_resampling(None), progress=False)
    assert read_published(cube.path, GROUP).times == (D1, D2, D3)


# -- two writers at once -------------------------------------------------------------------------
def _two_syncs_at_once(store: Path, sources: list[Path], config: Path, db: str | None = None):
    extra = ["--db", db] if db else []
    procs = [subprocess.Popen([S2INGEST, "sync", "--config", str(config), "--store", str(store),
                               "--source", str(src), "--no-progress", *extra],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src in sources]
    return [(p.wait(timeout=600), *p.communicate()) for p in procs]


@pytest.fixture(scope="module")
def one_writer(tmp_path_factory, products, empty_config):
    """The four products of D1 and D3 published by one sync: what two concurrent syncs must equal."""
    root = tmp_path_factory.mktemp("one_writer")
    src = _folder([products.scene[(d, t)] for d in (D1, D3) for t in ("31UET", "31UFT")], root / "src")
    store = root / "cube" / "cube.zarr"
    assert _sync(store, src, empty_config).returncode == 0
    return store


def _sources(products, root: Path) -> list[Path]:
    return [_folder([products.scene[(d, t)] for t in ("31UET", "31UFT")], root / f"src{i}")
            for i, d in enumerate((D1, D3))]


@pytest.mark.slow
def test_two_syncs_on_one_store_both_complete(tmp_path, products, one_writer, empty_config):
    store = tmp_path / "cube" / "cube.zarr"
    store.parent.mkdir()
    results = _two_syncs_at_once(store, _sources(products, tmp_path), empty_config)
    for rc, out, err in results:
        assert rc == 0, out + err
    assert_cubes_equal(store, one_writer)
    assert read_published(store, GROUP).times == (D1, D3)
    rows = catalog_rows(store)
    assert {s for _, s in rows["products"]} == {"published"} and rows["leases"] == []
    assert rows["time_steps"] == catalog_rows(one_writer)["time_steps"]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_syncs_on_one_store_and_a_fresh_postgresql_catalog(tmp_path, products, one_writer,
                                                               empty_config, pg_fresh_url):  # noqa: F811
    store = tmp_path / "cube" / "cube.zarr"
    store.parent.mkdir()
    results = _two_syncs_at_once(store, _sources(products, tmp_path), empty_config, db=pg_fresh_url)
    for rc, out, err in results:
        assert rc == 0, out + err  # no duplicate alembic_version, no "being written" refusal
    assert_cubes_equal(store, one_writer)
    assert read_published(store, GROUP).times == (D1, D3)
    r = subprocess.run([S2INGEST, "verify", "--config", str(empty_config), "--store", str(store),
                        "--db", pg_fresh_url, "--deep"], env=cli_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_writer_gives_up_after_the_lock_timeout_and_releases_its_claims(tmp_path, products, empty_config):
    src = _folder([products.scene[(D1, "31UET")]], tmp_path / "src")
    store = tmp_path / "cube" / "cube.zarr"
    assert _sync(store, _folder([products.scene[(D3, "31UET")]], tmp_path / "first"), empty_config).returncode == 0
    holder = CubeStore.open(store)
    with holder.transaction():  # another writer holds the store
        r = subprocess.run([S2INGEST, "sync", "--config", str(empty_config), "--store", str(store),
                            "--source", str(src), "--no-progress", "--lock-timeout", "1"],
                           env=cli_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "being written by another process" in r.stderr and "waiting" in r.stdout + r.stderr
    assert catalog_rows(store)["leases"] == []
    assert _sync(store, src, empty_config).returncode == 0  # and the next run completes
    assert read_published(store, GROUP).times == (D1, D3)


# -- a reader during an insertion ---------------------------------------------------------------
@pytest.mark.slow
def test_a_reader_during_an_insertion_sees_mislabelled_data_only_while_keys_switch(
        tmp_path, products, empty_config):
    """A reader polls the cube (as readers do: consolidated metadata, then coordinates, then
    chunks) while another process inserts D2 between the published D1 and D3. Every
    observation where a time label's pixels are not that datatake's is a mix; they may only
    happen inside the short switch at the end of the commit (DESIGN.md §5)."""
    base_src = _folder([products.scene[(d, t)] for d in (D1, D3) for t in ("31UET", "31UFT")], tmp_path / "b")
    late = _folder([products.scene[(D2, t)] for t in ("31UET", "31UFT")], tmp_path / "late")
    store = tmp_path / "cube" / "cube.zarr"
    assert _sync(store, base_src, empty_config).returncode == 0
    final = tmp_path / "final" / "cube.zarr"
    shutil.copytree(store.parent, final.parent)
    assert _sync(final, late, empty_config).returncode == 0
    r, c = PROBES["OVERLAP"]
    g = zarr.open_consolidated(str(final), path=GROUP, mode="r")
    truth = {int(t): tuple(int(v) for v in g["B04"][i, r:r + 3, c]) for i, t in enumerate(g["time"][:])}

    observations: list[tuple[float, bool]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                g = zarr.open_consolidated(str(store), path=GROUP, mode="r")
                times = g["time"][:]
                b04 = g["B04"][:, r:r + 3, c]
            except (KeyError, ValueError, OSError):  # a key replaced between two reads
                observations.append((time.monotonic(), False))
                continue
            ok = all(truth.get(int(t)) == tuple(int(v) for v in b04[i]) for i, t in enumerate(times))
            observations.append((time.monotonic(), ok))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        t0 = time.monotonic()
        assert _sync(store, late, empty_config).returncode == 0
        t1 = time.monotonic()
    finally:
        stop.set()
        reader.join()
    assert len(observations) > 50, "the reader hardly read"
    mixed = [t for t, ok in observations if not ok]
    window = (max(mixed) - min(mixed)) if mixed else 0.0
    print(f"\nreader: {len(observations)} reads during a {t1 - t0:.1f} s insertion, "
          f"{len(mixed)} mixed, mixed window {window * 1000:.1f} ms")
    assert window < 0.5, f"readers saw mislabelled data for {window:.2f} s"
    assert observations[-1][1]
    assert_cubes_equal(store, final)


def test_the_switch_of_an_insertion_takes_milliseconds(tmp_path, products):
    """Everything of a rewrite is staged first; what readers can catch mixed is the switch."""
    cube = new_cube(tmp_path / "cube.zarr")
    ingest(cube, [products.scene[(d, t)] for d in (D1, D3) for t in ("31UET", "31UFT")], products)
    _, report = ingest(cube, [products.scene[(D2, t)] for t in ("31UET", "31UFT")], products)
    c = report.commit
    assert read_published(cube.path, GROUP).times == (D1, D2, D3)
    print(f"\ninsertion: {c.switched} keys switched in {c.switch_seconds * 1000:.1f} ms")
    assert c.switched > 17 * 4  # every variable's chunks moved, plus coordinates and metadata
    assert c.switch_seconds < 0.5


# -- settling window -------------------------------------------------------------------------
def test_the_newest_datatakes_settle_before_they_are_published(tmp_path, empty_config):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    young = make_product(tmp_path / "src", tile="31UFT", datatake_start=now - timedelta(hours=1),
                         platform="S2A", window=(4704, 300, 120, 240))
    store = tmp_path / "cube" / "cube.zarr"
    r = _sync(store, young.parent, empty_config)
    assert r.returncode == 0, r.stderr
    assert "held 1 products" in r.stdout
    assert not store.exists() or read_published(store, GROUP).length == 0
    assert dict(catalog_rows(store)["products"])[young.name.removesuffix(".SAFE")] == "downloaded"
    r = subprocess.run([S2INGEST, "sync", "--config", str(empty_config), "--store", str(store),
                        "--source", str(young.parent), "--no-progress", "--settle", "0"],
                       env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert read_published(store, GROUP).length == 1


# -- s2ingest verify ---------------------------------------------------------------------------
def test_verify_deep_names_a_corrupted_chunk_locally_and_over_http(tmp_path, products, empty_config):
    import http.server
    import functools

    src = _folder([products.scene[(D1, t)] for t in ("31UET", "31UFT")], tmp_path / "src")
    store = tmp_path / "cube" / "cube.zarr"
    assert _sync(store, src, empty_config).returncode == 0

    def verify(*args):
        return subprocess.run([S2INGEST, "verify", "--config", str(empty_config), *args],
                              env=cli_env(), capture_output=True, text=True, timeout=300)

    files = {p for p in store.parent.rglob("*") if not p.name.endswith(("-wal", "-shm"))}
    r = verify("--store", str(store), "--deep")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok:" in r.stdout and "catalog" in r.stdout
    assert {p for p in store.parent.rglob("*") if not p.name.endswith(("-wal", "-shm"))} == files
    victim = sorted((store / GROUP / "B04").glob("0.*"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only --deep can tell
    victim.write_bytes(bytes(data))
    key = f"{GROUP}/B04/{victim.name}"
    assert verify("--store", str(store)).returncode == 0
    r = verify("--store", str(store), "--deep")
    assert r.returncode == 9 and key in r.stdout and "sha256" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("MISMATCH") == 1
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(store.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cube.zarr"
        r = verify(url, "--deep")
        assert r.returncode == 9 and key in r.stdout, r.stdout + r.stderr
        victim.unlink()  # a missing key is found without --deep
        r = verify(url)
        assert r.returncode == 9 and f"{key}: missing" in r.stdout, r.stdout + r.stderr
    finally:
        server.shutdown()
