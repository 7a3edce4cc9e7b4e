"""The store owner: every key of a cube is read and written here (DESIGN.md §3, §5).

``CubeStore`` is opened once per command on a ``Backend`` and checks the grid. Readers use
``published()`` and ``version()`` (lock-free: the consolidated metadata is their view), the
versions' manifests and metadata snapshots, and a small read API (``read``, ``size``,
``read_array``, ``chunk_names``); they ask the store what its location can do
(``supports_writes``, ``supports_listing``), never the type of its backend. Writers use one
``Transaction`` (``ingest.store.transaction``).

Recovery (``ingest.store.journal``): a staging area without a journal is discarded (the store
never changed); a journal is rolled *forward* (the renames are idempotent). A published
version is therefore never taken back, and a reader who saw part of a rewrite during a crash
sees all of it after the next run, never the old content again.
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ingest import __version__
from ingest.errors import NotACubeError, StoreBusyError, StoreError
from ingest.grid import CubeGrid
from ingest.store.backends import Backend, Fence, backend_for
from ingest.store.journal import COMMITTED, JOURNAL, recover
from ingest.store.layout import (
    GRID_FILE, ID_FILE, MANIFEST_DIR, META_DIR, STORE_FORMAT, TXN_DIR, join, manifest_key,
    new_identity, version_of_key,
)
from ingest.store.location import check_backend, check_grid, stored_grid
from ingest.store.bookkeeping.codec import BOOKKEEPING_DIRS, ROOT_DIR, CorruptError, root_key
from ingest.store.manifests import full_listing
from ingest.store.state import PublishedState, read_state, version_of
from ingest.store.transaction import DEFAULT_LOCK_TIMEOUT, Transaction
from ingest.store.bookkeeping.index import VersionIndex
from ingest.store.retention import ExpireReport, expire
from ingest.store.versions import describe, index_of, root_pointer
from ingest.store.zarrdocs import ArrayMeta, new_group, read_array

LOCK_KEY = f"{META_DIR}/lock"


class CubeStore:
    """One cube: its backend, grid and published state. Open it once per command."""

    def __init__(self, backend: Backend, grid: CubeGrid | None) -> None:
        self.backend = backend
        self._grid = grid
        self._locks: list[Callable] = []

    def add_lock(self, make: Callable) -> None:
        """Take another lock before the backend's own for every write of this store: ``make(
        timeout, on_wait)`` returns a context manager that yields None or a ``Fence`` (e.g. the
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
                if held is not None:  # a lock that can be taken over: its fence
                    fences.append(held)
            yield fences

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | Path, grid: CubeGrid | None = None) -> "CubeStore":
        """An existing cube (read only as far as this call goes); checks ``grid`` if given."""
        backend = backend_for(location)
        stored = stored_grid(backend)
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
        if not backend.supports_writes:
            raise StoreError(f"{backend.url} is read only")
        stored = stored_grid(backend)
        if stored is not None:
            check_grid(stored, grid, backend.url)
            return cls(backend, stored)
        check_backend(backend)
        return cls(backend, grid)

    @classmethod
    def create(cls, location: str | Path, grid: CubeGrid, *,
               on_wait: Callable[[str], None] | None = None) -> tuple["CubeStore", bool]:
        """The cube at ``location``, created empty if nothing is there. (store, created)."""
        store = cls.for_writing(location, grid)
        if stored_grid(store.backend) is not None:
            return store, False
        with store.transaction(on_wait=on_wait) as tx:
            created = tx.creates_store
            if created:
                tx.commit()
        return store, created

    def root_documents(self) -> dict[str, bytes]:
        """What the first commit writes at the root: ``grid.json`` and the root group."""
        grid = self.grid
        docs = {GRID_FILE: grid.to_json().encode(), ID_FILE: new_identity()}
        docs.update(new_group({
            "title": "Sentinel-2 L2A surface reflectance cube",
            "Conventions": "CF-1.8",
            "source": "Sentinel-2 Level-2A (sen2cor) SAFE products",
            "s2ingest_format": STORE_FORMAT,
            "s2ingest_version": __version__,
            "grid": grid.to_dict(),
        }))
        return docs

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def grid(self) -> CubeGrid:
        if self._grid is None:
            raise NotACubeError(f"{self.url} is not an s2ingest cube")
        return self._grid

    # -- what the location can do -------------------------------------------------------------
    @property
    def supports_writes(self) -> bool:
        """False for a location that is read only (a cube served over HTTP)."""
        return self.backend.supports_writes

    @property
    def supports_listing(self) -> bool:
        """False where keys cannot be listed (a static HTTP server: the manifest names them)."""
        return self.backend.supports_listing

    # -- reading keys --------------------------------------------------------------------------
    def read(self, key: str) -> bytes | None:
        """The bytes of ``key`` as stored now (None: no such key)."""
        return self.backend.get(key)

    def size(self, key: str) -> int | None:
        """The size of ``key`` in bytes as stored now (None: no such key)."""
        return self.backend.size(key)

    def read_array(self, group: str, name: str, meta: dict[str, dict] | None = None) -> np.ndarray:
        """The whole of the small array ``group/name`` as published, decoded (coordinates,
        the quality atlas); ``meta``: the group's consolidated documents, when already read."""
        meta = self.consolidated(group) if meta is None else meta
        doc = (meta or {}).get(f"{name}/.zarray")
        if doc is None:
            raise StoreError(f"{self.url}/{group}: no array {name}")
        return read_array(ArrayMeta(doc), lambda chunk: self.backend.get(join(group, name, chunk)))

    def chunk_names(self, array: str) -> list[str]:
        """The names of the chunks stored for the array at path ``array`` (in no particular
        order; a StoreError where keys cannot be listed, see ``supports_listing``)."""
        keys, _ = self.backend.list_dir(array)
        return [k for k in keys if not k.startswith(".")]

    def key_reader(self) -> Callable[[str], bytes | None]:
        """``read`` on connections of its own, for one thread of a parallel copy (an HTTP
        session is not shared between threads)."""
        return backend_for(self.url).get

    def key_streamer(self) -> Callable[..., Iterator[bytes] | None]:
        """``stream(key, deadline=..., block=...)`` on connections of its own (one per thread
        of a parallel copy): a key in blocks, the whole transfer bounded by ``deadline``."""
        return backend_for(self.url).stream

    @property
    def local_path(self) -> Path | None:
        """The folder of this cube on this machine's file system; None elsewhere."""
        return self.backend.local_path

    def full_listing(self) -> dict[str, dict]:
        """Size and sha256 of every key outside ``.s2ingest/``, read and hashed now."""
        return full_listing(self.backend)

    # -- the private state of a tool, under .s2ingest/ (a mirror's downloads) ---------------
    def write_private(self, key: str, data: bytes) -> None:
        """Write a tool's private ``key`` under ``.s2ingest/`` (not the store's own keys: the
        lock, transactions, manifests). Written in place: whoever reads it back checks it."""
        self.backend.write_new(self._private(key), data)

    def write_private_from(self, key: str, blocks: Iterable[bytes]) -> None:
        """``write_private`` from blocks; an error raised while they are read (a transfer
        refused half way) leaves no key behind."""
        self.backend.write_new_from(self._private(key), blocks)

    def delete_private(self, prefix: str) -> None:
        """Remove every private key of a tool below ``prefix`` (under ``.s2ingest/``)."""
        self.backend.delete_prefix(self._private(prefix))

    def make_location(self) -> None:
        """Create the location's folder now (where it is a folder on this machine), so a first
        commit that fails leaves it, with what a tool keeps under ``.s2ingest/`` for its rerun;
        nothing to do on an object store."""
        if self.backend.local_path is not None:
            self.backend.local_path.mkdir(parents=True, exist_ok=True)

    def _private(self, key: str) -> str:
        ours = (TXN_DIR, MANIFEST_DIR, *BOOKKEEPING_DIRS)
        own = key in (LOCK_KEY, ID_FILE) or key.startswith(tuple(f"{d}/" for d in ours)) or key in ours
        if not key.startswith(f"{META_DIR}/") or own:
            raise StoreError(f"{self.url}: {key} is not a private key of a tool under {META_DIR}/")
        return key

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

    def identity(self) -> str | None:
        """The store's identity (``.s2ingest/id.json``); None for a store from before
        identities (its next commit writes one) or a location with no cube yet."""
        raw = self.backend.get(ID_FILE)
        if raw is None:
            return None
        try:
            value = json.loads(raw)["store_id"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.url}/{ID_FILE} is damaged: {exc}") from exc
        if not isinstance(value, str) or not value:
            raise StoreError(f"{self.url}/{ID_FILE} is damaged: no store_id")
        return value

    def version(self) -> int:
        """The store-wide version readers see (root consolidated metadata)."""
        return version_of(self.consolidated("") or {})

    def group_exists(self, group: str) -> bool:
        return self.backend.get(join(group, ".zmetadata")) is not None

    def published(self, group: str) -> PublishedState:
        meta = self.consolidated(group)
        return read_state(lambda name: self.read_array(group, name, meta), meta, self.version())

    def root_sha(self) -> str | None:
        """The hash of the published version's root, as the root attributes name it (None: a
        store of an earlier release, with format 1 manifests)."""
        return root_pointer((self.consolidated("") or {}).get(".zattrs", {}))

    def index(self, version: int | None = None):
        """The records of ``version`` (default: the published one), read lazily: a
        ``VersionIndex`` (format 2) or ``FlatIndex`` (a format 1 manifest); a StoreError when
        the store no longer keeps that version. The published version's root is checked
        against the hash the root attributes name."""
        now = self.version()
        v = now if version is None else int(version)
        idx = index_of(self.backend, v, self.root_sha() if v == now else None)
        if idx is None:
            raise StoreError(f"{self.url}: no bookkeeping of version {v} (it is not kept; "
                             "`s2ingest versions list` shows the versions kept)")
        return idx

    def manifest(self, version: int | None = None) -> dict:
        """What ``version`` (default: the published one) holds: parent, created, source,
        ``keys`` (key -> size, sha256; lazy: a lookup reads one piece) and ``changes``."""
        return describe(self.index(version))

    def manifest_sha256(self, version: int) -> str:
        """The hash of ``version``'s root (its format 1 manifest for older versions)."""
        raw = self.backend.get(root_key(version)) or self.backend.get(manifest_key(version))
        if raw is None:
            raise StoreError(f"{self.url}: no bookkeeping of version {version}")
        return hashlib.sha256(raw).hexdigest()

    def metadata_snapshot(self, version: int) -> dict[str, bytes]:
        """Every Zarr metadata document of ``version`` (key -> bytes), exactly as that version
        published them (the root attributes without the root hash, which names the version's
        bookkeeping); a StoreError once the version is no longer kept."""
        try:
            return self.index(version).snapshot()
        except CorruptError as exc:
            raise StoreError(f"{self.url}: version {version}: {exc}") from None

    def version_root(self, version: int) -> dict | None:
        """The root of ``version`` (format 2) or its format 1 manifest's head (no keys); None
        if not kept. Small: what ``list_versions`` and ``status`` read."""
        raw = self.backend.get(root_key(version))
        if raw is not None:
            return json.loads(raw)
        raw = self.backend.get(manifest_key(version))
        if raw is None:
            return None
        m = json.loads(raw)
        return {"format": 1, "version": version, "parent": m.get("parent"), "created": m.get("created"),
                "source": m.get("source"), "n_keys": len(m.get("keys", {})),
                "changes": {"n_put": sum(1 for v in m.get("changes", {}).values() if v is not None),
                            "n_delete": sum(1 for v in m.get("changes", {}).values() if v is None)}}

    def manifest_versions(self) -> list[int]:
        """The versions whose bookkeeping is kept, oldest first. Where keys cannot be listed
        (a static HTTP server) the chain of ``parent`` versions is followed from the current one."""
        if not self.supports_listing:
            found, v = [], self.version()
            while v > 0:
                root = self.version_root(v)
                if root is None:
                    break
                found.append(v)
                parent = root.get("parent")
                v = min(v - 1, int(parent if parent is not None else v - 1))
            return sorted(found)
        found = set()
        for folder, key_of in ((MANIFEST_DIR, manifest_key), (ROOT_DIR, root_key)):
            keys, _ = self.backend.list_dir(folder)
            found |= {v for k in keys if (v := version_of_key(k)) is not None
                      and k == key_of(v).rsplit("/", 1)[1]}
        return sorted(found)

    # -- writing -------------------------------------------------------------------------------
    def transaction(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT,
                    on_wait: Callable[[str], None] | None = None) -> Transaction:
        return Transaction(self, timeout=timeout, on_wait=on_wait)

    def upgrade(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT,
                on_wait: Callable[[str], None] | None = None) -> bool:
        """Give a store of an earlier release (format 1 manifests) the bookkeeping of format 2,
        in place, as one transaction through the journal (the published version keeps its
        number and its keys; only ``.s2ingest/`` and the root attributes change). False when
        there was nothing to do. A store also upgrades itself on its next commit."""
        with self.transaction(timeout=timeout, on_wait=on_wait) as tx:
            if tx.base_version == 0 or isinstance(tx.base_index(), VersionIndex):
                return False
            tx.commit(version=tx.base_version)
        return True

    def expire_versions(self, *, keep: int, max_age: timedelta | None = None,
                        grace: timedelta = timedelta(hours=1), dry_run: bool = False,
                        sweep: bool = False, timeout: float = DEFAULT_LOCK_TIMEOUT,
                        on_wait=None) -> ExpireReport:
        """Expire the versions out of retention (``ingest.store.retention``), under the lock;
        ``sweep``: also delete the bookkeeping objects no retained version references."""
        if dry_run:
            return expire(self.backend, self.manifest_versions(), self.version(), keep=keep,
                          max_age=max_age, grace=grace, dry_run=True, sweep=sweep)
        with self.transaction(timeout=timeout, on_wait=on_wait) as tx:
            return expire(self.backend, self.manifest_versions(), tx.base_version, keep=keep,
                          max_age=max_age, grace=grace, sweep=sweep)

    def has_unfinished_commit(self) -> bool:
        """True if a writer left a journal or staging area (the next transaction recovers it)."""
        return self.backend.get(JOURNAL) is not None or self.backend.has_prefix(TXN_DIR)

    def switching(self) -> int | None:
        """The version whose commit is between its journal and its end (its keys are being
        switched, or a crashed writer left them half switched): readers of the plain Zarr
        view may see a mix of two versions until a writer completes it. None otherwise."""
        raw = self.backend.get(JOURNAL)
        if raw is None or self.backend.get(COMMITTED) is not None:
            return None
        try:
            return int(json.loads(raw).get("version", 0)) or None
        except (ValueError, TypeError, AttributeError):
            return -1

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
