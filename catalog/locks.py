"""Locks the catalog database provides: one around migrations, one per store (DESIGN.md §6),
and the fenced store lease that ``sync`` takes on PostgreSQL (``store_lease``).

PostgreSQL: session-level advisory locks, held by one dedicated connection, so they are
released by the server when the process dies or the connection drops (no stale lock rows).
SQLite: the catalog lives on one machine's disk; migrations are serialised with ``flock`` on a
file beside the database, and the store lock is a no-op (the store's own file lock covers the
one machine that can reach it).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ingest.errors import CatalogError, StoreBusyError, StoreLeaseLostError

log = logging.getLogger(__name__)

# Longest PostgreSQL application_name (NAMEDATALEN - 1).
_APP_NAME_MAX = 63
APP_PREFIX = "s2ingest lock "


class LockTimeout(CatalogError):
    """Another process holds a catalog lock and did not let go in time; ``holder`` says who
    (when the database lets us see it)."""

    def __init__(self, message: str, *, holder: "LockHolder | None" = None) -> None:
        super().__init__(message)
        self.holder = holder


class StoreLockTimeout(LockTimeout):
    """Another process (on this or another machine) holds the store lock."""


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (same on every machine and run).

    DESIGN CHOICE: sha256, not ``hash()`` (salted per process), truncated to PostgreSQL's
    bigint key space; names carry an ``s2ingest:`` prefix so our keys stay apart from other
    applications' and from each other (migrations vs. stores).
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


MIGRATION_LOCK_NAME = "s2ingest:catalog-migrations"
MIGRATION_LOCK_KEY = advisory_key(MIGRATION_LOCK_NAME)


def store_lock_key(store_id: str) -> int:
    """The advisory-lock key of one store (``store_id``: any stable identity, e.g. its URL)."""
    if not store_id:
        raise CatalogError("store_lock needs a store id")
    return advisory_key(f"s2ingest:store:{store_id}")


def default_holder() -> str:
    """``host:pid``, the same form as sync's worker names."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- who holds a lock

@dataclass(frozen=True)
class LockHolder:
    """The database session holding an advisory lock, as far as the server lets us see it."""

    pid: int
    application_name: str | None
    client_addr: str | None
    user: str | None
    since: datetime | None  # when that session connected

    def describe(self) -> str:
        name = self.application_name or ""
        who = name[len(APP_PREFIX):] if name.startswith(APP_PREFIX) else (name or "an unnamed client")
        parts = [who, f"server pid {self.pid}"]
        if self.client_addr:
            parts.append(f"from {self.client_addr}")
        if self.user:
            parts.append(f"user {self.user}")
        if self.since is not None:
            parts.append(f"connected since {self.since.isoformat(timespec='seconds')}")
        return ", ".join(parts)


_HOLDER_SQL = text(
    "SELECT l.pid, a.application_name, host(a.client_addr) AS client_addr, a.usename, a.backend_start "
    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1 "
    "ORDER BY l.pid LIMIT 1"
)


def _split(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint key as (classid = high 32 bits, objid = low 32 bits)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def lock_holder(conn: Connection, key: int) -> LockHolder | None:
    """Who holds the advisory lock ``key`` in this database (None: nobody, or not visible)."""
    hi, lo = _split(key)
    row = conn.execute(_HOLDER_SQL, {"hi": hi, "lo": lo}).first()
    if row is None:
        return None
    return LockHolder(int(row.pid), row.application_name, row.client_addr, row.usename, row.backend_start)


def _holder_text(conn: Connection, key: int) -> tuple[str, LockHolder | None]:
    try:
        holder = lock_holder(conn, key)
    except DBAPIError:  # pg_locks unreadable: still give the timeout, without the name
        return "another session (not visible to this database user)", None
    return (holder.describe() if holder else "another session (released just now?)"), holder


# --------------------------------------------------------------------------- PostgreSQL

def _try_lock(conn: Connection, key: int) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one())


def _unlock(conn: Connection, key: int) -> bool:
    return bool(conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key}).scalar_one())


def _set_application_name(conn: Connection, holder: str) -> None:
    # set_config with a bound value: the holder string never becomes SQL text.
    name = (APP_PREFIX + holder)[:_APP_NAME_MAX]
    conn.execute(text("SELECT set_config('application_name', :v, false)"), {"v": name})


def pg_lock_wait(
    conn: Connection, key: int, *, what: str, timeout: float, poll: float,
    error: type[LockTimeout] = LockTimeout,
) -> None:
    """Take the session-level advisory lock ``key`` on ``conn``, polling
    ``pg_try_advisory_lock`` every ``poll`` seconds for at most ``timeout`` seconds.

    DESIGN CHOICE: polling the non-blocking form instead of a blocking ``pg_advisory_lock``:
    the wait is bounded on our side (no server ``lock_timeout`` juggling), ends with a message
    naming the holder, and an interrupted wait (Ctrl-C) leaves no queued lock request behind.
    """
    if timeout < 0 or poll <= 0:
        raise ValueError("timeout must be >= 0 and poll > 0")
    deadline = time.monotonic() + timeout
    while True:
        got = _try_lock(conn, key)
        conn.commit()  # a session-level lock outlives the transaction; never idle in one
        if got:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            who, holder = _holder_text(conn, key)
            conn.commit()
            raise error(f"{what} is locked by {who}; gave up after {timeout:g} s", holder=holder)
        time.sleep(min(poll, left))


@contextmanager
def _pg_lock_connection(engine: Engine) -> Iterator[Connection]:
    """A connection of its own, in autocommit, closed (not pooled) afterwards.

    DESIGN CHOICE: detached from the pool, so closing it ends the server session and with it
    every session-level lock and the application_name we set; a lock can never leak into a
    pooled connection that someone else then uses.
    """
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except (OperationalError, DBAPIError) as exc:
        from .db import unreachable

        raise unreachable(engine, exc) from exc
    conn.detach()
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class StoreLock:
    """What ``store_lock`` yields. ``kind``: "postgresql" (an advisory lock is held) or
    "local" (SQLite catalog: nothing held here, the store's file lock is the lock)."""

    kind: str
    store_id: str
    holder: str
    key: int | None = None
    _conn: Connection | None = None

    @property
    def local(self) -> bool:
        return self.kind == "local"

    def held(self) -> bool:
        """Is the lock still ours? (False after a lost connection.) Always True for "local"."""
        if self._conn is None:
            return True
        try:
            row = self._conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                     "AND pid = pg_backend_pid() AND classid::bigint = :hi AND objid::bigint = :lo "
                     "AND objsubid = 1"),
                dict(zip(("hi", "lo"), _split(self.key or 0))),
            ).scalar_one()
        except DBAPIError:
            return False
        return bool(row)


@contextmanager
def store_lock(
    engine: Engine,
    store_id: str,
    timeout: float = 0.0,
    poll: float = 1.0,
    *,
    holder: str | None = None,
) -> Iterator[StoreLock]:
    """Hold the store-wide lock of ``store_id`` for the ``with`` block, across machines.

    PostgreSQL: a session-level advisory lock (key from a sha256 of ``store_id``) on a
    connection of its own, tried every ``poll`` seconds for at most ``timeout`` seconds (0: one
    try); then ``StoreLockTimeout`` naming the holder (``holder`` of the other process, default
    ``host:pid``, published as its ``application_name``). Released on exit, and by the server if
    this process dies. SQLite: yields a "local" marker and locks nothing.

    DESIGN CHOICE: session-level, not transaction-level: the lock spans a whole sync run (many
    catalog transactions and the store commit), which no single transaction does.
    """
    who = holder or default_holder()
    if engine.dialect.name != "postgresql":
        # DESIGN CHOICE: a SQLite catalog sits on one machine's disk beside the store, so only
        # processes of that machine can publish; the store's own file lock serialises them.
        yield StoreLock("local", store_id, who)
        return
    key = store_lock_key(store_id)
    with _pg_lock_connection(engine) as conn:
        try:
            _set_application_name(conn, who)
            pg_lock_wait(conn, key, what=f"store {store_id}", timeout=timeout, poll=poll,
                         error=StoreLockTimeout)
        except (OperationalError, DBAPIError) as exc:
            from .db import unreachable

            raise unreachable(engine, exc) from exc
        try:
            yield StoreLock("postgresql", store_id, who, key, conn)
        finally:
            try:
                _unlock(conn, key)
            except DBAPIError:
                pass  # connection gone: the server released the lock with the session


# --------------------------------------------------------------------------- SQLite file lock

@contextmanager
def file_lock(path: Path, *, what: str, timeout: float, poll: float = 0.1) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), waited for at most ``timeout`` s.

    DESIGN CHOICE: the lock file is never deleted: unlinking a file others may have opened
    lets two processes hold "the" lock on two different inodes. It records ``host:pid`` of its
    current holder for the timeout message.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CatalogError(f"cannot create the lock file {path} for {what}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CatalogError(f"cannot lock {path} for {what}: {exc.strerror}") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    who = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "an unknown process"
                except OSError:
                    who = "an unknown process"
                raise LockTimeout(f"{what} is locked by {who} (lock file {path}); "
                                       f"gave up after {timeout:g} s")
            time.sleep(min(poll, left))
        os.ftruncate(fd, 0)
        os.pwrite(fd, default_holder().encode("utf-8"), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- store lease (fenced)

STORE_LEASE_SECONDS = 60.0


def _alive_here(holder: str | None) -> bool | None:
    """For a ``host:pid`` holder on this host: is that process alive? None: another host."""
    host, _, pid = (holder or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CatalogStoreLease:
    """A writer lease of one store in the ``store_leases`` table of a PostgreSQL catalog.

    - **take**: under ``SELECT … FOR UPDATE`` of the store's row: free (released), expired
      (``expires_at`` past on the database clock) or held by a dead process of this host →
      ``holder`` = us, ``token`` + 1, ``expires_at`` = now + ttl. Otherwise wait.
    - **hold**: a heartbeat thread moves ``expires_at`` on every ``ttl / 4`` s, only while the
      row still carries our token.
    - **fence**: ``fence()`` is entered by ``Transaction.commit`` around the journal write:
      it locks the row (``FOR UPDATE``), refuses (``StoreLeaseLostError``) unless the token is
      still ours, and keeps the row locked until the journal is written, so no other writer
      can take the lease over between the check and the commit point.
    - **release**: ``holder`` NULL, expired, only where the token is still ours.

    DESIGN CHOICE: a lease row with a token rather than the session-level advisory lock
    (``store_lock``): an advisory lock is lost silently with its connection, and its holder
    cannot prove at the commit point that nobody else holds it now; the token can, inside
    the same row lock that a takeover needs.
    """

    def __init__(self, engine: Engine, store_id: str, *, holder: str | None = None,
                 ttl: float = STORE_LEASE_SECONDS, poll: float = 0.5) -> None:
        if not store_id:
            raise CatalogError("a store lease needs a store id")
        self.engine = engine
        self.store_id = store_id
        self.holder = holder or default_holder()
        self.ttl = ttl
        self.poll = poll
        self.token: int | None = None
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost

    def _db(self, exc: Exception) -> CatalogError:
        from .db import unreachable

        return unreachable(self.engine, exc)

    def try_acquire(self) -> tuple[bool, str | None]:
        """One attempt: (taken, the other holder when not)."""
        p = {"s": self.store_id, "h": self.holder, "ttl": self.ttl}
        with self.engine.begin() as conn:
            row = conn.execute(text(
                "SELECT holder, token, expires_at <= now() AS expired FROM store_leases "
                "WHERE store_id = :s FOR UPDATE"), p).first()
            if row is None:
                done = conn.execute(text(
                    "INSERT INTO store_leases (store_id, holder, token, acquired_at, expires_at) "
                    "VALUES (:s, :h, 1, now(), now() + :ttl * interval '1 second') "
                    "ON CONFLICT (store_id) DO NOTHING"), p).rowcount
                if not done:  # another writer inserted it just now
                    return False, None
                self.token = 1
                return True, None
            if row.holder is not None and not row.expired and _alive_here(row.holder) is not False:
                return False, row.holder
            self.token = int(conn.execute(text(
                "UPDATE store_leases SET holder = :h, token = token + 1, acquired_at = now(), "
                "expires_at = now() + :ttl * interval '1 second' WHERE store_id = :s "
                "RETURNING token"), p).scalar_one())
            if row.holder is not None:
                log.warning("took over the store lease of %s (%s) on %s", row.holder,
                            "expired" if row.expired else "process gone", self.store_id)
            return True, None

    def acquire(self, timeout: float, on_wait: Callable[[str], None] | None = None) -> None:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                taken, other = self.try_acquire()
            except (OperationalError, DBAPIError) as exc:
                raise self._db(exc) from exc
            if taken:
                break
            who = f" ({other})" if other else ""
            if time.monotonic() >= deadline:
                raise StoreBusyError(f"{self.store_id} is being written by another process{who} "
                                     f"(catalog store lease); gave up after waiting {timeout:.0f} s")
            if not told and on_wait is not None:
                on_wait(f"waiting for {self.store_id}: another process{who} is writing it")
                told = True
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._heartbeat, name="store-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(text(
                "UPDATE store_leases SET expires_at = now() + :ttl * interval '1 second' "
                "WHERE store_id = :s AND token = :t"),
                {"s": self.store_id, "t": self.token, "ttl": self.ttl}).rowcount
        if not n:
            self._lost = True
            log.warning("the store lease of %s was taken over by another writer", self.store_id)
        return bool(n)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.renew():
                    return
            except (OperationalError, DBAPIError) as exc:  # the fence decides
                log.warning("could not renew the store lease of %s: %s", self.store_id, exc)

    @contextmanager
    def fence(self) -> Iterator[None]:
        try:
            conn = self.engine.connect()
        except (OperationalError, DBAPIError) as exc:
            raise self._db(exc) from exc
        with conn:
            tx = conn.begin()
            row = conn.execute(text("SELECT token FROM store_leases WHERE store_id = :s FOR UPDATE"),
                               {"s": self.store_id}).first()
            if row is None or int(row.token) != self.token:
                tx.rollback()
                self._lost = True
                raise StoreLeaseLostError(
                    f"{self.store_id}: another writer took over this writer's store lease "
                    f"(token {self.token}, now {None if row is None else row.token}); "
                    "nothing was published")
            conn.execute(text("UPDATE store_leases SET expires_at = now() + :ttl * interval '1 second' "
                              "WHERE store_id = :s"), {"s": self.store_id, "ttl": self.ttl})
            try:
                yield  # the journal is written while the row stays locked
            except BaseException:
                tx.rollback()
                raise
            tx.commit()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.token is None or self._lost:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE store_leases SET holder = NULL, expires_at = now() "
                                  "WHERE store_id = :s AND token = :t"),
                             {"s": self.store_id, "t": self.token})
        except (OperationalError, DBAPIError) as exc:  # it expires by itself
            log.warning("could not release the store lease of %s: %s", self.store_id, exc)


@contextmanager
def store_lease(engine: Engine, store_id: str, timeout: float = 0.0,
                on_wait: Callable[[str], None] | None = None, *, holder: str | None = None,
                ttl: float = STORE_LEASE_SECONDS) -> Iterator[CatalogStoreLease | None]:
    """Hold the fenced writer lease of ``store_id`` for the ``with`` block (PostgreSQL); yields
    the lease (its ``fence()`` is the commit-point check). SQLite: yields None and holds
    nothing: a SQLite catalog serves one machine, whose store lock (``flock`` or the S3
    lease object) is enough."""
    if engine.dialect.name != "postgresql":
        yield None
        return
    lease = CatalogStoreLease(engine, store_id, holder=holder, ttl=ttl)
    lease.acquire(timeout, on_wait)
    try:
        yield lease
    finally:
        lease.release()
