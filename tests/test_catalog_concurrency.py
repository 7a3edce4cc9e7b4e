"""Catalog locks: concurrent creation of a fresh catalog, and the store-wide lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from catalog import db
from catalog.locks import LockTimeout, StoreLockTimeout, file_lock, store_lock, store_lock_key
from ingest.errors import CatalogError

from catalog_fixtures import (  # noqa: F401  (fixtures)
    pg_database_url, pg_engine, pg_fresh_url, pg_migrated_url, sqlite_engine, sqlite_url,
)

REPO = Path(__file__).resolve().parent.parent
N_PROCESSES = 5

# Each process waits for the "go" file, so they all hit the fresh database at the same moment.
OPEN_SCRIPT = textwrap.dedent("""
    import os, sys, time
    go, url = sys.argv[1], sys.argv[2]
    from catalog import db
    while not os.path.exists(go):
        time.sleep(0.005)
    db.open_catalog(url).dispose()
    print("opened", os.getpid())
""")


def _open_at_once(url: str, tmp_path: Path, n: int = N_PROCESSES) -> list[subprocess.CompletedProcess]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_SCRIPT, str(go), url], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    time.sleep(1.5)  # let every interpreter start and import catalog
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def _assert_one_head(url: str) -> None:
    assert db.current_revision(url) == db.head_revision()
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        db.ensure_current(engine)
    finally:
        engine.dispose()


def test_processes_create_a_fresh_sqlite_catalog_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.catalog.sqlite'}"
    results = _open_at_once(url, tmp_path)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    _assert_one_head(url)
    assert (tmp_path / "fresh.catalog.sqlite.lock").is_file()


@pytest.mark.postgres
def test_processes_create_a_fresh_postgres_catalog_at_once(pg_fresh_url, tmp_path):
    results = _open_at_once(pg_fresh_url, tmp_path)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    _assert_one_head(pg_fresh_url)


def test_open_existing_catalog_creates_no_lock_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    db.upgrade(url)
    (tmp_path / "c.sqlite.lock").unlink()
    db.open_catalog(url).dispose()
    assert not (tmp_path / "c.sqlite.lock").exists()


def test_sqlite_migration_waits_for_the_lock_holder_and_names_it(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT", 0.3)
    with file_lock(tmp_path / "c.sqlite.lock", what="test", timeout=1):
        with pytest.raises(LockTimeout, match=rf"being migrated\) is locked by .*:{os.getpid()}.*c\.sqlite\.lock"):
            db.upgrade(url)
    assert db.upgrade(url) == db.head_revision()


@pytest.mark.postgres
def test_postgres_migration_lock_timeout_names_the_holder(pg_fresh_url, monkeypatch):
    from catalog.locks import MIGRATION_LOCK_KEY, _set_application_name, _try_lock, _unlock

    holder = db.make_engine(pg_fresh_url)
    monkeypatch.setattr(db, "MIGRATION_LOCK_TIMEOUT", 0.5)
    try:
        with holder.connect() as conn:
            _set_application_name(conn, "migrator-host:4242")
            assert _try_lock(conn, MIGRATION_LOCK_KEY)
            conn.commit()
            with pytest.raises(LockTimeout, match=r"being migrated\) is locked by migrator-host:4242"):
                db.open_catalog(pg_fresh_url)
            assert db.current_revision(pg_fresh_url) is None  # nothing half-done
            assert _unlock(conn, MIGRATION_LOCK_KEY)
            conn.commit()
        db.open_catalog(pg_fresh_url).dispose()
        _assert_one_head(pg_fresh_url)
    finally:
        holder.dispose()


# --------------------------------------------------------------------------- store_lock

def test_store_lock_on_sqlite_is_a_local_marker(sqlite_engine):
    with store_lock(sqlite_engine, "/data/nl.zarr", timeout=0) as a:
        with store_lock(sqlite_engine, "/data/nl.zarr", timeout=0) as b:  # no-op: never blocks
            assert a.local and b.local and a.kind == "local" and a.held()


def test_store_lock_keys_are_stable_and_distinct():
    assert store_lock_key("/data/nl.zarr") == store_lock_key("/data/nl.zarr")
    assert store_lock_key("/data/nl.zarr") != store_lock_key("/data/be.zarr")
    assert -(2**63) <= store_lock_key("x") < 2**63
    with pytest.raises(CatalogError):
        store_lock_key("")


@pytest.mark.postgres
def test_second_holder_waits_and_gets_the_lock_after_release(pg_engine):
    events: list[tuple[str, float]] = []
    release_first = threading.Event()
    first_holds = threading.Event()

    def first() -> None:
        with store_lock(pg_engine, "/data/nl.zarr", holder="first:1") as lock:
            assert lock.kind == "postgresql" and lock.held()
            first_holds.set()
            release_first.wait(10)
            events.append(("first released", time.monotonic()))

    def second() -> None:
        with store_lock(pg_engine, "/data/nl.zarr", timeout=10, poll=0.05, holder="second:2") as lock:
            events.append(("second acquired", time.monotonic()))
            assert lock.held()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_holds.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.5)
    assert events == []  # still waiting
    release_first.set()
    t1.join(10)
    t2.join(10)
    assert [e for e, _ in events] == ["first released", "second acquired"]


@pytest.mark.postgres
def test_store_lock_timeout_says_who_holds_it(pg_engine):
    with store_lock(pg_engine, "/data/nl.zarr", holder="ingest-host:777"):
        start = time.monotonic()
        with pytest.raises(StoreLockTimeout, match=r"store /data/nl.zarr is locked by ingest-host:777, server pid \d+.*0.3 s") as info:
            with store_lock(pg_engine, "/data/nl.zarr", timeout=0.3, poll=0.05):
                pytest.fail("got a lock someone else holds")
        assert 0.3 <= time.monotonic() - start < 5
        assert isinstance(info.value, CatalogError)
        assert info.value.holder is not None and info.value.holder.application_name.endswith("ingest-host:777")
        with store_lock(pg_engine, "/data/other.zarr", timeout=0):  # other stores are free
            pass
    with store_lock(pg_engine, "/data/nl.zarr", timeout=0):  # released on exit
        pass


@pytest.mark.postgres
def test_store_lock_is_released_when_the_holder_process_dies(pg_migrated_url, pg_engine):
    script = textwrap.dedent("""
        import sys, time
        from catalog import db
        from catalog.locks import store_lock
        engine = db.make_engine(sys.argv[1])
        with store_lock(engine, "/data/nl.zarr", holder="doomed:1"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, pg_migrated_url], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read() if proc.poll() is not None else ""
        with pytest.raises(StoreLockTimeout, match="doomed:1"):
            with store_lock(pg_engine, "/data/nl.zarr", timeout=0):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with store_lock(pg_engine, "/data/nl.zarr", timeout=10, poll=0.1) as lock:
            assert lock.held()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.postgres
def test_store_lock_leaves_no_lock_in_the_pool(pg_engine):
    with store_lock(pg_engine, "/data/nl.zarr"):
        pass
    with pg_engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar_one()
    assert n == 0
