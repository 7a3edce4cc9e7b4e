"""Whether a location holds a cube, of which grid, and whether one may be created there."""
from __future__ import annotations

import json
from pathlib import Path

from ingest.errors import GridMismatchError, NotACubeError, StoreError
from ingest.grid import CubeGrid, get_grid
from ingest.store.backends import Backend, backend_for
from ingest.store.layout import GRID_FILE, META_DIR


def stored_grid(backend: Backend) -> CubeGrid | None:
    """The grid of the cube at ``backend``; None where nothing is (a Zarr store of another
    tool is refused)."""
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


def check_grid(stored: CubeGrid, grid: CubeGrid, where: str) -> None:
    if stored.to_dict() != grid.to_dict():
        raise GridMismatchError(f"store {where} has grid {stored.name} {stored.to_dict()}, "
                                f"not {grid.name}; leave out --grid (and the grid setting) to "
                                "use the store's own")


def grid_for(location: str | Path, requested: str | None) -> CubeGrid:
    """The grid of the cube at ``location``: the store is the authority on its grid.

    An existing store's own ``grid.json`` is used; a grid that was asked for (``--grid``, the
    ``grid`` setting) must equal it (``GridMismatchError``, one line, before any work). A
    location with no cube yet gets the requested grid, NL by default.
    """
    backend = backend_for(location)
    stored = stored_grid(backend)
    if stored is None:
        return get_grid(requested or "NL")
    if requested is not None:
        check_grid(stored, get_grid(requested), backend.url)
    return stored


def check_location(location: str | Path) -> None:
    """Refuse a store location that is a file, or a non-empty folder (or S3 prefix) that is not
    an s2ingest cube (``NotACubeError``, exit 6), before anything is created there."""
    check_backend(backend_for(location))


def check_backend(backend: Backend) -> None:
    """``check_location`` of the location of ``backend``."""
    if not backend.supports_writes:
        return  # read only: nothing is ever created there
    p = backend.local_path
    if p is None:
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
