"""Catalog test fixtures (imported by tests/test_catalog*.py; not a conftest on purpose).

``catalog_engine`` runs each test on SQLite and, marked ``postgres``, on a throwaway PostgreSQL
database created for the test session (``S2INGEST_TEST_PG_URL``, skipped when unreachable).
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from catalog import db
from catalog.models import Base

PG_URL = os.environ.get("S2INGEST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def product_name(
    platform: str = "S2B",
    start: str = "20230823T095559",
    baseline: str = "0509",
    orbit: int = 122,
    tile: str = "31UFU",
    generated: str = "20230823T124759",
) -> str:
    """A valid L2A product name from its parts."""
    return f"{platform}_MSIL2A_{start}_N{baseline}_R{orbit:03d}_T{tile}_{generated}"


def at(minutes: float) -> datetime:
    """T0 + minutes: tests run on an injected clock."""
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin_url = db.normalize_url(PG_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the server means: skip
        pytest.skip(f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string(hide_password=True)}: {exc}")
    name = f"s2ingest_catalog_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_migrated_url(pg_database_url: str) -> str:
    db.upgrade(pg_database_url)
    return pg_database_url


def _truncate_all(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_engine(pg_migrated_url: str) -> Iterator[Engine]:
    engine = db.make_engine(pg_migrated_url)
    _truncate_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.catalog.sqlite'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_engine(request) -> Engine:
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


def memory_engine() -> Engine:
    """An in-memory SQLite catalog (schema from the models): for fast property tests."""
    engine = db.make_engine("sqlite://")
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def pg_fresh_url(pg_database_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own for one test (no migrations run), dropped after."""
    admin_url = db.normalize_url(PG_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"s2ingest_fresh_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
