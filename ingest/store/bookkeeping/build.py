"""The bookkeeping objects of a new version (DESIGN.md §5).

``apply`` reads only the parent's lists and pieces of the arrays and piece ids a commit
touches, and returns the new pieces and lists (a ``Draft``): its cost is the change, not the
cube. ``bulk`` builds the objects of a whole listing at once (a store's first format 2
version: the upgrade of a format 1 store, or a benchmark's simulated cube).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from ingest.store.bookkeeping.codec import (
    FORMAT, META_PIECE, Record, encode_changes, encode_kept, encode_list, encode_piece,
    encode_root, encode_snapshot, is_pointer, list_key, piece_id, piece_key, sha, snapshot_key,
    split_key,
)
from ingest.store.bookkeeping.index import VersionIndex
from ingest.store.layout import is_metadata


@dataclass
class Draft:
    arrays: dict[str, str]  # array path -> list hash
    objects: dict[str, bytes] = field(default_factory=dict)  # key -> bytes to write
    replaced: dict[str, Record] = field(default_factory=dict)  # chunk key -> its parent record
    n_keys: int = 0
    n_bytes: int = 0


def _group(ops: dict[str, Record | None]) -> dict[str, dict[int, dict[str, Record | None]]]:
    out: dict[str, dict[int, dict[str, Record | None]]] = defaultdict(lambda: defaultdict(dict))
    for key, rec in ops.items():
        array, name = split_key(key)
        out[array][piece_id(name)][name] = rec
    return out


def apply(parent: VersionIndex | None, ops: dict[str, Record | None]) -> Draft:
    """The parent's records with ``ops`` (key -> record; None: deleted) applied. ``ops`` must
    not hold keys under ``.s2ingest/`` nor the root pointer documents."""
    arrays = dict(parent.root["arrays"]) if parent is not None else {}
    draft = Draft(arrays, n_keys=parent.n_keys if parent else 0,
                  n_bytes=int(parent.root.get("bytes", 0)) if parent else 0)
    for array, by_piece in _group(ops).items():
        lst = dict(parent.array_list(array)) if parent is not None else {}
        for pid, names in by_piece.items():
            recs = dict(parent.piece_records(array, pid)) if parent is not None else {}
            for name, rec in names.items():
                old = recs.pop(name, None)
                if old is not None:
                    draft.n_keys -= 1
                    draft.n_bytes -= old[0]
                    key = f"{array}/{name}" if array else name
                    # every key but the Zarr metadata documents (the snapshot holds those):
                    # chunks and the other keys of a version (e.g. stac/collection.json)
                    if (pid != META_PIECE or not is_metadata(key)) and (rec is None or rec[1] != old[1]):
                        draft.replaced[key] = old
                if rec is not None:
                    recs[name] = (int(rec[0]), rec[1])
                    draft.n_keys += 1
                    draft.n_bytes += int(rec[0])
            if recs:
                raw = encode_piece(recs)
                h = sha(raw)
                draft.objects[piece_key(h)] = raw
                lst[pid] = h
            else:
                lst.pop(pid, None)
        if lst:
            raw = encode_list(lst)
            h = sha(raw)
            draft.objects[list_key(h)] = raw
            arrays[array] = h
        else:
            arrays.pop(array, None)
    return draft


def bulk(records: Iterable[tuple[str, Record]]) -> Draft:
    """The objects of a whole listing (key, record), built in one pass."""
    return apply(None, {k: r for k, r in records if not is_pointer(k)})


def finish(draft: Draft, *, version: int, parent: int | None, parent_root: str | None,
           snapshot: dict[str, bytes], changes: dict[str, Record | None], kept: Iterable[str],
           source: dict | None = None, created: str | None = None) -> tuple[bytes, dict]:
    """The root of the version (its bytes, and the objects it adds to ``draft.objects``)."""
    snap = encode_snapshot(snapshot)
    snap_h = sha(snap)
    draft.objects[snapshot_key(snap_h)] = snap
    ch = encode_changes(changes)
    ch_h = sha(ch)
    draft.objects[piece_key(ch_h)] = ch
    kept = sorted(set(kept))
    kept_h = None
    if kept:
        raw = encode_kept(kept)
        kept_h = sha(raw)
        draft.objects[piece_key(kept_h)] = raw
    puts = [r for r in changes.values() if r is not None]
    root = {
        "format": FORMAT, "version": version, "parent": parent, "parent_root": parent_root,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source, "metadata": snap_h, "arrays": dict(sorted(draft.arrays.items())),
        "n_keys": draft.n_keys, "bytes": draft.n_bytes, "kept": kept_h, "n_kept": len(kept),
        "changes": {"hash": ch_h, "n_put": len(puts), "n_delete": len(changes) - len(puts),
                    "bytes_put": sum(r[0] for r in puts)},
    }
    return encode_root(root), root
