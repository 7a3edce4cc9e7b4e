"""Alembic environment of the s2ingest catalog.

Used three ways: by ``catalog.db.upgrade`` (a connection is handed over in
``config.attributes["connection"]``), by developers running ``alembic`` from the repo root
(URL from ``-x url=...``, ``S2INGEST_CATALOG_URL`` or ``sqlalchemy.url`` in alembic.ini), and
offline with ``--sql``. This directory is deliberately not a Python package (see catalog/db.py).
"""
from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from catalog.db import make_engine, normalize_url
from catalog.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("S2INGEST_CATALOG_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no catalog URL: pass -x url=..., or set S2INGEST_CATALOG_URL")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: alembic rebuilds the table ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Our SQLite engines emit BEGIN themselves (catalog.db), so DDL there is transactional too.
        transactional_ddl=True,
    )


def run_migrations_offline() -> None:
    url = normalize_url(_url())
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True,
        dialect_opts={"paramstyle": "named"}, render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
