"""The store owner: one package through which every key of a cube is read and written.

- ``backend``: where bytes live (``LocalBackend``; ``HTTPBackend`` read only).
- ``layout``: key names, encoding constants, CF attributes (the store contract).
- ``cube``: ``CubeStore`` (open once per command, grid check, published view, versions) and
  its ``Transaction`` (lock, recover, stage, journal, switch; DESIGN.md §5).
- ``imagery``: the orbit groups; ``zarrdocs``: Zarr format 2 documents made by zarr-python.
- ``verify``: catalog and manifest checks; ``faults``: fault-injection points for tests.
"""
from ingest.store.backend import Backend, HTTPBackend, LocalBackend, backend_for
from ingest.store.cube import (
    CommitReport, CubeStore, PublishedState, Transaction, check_grid, recover, to_ms,
)
from ingest.store.layout import (
    COMPRESSOR, GRID_FILE, META_DIR, PROVENANCE, chunk_key, group_path, join, manifest_key,
)

__all__ = [
    "Backend", "HTTPBackend", "LocalBackend", "backend_for", "CommitReport", "CubeStore",
    "PublishedState", "Transaction", "check_grid", "recover", "to_ms", "COMPRESSOR", "GRID_FILE",
    "META_DIR", "PROVENANCE", "chunk_key", "group_path", "join", "manifest_key", "read_published",
]


def read_published(location, group: str) -> PublishedState:
    """The published state of ``group`` of the cube at ``location`` (a path or URL)."""
    return CubeStore.open(location).published(group)
