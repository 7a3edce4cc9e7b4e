"""Engines, sessions and migrations of the catalog database (DESIGN.md §6).

SQLite by default, in a file beside the store; PostgreSQL by URL for teams. The schema is only
ever created by the alembic migrations (``alembic/`` in the source tree, ``catalog/_migrations``
in an installed wheel), so every catalog carries a revision we can check.
"""
from __future__ import annotations

import importlib.resources
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from catalog.locks import MIGRATION_LOCK_KEY, _unlock, file_lock, pg_lock_wait
from catalog.paths import CATALOG_SUFFIX, default_url_for_store  # noqa: F401 (re-exported)
from catalog.urls import display_url, normalize_url, unreachable
from ingest.errors import CatalogError, ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
UPGRADE_HINT = "run `s2ingest db upgrade`"


# --------------------------------------------------------------------------- URLs
# (normalize_url, display_url and unreachable live in ``catalog.urls``, shared with the locks)

# --------------------------------------------------------------------------- engines

def _sqlite_setup(engine: Engine, in_memory: bool) -> None:
    """Pragmas per connection, and BEGIN IMMEDIATE for every transaction."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            # first: switching to WAL needs the database's lock, which another process creating
            # or migrating the catalog may hold; without the timeout set, the switch gave up
            # after sqlite3's default 5 s ("database is locked") on a busy machine
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                cur.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # DESIGN CHOICE: BEGIN IMMEDIATE takes the write lock at the start, so a claim's read and
        # its update can never interleave with another writer (SQLite has no SKIP LOCKED), and
        # a second writer waits (busy_timeout) instead of failing on a lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL | Path, *, echo: bool = False, **kwargs: Any) -> Engine:
    """An engine for a catalog URL (SQLite: WAL, foreign keys, busy timeout; PostgreSQL: psycopg 3)."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        in_memory = u.database in (None, "", ":memory:")
        if in_memory:
            # One shared connection, so every session sees the same in-memory database.
            kwargs.setdefault("poolclass", StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        else:
            kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_engine(u, echo=echo, **kwargs)
        _sqlite_setup(engine, in_memory)
        return engine
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = kwargs.setdefault("connect_args", {})
        connect_args.setdefault("connect_timeout", 10)
        connect_args.setdefault("application_name", "s2ingest")
        try:
            return create_engine(u, echo=echo, **kwargs)
        except ModuleNotFoundError as exc:
            raise CatalogError(
                f"no PostgreSQL driver ({exc.name}): install s2ingest[postgres] (psycopg[binary])"
            ) from exc
    raise ConfigError(f"unsupported catalog database {display_url(u)}: use SQLite or PostgreSQL")


def check_connection(engine: Engine) -> None:
    """Raise CatalogError (not a driver traceback) when the database is unreachable."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (OperationalError, DBAPIError) as exc:
        raise unreachable(engine, exc) from exc


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error.

    DESIGN CHOICE: catalog functions never commit; the caller's transaction decides, so a publish
    (products + publish row + time steps) is all-or-nothing. Connection failures become
    CatalogError so the CLI reports them as such.
    """
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except OperationalError as exc:
        raise unreachable(engine, exc) if _is_connection_error(exc) else CatalogError(
            f"catalog database error: {str(exc.orig).strip()}"
        ) from exc


def _is_connection_error(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return exc.connection_invalidated or any(s in text for s in _CONNECTION_ERRORS)


_CONNECTION_ERRORS = ("could not connect", "connection refused", "unable to open", "server closed", "timeout expired")


# --------------------------------------------------------------------------- migrations

def migrations_dir() -> Path:
    """The alembic script directory: packaged with the wheel, else the source tree's ``alembic/``.

    DESIGN CHOICE: the top-level ``alembic/`` is no Python package (an ``alembic/__init__.py``
    would shadow the alembic library when running from the repo root); the build maps it into
    the wheel as ``catalog/_migrations`` (see setup.py).
    """
    try:
        packaged = Path(str(importlib.resources.files("catalog").joinpath("_migrations")))
        if (packaged / "env.py").is_file():
            return packaged
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped installs
        pass
    source = Path(__file__).resolve().parent.parent / "alembic"
    if (source / "env.py").is_file():
        return source
    raise CatalogError("the catalog migrations are missing from this installation (catalog/_migrations)")


def alembic_config(connection: Connection | None = None) -> Any:
    """An alembic Config pointing at our migrations, optionally bound to a connection."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


VERSION_TABLE = "alembic_version"  # alembic's default, which our env.py keeps
# The newest migration in ``alembic/versions``. DESIGN CHOICE: a constant, so opening a catalog
# (every command) checks its schema without loading alembic and parsing every migration
# script; ``script_head()`` reads it from the scripts, and a test holds the two equal.
HEAD_REVISION = "0006"


def head_revision() -> str:
    """The newest migration this s2ingest knows."""
    return HEAD_REVISION


def script_head() -> str:
    """The head of the migration scripts themselves (alembic's ``ScriptDirectory``)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - packaging bug
        raise CatalogError("no catalog migrations found")
    return head


def _engine(url_or_engine: str | URL | Path | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return make_engine(url_or_engine), True


def current_revision(url_or_engine: str | URL | Path | Engine) -> str | None:
    """The catalog's alembic revision, or None for an empty database.

    DESIGN CHOICE: read from alembic's version table (``alembic_version.version_num``, one
    row on our linear history) with SQLAlchemy alone, as alembic's ``MigrationContext``
    does, so a read-only command never imports alembic; migrations still run through it.
    """
    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect() as conn:
            return _revision_of(conn)
    except (OperationalError, DBAPIError) as exc:
        raise unreachable(engine, exc) from exc
    finally:
        if owned:
            engine.dispose()


def upgrade(url_or_engine: str | URL | Path | Engine, revision: str = "head") -> str | None:
    """Migrate the catalog up to ``revision`` in one transaction; returns the new revision.
    A new SQLite catalog's folder is created (a new cube in a new folder, ``init``/``sync``)."""
    if not isinstance(url_or_engine, Engine):
        _make_sqlite_folder(url_or_engine)
    return _migrate(url_or_engine, revision, down=False)


def _make_sqlite_folder(url: str | URL | Path) -> None:
    """Create the folder of a SQLite catalog file that is about to be created.

    DESIGN CHOICE: ``sync --store new/dir/cube.zarr`` makes the store's folders, so the catalog
    beside it gets its folder too, instead of SQLite's "unable to open database file"."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)


def downgrade(url_or_engine: str | URL | Path | Engine, revision: str) -> str | None:
    """Migrate the catalog down to ``revision`` ("base": empty) in one transaction."""
    return _migrate(url_or_engine, revision, down=True)


MIGRATION_LOCK_TIMEOUT = 600.0  # seconds another migrating process may keep us waiting
MIGRATION_LOCK_POLL = 0.2


def migration_lock_path(engine: Engine) -> Path | None:
    """``<db>.lock`` beside a SQLite catalog file; None for PostgreSQL and in-memory SQLite."""
    u = engine.url
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(str(u.database) + ".lock")


@contextmanager
def migration_lock(conn: Connection, *, timeout: float | None = None) -> Iterator[None]:
    """Serialise "check the revision + migrate" between processes, on the migration connection.

    DESIGN CHOICE: PostgreSQL takes a session-level advisory lock with one fixed project key
    (``locks.MIGRATION_LOCK_KEY``) on this very connection, so any number of processes may
    find a fresh database at once: one migrates, the others wait, then see the new revision.
    SQLite takes ``flock`` on ``<db>.lock`` beside the file (created only here, i.e. only when a
    catalog is being created or migrated); its BEGIN IMMEDIATE would serialise the DDL as well,
    but only for busy_timeout, and not the check before it. In-memory SQLite has one
    connection and needs nothing. Waiting longer than ``timeout`` raises ``LockTimeout``
    naming the holder.
    """
    what = f"catalog {display_url(conn.engine)} (being migrated)"
    timeout = MIGRATION_LOCK_TIMEOUT if timeout is None else timeout
    if conn.dialect.name == "postgresql":
        pg_lock_wait(conn, MIGRATION_LOCK_KEY, what=what, timeout=timeout, poll=MIGRATION_LOCK_POLL)
        try:
            yield
        finally:
            try:
                if conn.in_transaction():
                    conn.rollback()
                _unlock(conn, MIGRATION_LOCK_KEY)
                conn.commit()
            except DBAPIError:
                # The session is broken; drop it, which releases its locks, rather than pool it.
                conn.invalidate()
        return
    path = migration_lock_path(conn.engine)
    if path is None:
        yield
        return
    with file_lock(path, what=what, timeout=timeout):
        yield


def _revision_of(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise CatalogError(f"catalog has several schema revisions {sorted(rows)}: {UPGRADE_HINT}")
    return rows[0] if rows else None


def _is_empty(conn: Connection) -> bool:
    return _revision_of(conn) is None and not inspect(conn).get_table_names()


def _migrate(
    url_or_engine: str | URL | Path | Engine, revision: str, *, down: bool, only_if_empty: bool = False
) -> str | None:
    """Run alembic under the migration lock. With ``only_if_empty`` (open_catalog creating a
    fresh catalog) the emptiness is checked again under the lock, and a database that another
    process created meanwhile is left alone."""
    from alembic import command

    run = command.downgrade if down else command.upgrade
    engine, owned = _engine(url_or_engine)
    try:
        if not down and revision == "head" and not only_if_empty:
            # DESIGN CHOICE: a catalog already at head needs no lock (and touches no lock
            # file): a migration only ever moves it forward, so "at head" cannot be undone.
            current = current_revision(engine)
            if current == head_revision():
                return current
        with engine.connect() as conn, migration_lock(conn):
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # DESIGN CHOICE: SQLite ALTERs are table rebuilds (alembic batch mode); with
                # foreign keys on, dropping the old table would cascade. The pragma is a no-op
                # inside a transaction, so set it first, and check the keys before committing.
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            try:
                with conn.begin():
                    if not only_if_empty or _is_empty(conn):
                        run(alembic_config(conn), revision)
                    if sqlite:
                        bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if bad:
                            raise CatalogError(f"migration left broken foreign keys: {bad[:5]}")
            finally:
                if sqlite:
                    conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
        return current_revision(engine)
    except (OperationalError, DBAPIError) as exc:
        if _is_connection_error(exc):
            raise unreachable(engine, exc) from exc
        raise CatalogError(f"catalog migration failed: {str(exc.orig).strip()}") from exc
    finally:
        if owned:
            engine.dispose()


def ensure_current(engine: Engine) -> str:
    """Refuse to work on a catalog whose schema is not the one this code was written for."""
    head = head_revision()
    current = current_revision(engine)
    if current != head:
        raise CatalogError(
            f"catalog {display_url(engine)} at revision {current or '<empty>'}, "
            f"this s2ingest needs {head}: {UPGRADE_HINT}"
        )
    return current


def open_catalog(url: str | URL | Path, *, create: bool = True) -> Engine:
    """An engine on a usable catalog: an empty database is created at head when ``create``;
    an existing one is never migrated implicitly (it may be shared by other s2ingest versions).
    Safe to call from many processes at once on a fresh database (``migration_lock``).
    """
    if create and not isinstance(url, Engine):
        _make_sqlite_folder(url)
    engine = make_engine(url)
    try:
        if create and current_revision(engine) is None and not _has_tables(engine):
            # Checked again under the migration lock: several processes may get here at once.
            _migrate(engine, "head", down=False, only_if_empty=True)
        ensure_current(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def sqlite_file(url: str | URL | Path) -> Path | None:
    """The file of a SQLite catalog URL (None for PostgreSQL and in-memory SQLite)."""
    u = normalize_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


def open_existing_catalog(url: str | URL | Path, *, hint: str = "") -> Engine:
    """``open_catalog(create=False)`` that never creates anything: a SQLite file that does
    not exist is a CatalogError ("no catalog at ...", then ``hint``) instead of a new empty file."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise CatalogError(f"no catalog at {path}{hint}")
    return open_catalog(url, create=False)


def _has_tables(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).get_table_names())
    except (OperationalError, DBAPIError) as exc:
        raise unreachable(engine, exc) from exc
