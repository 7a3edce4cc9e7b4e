"""Locks the catalog database provides: one around migrations (DESIGN.md §6), and the fenced
store lease that ``sync`` takes on PostgreSQL (``store_lease``, DESIGN.md §5).

Migrations: on PostgreSQL a session-level advisory lock, held by one dedicated connection, so
the server releases it when the process dies or the connection drops (no stale lock rows); on
SQLite (the catalog lives on one machine's disk) ``flock`` on a file beside the database.
Holder names, liveness and the bounded wait are ``ingest.holders``'.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from catalog.urls import unreachable
import ingest.holders as holders
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


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (same on every machine and run).

    DESIGN CHOICE: sha256, not ``hash()`` (salted per process), truncated to PostgreSQL's
    bigint key space; names carry an ``s2ingest:`` prefix so our keys stay apart from other
    applications'.
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


MIGRATION_LOCK_NAME = "s2ingest:catalog-migrations"
MIGRATION_LOCK_KEY = advisory_key(MIGRATION_LOCK_NAME)


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

    def take() -> tuple[bool, None]:
        got = _try_lock(conn, key)
        conn.commit()  # a session-level lock outlives the transaction; never idle in one
        return got, None

    def busy(_unknown) -> LockTimeout:
        who, holder = _holder_text(conn, key)  # asked once, when giving up
        conn.commit()
        return error(f"{what} is locked by {who}; gave up after {timeout:g} s", holder=holder)

    holders.wait(take, timeout=timeout, poll=poll, busy=busy)


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
        def take() -> tuple[bool, None]:
            try:
                return holders.try_flock(fd), None
            except OSError as exc:
                raise CatalogError(f"cannot lock {path} for {what}: {exc.strerror}") from exc

        holders.wait(take, timeout=timeout, poll=poll, busy=lambda _: LockTimeout(
            f"{what} is locked by {holders.recorded(fd) or 'an unknown process'} (lock file {path}); "
            f"gave up after {timeout:g} s"))
        holders.record(fd)
        try:
            yield
        finally:
            holders.unflock(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- store lease (fenced)

STORE_LEASE_SECONDS = 60.0


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

    DESIGN CHOICE: a lease row with a token rather than a session-level advisory lock per
    store: an advisory lock is lost silently with its connection, and its holder cannot prove
    at the commit point that nobody else holds it now; the token can, inside the same row
    lock that a takeover needs.
    """

    def __init__(self, engine: Engine, store_id: str, *, holder: str | None = None,
                 ttl: float = STORE_LEASE_SECONDS, poll: float = 0.5) -> None:
        if not store_id:
            raise CatalogError("a store lease needs a store id")
        self.engine = engine
        self.store_id = store_id
        self.holder = holder or holders.me()
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
            if row.holder is not None and not row.expired and holders.alive(row.holder) is not False:
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
        def take() -> tuple[bool, str | None]:
            try:
                return self.try_acquire()
            except (OperationalError, DBAPIError) as exc:
                raise self._db(exc) from exc

        holders.wait_as_writer(take, where=self.store_id, timeout=timeout, poll=self.poll,
                               error=StoreBusyError, on_wait=on_wait, note=" (catalog store lease)")
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
