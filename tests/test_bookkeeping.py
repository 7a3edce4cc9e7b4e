"""Bookkeeping format 2 (DESIGN.md §5): pieces, lists and roots; commits that cost what they
change; listings from the bookkeeping; pinned reads across rewrites; the hash chain."""
from __future__ import annotations

import hashlib

import pytest

from ingest.store.bookkeeping import build, codec
from ingest.store.bookkeeping.index import LazyKeys, VersionIndex


def _rec(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def _write(objects: dict, draft, root_raw, version):
    objects.update(draft.objects)
    objects[codec.root_key(version)] = root_raw


# -- the format, pure ---------------------------------------------------------------------------
def test_codecs_round_trip():
    recs = {"0.1.2": (12, "a" * 64), "10.0.0": (0, "b" * 64), ".zarray": (5, "c" * 64)}
    assert codec.decode_piece(codec.encode_piece(recs)) == recs
    assert codec.encode_piece(recs) == codec.encode_piece(dict(reversed(recs.items())))  # canonical
    assert codec.decode_list(codec.encode_list({-1: "d" * 64, 3: "e" * 64})) == {-1: "d" * 64, 3: "e" * 64}
    ch = {"S2/a/0.0": (3, "f" * 64), "S2/a/1.0": None}
    assert codec.decode_changes(codec.encode_changes(ch)) == ch
    assert sorted(codec.decode_kept(codec.encode_kept(["1" * 64, "2" * 64]))) == ["1" * 64, "2" * 64]
    docs = {".zgroup": b'{"zarr_format": 2}'}
    assert codec.decode_snapshot(codec.encode_snapshot(docs)) == docs
    with pytest.raises(codec.CorruptError):
        codec.decode_piece(b"S2P2garbage")
    assert codec.piece_id("3.1.7") == 3 and codec.piece_id(".zarray") == -1 and codec.piece_id("grid.json") == -1


def test_apply_touches_only_the_changed_pieces():
    keys = {f"S2/R051/B{v:02d}/{t}.{y}.{x}": _rec(f"{v}{t}{y}{x}".encode())
            for v in range(3) for t in range(20) for y in range(4) for x in range(4)}
    keys["grid.json"] = _rec(b"g")
    objects: dict[str, bytes] = {}
    draft = build.bulk(keys.items())
    raw, _ = build.finish(draft, version=1, parent=None, parent_root=None, snapshot={}, changes={}, kept=[])
    _write(objects, draft, raw, 1)
    parent = VersionIndex.load(objects.get, 1)
    assert parent.n_keys == len(keys) and dict(LazyKeys(parent).items()) == \
        {k: {"size": s, "sha256": h} for k, (s, h) in keys.items()}
    reads = []
    parent = VersionIndex.load(lambda k: reads.append(k) or objects.get(k), 1)
    reads.clear()
    ops = {"S2/R051/B00/19.0.0": _rec(b"new"), "S2/R051/B00/20.0.0": _rec(b"more"),
           "S2/R051/B01/19.3.3": None}
    draft = build.apply(parent, ops)
    # two lists and two pieces (B00/19, B01/19) read; three pieces and two lists written
    assert len(reads) == 4
    assert sorted(k.split("/")[1] for k in draft.objects) == ["lists", "lists", "pieces", "pieces", "pieces"]
    assert set(draft.replaced) == {"S2/R051/B00/19.0.0", "S2/R051/B01/19.3.3"}
    raw, root = build.finish(draft, version=2, parent=1, parent_root=parent.root_sha, snapshot={},
                             changes=ops, kept=[r[1] for r in draft.replaced.values()])
    _write(objects, draft, raw, 2)
    v2 = VersionIndex.load(objects.get, 2)
    assert v2.n_keys == len(keys)  # one added, one deleted
    assert v2.record("S2/R051/B00/19.0.0") == _rec(b"new") and v2.record("S2/R051/B01/19.3.3") is None
    assert v2.record("S2/R051/B02/5.1.1") == keys["S2/R051/B02/5.1.1"]
    assert v2.changes() == ops and len(v2.kept()) == 2
    # unchanged arrays share their list with the parent
    assert root["arrays"]["S2/R051/B02"] == parent.root["arrays"]["S2/R051/B02"]


def test_an_object_that_does_not_match_its_name_is_refused():
    draft = build.bulk([("a/0.0", _rec(b"x"))])
    raw, root = build.finish(draft, version=1, parent=None, parent_root=None, snapshot={}, changes={}, kept=[])
    objects = dict(draft.objects)
    objects[codec.root_key(1)] = raw
    lk = codec.list_key(root["arrays"]["a"])
    objects[lk] = objects[lk][:-1] + bytes([objects[lk][-1] ^ 1])
    with pytest.raises(codec.CorruptError, match="lists/"):
        VersionIndex.load(objects.get, 1).record("a/0.0")
    with pytest.raises(codec.CorruptError, match="differs"):
        VersionIndex.load(objects.get, 1, expect_sha="0" * 64)
