"""The objects of bookkeeping format 2 (DESIGN.md §5), pure: bytes in, bytes out.

Every object but the roots is content-addressed: stored at ``<folder>/<sha256 of its bytes>``
and never rewritten, so identical pieces are shared by every version that has them.

- **piece**: the records (name, size, sha256) of one array and one piece id: the first chunk
  index (the time chunk of a ``(time, y, x)`` array), or ``-1`` for the array's documents
  (``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``, ``grid.json``);
- **list** (an array's piece list): piece id -> piece hash;
- **changes**: the keys one commit wrote (full key, size, sha256) or deleted;
- **kept**: the digests of the old bytes a commit kept under ``objects/`` before overwriting;
- **snapshot**: every Zarr metadata document of a version, byte for byte (zlib'd JSON);
- **root** (``roots/vNNNNNNNN.json``, small JSON): version, parent and the parent root's hash,
  created, source, change counts, and the hashes of the snapshot, of every array's list, of
  the changes and the kept digests. The store's root attributes name the published root by
  hash: one digest verifies root -> lists -> pieces -> chunk bytes.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Iterable

from ingest.store.layout import META_DIR

FORMAT = 2
PIECE_DIR = f"{META_DIR}/pieces"
LIST_DIR = f"{META_DIR}/lists"
SNAP_DIR = f"{META_DIR}/meta"
ROOT_DIR = f"{META_DIR}/roots"
OBJECT_DIR = f"{META_DIR}/objects"
BOOKKEEPING_DIRS = (PIECE_DIR, LIST_DIR, SNAP_DIR, ROOT_DIR, OBJECT_DIR)
ROOT_ATTR = "s2ingest_root"  # root attribute: sha256 of the published version's root
# the root documents that carry ROOT_ATTR: the pointer, not part of the records
POINTER_KEYS = frozenset({".zattrs", ".zmetadata"})
META_PIECE = -1

_PIECE, _LIST, _CHANGES, _KEPT = b"S2P2", b"S2L2", b"S2C2", b"S2K2"
Record = tuple[int, str]  # (size, sha256 hex); size -1: deleted (changes only)


class CorruptError(ValueError):
    """A bookkeeping object that does not decode (or does not match its name)."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def root_key(version: int) -> str:
    return f"{ROOT_DIR}/v{version:08d}.json"


def piece_key(h: str) -> str:
    return f"{PIECE_DIR}/{h}"


def list_key(h: str) -> str:
    return f"{LIST_DIR}/{h}"


def snapshot_key(h: str) -> str:
    return f"{SNAP_DIR}/{h}"


def object_key(h: str) -> str:
    return f"{OBJECT_DIR}/{h}"


def split_key(key: str) -> tuple[str, str]:
    """``S2/R051/B04/3.1.7`` -> (``S2/R051/B04``, ``3.1.7``); ``grid.json`` -> ("", ``grid.json``)."""
    array, _, name = key.rpartition("/")
    return array, name


def piece_id(name: str) -> int:
    """The piece a key name belongs to: its first chunk index, -1 for documents."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else META_PIECE


def is_pointer(key: str) -> bool:
    return key in POINTER_KEYS


# -- pieces and change lists: sorted (name, size, sha256) records ------------------------------
def _pack(magic: bytes, records: Iterable[tuple[str, int, str | None]]) -> bytes:
    rows = sorted(records)
    names = "\n".join(r[0] for r in rows).encode("utf-8")
    sizes = struct.pack(f"<{len(rows)}q", *(r[1] for r in rows))
    shas = b"".join(bytes.fromhex(r[2]) if r[2] else bytes(32) for r in rows)
    body = struct.pack("<II", len(rows), len(names)) + names + sizes + shas
    return magic + zlib.compress(body, 6)


def _unpack(magic: bytes, data: bytes, what: str) -> list[tuple[str, int, str]]:
    if data[:4] != magic:
        raise CorruptError(f"not a {what} (bad magic)")
    try:
        body = zlib.decompress(data[4:])
        n, nlen = struct.unpack_from("<II", body)
        names = body[8:8 + nlen].decode("utf-8").split("\n") if n else []
        sizes = struct.unpack_from(f"<{n}q", body, 8 + nlen)
        off = 8 + nlen + 8 * n
        if len(names) != n or len(body) != off + 32 * n:
            raise CorruptError(f"{what}: truncated")
        return [(names[i], sizes[i], body[off + 32 * i: off + 32 * (i + 1)].hex()) for i in range(n)]
    except (zlib.error, struct.error, UnicodeDecodeError) as exc:
        raise CorruptError(f"{what}: {exc}") from None


def encode_piece(records: dict[str, Record]) -> bytes:
    return _pack(_PIECE, ((n, s, h) for n, (s, h) in records.items()))


def decode_piece(data: bytes) -> dict[str, Record]:
    return {n: (s, h) for n, s, h in _unpack(_PIECE, data, "piece")}


def encode_changes(changes: dict[str, Record | None]) -> bytes:
    return _pack(_CHANGES, ((k, -1, None) if r is None else (k, r[0], r[1]) for k, r in changes.items()))


def decode_changes(data: bytes) -> dict[str, Record | None]:
    return {k: None if s < 0 else (s, h) for k, s, h in _unpack(_CHANGES, data, "change list")}


def encode_kept(digests: Iterable[str]) -> bytes:
    return _pack(_KEPT, ((h, 0, h) for h in set(digests)))


def decode_kept(data: bytes) -> list[str]:
    return [h for h, _, _ in _unpack(_KEPT, data, "kept list")]


# -- array lists: piece id -> piece hash ------------------------------------------------------------
def encode_list(pieces: dict[int, str]) -> bytes:
    ids = sorted(pieces)
    body = struct.pack(f"<I{len(ids)}q", len(ids), *ids) + b"".join(bytes.fromhex(pieces[i]) for i in ids)
    return _LIST + zlib.compress(body, 6)


def decode_list(data: bytes) -> dict[int, str]:
    if data[:4] != _LIST:
        raise CorruptError("not an array list (bad magic)")
    try:
        body = zlib.decompress(data[4:])
        (n,) = struct.unpack_from("<I", body)
        ids = struct.unpack_from(f"<{n}q", body, 4)
        off = 4 + 8 * n
        if len(body) != off + 32 * n:
            raise CorruptError("array list: truncated")
        return {ids[i]: body[off + 32 * i: off + 32 * (i + 1)].hex() for i in range(n)}
    except (zlib.error, struct.error) as exc:
        raise CorruptError(f"array list: {exc}") from None


# -- metadata snapshots and roots ---------------------------------------------------------------------
def encode_snapshot(docs: dict[str, bytes]) -> bytes:
    doc = {"format": FORMAT, "documents": {k: docs[k].decode("utf-8") for k in sorted(docs)}}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode("utf-8"), 6)


def decode_snapshot(data: bytes) -> dict[str, bytes]:
    try:
        doc = json.loads(zlib.decompress(data))
        return {k: v.encode("utf-8") for k, v in doc["documents"].items()}
    except (zlib.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptError(f"metadata snapshot: {exc}") from None


def encode_root(root: dict) -> bytes:
    return json.dumps(root, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def decode_root(data: bytes) -> dict:
    try:
        root = json.loads(data)
    except ValueError as exc:
        raise CorruptError(f"root: {exc}") from None
    if not isinstance(root, dict) or root.get("format") != FORMAT or not isinstance(root.get("arrays"), dict):
        raise CorruptError("root: not a format 2 root")
    return root


def strip_pointer(docs: dict[str, bytes]) -> dict[str, bytes]:
    """The root documents without ``ROOT_ATTR`` (what a snapshot holds: the root attribute
    names the root, so it cannot be part of what the root names)."""
    out = dict(docs)
    raw = out.get(".zattrs")
    if raw is not None:
        attrs = json.loads(raw)
        if ROOT_ATTR in attrs:
            attrs.pop(ROOT_ATTR)
            out[".zattrs"] = _dumps(attrs)
    raw = out.get(".zmetadata")
    if raw is not None:
        doc = json.loads(raw)
        attrs = doc.get("metadata", {}).get(".zattrs")
        if isinstance(attrs, dict) and ROOT_ATTR in attrs:
            attrs.pop(ROOT_ATTR)
            out[".zmetadata"] = _dumps(doc)
    return out


def _dumps(doc: dict) -> bytes:
    # the same encoding as ingest.store.zarrdocs.dumps (kept here so this module stays pure)
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=True).encode()
