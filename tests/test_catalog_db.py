"""Engines, URLs, migrations and their packaging."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from catalog import db
from catalog.models import Base
from ingest.errors import CatalogError, ConfigError

from catalog_fixtures import (  # noqa: F401  (fixtures)
    catalog_engine, pg_database_url, pg_engine, pg_migrated_url, sqlite_engine, sqlite_url,
)

REPO = Path(__file__).resolve().parent.parent


def test_default_url_is_beside_the_store(tmp_path):
    url = db.default_url_for_store(tmp_path / "cubes" / "nl.zarr")
    assert url == f"sqlite:///{tmp_path}/cubes/nl.catalog.sqlite"
    assert db.default_url_for_store(str(tmp_path / "x")) == f"sqlite:///{tmp_path}/x.catalog.sqlite"
    with pytest.raises(ConfigError):
        db.default_url_for_store("s3://bucket/nl.zarr")


def test_normalize_url_pins_psycopg3_and_accepts_paths(tmp_path):
    assert db.normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert db.normalize_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert db.normalize_url("postgresql+psycopg2://u@h/d").drivername == "postgresql+psycopg"
    u = db.normalize_url(tmp_path / "c.sqlite")
    assert u.drivername == "sqlite" and u.database == str(tmp_path / "c.sqlite")
    assert "secret" not in db.display_url("postgresql://u:secret@h/d")


def test_sqlite_engine_pragmas(sqlite_engine):
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS


def test_sqlite_catalog_is_a_file_beside_the_store(tmp_path):
    store = tmp_path / "nl.zarr"
    store.mkdir()
    engine = db.open_catalog(db.default_url_for_store(store))
    engine.dispose()
    assert (tmp_path / "nl.catalog.sqlite").is_file()
    assert list(store.iterdir()) == []


def test_upgrade_ensure_current_and_downgrade(sqlite_url):
    engine = db.make_engine(sqlite_url)
    with pytest.raises(CatalogError, match=r"at revision <empty>, this s2ingest needs 0006: run `s2ingest db upgrade`"):
        db.ensure_current(engine)
    assert db.upgrade(sqlite_url) == db.head_revision() == "0006"
    assert db.ensure_current(engine) == "0006"
    assert db.upgrade(engine) == "0006"  # idempotent
    assert db.downgrade(engine, "base") is None
    assert inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_the_head_constant_is_the_head_of_the_migration_scripts():
    # a new migration must move HEAD_REVISION too (every command checks against the constant)
    assert db.head_revision() == db.script_head()


def test_current_revision_reads_what_alembic_reads(sqlite_url):
    from alembic.runtime.migration import MigrationContext

    engine = db.make_engine(sqlite_url)
    try:
        for step in (None, "0003", "head"):
            if step is not None:
                db.upgrade(engine, step)
            with engine.connect() as conn:
                expected = MigrationContext.configure(conn).get_current_revision()
            assert db.current_revision(engine) == expected
        assert expected == db.head_revision()
    finally:
        engine.dispose()


def test_ensure_current_names_both_revisions(sqlite_engine):
    with sqlite_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000old'"))
    with pytest.raises(CatalogError, match=r"revision 0000old, this s2ingest needs 0006.*s2ingest db upgrade"):
        db.ensure_current(sqlite_engine)


def test_open_catalog_creates_new_but_never_migrates_existing(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    db.open_catalog(url).dispose()
    assert db.current_revision(url) == "0006"
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000old'"))
    engine.dispose()
    with pytest.raises(CatalogError, match="s2ingest db upgrade"):
        db.open_catalog(url)


def test_unreachable_postgres_is_a_catalog_error():
    url = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    engine = db.make_engine(url)
    with pytest.raises(CatalogError, match="cannot reach the catalog database postgresql"):
        db.check_connection(engine)
    with pytest.raises(CatalogError, match="cannot reach"):
        db.ensure_current(engine)
    with pytest.raises(CatalogError, match="cannot reach"):
        db.upgrade(url)
    with pytest.raises(CatalogError, match="cannot reach"):
        with db.session_scope(engine) as s:
            s.execute(text("SELECT 1"))


def test_unopenable_sqlite_is_a_catalog_error(tmp_path):
    with pytest.raises(CatalogError, match="cannot reach"):
        db.current_revision(f"sqlite:///{tmp_path}/missing-dir/c.sqlite")


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def test_migrations_match_models(catalog_engine):
    """Autogenerate finds nothing to do: the migrations build exactly the models' schema."""
    assert _diff(catalog_engine) == []


@pytest.mark.postgres
def test_migration_roundtrip_on_postgres(pg_migrated_url):
    pg_database_url = pg_migrated_url
    assert db.downgrade(pg_database_url, "base") is None
    assert db.upgrade(pg_database_url) == "0006"
    assert db.current_revision(pg_database_url) == "0006"


def test_migrations_dir_is_the_source_tree_here():
    assert (db.migrations_dir() / "env.py").is_file()
    assert not (REPO / "alembic" / "__init__.py").exists(), "alembic/ must not shadow the alembic library"


@pytest.mark.slow
def test_wheel_ships_migrations(tmp_path):
    """Build the wheel, install it into a throwaway venv, migrate a catalog from outside the repo."""
    wheels = tmp_path / "whl"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True, text=True,
    )
    if build.returncode != 0:
        if "Could not find a version" in build.stderr or "No matching distribution" in build.stderr:
            pytest.skip("cannot fetch the build backend (offline)")
        pytest.fail(build.stderr[-3000:])
    (wheel,) = wheels.glob("s2ingest-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    # Unpack the wheel (what pip install does for a pure wheel) and borrow our dependencies
    # through a plain path entry, which does not activate our editable install.
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(purelib)
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent(f"""
        import catalog, catalog.db as d
        assert catalog.__file__.startswith({str(purelib)!r}), catalog.__file__
        mig = d.migrations_dir()
        assert str(mig).startswith({str(purelib)!r}), mig
        assert d.upgrade({str(tmp_path / 'c.sqlite')!r}) == d.head_revision()
        d.ensure_current(d.make_engine({str(tmp_path / 'c.sqlite')!r}))
        print("ok", mig)
    """)
    out = subprocess.run([str(py), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
