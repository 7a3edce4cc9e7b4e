"""Catalog locks: concurrent creation of a fresh catalog under the migration lock."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from catalog import db
from catalog.locks import LockTimeout, file_lock

from catalog_fixtures import pg_database_url, pg_fresh_url  # noqa: F401  (fixtures)

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
