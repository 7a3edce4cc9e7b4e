"""Versions of a cube: reading a version's bookkeeping (format 2, or a format 1 manifest of
an earlier release) and writing a commit's (DESIGN.md §5).

``index_of`` gives the records of one version, read lazily; ``commit_bookkeeping`` writes the
objects of a new version (content-addressed: written before the journal, harmless if the
commit never happens) and keeps the old bytes of every chunk the commit overwrites or deletes
under ``.s2ingest/objects/`` (write before overwrite), so retained versions stay readable.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import ingest.store.faults as faults
from ingest.errors import StoreError
from ingest.store.backends import Backend
from ingest.store.bookkeeping import build
from ingest.store.bookkeeping.codec import (
    META_PIECE, ROOT_ATTR, CorruptError, Record, is_pointer, object_key, piece_id, root_key, sha,
    split_key, strip_pointer,
)
from ingest.store.bookkeeping.index import LazyKeys, VersionIndex
from ingest.store.layout import META_DIR, is_metadata, manifest_key, metadata_key
from ingest.store.manifests import full_listing

log = logging.getLogger(__name__)


class FlatIndex:
    """A format 1 manifest (every key in one JSON document) behind ``VersionIndex``'s reading
    interface: stores of earlier releases stay readable."""

    def __init__(self, backend: Backend, version: int, manifest: dict) -> None:
        self.backend = backend
        self.version = version
        self.manifest = manifest
        self.root = {"format": 1, "version": version, "parent": manifest.get("parent"),
                     "created": manifest.get("created"), "source": manifest.get("source")}
        self.root_sha = None
        self.bytes_read = 0

    def record(self, key: str) -> Record | None:
        e = self.manifest["keys"].get(key)
        return None if e is None else (int(e["size"]), e["sha256"])

    def chunk_names(self, array: str) -> list[str]:
        prefix = f"{array}/" if array else ""
        return [k[len(prefix):] for k in self.manifest["keys"]
                if k.startswith(prefix) and "/" not in k[len(prefix):]
                and piece_id(k[len(prefix):]) != META_PIECE]

    def items(self) -> Iterator[tuple[str, Record]]:
        for k, e in sorted(self.manifest["keys"].items()):
            yield k, (int(e["size"]), e["sha256"])

    @property
    def n_keys(self) -> int:
        return len(self.manifest["keys"])

    def snapshot(self) -> dict[str, bytes]:
        raw = self.backend.get(metadata_key(self.version))
        if raw is None:
            raise StoreError(f"{self.backend.url}: no metadata snapshot of version {self.version}")
        return {k: v.encode() for k, v in json.loads(raw)["documents"].items()}

    def changes(self) -> dict[str, Record | None]:
        return {k: None if e is None else (int(e["size"]), e["sha256"])
                for k, e in self.manifest.get("changes", {}).items()}

    def kept(self) -> list[str]:
        return []


def root_pointer(root_attrs: dict) -> str | None:
    """The root hash the store's root attributes name (None: a store of an earlier release)."""
    h = root_attrs.get(ROOT_ATTR)
    return h if isinstance(h, str) else None


def index_of(backend: Backend, version: int, expect_sha: str | None = None):
    """The records of ``version`` (``VersionIndex``, or ``FlatIndex`` for a format 1 manifest),
    None when the store keeps no bookkeeping of it. ``expect_sha``: the root hash the store's
    root attributes name (checked when given)."""
    try:
        idx = VersionIndex.load(backend.get, version, expect_sha=expect_sha)
    except CorruptError as exc:
        raise StoreError(f"{backend.url}: {exc}") from None
    if idx is not None:
        return idx
    raw = backend.get(manifest_key(version))
    if raw is None:
        return None
    return FlatIndex(backend, version, json.loads(raw))


def describe(idx) -> dict:
    """A version's manifest as the API gives it: version, parent, created, source, ``keys`` (a
    lazy mapping key -> size, sha256) and ``changes`` (this commit's keys; None: deleted)."""
    if isinstance(idx, FlatIndex):
        return idx.manifest
    ch = idx.changes()
    return {"format": 2, "version": idx.version, "parent": idx.root.get("parent"),
            "created": idx.root.get("created"), "source": idx.root.get("source"),
            "keys": LazyKeys(idx), "n_keys": idx.n_keys,
            "changes": {k: None if r is None else {"size": r[0], "sha256": r[1]} for k, r in ch.items()}}


def full_records(backend: Backend) -> dict[str, Record]:
    """Size and sha256 of every key outside ``.s2ingest/``, read and hashed now (the one
    listing of ``manifests.full_listing``, as records)."""
    return {k: (e["size"], e["sha256"]) for k, e in full_listing(backend).items()}


def keep_old_bytes(backend: Backend, replaced: dict[str, Record], workers: int = 8,
                   written: list[str] | None = None) -> list[str]:
    """Copy the bytes of every chunk a commit overwrites or deletes to ``objects/<sha256>``
    (unless already kept); returns the digests kept. A key that no longer holds the parent's
    bytes (damaged) cannot be kept and is left out (``verify`` reports it)."""
    def keep(item: tuple[str, Record]) -> str | None:
        key, (size, h) = item
        if backend.exists(object_key(h)):
            return h
        data = backend.get(key)
        if data is None or len(data) != size or sha(data) != h:
            log.warning("%s: %s does not hold the bytes its version names; not kept", backend.url, key)
            return None
        backend.put(object_key(h), data)
        if written is not None:
            written.append(object_key(h))
        faults.point("keep.object")
        return h

    if not replaced:
        return []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sorted({h for h in pool.map(keep, sorted(replaced.items())) if h})


def write_objects(backend: Backend, objects: dict[str, bytes], written: list[str],
                  workers: int = 8) -> None:
    """Write every content-addressed object of ``objects`` that the store does not hold yet
    (an existing one holds these bytes), ``workers`` at once; each one written is appended
    to ``written`` as soon as it is (so a failure part way leaves a complete list of what to
    remove). DESIGN CHOICE: in parallel, as ``keep_old_bytes``: a commit that touches many
    arrays writes hundreds of small pieces, one request each on an object store."""
    def one(item: tuple[str, bytes]) -> None:
        key, raw = item
        if not backend.exists(key):
            backend.put(key, raw)
            written.append(key)  # list.append is atomic

    if len(objects) <= 1:
        for item in objects.items():
            one(item)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(objects))) as pool:
        for _ in pool.map(one, objects.items()):
            pass


def commit_bookkeeping(backend: Backend, *, base_version: int, version: int, base_sha: str | None,
                       ops: dict[str, tuple | None], read: Callable[[str], bytes | None],
                       pointer_docs: dict[str, bytes], source: dict | None,
                       written: list[str] | None = None) -> tuple[bytes, dict]:
    """Write the objects of ``version`` and return its root (bytes, dict), to be staged.

    ``ops``: key -> (size, sha256) of the staged value, None: deleted; ``read(key)``: a key as
    the commit leaves it (for the metadata snapshot); ``pointer_docs``: the root ``.zattrs`` and
    ``.zmetadata`` as staged (without the root hash, which names what this returns);
    ``written``: collects the objects this call created (removed again if the commit fails
    before its journal).
    """
    written = [] if written is None else written
    changes = {k: (None if d is None else (int(d[0]), d[1])) for k, d in ops.items()
               if not k.startswith(META_DIR + "/") and not is_pointer(k)}
    base = index_of(backend, base_version, base_sha) if base_version > 0 else None
    repair = version == base_version and base is not None
    if isinstance(base, VersionIndex):
        draft = build.apply(base, changes)
        docs = base.snapshot()
        meta_changed = [k for k in changes if is_metadata(k)]
    else:  # the first commit, or the upgrade of a store of an earlier release: every key once
        records = dict(base.items()) if base is not None else full_records(backend)
        draft = build.Draft({})
        for k, rec in changes.items():
            old = records.pop(k, None)
            if old is not None and (piece_id(split_key(k)[1]) != META_PIECE or not is_metadata(k)) \
                    and (rec is None or rec[1] != old[1]):
                draft.replaced[k] = old
            if rec is not None:
                records[k] = rec
        full = build.bulk(records.items())
        draft.arrays, draft.objects, draft.n_keys, draft.n_bytes = \
            full.arrays, full.objects, full.n_keys, full.n_bytes
        docs, meta_changed = {}, [k for k in records if is_metadata(k)]
    for key in meta_changed:
        raw = read(key)
        if raw is None:
            docs.pop(key, None)
        else:
            docs[key] = raw
    docs.update(strip_pointer(pointer_docs))
    kept = keep_old_bytes(backend, draft.replaced, written=written)
    if repair:
        parent, parent_root = base.root.get("parent"), base.root.get("parent_root")
    else:
        parent = base_version
        parent_root = base.root_sha if base is not None else None
    root_raw, root = build.finish(draft, version=version, parent=parent, parent_root=parent_root,
                                  snapshot=docs, changes=changes, kept=kept, source=source)
    faults.point("bookkeeping.write")
    write_objects(backend, draft.objects, written)
    faults.point("bookkeeping.written")
    return root_raw, root


__all__ = ["FlatIndex", "VersionIndex", "commit_bookkeeping", "describe", "full_records",
           "index_of", "keep_old_bytes", "root_key", "root_pointer"]
