"""Digests of keys, and the default retention of versions (DESIGN.md §5).

Bookkeeping format 2 lives in ``ingest.store.bookkeeping`` (the objects) and
``ingest.store.versions`` (reading and writing them); format 1 manifests of earlier releases
(``.s2ingest/manifests/vNNNNNNNN.json``, every key in one document) stay readable there.
"""
from __future__ import annotations

import hashlib

from ingest.store.backends import Backend
from ingest.store.layout import META_DIR

MANIFEST_HISTORY = 20  # versions kept by default (``s2ingest versions expire --keep``)

Digest = tuple[int, str]  # (size, sha256 hex)


def digest(data: bytes) -> Digest:
    return len(data), hashlib.sha256(data).hexdigest()


def full_listing(backend: Backend) -> dict[str, dict]:
    """Size and sha256 of every key of the store outside ``.s2ingest/``."""
    out = {}
    for key in backend.list(""):
        if key.startswith(META_DIR + "/"):
            continue
        raw = backend.get(key)
        if raw is not None:
            d = digest(raw)
            out[key] = {"size": d[0], "sha256": d[1]}
    return out
