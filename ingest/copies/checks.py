"""What a copy checks before any work: the source's bookkeeping and where the copy goes.

- **The source's bookkeeping** (``source_bookkeeping``): the manifest and metadata snapshot
  of the version to copy are read once and checked whole (JSON, every entry a key with a
  size and a sha256, no key that leaves the cube, every metadata document readable JSON).
  A damaged or tampered file is one line naming it; nothing is fetched.
- **The places** (``refuse_places``): the copy must not be the source, lie inside it or hold
  it (a copy inside its source becomes part of the source's folder, which then fails
  ``verify``; a source inside its copy would be deleted by it), and the copy's own folders
  (the destination, its ``.s2ingest`` and what the mirror keeps there) must not be symbolic
  links: the lock, the downloads and the state would land outside the destination.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ingest.errors import ConfigError, StoreError
from ingest.store.bookkeeping.codec import root_key
from ingest.store.layout import META_DIR, is_metadata, manifest_key, metadata_key

_SHA256 = re.compile(r"[0-9a-f]{64}")


class SourceMovedOn(Exception):
    """A metadata document of the newest version changed while it was read (the source
    published meanwhile): ``key`` and the ``newer`` version."""

    def __init__(self, key: str, newer: int) -> None:
        super().__init__(key)
        self.key, self.newer = key, newer


def _damaged(src, key: str, why: str) -> StoreError:
    return StoreError(f"{src.url}/{key} is damaged or was tampered with ({why}); nothing was "
                      "copied (check the source: `s2ingest verify --deep` there)")


class _NoDocument(ValueError):
    """The manifest names a metadata document the version's snapshot does not hold."""


def _check_keys(keys, docs: Mapping[str, bytes] | None = None) -> None:
    """Every entry a key of a cube with a size and a sha256; with ``docs``, every metadata
    document the keys name (but ``.zmetadata``) among them (``_NoDocument``). One pass: on a
    national cube the keys are millions of records read piece by piece."""
    if not isinstance(keys, Mapping):
        raise ValueError("its 'keys' is not a mapping")
    for key, entry in keys.items():
        parts = key.split("/") if isinstance(key, str) else [""]
        if any(p in ("", ".", "..") for p in parts) or "\\" in key or parts[0] == META_DIR:
            raise ValueError(f"key {key!r} is not a key of a cube")
        if not isinstance(entry, dict) or type(entry.get("size")) is not int or entry["size"] < 0 \
                or not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            raise ValueError(f"entry {key!r} has no valid size and sha256")
        if docs is not None and is_metadata(key) and key not in docs \
                and key.rsplit("/", 1)[-1] != ".zmetadata":
            raise _NoDocument(f"no document {key!r}, which the manifest names")


def source_bookkeeping(src, version: int, keys: Mapping | None = None
                       ) -> tuple[Mapping[str, dict], dict[str, bytes]]:
    """(manifest keys, metadata documents) of ``version`` at ``src``, checked; ``keys``: the
    version's keys as the caller reads them (e.g. sharing the pieces a copy already holds)."""
    where = root_key(version) if src.version_root(version) is not None else manifest_key(version)
    try:
        manifest = src.manifest(version)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        keys = manifest["keys"] if keys is None else keys
        if not isinstance(keys, Mapping):
            raise ValueError("its 'keys' is not a mapping")
        changes = manifest.get("changes", {})
        _check_keys({k: e for k, e in changes.items() if e is not None})
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _damaged(src, where, f"{exc.__class__.__name__}: {exc}") from None
    try:
        docs = _source_docs(src, version, keys)
        for key, raw in docs.items():
            if not isinstance(raw, bytes) or not is_metadata(key):
                raise ValueError(f"document {key!r} is not a metadata document")
            json.loads(raw)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise _damaged(src, metadata_key(version), f"{exc.__class__.__name__}: {exc}") from None
    try:
        _check_keys(keys, docs)
    except _NoDocument as exc:
        raise _damaged(src, metadata_key(version), f"ValueError: {exc}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise _damaged(src, where, f"{exc.__class__.__name__}: {exc}") from None
    return keys, docs


def _source_docs(src, version: int, keys: dict[str, dict]) -> dict[str, bytes]:
    """The metadata documents of ``version``: its snapshot, or (for a store written before
    snapshots, while that version is the newest) the documents themselves, checked."""
    try:
        return src.metadata_snapshot(version)
    except StoreError:
        if src.version() != version or (src.version_root(version) or {}).get("format", 1) >= 2:
            raise  # a format 2 version always has its snapshot: a damaged one is refused
    docs = {}
    for key, entry in keys.items():
        if is_metadata(key):
            raw = src.read(key)
            if raw is None or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                raise SourceMovedOn(key, src.version())
            docs[key] = raw
    return docs


def refuse_places(src_url: str, copy: str) -> None:
    """Refuse a copy that is its source, lies inside it or holds it, and a local copy whose
    folders where the mirror writes are symbolic links (before any work)."""
    remote = "://" in copy or "://" in src_url
    if remote:
        a, b = copy.rstrip("/") + "/", src_url.rstrip("/") + "/"
        if a == b:
            raise ConfigError("the copy must not be the source")
        if a.startswith(b) or b.startswith(a):
            raise ConfigError(f"the copy {copy} must not lie inside its source {src_url} "
                              "(nor the source inside the copy)")
        return
    dst, src = Path(copy).resolve(), Path(src_url).resolve()
    if dst == src:
        raise ConfigError("the copy must not be the source")
    if dst.is_relative_to(src) or src.is_relative_to(dst):
        raise ConfigError(f"the copy {copy} must not lie inside its source {src_url} "
                          "(nor the source inside the copy)")
    refuse_links(Path(copy))


def refuse_links(copy: Path) -> None:
    """A symbolic link inside the destination where the copy writes (its ``.s2ingest``, any
    file or folder below it, a folder at its top) is refused; the destination itself may be
    a link to a folder."""
    meta = copy / META_DIR
    places = [meta]
    if copy.is_dir():
        places += [p for p in copy.iterdir() if p.name != META_DIR]
    if meta.is_dir() and not meta.is_symlink():
        for root, dirs, names in os.walk(meta):
            places += [Path(root, n) for n in (*dirs, *names)]
    for p in places:
        if p.is_symlink():
            raise ConfigError(f"{p} is a symbolic link (to {os.readlink(p)}); the copy writes its "
                              "lock, downloads and state inside the destination, so it must be "
                              "a real file or folder there")
