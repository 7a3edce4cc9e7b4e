"""The commit journal: the order of the switch, applying it, and recovery (DESIGN.md §5).

A journal (``.s2ingest/txn/journal.json``) is the commit point: the ordered list of keys to
switch, written in one atomic write. ``switch`` applies it (idempotent); ``recover`` rolls an
unfinished one forward, discards a staging area without one, and undoes what s2ingest 0.1 left.
"""
from __future__ import annotations

import hashlib
import json
import logging

from ingest.errors import StoreError
import ingest.store.faults as faults
from ingest.store.backends import Backend
from ingest.store.layout import GRID_FILE, META_DIR, TIME_COORDS, TXN_DIR, is_metadata

log = logging.getLogger(__name__)

STAGE = f"{TXN_DIR}/stage"
JOURNAL = f"{TXN_DIR}/journal.json"
COMMITTED = f"{TXN_DIR}/committed"
LEGACY_LOG = f"{TXN_DIR}/keys.log"
COORD_ARRAYS = frozenset({*TIME_COORDS, "edition", "x", "y", "spatial_ref"})


def switch_rank(key: str) -> tuple:
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


def switch(backend: Backend, ops: list, stage: str = STAGE) -> None:
    """Apply a journal: rename every staged key into place, delete the deleted ones (in
    order; idempotent, so recovery simply runs it again).

    DESIGN CHOICE: on a backend whose moves are network requests (``parallel_moves`` > 1: S3),
    the keys of one rank (invisible keys, data, coordinates, array metadata) are switched by a
    few threads at once; the ranks stay in order, and the ``.zmetadata`` documents (deepest
    first, the root's last) one by one, so readers still reach new content only through them.
    """
    workers = backend.parallel_moves
    if workers <= 1:
        for item in ops:
            _switch_one(backend, item, stage)
        return
    from concurrent.futures import ThreadPoolExecutor
    from itertools import groupby

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rank, group in groupby(ops, key=lambda item: switch_rank(item[0])[0]):
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
    rank = switch_rank(key)[0]
    if rank == 1:
        faults.point("switch.data")
    elif rank == 2:
        faults.point("switch.coords")
    elif rank == 3:
        faults.point("switch.metadata")
    elif rank == 4:
        faults.point("switch.root-zmetadata" if key == ".zmetadata" else "switch.group-zmetadata")


def _lost(backend: Backend, key: str, sha: str | None) -> bool:
    """A put whose staged file is gone: already switched (the key holds its content) or lost."""
    if sha is None:
        return False
    data = backend.get(key)
    return data is None or hashlib.sha256(data).hexdigest() != sha


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
        switch(backend, ops, journal.get("stage", STAGE))  # journals before 0.2: one stage folder
        log.warning("finished the commit of version %s that a crashed writer left in %s",
                    journal.get("version"), backend.url)
    backend.delete_prefix(TXN_DIR)
    return "rolled forward"
