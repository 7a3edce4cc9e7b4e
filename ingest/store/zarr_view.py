"""One published version of a cube as a read-only zarr-python 3 ``Store`` (DESIGN.md §10).

``VersionStore(location, version)`` is what xarray and zarr open when a reader pins a version
(``s2ingest.open_cube``, ``rechunk``, ``export``):

- **metadata** keys (``.zgroup``, ``.zattrs``, ``.zarray``, ``.zmetadata``) come from the
  version's metadata snapshot (``CubeStore.metadata_snapshot``), exactly as that version
  published them, whatever later versions wrote since;
- **chunk** keys: the version's piece for that key (read once, lazily: bookkeeping in
  proportion to what is read) gives its size and sha256; the live key is read and checked,
  and when a later version rewrote or deleted it, the bytes a commit kept before overwriting
  (``.s2ingest/objects/<sha256>``) are read instead. A key the version does not list is a
  chunk holding only fill values (never stored, so never listed): it reads as missing.

DESIGN CHOICE: every chunk is checked against the version's records before zarr sees it, so a
lazy dataset opened at one version never mixes in another version's chunks, even while a
writer switches a rewrite in (the live key then mismatches and the kept bytes are read).
``VersionGoneError`` remains only for a version whose kept bytes were expired. Hashing costs
about 1 ms per MB of compressed chunk, small against decompressing it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import AsyncIterator, Iterable

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from ingest.errors import StoreError
from ingest.store.backends import Backend
from ingest.store.bookkeeping.codec import object_key
from ingest.store.bookkeeping.index import LazyKeys, VersionIndex
from ingest.store.cube import CubeStore
from ingest.store.layout import META_DIR, is_metadata
from ingest.store.state import version_of
from ingest.store.zarrdocs import ArrayMeta


class VersionGoneError(StoreError):
    """A chunk of a pinned version was rewritten or deleted by a later version."""


class VersionStore(Store):
    """Read-only view of one version of the cube at ``location`` (a path or a URL)."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, location: str, version: int | None = None, *,
                 backend: Backend | None = None) -> None:
        super().__init__(read_only=True)
        self.location = str(location)
        cube = CubeStore.open(self.location) if backend is None else CubeStore(backend, None)
        self._backend = cube.backend
        self.grid = cube._grid  # None when opened on a bare backend
        self.version = cube.version() if version is None else int(version)
        self._index = cube.index(self.version)
        self._metadata: dict[str, bytes] = cube.metadata_snapshot(self.version)

    # -- pickling (dask workers rebuild the store from its location and version) -----------------
    def __getstate__(self) -> dict:
        return {"location": self.location, "version": self.version}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"], state["version"])  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, VersionStore) and other.location == self.location
                and other.version == self.version)

    def __hash__(self) -> int:
        return hash((self.location, self.version))

    def __repr__(self) -> str:
        return f"VersionStore({self.location!r}, version={self.version})"

    def with_read_only(self, read_only: bool = False) -> "VersionStore":
        if not read_only:
            raise StoreError(f"{self.location}: a pinned version is read only")
        return self

    @property
    def url(self) -> str:
        return self._backend.url

    @property
    def keys(self):
        """Every key of this version (outside ``.s2ingest/``) with its size and sha256 (a lazy
        mapping: a lookup reads one piece)."""
        return LazyKeys(self._index) if isinstance(self._index, VersionIndex) else self._index.manifest["keys"]

    @property
    def bookkeeping_bytes(self) -> int:
        """Bytes of bookkeeping (roots, lists, pieces, snapshot) this view has read."""
        return int(self._index.bytes_read)

    def record(self, key: str) -> tuple[int, str] | None:
        if key.startswith(META_DIR + "/"):
            return None
        return self._index.record(key)

    def metadata(self, key: str) -> bytes | None:
        return self._metadata.get(key)

    def metadata_keys(self) -> list[str]:
        return sorted(self._metadata)

    # -- reading -------------------------------------------------------------------------------
    def read_key(self, key: str) -> bytes | None:
        """The bytes of ``key`` as this version published them (None: not in this version)."""
        if is_metadata(key):
            return self._metadata.get(key)
        rec = self.record(key)
        if rec is None:
            return None  # fill only in this version (never stored), or not part of the cube
        entry = {"size": rec[0], "sha256": rec[1]}
        data = self._backend.get(key)
        if data is not None and _matches(data, entry):
            return data
        kept = self._backend.get(object_key(rec[1]))  # a later version rewrote or deleted it
        if kept is not None and _matches(kept, entry):
            return kept
        restored = None if data is None else self._restore_appended(key, data, entry)
        if restored is None:
            raise self._gone(key, deleted=data is None)
        return restored

    def _restore_appended(self, key: str, data: bytes, entry: dict) -> bytes | None:
        """This version's bytes of a chunk that later versions only appended to, or None.

        DESIGN CHOICE: an append rewrites the partly filled last time chunk of every variable
        and of the time and provenance coordinates, copying the published steps bit for bit
        (DESIGN.md §5). The chunk as this version published it is therefore the current chunk
        with everything beyond this version's shape set to the fill value, encoded with the
        array's codec; only if that reproduces the manifest's sha256 exactly is it served (so
        what is returned is provably this version's bytes, never an approximation).
        """
        array, _, index = key.rpartition("/")
        raw_meta = self._metadata.get(f"{array}/.zarray")
        if raw_meta is None:
            return None
        try:
            meta = ArrayMeta(json.loads(raw_meta))
            idx = [int(i) for i in index.split(".")] if meta.shape else []
            if meta.fill_value is None or meta.codec is None or meta.doc.get("filters") \
                    or len(idx) != len(meta.shape):
                return None
            chunk = meta.decode(data)
            outside = [slice(max(0, s - i * c), None)
                       for s, i, c in zip(meta.shape, idx, meta.chunks)]
            for axis, sl in enumerate(outside):
                view = chunk[(slice(None),) * axis + (sl,)]
                if view.size:
                    view[...] = meta.fill_value
            old = meta.encode(chunk)
        except (ValueError, TypeError, RuntimeError):
            return None
        return old if _matches(old, entry) else None

    def _gone(self, key: str, deleted: bool) -> StoreError:
        try:
            now = version_of(json.loads(self._backend.get(".zmetadata") or b"{}").get("metadata", {}))
        except (ValueError, StoreError):
            now = None
        what = "deleted" if deleted else "changed"
        if now is not None and now > self.version:
            return VersionGoneError(
                f"version {self.version} of {self.url}: {key} was {what} by a later version "
                f"(now {now}) and its old bytes are no longer kept (expired); reopen or mirror "
                "a retained version")
        return StoreError(f"version {self.version} of {self.url}: {key} does not match the "
                          f"version's manifest ({what}); the store is damaged, run "
                          "`s2ingest verify --deep`")

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if is_metadata(key):
            data = self._metadata.get(key)
        else:
            data = await asyncio.to_thread(self.read_key, key)
        if data is None:
            return None
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._metadata or (not is_metadata(key) and self.record(key) is not None)

    async def set(self, key: str, value: Buffer) -> None:
        raise StoreError(f"{self.location}: a pinned version is read only")

    async def delete(self, key: str) -> None:
        raise StoreError(f"{self.location}: a pinned version is read only")

    def _all_keys(self) -> list[str]:
        return sorted({*self._metadata, *(k for k, _ in self._index.items())})

    async def list(self) -> AsyncIterator[str]:
        for key in self._all_keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._all_keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        start = f"{prefix}/" if prefix else ""
        seen = set()
        for key in self._all_keys():
            if key.startswith(start):
                name = key[len(start):].split("/", 1)[0]
                if name not in seen:
                    seen.add(name)
                    yield name

    async def getsize(self, key: str) -> int:
        if key in self._metadata:
            return len(self._metadata[key])
        rec = None if is_metadata(key) else self.record(key)
        if rec is not None:
            return int(rec[0])
        raise FileNotFoundError(key)


def _matches(data: bytes, entry: dict) -> bool:
    return len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[len(data) - byte_range.suffix:]
    raise ValueError(f"unexpected byte range {byte_range!r}")


def open_version(location: str, version: int | None = None) -> VersionStore:
    """The version ``version`` (default: the one readers see now) of the cube at ``location``."""
    return VersionStore(str(location), version)


__all__ = ["VersionStore", "VersionGoneError", "open_version"]
