"""The store owner: one package through which every key of a cube is read and written.

- ``backends``: where bytes live (``LocalBackend``, ``S3Backend``; ``HTTPBackend`` read only),
  each declaring what it can do; only this package uses them.
- ``layout``: key names, encoding constants, CF attributes (the store contract).
- ``cube``: ``CubeStore`` (open once per command, grid check, published view, versions, the
  read API of everything outside the store); ``location``: is a location a cube, may one be
  created there; ``state``: ``PublishedState`` and the store version.
- ``transaction``: ``Transaction`` (lock, recover, stage, journal, switch; DESIGN.md §5);
  ``journal``: the switch order, the switch and recovery; ``bookkeeping``: the format 2
  objects of every version (pieces, lists, snapshots, roots; pure); ``versions``: reading a
  version's records (format 2, or a format 1 manifest) and writing a commit's;
  ``retention``: expiring versions; ``manifests``: digests and the default retention.
- ``imagery``: the orbit groups; ``zarrdocs``: Zarr format 2 documents made by zarr-python.
- ``verify``: catalog and manifest checks; ``faults``: fault-injection points for tests.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# DESIGN CHOICE: the names below are loaded on first use (PEP 562), so a command that only
# reads bookkeeping (``status``, ``verify``) never imports zarr, rasterio, pyproj or boto3.
_WHERE = {
    "Backend": "backends", "HTTPBackend": "backends", "LocalBackend": "backends",
    "CubeStore": "cube", "recover": "journal",
    "COMPRESSOR": "layout", "GRID_FILE": "layout", "META_DIR": "layout", "PROVENANCE": "layout",
    "chunk_key": "layout", "group_path": "layout", "join": "layout", "manifest_key": "layout",
    "check_grid": "location", "check_location": "location",
    "MANIFEST_HISTORY": "manifests", "Digest": "manifests", "digest": "manifests",
    "PublishedState": "state", "to_ms": "state",
    "DEFAULT_LOCK_TIMEOUT": "transaction", "CommitReport": "transaction", "Transaction": "transaction",
}

if TYPE_CHECKING:
    from ingest.store.backends import Backend, HTTPBackend, LocalBackend
    from ingest.store.cube import CubeStore
    from ingest.store.journal import recover
    from ingest.store.layout import (
        COMPRESSOR, GRID_FILE, META_DIR, PROVENANCE, chunk_key, group_path, join, manifest_key,
    )
    from ingest.store.location import check_grid, check_location
    from ingest.store.manifests import MANIFEST_HISTORY, Digest, digest
    from ingest.store.state import PublishedState, to_ms
    from ingest.store.transaction import DEFAULT_LOCK_TIMEOUT, CommitReport, Transaction


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Backend", "HTTPBackend", "LocalBackend", "CommitReport", "CubeStore",
    "DEFAULT_LOCK_TIMEOUT", "Digest", "MANIFEST_HISTORY", "PublishedState", "Transaction",
    "check_grid", "check_location", "digest", "recover", "to_ms", "COMPRESSOR", "GRID_FILE",
    "META_DIR", "PROVENANCE", "chunk_key", "group_path", "join", "manifest_key", "read_published",
    "list_versions",
]


def read_published(location, group: str) -> PublishedState:
    """The published state of ``group`` of the cube at ``location`` (a path or URL)."""
    from ingest.store.cube import CubeStore

    return CubeStore.open(location).published(group)


def list_versions(store) -> list[dict]:
    """Every version the store keeps, oldest first: version, created, parent, number of keys
    and number of keys that version changed (read from the versions' roots only)."""
    from ingest.store.cube import CubeStore

    cube = CubeStore.open(str(store))
    out = []
    for v in cube.manifest_versions():
        r = cube.version_root(v)
        if r is None:
            continue
        ch = r.get("changes") or {}
        out.append({"version": v, "created": r.get("created"), "parent": r.get("parent"),
                    "keys": int(r.get("n_keys", 0)),
                    "changed": int(ch.get("n_put", 0)) + int(ch.get("n_delete", 0))})
    return out
