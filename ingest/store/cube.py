"""The store owner: every key of a cube is read and written here (DESIGN.md §3, §5).

``CubeStore`` is opened once per command on a ``Backend`` and checks the grid. Readers use
``published()`` and ``version()`` (lock-free: the consolidated metadata is their view).
Writers use one ``Transaction``:

1. **lock** (bounded wait, with a message), **recover** whatever a crashed writer left,
   read the published state and its version (``base_version``);
2. **stage**: every new chunk, coordinate and metadata document (and the new version's
   manifest) is written under ``.s2ingest/txn/stage/``; nothing a reader can see changes.
   Plans are made and checked against ``base_version`` here, under the lock;
3. **journal**: the list of keys to switch, in order, made durable in one atomic write.
   This is the commit point: from here on the commit is completed, never undone;
4. **switch**: each key is replaced by one rename: data chunks, then coordinates, then array
   metadata, then the groups' ``.zmetadata`` deepest first, the root's last;
5. **done**: the journal is dropped.

Recovery: a staging area without a journal is discarded (the store never changed); a journal
is rolled *forward* (the renames are idempotent). Every transaction stages under a folder of its
own (``.s2ingest/txn/stage/<id>/``, named in the journal), so a writer that lost its lock and
still stages can never overwrite what the next writer staged. A published version is therefore never
taken back, and a reader who saw part of a rewrite during a crash sees all of it after the
next run, never the old content again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ingest import __version__
from ingest.errors import (
    GridMismatchError, NotACubeError, StalePlanError, StoreBusyError, StoreError, StoreLeaseLostError,
)
from ingest.grid import CubeGrid
from ingest.store import faults
from ingest.store.backend import Backend, Fence, HTTPBackend, LocalBackend, backend_for
from ingest.store.layout import (
    GRID_FILE, GROUP_VERSION_ATTR, META_DIR, MANIFEST_DIR, STORE_FORMAT, TIME_COORDS, TXN_DIR,
    VERSION_ATTR, is_metadata, join, manifest_key, metadata_key, version_of_key,
)
from ingest.store.zarrdocs import ArrayMeta, dumps, new_array, new_group, read_array

log = logging.getLogger(__name__)

STAGE = f"{TXN_DIR}/stage"
JOURNAL = f"{TXN_DIR}/journal.json"
COMMITTED = f"{TXN_DIR}/committed"
MANIFEST_HISTORY = 20  # versions whose manifests are kept (a mirror copies one of them)
DEFAULT_LOCK_TIMEOUT = 3600.0
COORD_ARRAYS = frozenset({*TIME_COORDS, "edition", "x", "y", "spatial_ref"})

Digest = tuple[int, str]  # (size, sha256 hex)


def digest(data: bytes) -> Digest:
    return len(data), hashlib.sha256(data).hexdigest()


# -- what readers see ------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedState:
    """The time axis and provenance of one imagery group as readers see it."""

    times: tuple[datetime, ...]
    platforms: tuple[str, ...]
    datatake_ids: tuple[str, ...]
    products: tuple[tuple[str, ...], ...]
    version: int  # the store-wide version these were read at
    group_version: int = 0  # the version that last wrote this group

    @property
    def length(self) -> int:
        return len(self.times)


EMPTY_STATE = PublishedState((), (), (), (), 0)


def to_ms(t: datetime) -> int:
    return int(round(t.timestamp() * 1000))


class CubeStore:
    """One cube: its backend, grid and published state. Open it once per command."""

    def __init__(self, backend: Backend, grid: CubeGrid | None) -> None:
        self.backend = backend
        self._grid = grid
        self._locks: list[Callable] = []

    def add_lock(self, make: Callable) -> None:
        """Take another lock before the backend's own for every write of this store: ``make(
        timeout, on_wait)`` returns a context manager that may yield a ``Fence`` (e.g. the
        catalog's store lease, so writers on several machines take turns and a writer whose
        lease was taken over cannot commit)."""
        self._locks.append(make)

    @contextmanager
    def writer_lock(self, timeout: float, on_wait: Callable[[str], None] | None = None):
        """Every lock of this store's writers (added ones first, the backend's last); yields
        the fences ``Transaction.commit`` checks at the commit point."""
        deadline = time.monotonic() + timeout
        with ExitStack() as stack:
            fences: list[Fence] = []
            for make in [*self._locks, self.backend.lock]:
                held = stack.enter_context(make(max(0.0, deadline - time.monotonic()), on_wait))
                if held is not None and hasattr(held, "fence"):  # duck-typed: catalog locks too
                    fences.append(held)
            yield fences

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | Path, grid: CubeGrid | None = None) -> "CubeStore":
        """An existing cube (read only as far as this call goes); checks ``grid`` if given."""
        backend = backend_for(location)
        stored = cls._stored_grid(backend)
        if stored is None:
            raise NotACubeError(f"{backend.url} is not an s2ingest cube "
                                "(no grid.json); create one with `s2ingest init`")
        if grid is not None:
            check_grid(stored, grid, backend.url)
        return cls(backend, stored)

    @classmethod
    def for_writing(cls, location: str | Path, grid: CubeGrid) -> "CubeStore":
        """The cube at ``location`` to write into; if nothing is there yet, its first commit
        creates it (nothing is written before that, and a failed first commit leaves nothing).

        Refuses a file, a non-empty directory that is not a cube, a Zarr store of another tool,
        and a cube of another grid, before writing anything.
        """
        backend = backend_for(location)
        if not backend.writable:
            raise StoreError(f"{backend.url} is read only")
        stored = cls._stored_grid(backend)
        if stored is not None:
            check_grid(stored, grid, backend.url)
            return cls(backend, stored)
        check_location(backend)
        return cls(backend, grid)

    @classmethod
    def create(cls, location: str | Path, grid: CubeGrid, *,
               on_wait: Callable[[str], None] | None = None) -> tuple["CubeStore", bool]:
        """The cube at ``location``, created empty if nothing is there. (store, created)."""
        store = cls.for_writing(location, grid)
        if cls._stored_grid(store.backend) is not None:
            return store, False
        with store.transaction(on_wait=on_wait) as tx:
            created = tx.creates_store
            if created:
                tx.commit()
        return store, created

    def _root_documents(self) -> dict[str, bytes]:
        grid = self.grid
        docs = {GRID_FILE: grid.to_json().encode()}
        docs.update(new_group({
            "title": "Sentinel-2 L2A surface reflectance cube",
            "Conventions": "CF-1.8",
            "source": "Sentinel-2 Level-2A (sen2cor) SAFE products",
            "s2ingest_format": STORE_FORMAT,
            "s2ingest_version": __version__,
            "grid": grid.to_dict(),
        }))
        return docs

    @staticmethod
    def _stored_grid(backend: Backend) -> CubeGrid | None:
        raw = backend.get(GRID_FILE)
        if raw is None:
            if backend.get(".zgroup") is not None:
                raise NotACubeError(f"{backend.url}: a Zarr store without {GRID_FILE}; "
                                    "not an s2ingest cube")
            return None
        try:
            return CubeGrid.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{backend.url}: unreadable {GRID_FILE}: {exc}") from exc

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def grid(self) -> CubeGrid:
        if self._grid is None:
            raise NotACubeError(f"{self.url} is not an s2ingest cube")
        return self._grid

    # -- reading the published view ----------------------------------------------------------
    def consolidated(self, group: str = "") -> dict[str, dict] | None:
        """The ``.zmetadata`` documents of ``group`` (keys relative to it), None if absent."""
        raw = self.backend.get(join(group, ".zmetadata"))
        if raw is None:
            return None
        try:
            return json.loads(raw)["metadata"]
        except (ValueError, KeyError) as exc:
            raise StoreError(f"{self.url}/{join(group, '.zmetadata')} is damaged: {exc}") from exc

    def version(self) -> int:
        """The store-wide version readers see (root consolidated metadata)."""
        return version_of(self.consolidated("") or {})

    def group_exists(self, group: str) -> bool:
        return self.backend.get(join(group, ".zmetadata")) is not None

    def published(self, group: str) -> PublishedState:
        return read_state(self.backend, group, self.consolidated(group), self.version())

    def manifest(self, version: int | None = None) -> dict:
        """The manifest of ``version`` (default: the published one)."""
        v = self.version() if version is None else version
        raw = self.backend.get(manifest_key(v))
        if raw is None:
            raise StoreError(f"{self.url}: no manifest of version {v} "
                             f"(only the last {MANIFEST_HISTORY} versions are kept)")
        return json.loads(raw)

    def manifest_sha256(self, version: int) -> str:
        raw = self.backend.get(manifest_key(version))
        if raw is None:
            raise StoreError(f"{self.url}: no manifest of version {version}")
        return hashlib.sha256(raw).hexdigest()

    def metadata_snapshot(self, version: int) -> dict[str, bytes]:
        """Every Zarr metadata document of ``version`` (key -> bytes), exactly as that version
        published it; a StoreError once the version is no longer kept."""
        raw = self.backend.get(metadata_key(version))
        if raw is None:
            raise StoreError(f"{self.url}: version {version} is no longer kept (no metadata "
                             f"snapshot; the last {MANIFEST_HISTORY} versions are)")
        return {k: v.encode() for k, v in json.loads(raw)["documents"].items()}

    def manifest_versions(self) -> list[int]:
        """The versions whose manifests are kept, oldest first. On a backend that cannot list
        (a static HTTP server) the chain of ``parent`` versions is followed from the current one."""
        try:
            keys, _ = self.backend.list_dir(MANIFEST_DIR)
        except StoreError:
            found, v = [], self.version()
            while v > 0:
                raw = self.backend.get(manifest_key(v))
                if raw is None:
                    break
                found.append(v)
                v = min(v - 1, int(json.loads(raw).get("parent", v - 1)))
            return sorted(found)
        return sorted({v for k in keys if (v := version_of_key(k)) is not None
                       and k == manifest_key(v).rsplit("/", 1)[1]})

    # -- writing -------------------------------------------------------------------------------
    def transaction(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT,
                    on_wait: Callable[[str], None] | None = None) -> "Transaction":
        return Transaction(self, timeout=timeout, on_wait=on_wait)

    def has_unfinished_commit(self) -> bool:
        """True if a writer left a journal or staging area (the next transaction recovers it)."""
        return self.backend.get(JOURNAL) is not None or self.backend.has_prefix(TXN_DIR)

    def complete_unfinished(self) -> str | None:
        """Finish (or discard the staging of) a commit a crashed writer left, under the lock;
        None when there was nothing to do.

        DESIGN CHOICE: the lock is only tried, never waited for: if it is held, its holder is
        alive (the kernel releases the lock of a dead process) and is either writing now or
        will recover the store itself when its transaction starts.
        """
        if not self.has_unfinished_commit():
            return None
        try:
            with self.writer_lock(0):
                return recover(self.backend)
        except StoreBusyError:
            return None


def check_grid(stored: CubeGrid, grid: CubeGrid, where: str) -> None:
    if stored.to_dict() != grid.to_dict():
        raise GridMismatchError(f"store {where} has grid {stored.name} {stored.to_dict()}, "
                                f"not {grid.name}")


def check_location(location: str | Path | Backend) -> None:
    """Refuse a store location that is a file, or a non-empty folder (or S3 prefix) that is not
    an s2ingest cube (``NotACubeError``, exit 6), before anything is created there."""
    backend = location if isinstance(location, Backend) else backend_for(location)
    if isinstance(backend, HTTPBackend):
        return  # read only: nothing is ever created there
    if not isinstance(backend, LocalBackend):
        # DESIGN CHOICE: an object store has no folders: a prefix "is a cube" when grid.json
        # is there; any other object under it means another use of the prefix, refused like
        # a folder of other files (a cube never mixes its keys with foreign ones).
        if backend.exists(GRID_FILE):
            return
        entries = backend.describe_foreign()
        if not entries:
            return
        if ".zgroup" in entries:
            raise NotACubeError(f"store {backend.url} is a Zarr store without {GRID_FILE}: "
                                "not an s2ingest cube")
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise NotACubeError(f"store {backend.url} holds other objects ({shown}), not an s2ingest "
                            "cube; give a new or empty prefix")
    p = backend.root
    if not p.exists():
        if p.is_symlink():
            raise NotACubeError(f"store {p} is a broken symbolic link")
        return
    if not p.is_dir():
        raise NotACubeError(f"store {p} is a file, not a cube (a store is a folder, e.g. nl.zarr)")
    if (p / GRID_FILE).is_file():
        return
    try:
        entries = sorted(e.name for e in p.iterdir() if e.name != META_DIR)
    except OSError as exc:
        raise StoreError(f"cannot read store {p}: {exc}") from exc
    if not entries:
        return
    if ".zgroup" in entries:
        raise NotACubeError(f"store {p} is a Zarr store without {GRID_FILE}: not an s2ingest cube")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise NotACubeError(f"store {p} is a folder of other files ({shown}), not an s2ingest cube; "
                        "give a new or empty folder")


def version_of(root_meta: dict) -> int:
    """The store version in a root ``.zmetadata``; stores written before store-wide versions
    carry it only per group (their versions came from one cube-wide counter)."""
    attrs = root_meta.get(".zattrs", {})
    if VERSION_ATTR in attrs:
        return int(attrs[VERSION_ATTR])
    found = [int(doc.get(GROUP_VERSION_ATTR, 0)) for key, doc in root_meta.items()
             if key.endswith(".zattrs")]
    return max(found, default=0)


def read_state(backend: Backend, group: str, meta: dict[str, dict] | None, version: int) -> PublishedState:
    if meta is None or "time/.zarray" not in meta:
        return PublishedState((), (), (), (), version)
    group_version = int(meta.get(".zattrs", {}).get(GROUP_VERSION_ATTR, 0))

    def column(name: str) -> np.ndarray:
        m = ArrayMeta(meta[f"{name}/.zarray"])
        return read_array(m, lambda chunk: backend.get(join(group, name, chunk)))

    ms = column("time")
    times = tuple(datetime.fromtimestamp(int(v) / 1000, tz=timezone.utc) for v in ms)

    def col(name: str) -> tuple[str, ...]:
        return tuple(str(v) for v in column(name)) if len(ms) else ()

    products = tuple(tuple(p for p in s.split(",") if p) for s in col("products"))
    return PublishedState(times, col("platform"), col("datatake_id"), products, version, group_version)


# -- the transaction ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommitReport:
    version: int
    parent: int
    changes: dict[str, Digest | None]  # every changed key (not metadata); None: deleted
    metadata: tuple[str, ...]  # metadata keys rewritten
    manifest_sha256: str
    n_keys: int
    switched: int = 0  # keys replaced or deleted in the switch
    switch_seconds: float = 0.0  # how long readers could see a mix of old and new keys


class Transaction:
    """Exclusive, staged, journalled write session on one store (a context manager)."""

    def __init__(self, store: CubeStore, *, timeout: float, on_wait) -> None:
        self.store = store
        self.backend = store.backend
        self._timeout = timeout
        self._on_wait = on_wait
        self._lock_cm = None
        self._fences: list[Fence] = []
        self._fenced_out = False  # another writer took our lock: never touch the store again
        # DESIGN CHOICE: a staging folder per transaction (named in the journal): a writer
        # that lost its lock and is still staging cannot overwrite the next writer's keys.
        self.stage = f"{STAGE}/{uuid.uuid4().hex[:16]}"
        self._ops: dict[str, Digest | None] = {}  # key -> digest of the staged value; None: delete
        self._adopted: dict[str, str] = {}  # key -> where its staged value lies (not under STAGE)
        # staged metadata documents (small, read back often while consolidating): no round trip
        self._staged_meta: dict[str, bytes] = {}
        self._mutex = threading.Lock()
        self._done = False
        self._made_root = False
        self.base_version = 0
        self.creates_store = False
        self.report: CommitReport | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Transaction":
        if not self.backend.writable:
            raise StoreError(f"{self.store.url} is read only")
        if self.backend.is_empty():
            self._made_root = True  # removed again unless something is committed
        self._lock_cm = self.store.writer_lock(self._timeout, self._on_wait)
        try:
            self._fences = self._lock_cm.__enter__()
        except StoreError:
            self._lock_cm = None
            raise
        except OSError as exc:  # cannot create or lock .s2ingest/lock (full disk, read-only, ...)
            self._lock_cm = None
            raise StoreError(f"cannot lock {self.store.url} for writing: {exc.strerror or exc}; "
                             "nothing was published") from exc
        try:
            faults.point("txn.locked")
            recover(self.backend)
            self.base_version = self.store.version()
            stored = CubeStore._stored_grid(self.backend)
            if stored is not None:
                self._made_root = False  # another first writer got there before us
            if stored is None:  # the first commit creates the cube
                self.creates_store = True
                for key, value in self.store._root_documents().items():
                    self.put(key, value)
            else:
                check_grid(stored, self.store.grid, self.store.url)
        except OSError as exc:
            self._release()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot prepare a write to {self.store.url}: {exc.strerror or exc}; "
                             "nothing was published") from exc
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._fenced_out:
                return  # the store is another writer's now (its recovery discards our staging)
            if not self._done:
                if self.backend.get(JOURNAL) is not None:
                    recover(self.backend)  # an error mid-switch: finish it now (or the next writer will)
                else:
                    self.backend.delete_prefix(TXN_DIR)
        finally:
            self._release()

    def _release(self) -> None:
        failed_first = self._made_root and not self._done and not self._fenced_out
        if failed_first and not isinstance(self.backend, LocalBackend):
            self.backend.remove_all()  # a failed first commit, removed while still locked
        if self._lock_cm is not None:
            cm, self._lock_cm = self._lock_cm, None
            cm.__exit__(None, None, None)
        if failed_first and isinstance(self.backend, LocalBackend):
            self.backend.remove_all()  # the folder, lock file included

    def check_base(self, version: int) -> None:
        """Refuse a plan made from another version than the one this transaction holds."""
        if version != self.base_version:
            raise StalePlanError(f"{self.store.url}: the plan was made from version {version}, "
                                 f"the store is at version {self.base_version}; re-plan")

    # -- reading what this transaction would publish ------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._mutex:
            staged = key in self._ops
            op = self._ops.get(key)
        if not staged:
            return self.backend.get(key)
        if op is None:
            return None
        with self._mutex:
            cached = self._staged_meta.get(key)
        return cached if cached is not None else self.backend.get(self._staged_at(key))

    def _staged_at(self, key: str) -> str:
        with self._mutex:
            return self._adopted.get(key) or f"{self.stage}/{key}"

    def get_json(self, key: str) -> dict | None:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def array(self, path: str) -> ArrayMeta:
        return ArrayMeta.parse(self.get(join(path, ".zarray")), f"{self.store.url}/{path}")

    def attrs(self, path: str) -> dict:
        return self.get_json(join(path, ".zattrs")) or {}

    def is_group(self, path: str) -> bool:
        return self.get(join(path, ".zgroup")) is not None

    def is_array(self, path: str) -> bool:
        return self.get(join(path, ".zarray")) is not None

    def children(self, path: str) -> list[str]:
        """Names of the arrays and groups directly below ``path`` (staged ones included)."""
        _, dirs = self.backend.list_dir(path)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        with self._mutex:
            staged = [k for k, op in self._ops.items() if op is not None and k.startswith(prefix)]
        names = set(d for d in dirs if not d.startswith("."))
        for k in staged:
            rest = k[len(prefix):].split("/")
            if len(rest) == 2 and rest[1] in (".zarray", ".zgroup"):
                names.add(rest[0])
        return sorted(n for n in names
                      if self.is_array(join(path, n)) or self.is_group(join(path, n)))

    def chunk_keys(self, path: str) -> list[str]:
        """Chunk names of an array as this transaction would publish it."""
        keys, _ = self.backend.list_dir(path)
        prefix = f"{path.strip('/')}/"
        names = {k for k in keys if not k.startswith(".")}
        with self._mutex:
            for k, op in self._ops.items():
                if k.startswith(prefix) and "/" not in k[len(prefix):] and not is_metadata(k):
                    name = k[len(prefix):]
                    if op is None:
                        names.discard(name)
                    else:
                        names.add(name)
        return sorted(names)

    def staged_keys(self, prefix: str = "") -> dict[str, bool]:
        """The keys this transaction changes under ``prefix``: key -> True (put), False (delete).
        Derived data (overviews) is recomputed for exactly these."""
        with self._mutex:
            return {k: op is not None for k, op in self._ops.items() if k.startswith(prefix)}

    def changes_anything(self) -> bool:
        """Whether what is staged differs from the published version: a put of other bytes
        than a key holds, or a delete of a key that exists. A commit of nothing else would
        only make a new version number (compared with the base version's manifest, or with
        the stored bytes of a store without one)."""
        with self._mutex:
            ops = dict(self._ops)
        raw = self.backend.get(manifest_key(self.base_version))
        keys = json.loads(raw)["keys"] if raw is not None else None
        for key, staged in ops.items():
            if key.startswith(META_DIR + "/"):
                continue
            if keys is not None:
                entry = keys.get(key)
                now = None if entry is None else (entry["size"], entry["sha256"])
            else:
                data = self.backend.get(key)
                now = None if data is None else digest(data)
            if (None if staged is None else tuple(staged)) != now:
                return True
        return False

    def published(self, group: str) -> PublishedState:
        """The published state of ``group`` at ``base_version`` (read under the lock)."""
        return self.store.published(group)

    # -- staging writes ----------------------------------------------------------------------
    def put(self, key: str, data: bytes, checksum: Digest | None = None) -> Digest:
        """Stage ``data`` for ``key`` (thread-safe); returns its (size, sha256)."""
        if self._done:
            raise StoreError("transaction already committed")
        if any(getattr(f, "lost", False) for f in self._fences):
            self._fenced_out = True
            raise StoreLeaseLostError(f"{self.store.url}: another writer took over this writer's "
                                      "lock while it was staging; nothing was published")
        d = checksum or digest(data)
        self.backend.write_new(f"{self.stage}/{key}", data)
        faults.point("stage.chunk")
        with self._mutex:
            self._ops[key] = d
            self._adopted.pop(key, None)
            if is_metadata(key):
                self._staged_meta[key] = data
            else:
                self._staged_meta.pop(key, None)
        return d

    def adopt(self, key: str, staged: str, checksum: Digest) -> None:
        """Publish ``key`` with the value already written at ``staged`` (a key under
        ``.s2ingest/`` outside the transaction's own staging area, e.g. a mirror's downloads,
        which survive an interrupted run). The switch moves it into place; until the journal
        is written nothing is moved, so an interrupted transaction leaves it where it was."""
        if self._done:
            raise StoreError("transaction already committed")
        if not staged.startswith(META_DIR + "/") or staged.startswith(TXN_DIR + "/"):
            raise StoreError(f"cannot adopt {staged}: not a private key under {META_DIR}/")
        with self._mutex:
            self._ops[key] = checksum
            self._adopted[key] = staged
            self._staged_meta.pop(key, None)

    def delete(self, key: str) -> None:
        with self._mutex:
            was_staged = self._ops.get(key) is not None and key not in self._adopted
            self._ops[key] = None
            self._adopted.pop(key, None)
        if was_staged:
            self.backend.delete(f"{self.stage}/{key}")

    def put_json(self, key: str, doc: dict) -> None:
        self.put(key, dumps(doc))

    def update_attrs(self, path: str, updates: dict) -> None:
        self.put_json(join(path, ".zattrs"), {**self.attrs(path), **updates})

    def resize(self, path: str, shape: Iterable[int]) -> ArrayMeta:
        meta = self.array(path).resized(shape)
        self.put(join(path, ".zarray"), meta.to_bytes())
        return meta

    def create_group(self, path: str, attrs: dict | None = None) -> None:
        for key, value in new_group(attrs).items():
            self.put(join(path, key), value)

    def create_array(self, path: str, *, shape, chunks, dtype, fill_value, compressor,
                     attrs: dict, data: np.ndarray | None = None) -> ArrayMeta:
        """A new array (any chunks already stored under ``path`` are removed)."""
        parent, _, name = path.strip("/").rpartition("/")
        for old in self.chunk_keys(path):
            self.delete(join(path, old))
        for key, value in new_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                    fill_value=fill_value, compressor=compressor, attrs=attrs,
                                    data=data).items():
            self.put(join(parent, key), value)
        return self.array(path)

    # -- commit --------------------------------------------------------------------------------
    def commit(self, *, version: int | None = None, source: dict | None = None) -> CommitReport:
        """Publish everything staged as version ``base_version + 1``.

        A copy publishes the version of its source instead (``version``, not older than the
        copy's own; equal for a repair) and names it in the manifest (``source``).
        """
        faults.point("stage.done")
        if version is None:
            version = self.base_version + 1
        elif version < self.base_version:
            raise StoreError(f"{self.store.url} is at version {self.base_version}; "
                             f"cannot publish the older version {version}")
        faults.point("stage.metadata")
        self.update_attrs("", {VERSION_ATTR: version})
        for group_key, doc in self._consolidated().items():
            raw = dumps(doc)
            if raw != self.backend.get(group_key):
                self.put(group_key, raw)
        with self._mutex:
            ops = dict(self._ops)
        manifest = self._manifest(version, ops)
        if source is not None:
            manifest["source"] = source
        raw_manifest = dumps(manifest)
        self.put(manifest_key(version), raw_manifest)
        ops[manifest_key(version)] = digest(raw_manifest)
        snapshot = dumps(self._metadata_snapshot(version, manifest, ops))
        self.put(metadata_key(version), snapshot)
        ops[metadata_key(version)] = digest(snapshot)
        order = sorted(ops, key=_switch_rank)
        with self._mutex:
            adopted = dict(self._adopted)
        journal = {"version": version, "base": self.base_version, "stage": self.stage,
                   "ops": [([k, "put", ops[k][1]] + ([adopted[k]] if k in adopted else []))
                           if ops[k] is not None else [k, "delete", None] for k in order]}
        faults.point("journal.write")
        with ExitStack() as fenced:
            # DESIGN CHOICE (fencing): every lock that can be taken over confirms, right
            # around the commit point, that it is still this writer's (the catalog's lease
            # keeps its row locked until the journal is written); otherwise nothing is published.
            try:
                for f in self._fences:
                    fenced.enter_context(f.fence())
            except StoreLeaseLostError:
                self._fenced_out = True
                raise
            self.backend.put(JOURNAL, dumps(journal))
            self.backend.sync(JOURNAL)
        faults.point("journal.written")
        t0 = time.perf_counter()
        _switch(self.backend, journal["ops"], self.stage)
        switch_seconds = time.perf_counter() - t0
        log.info("version %d: switched %d keys in %.1f ms", version, len(order), switch_seconds * 1000)
        self.backend.put(COMMITTED, b"")
        faults.point("commit.marked")
        self.backend.delete_prefix(TXN_DIR)
        self._done = True
        _prune_manifests(self.backend, version)
        changes = {k: d for k, d in ops.items()
                   if not is_metadata(k) and not k.startswith(META_DIR + "/")}
        self.report = CommitReport(version, self.base_version, changes,
                                   tuple(sorted(k for k in ops if is_metadata(k))),
                                   hashlib.sha256(raw_manifest).hexdigest(), len(manifest["keys"]),
                                   len(order), switch_seconds)
        return self.report

    def _consolidated(self) -> dict[str, dict]:
        """``.zmetadata`` of every group as this transaction will leave it."""
        docs: dict[str, dict] = {}  # relative to the root: "S2/R051/B04/.zarray" -> doc
        groups = []
        pending = [""]
        while pending:
            path = pending.pop()
            groups.append(path)
            for name in (".zgroup", ".zattrs"):
                doc = self.get_json(join(path, name))
                if doc is not None:
                    docs[join(path, name)] = doc
            for child in self.children(path):
                cpath = join(path, child)
                if self.is_group(cpath):
                    pending.append(cpath)
                else:
                    for name in (".zarray", ".zattrs"):
                        doc = self.get_json(join(cpath, name))
                        if doc is not None:
                            docs[join(cpath, name)] = doc
        out = {}
        # DESIGN CHOICE: every group gets its own ``.zmetadata`` (keys relative to the group):
        # zarr-python 3 and GDAL look for it in the group they open, zarr-python 2 and xarray
        # with zarr 2 read the root one.
        for g in groups:
            prefix = f"{g}/" if g else ""
            meta = {k[len(prefix):]: v for k, v in docs.items() if k.startswith(prefix)}
            out[join(g, ".zmetadata")] = {"zarr_consolidated_format": 1, "metadata": meta}
        return out

    def _metadata_snapshot(self, version: int, manifest: dict,
                           ops: dict[str, Digest | None]) -> dict:
        """The metadata documents of ``version``: the parent's snapshot with this commit's
        metadata changes applied (every document read once when there is no parent snapshot)."""
        parent = self.backend.get(metadata_key(self.base_version))
        if parent is not None:
            docs = json.loads(parent)["documents"]
            changed = [k for k in ops if is_metadata(k)]
        else:
            docs, changed = {}, [k for k in manifest["keys"] if is_metadata(k)]
        for key in changed:
            raw = self.get(key)
            if raw is None:
                docs.pop(key, None)
            else:
                docs[key] = raw.decode("utf-8")
        return {"format": 1, "version": version, "documents": dict(sorted(docs.items()))}

    def _manifest(self, version: int, ops: dict[str, Digest | None]) -> dict:
        parent_raw = self.backend.get(manifest_key(self.base_version))
        parent = self.base_version
        if parent_raw is not None:
            parent_doc = json.loads(parent_raw)
            keys = parent_doc["keys"]
            if version == self.base_version:  # a repair: the version keeps its parent
                parent = int(parent_doc.get("parent", version - 1))
        else:  # a store from before manifests, or the first commit: hash what is there
            keys = full_listing(self.backend)
        changes = {}
        for k, d in ops.items():
            if k.startswith(META_DIR + "/"):
                continue
            changes[k] = None if d is None else _entry(d)
            if d is None:
                keys.pop(k, None)
            else:
                keys[k] = _entry(d)
        return {"format": 1, "version": version, "parent": parent,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "keys": dict(sorted(keys.items())), "changes": dict(sorted(changes.items()))}


def _entry(d: Digest) -> dict:
    return {"size": d[0], "sha256": d[1]}


def full_listing(backend: Backend) -> dict[str, dict]:
    """Size and sha256 of every key of the store outside ``.s2ingest/``."""
    out = {}
    for key in backend.list(""):
        if key.startswith(META_DIR + "/"):
            continue
        raw = backend.get(key)
        if raw is not None:
            out[key] = _entry(digest(raw))
    return out


def _switch_rank(key: str) -> tuple:
    """Switch order: invisible keys, data chunks, coordinates, metadata, .zmetadata deepest
    first and the root's last (DESIGN CHOICE: readers reach new content only through the
    consolidated metadata, so it goes last; the root one is what zarr 2 readers open)."""
    name = key.rsplit("/", 1)[-1]
    depth = key.count("/")
    if key.startswith(META_DIR + "/") or key == GRID_FILE:
        return (0, key)
    if name == ".zmetadata":
        return (4, -depth, key)
    if is_metadata(key):
        return (3, key)
    array = key.rsplit("/", 2)[-2] if depth >= 1 else ""
    if array in COORD_ARRAYS:
        return (2, key)
    return (1, key)


def _switch(backend: Backend, ops: list, stage: str = STAGE) -> None:
    """Apply a journal: rename every staged key into place, delete the deleted ones (in
    order; idempotent, so recovery simply runs it again).

    DESIGN CHOICE: on a backend whose moves are network requests (``parallel_moves``: S3), the
    keys of one rank (invisible keys, data, coordinates, array metadata) are switched by a few
    threads at once; the ranks stay in order, and the ``.zmetadata`` documents (deepest first,
    the root's last) one by one, so readers still reach new content only through them.
    """
    workers = getattr(backend, "parallel_moves", 1)
    if workers <= 1:
        for item in ops:
            _switch_one(backend, item, stage)
        return
    from concurrent.futures import ThreadPoolExecutor
    from itertools import groupby

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rank, group in groupby(ops, key=lambda item: _switch_rank(item[0])[0]):
            items = list(group)
            if rank == 4:
                for item in items:
                    _switch_one(backend, item, stage)
            else:
                list(pool.map(lambda item: _switch_one(backend, item, stage), items))


def _switch_one(backend: Backend, item: list, stage: str) -> None:
    key, op, sha, *where = item  # where: the staged value's key when it lies elsewhere (adopt)
    if op == "put":
        staged = where[0] if where else f"{stage}/{key}"
        if not backend.move_if_present(staged, key) and _lost(backend, key, sha):
            raise StoreError(
                f"{backend.url}: the staged content of {key} is gone and the key does not hold "
                "it (lost in a power failure?); restore the store from a mirror, or run "
                "`s2ingest verify --deep` to see what differs")
    else:
        backend.delete(key)
    rank = _switch_rank(key)[0]
    if rank == 1:
        faults.point("switch.data")
    elif rank == 2:
        faults.point("switch.coords")
    elif rank == 3:
        faults.point("switch.metadata")
    elif rank == 4:
        faults.point("switch.root-zmetadata" if key == ".zmetadata" else "switch.group-zmetadata")


LEGACY_LOG = f"{TXN_DIR}/keys.log"


def _undo_legacy(backend: Backend) -> str:
    """Undo a transaction left by s2ingest before the staged commit (0.1): it wrote keys in
    place after logging each key's old file (a hard link under ``txn/undo/``) or its absence.
    Unless it was marked committed, every logged key gets its old content back."""
    state = json.loads(backend.get(f"{TXN_DIR}/state") or b"{}")
    if state.get("state") != "committed":
        for line in (backend.get(LEGACY_LOG) or b"").decode("utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a torn last line: that key was never written
                continue
            if entry.get("backup"):
                undo = f"{TXN_DIR}/undo/{entry['backup']}"
                if backend.exists(undo):
                    backend.move(undo, entry["key"])
            else:
                backend.delete(entry["key"])
        log.warning("rolled back a write an older s2ingest left unfinished in %s", backend.url)
    backend.delete_prefix(TXN_DIR)
    return "rolled back (legacy)"


def _lost(backend: Backend, key: str, sha: str | None) -> bool:
    """A put whose staged file is gone: already switched (the key holds its content) or lost."""
    if sha is None:
        return False
    data = backend.get(key)
    return data is None or hashlib.sha256(data).hexdigest() != sha


def recover(backend: Backend) -> str | None:
    """Finish or discard an unfinished commit; returns what was done (None: nothing to do).

    Call with the writer lock held. A journal is the commit record: it is rolled forward.
    Without one, nothing published was touched, and the staging area is discarded.
    """
    journal_raw = backend.get(JOURNAL)
    if journal_raw is None and backend.get(LEGACY_LOG) is not None:
        return _undo_legacy(backend)
    if journal_raw is None:
        if backend.get(COMMITTED) is not None or next(iter(backend.list(TXN_DIR)), None) is not None:
            backend.delete_prefix(TXN_DIR)
            return "discarded"
        return None
    try:
        journal = json.loads(journal_raw)
        ops = journal["ops"]
    except (ValueError, KeyError):  # cannot happen: the journal is replaced whole
        raise StoreError(f"{backend.url}: unreadable commit journal {JOURNAL}; "
                         "restore the store from a mirror") from None
    if backend.get(COMMITTED) is None:
        _switch(backend, ops, journal.get("stage", STAGE))  # journals before 0.2: one stage folder
        log.warning("finished the commit of version %s that a crashed writer left in %s",
                    journal.get("version"), backend.url)
    backend.delete_prefix(TXN_DIR)
    return "rolled forward"


def _prune_manifests(backend: Backend, version: int) -> None:
    """Delete every manifest older than the last ``MANIFEST_HISTORY`` versions (all of them:
    a writer killed after its switch never pruned, and recovery does not prune)."""
    keep_from = version - MANIFEST_HISTORY + 1
    keys, _ = backend.list_dir(MANIFEST_DIR)
    for name in keys:
        v = version_of_key(name)
        if v is not None and v < keep_from:
            backend.delete(f"{MANIFEST_DIR}/{name}")
