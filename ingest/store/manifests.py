"""Manifests and metadata snapshots: what each version of a cube holds (DESIGN.md §5).

A commit writes, under ``.s2ingest/manifests/``, the manifest of its version (every key with
its size and sha256, the parent version, this commit's changes) and its metadata snapshot
(every Zarr metadata document of that version, byte for byte). The last ``MANIFEST_HISTORY``
versions are kept.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Callable

from ingest.store.backends import Backend
from ingest.store.layout import MANIFEST_DIR, META_DIR, is_metadata, manifest_key, metadata_key, version_of_key

MANIFEST_HISTORY = 20  # versions whose manifests are kept (a mirror copies one of them)

Digest = tuple[int, str]  # (size, sha256 hex)


def digest(data: bytes) -> Digest:
    return len(data), hashlib.sha256(data).hexdigest()


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


def build_manifest(backend: Backend, base_version: int, version: int,
                   ops: dict[str, Digest | None]) -> dict:
    """The manifest of ``version``: the keys of ``base_version``'s manifest with ``ops``
    (key -> digest, None: deleted) applied; a store without that manifest (the first commit,
    or a store from before manifests) is listed and hashed in full."""
    parent_raw = backend.get(manifest_key(base_version))
    parent = base_version
    if parent_raw is not None:
        parent_doc = json.loads(parent_raw)
        keys = parent_doc["keys"]
        if version == base_version:  # a repair: the version keeps its parent
            parent = int(parent_doc.get("parent", version - 1))
    else:  # a store from before manifests, or the first commit: hash what is there
        keys = full_listing(backend)
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


def build_snapshot(backend: Backend, read: Callable[[str], bytes | None], base_version: int,
                   version: int, manifest: dict, ops: dict[str, Digest | None]) -> dict:
    """The metadata documents of ``version``: the parent's snapshot with this commit's
    metadata changes applied (every document read once when there is no parent snapshot);
    ``read(key)`` gives a key as the commit leaves it."""
    parent = backend.get(metadata_key(base_version))
    if parent is not None:
        docs = json.loads(parent)["documents"]
        changed = [k for k in ops if is_metadata(k)]
    else:
        docs, changed = {}, [k for k in manifest["keys"] if is_metadata(k)]
    for key in changed:
        raw = read(key)
        if raw is None:
            docs.pop(key, None)
        else:
            docs[key] = raw.decode("utf-8")
    return {"format": 1, "version": version, "documents": dict(sorted(docs.items()))}


def prune_manifests(backend: Backend, version: int) -> None:
    """Delete every manifest older than the last ``MANIFEST_HISTORY`` versions (all of them:
    a writer killed after its switch never pruned, and recovery does not prune)."""
    keep_from = version - MANIFEST_HISTORY + 1
    keys, _ = backend.list_dir(MANIFEST_DIR)
    for name in keys:
        v = version_of_key(name)
        if v is not None and v < keep_from:
            backend.delete(f"{MANIFEST_DIR}/{name}")
