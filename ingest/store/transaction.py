"""The writer's side of a cube: one ``Transaction`` per commit (DESIGN.md §5).

1. **lock** (bounded wait, with a message), **recover** whatever a crashed writer left,
   read the published state and its version (``base_version``);
2. **stage**: every new chunk, coordinate and metadata document (and the new version's
   manifest) is written under ``.s2ingest/txn/stage/<id>/``; nothing a reader can see changes.
   Plans are made and checked against ``base_version`` here, under the lock;
3. **journal**: the list of keys to switch, in order, made durable in one atomic write.
   This is the commit point: from here on the commit is completed, never undone;
4. **switch**: each key is replaced by one rename: data chunks, then coordinates, then array
   metadata, then the groups' ``.zmetadata`` deepest first, the root's last (``journal``);
5. **done**: the journal is dropped.

Every transaction stages under a folder of its own (named in the journal), so a writer that
lost its lock and still stages can never overwrite what the next writer staged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ingest.errors import StalePlanError, StoreError, StoreLeaseLostError
import ingest.store.faults as faults
from ingest.store.backends import Fence
from ingest.store.journal import COMMITTED, JOURNAL, STAGE, recover, switch, switch_rank
from ingest.store.bookkeeping.codec import ROOT_ATTR, is_pointer, piece_id, root_key
from ingest.store.bookkeeping.index import VersionIndex
from ingest.store.layout import ID_FILE, META_DIR, TXN_DIR, VERSION_ATTR, is_metadata, join, new_identity
from ingest.store.location import check_grid, stored_grid
from ingest.store.manifests import Digest, digest
from ingest.store.versions import commit_bookkeeping, index_of, root_pointer
from ingest.store.state import PublishedState
from ingest.store.zarrdocs import ArrayMeta, dumps, new_array, new_group

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 3600.0
WORKERS_PROBE = ".workers"  # in a staging folder: what workers read to know they see the store


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
    """Exclusive, staged, journalled write session on one store (a context manager); made by
    ``CubeStore.transaction``."""

    def __init__(self, store, *, timeout: float, on_wait) -> None:
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
        self._index = None  # the base version's records (read on first use)
        self._objects: list[str] = []  # bookkeeping objects this commit created (before its journal)
        self.base_version = 0
        self.creates_store = False
        self.report: CommitReport | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Transaction":
        if not self.backend.supports_writes:
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
            stored = stored_grid(self.backend)
            if stored is not None:
                self._made_root = False  # another first writer got there before us
            if stored is None:  # the first commit creates the cube
                self.creates_store = True
                for key, value in self.store.root_documents().items():
                    self.put(key, value)
            else:
                check_grid(stored, self.store.grid, self.store.url)
                if self.backend.get(ID_FILE) is None:  # a store from before identities
                    self.put(ID_FILE, new_identity())  # published with its next commit
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
                    for key in self._objects:  # nothing names them: no commit happened
                        self.backend.delete(key)
        finally:
            self._release()

    def _release(self) -> None:
        failed_first = self._made_root and not self._done and not self._fenced_out
        after_unlock = self.backend.remove_all_removes_lock
        if failed_first and not after_unlock:
            self.backend.remove_all()  # a failed first commit, removed while still locked
        if self._lock_cm is not None:
            cm, self._lock_cm = self._lock_cm, None
            cm.__exit__(None, None, None)
        if failed_first and after_unlock:
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

    def _base_sha(self) -> str | None:
        """The root hash the published root attributes name (None: a format 1 store)."""
        if self.base_version == 0:
            return None
        return root_pointer((self.store.consolidated("") or {}).get(".zattrs", {}))

    def base_index(self):
        """The records of the base version, read lazily (a ``VersionIndex``, a ``FlatIndex``
        for a store of an earlier release), None for a store without bookkeeping."""
        if self._index is None:
            self._index = (index_of(self.backend, self.base_version, self._base_sha())
                           if self.base_version > 0 else None) or False
        return self._index or None

    def chunk_keys(self, path: str, first: Callable[[int], bool] | None = None) -> list[str]:
        """Chunk names of an array as this transaction would publish it; ``first``: only those
        whose first chunk index (the time chunk) it accepts.

        DESIGN CHOICE: read from the base version's bookkeeping (the pieces of that array,
        only those of the time chunks asked for), never by listing the backend (a LIST per
        1,000 keys on S3); a store without bookkeeping (first commit) is listed."""
        index = self.base_index()
        if isinstance(index, VersionIndex):
            lst = index.array_list(path.strip("/"))
            names = {n for pid, h in lst.items() if pid >= 0 and (first is None or first(pid))
                     for n in index.piece(h)}
        elif index is not None:
            names = set(index.chunk_names(path.strip("/")))
        else:
            keys, _ = self.backend.list_dir(path)
            names = {k for k in keys if not k.startswith(".")}
        if first is not None:
            names = {n for n in names if first(piece_id(n))}
        prefix = f"{path.strip('/')}/"
        with self._mutex:
            for k, op in self._ops.items():
                if k.startswith(prefix) and "/" not in k[len(prefix):] and not is_metadata(k):
                    name = k[len(prefix):]
                    if first is not None and not first(piece_id(name)):
                        continue
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
        index = self.base_index()
        for key, staged in ops.items():
            if key.startswith(META_DIR + "/"):
                continue
            if index is not None and not is_pointer(key):
                now = index.record(key)
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
        self._check_staging()
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

    def _check_staging(self) -> None:
        if self._done:
            raise StoreError("transaction already committed")
        if any(f.lost for f in self._fences):
            self._fenced_out = True
            raise StoreLeaseLostError(f"{self.store.url}: another writer took over this writer's "
                                      "lock while it was staging; nothing was published")

    # -- staging by other processes (``ingest.publish.parts``) ------------------------------------
    def staging_area(self) -> tuple[str, str, str]:
        """(store location, staging prefix, token) for workers that write chunks into this
        transaction's staging area themselves. The token is written at ``<prefix>/.workers``:
        a worker that reads it back sees the same store (a shared folder, the same bucket);
        one that does not sends its chunks to this process instead."""
        token = uuid.uuid4().hex
        self.backend.write_new(f"{self.stage}/{WORKERS_PROBE}", token.encode())
        p = self.backend.local_path
        location = str(p.resolve()) if p is not None else self.backend.url
        return location, self.stage, token

    def put_staged(self, key: str, checksum: Digest) -> None:
        """Stage ``key`` with the value a worker wrote at ``<staging prefix>/<key>``
        (``checksum``: its size and sha256, computed by the worker from the bytes it wrote)."""
        self._check_staging()
        faults.point("stage.chunk")
        with self._mutex:
            self._ops[key] = checksum
            self._adopted.pop(key, None)
            self._staged_meta.pop(key, None)

    def where(self, key: str) -> str | None:
        """The backend key that holds the value this transaction would publish for ``key``
        (staged, adopted or published); None where it stages a delete. A published key is
        returned as it is (the caller knows it exists)."""
        with self._mutex:
            if key not in self._ops:
                return key
            if self._ops[key] is None:
                return None
            return self._adopted.get(key) or f"{self.stage}/{key}"

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
        consolidated = self._consolidated()
        for group_key, doc in consolidated.items():
            raw = dumps(doc)
            if group_key != ".zmetadata" and raw != self.backend.get(group_key):
                self.put(group_key, raw)
        if source is None:  # a copy publishes its source's Collection as it copied it
            from ingest.store.stac import stage_collection  # pystac on the commit path only

            # the version's STAC Collection, in its bookkeeping; built from the consolidated
            # metadata this commit publishes (the root's .zmetadata is staged only below)
            stage_collection(self, version, consolidated[".zmetadata"])
        with self._mutex:
            ops = {k: d for k, d in self._ops.items() if not is_pointer(k)}
        # DESIGN CHOICE (bookkeeping format 2): the new version's pieces, lists and snapshot
        # are written now (content-addressed: nothing names them until the journal does), its
        # root is staged like a key; the root attributes then name the root by hash.
        root_attrs = self.attrs("")
        root_attrs.pop(ROOT_ATTR, None)
        root_meta = consolidated[".zmetadata"]
        root_meta["metadata"][".zattrs"] = root_attrs
        root_raw, root = commit_bookkeeping(
            self.backend, base_version=self.base_version, version=version,
            base_sha=self._base_sha(), ops=ops, read=self.get, source=source, written=self._objects,
            pointer_docs={".zattrs": dumps(root_attrs), ".zmetadata": dumps(root_meta)})
        root_sha = hashlib.sha256(root_raw).hexdigest()
        self.put(root_key(version), root_raw)
        root_attrs[ROOT_ATTR] = root_sha
        self.put_json(".zattrs", root_attrs)
        root_meta["metadata"][".zattrs"] = root_attrs
        self.put(".zmetadata", dumps(root_meta))
        with self._mutex:
            ops = dict(self._ops)
        order = sorted(ops, key=switch_rank)
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
        switch(self.backend, journal["ops"], self.stage)
        switch_seconds = time.perf_counter() - t0
        log.info("version %d: switched %d keys in %.1f ms", version, len(order), switch_seconds * 1000)
        self.backend.put(COMMITTED, b"")
        faults.point("commit.marked")
        self.backend.delete_prefix(TXN_DIR)
        self._done = True
        changes = {k: d for k, d in ops.items()
                   if not is_metadata(k) and not k.startswith(META_DIR + "/")}
        self.report = CommitReport(version, self.base_version, changes,
                                   tuple(sorted(k for k in ops if is_metadata(k))),
                                   root_sha, int(root["n_keys"]),
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


class StagingWriter:
    """A worker process's view of one transaction's staging area (``Transaction.staging_area``):
    it reads the values the transaction holds (``Transaction.where``) and writes staged chunks,
    whole or not at all (temp + rename, one PUT); it never writes a published key. The
    transaction still decides what is published (``put_staged``)."""

    _backends: dict = {}  # location -> backend (one client per process)

    def __init__(self, backend, location: str, prefix: str) -> None:
        self.backend, self.location, self.prefix = backend, location, prefix

    @classmethod
    def open(cls, location: str, prefix: str, token: str) -> "StagingWriter | None":
        """The staging area at ``location``/``prefix`` when this process sees it (it reads
        the transaction's ``token`` there), else None."""
        from ingest.store.backends import backend_for

        try:
            backend = cls._backends.get(location) or backend_for(location)
            seen = backend.get(f"{prefix}/{WORKERS_PROBE}")
        except Exception:  # noqa: BLE001 -- no folder, no credentials, no route: not seen
            return None
        if seen != token.encode():
            return None
        cls._backends[location] = backend
        return cls(backend, location, prefix)

    def read(self, where: str) -> bytes | None:
        return self.backend.get(where)

    def stage(self, key: str, data: bytes) -> Digest:
        """Write ``data`` as the staged value of ``key``; its (size, sha256)."""
        try:
            self.backend.put(f"{self.prefix}/{key}", data)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot stage chunk {key} in {self.location}: "
                             f"{exc.strerror or exc}; nothing was published") from exc
        return digest(data)
