"""One version's records, read lazily: the root first, then an array's list and the pieces
a lookup needs, each fetched once (``VersionIndex``; DESIGN.md §5)."""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Mapping

from ingest.store.bookkeeping.codec import (
    META_PIECE, CorruptError, Record, decode_changes, decode_kept, decode_list, decode_piece,
    decode_root, decode_snapshot, is_pointer, list_key, piece_id, piece_key, root_key, sha,
    snapshot_key, split_key,
)

Getter = Callable[[str], "bytes | None"]


class MissingObjectError(CorruptError):
    """A bookkeeping object a root names is not in the store."""


class VersionIndex:
    """The records of one version (format 2) over ``get(key) -> bytes | None``.

    Every object is checked against the hash it is named by when it is read (``verify=True``,
    the default), so a reader that trusts the root trusts every record it is given."""

    PIECES_CACHED = 256  # decoded pieces kept (a national cube has ~10^6: passes stream)

    def __init__(self, get: Getter, root: dict, root_sha: str | None = None, *,
                 verify: bool = True) -> None:
        self.get = get
        self.root = root
        self.root_sha = root_sha
        self.version = int(root["version"])
        self._verify = verify
        self._lists: dict[str, dict[int, str]] = {}
        self._pieces: dict[str, dict[str, Record]] = {}
        self._mutex = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # object key -> held while it is read
        self.bytes_read = 0

    @classmethod
    def load(cls, get: Getter, version: int, *, expect_sha: str | None = None) -> "VersionIndex | None":
        """The index of ``version`` (None if the store has no format 2 root for it)."""
        raw = get(root_key(version))
        if raw is None:
            return None
        h = sha(raw)
        if expect_sha is not None and h != expect_sha:
            raise CorruptError(f"{root_key(version)}: sha256 {h} differs from the {expect_sha} "
                               "the store's root attributes name")
        root = decode_root(raw)
        if int(root.get("version", -1)) != version:
            raise CorruptError(f"{root_key(version)}: names version {root.get('version')}")
        idx = cls(get, root, h)
        idx.bytes_read += len(raw)
        return idx

    # -- objects ------------------------------------------------------------------------------
    def fetch(self, key: str, h: str) -> bytes:
        raw = self.get(key)
        if raw is None:
            raise MissingObjectError(f"{key}: missing (version {self.version} names it)")
        with self._mutex:
            self.bytes_read += len(raw)
        if self._verify and sha(raw) != h:
            raise CorruptError(f"{key}: sha256 differs from its name (damaged)")
        return raw

    def _cached(self, cache: dict, name: str, load: Callable[[], object], bound: int | None = None):
        """``cache[name]``, loaded by ``load()`` when missing. DESIGN CHOICE: threads that
        ask for the same missing object at once (a copy checks keys of one piece on 8
        threads) wait for the one that reads it, instead of each reading and decoding it."""
        with self._mutex:
            got = cache.get(name)
            if got is not None:
                return got
            lock = self._loading.setdefault(f"{id(cache)}:{name}", threading.Lock())
        with lock:
            with self._mutex:
                got = cache.get(name)
            if got is None:
                got = load()
                with self._mutex:
                    if bound is not None and len(cache) > bound:  # a reader streams through pieces
                        cache.clear()
                    cache[name] = got
            with self._mutex:
                self._loading.pop(f"{id(cache)}:{name}", None)
        return got

    def array_list(self, array: str) -> dict[int, str]:
        """piece id -> piece hash of ``array`` ({} for an array this version does not have)."""
        h = self.root["arrays"].get(array)
        if h is None:
            return {}
        return self._cached(self._lists, array, lambda: decode_list(self.fetch(list_key(h), h)))

    def piece(self, h: str) -> dict[str, Record]:
        return self._cached(self._pieces, h, lambda: decode_piece(self.fetch(piece_key(h), h)),
                            bound=self.PIECES_CACHED)

    def piece_records(self, array: str, pid: int) -> dict[str, Record]:
        h = self.array_list(array).get(pid)
        return {} if h is None else self.piece(h)

    # -- records --------------------------------------------------------------------------------
    def record(self, key: str) -> Record | None:
        """(size, sha256) of ``key`` in this version; None: not in it (fill only, or absent)."""
        array, name = split_key(key)
        return self.piece_records(array, piece_id(name)).get(name)

    def arrays(self) -> list[str]:
        return sorted(self.root["arrays"])

    def names(self, array: str) -> list[str]:
        """Every key name of ``array`` (chunks and documents), sorted by piece."""
        out = []
        for pid in sorted(self.array_list(array)):
            out.extend(self.piece_records(array, pid))
        return out

    def chunk_names(self, array: str) -> list[str]:
        lst = self.array_list(array)
        out = []
        for pid in sorted(lst):
            if pid != META_PIECE:
                out.extend(self.piece(lst[pid]))
        return out

    def items(self) -> Iterator[tuple[str, Record]]:
        """Every (key, record) of this version, piece by piece (bounded memory)."""
        for array in self.arrays():
            lst = self.array_list(array)
            prefix = f"{array}/" if array else ""
            for pid in sorted(lst):
                for name, rec in sorted(self.piece(lst[pid]).items()):
                    yield prefix + name, rec
            with self._mutex:
                self._lists.pop(array, None)

    @property
    def n_keys(self) -> int:
        return int(self.root.get("n_keys", 0))

    def snapshot(self) -> dict[str, bytes]:
        h = self.root["metadata"]
        return decode_snapshot(self.fetch(snapshot_key(h), h))

    def changes(self) -> dict[str, Record | None]:
        h = (self.root.get("changes") or {}).get("hash")
        return {} if h is None else decode_changes(self.fetch(piece_key(h), h))

    def kept(self) -> list[str]:
        h = self.root.get("kept")
        return [] if h is None else decode_kept(self.fetch(piece_key(h), h))


class LazyKeys(Mapping):
    """``VersionIndex`` as a read-only mapping key -> {"size", "sha256"} (what format 1
    manifests gave as ``keys``): lookups read one piece, iteration streams."""

    def __init__(self, index: VersionIndex) -> None:
        self.index = index

    def __getitem__(self, key: str) -> dict:
        rec = None if is_pointer(key) else self.index.record(key)
        if rec is None:
            raise KeyError(key)
        return {"size": rec[0], "sha256": rec[1]}

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and not is_pointer(key) and self.index.record(key) is not None

    def __iter__(self) -> Iterator[str]:
        for key, _ in self.index.items():
            yield key

    def items(self):  # type: ignore[override]
        return ((k, {"size": r[0], "sha256": r[1]}) for k, r in self.index.items())

    def __len__(self) -> int:
        return self.index.n_keys


class SharedKeys(LazyKeys):
    """The keys of ``index`` (a remote version), reading every list and piece that ``local``
    (another store's version, e.g. a copy) holds under the same hash from ``local`` instead:
    a mirror rerun fetches only the bookkeeping that differs (DESIGN.md §5)."""

    def __init__(self, index: VersionIndex, local: VersionIndex) -> None:
        super().__init__(index)
        self.local = local
        self._local_lists = {h: a for a, h in local.root["arrays"].items()}

    def _piece(self, array: str, pid: int) -> dict[str, Record]:
        if self.index.root["arrays"].get(array) in self._local_lists:
            return self.local.piece_records(array, pid)
        h = self.index.array_list(array).get(pid)
        if h is None:
            return {}
        if self.local.array_list(array).get(pid) == h:
            return self.local.piece(h)
        return self.index.piece(h)

    def __getitem__(self, key: str) -> dict:
        array, name = split_key(key)
        rec = None if is_pointer(key) else self._piece(array, piece_id(name)).get(name)
        if rec is None:
            raise KeyError(key)
        return {"size": rec[0], "sha256": rec[1]}

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
            return True
        except KeyError:
            return False

    def items(self):  # type: ignore[override]
        for array in self.index.arrays():
            prefix = f"{array}/" if array else ""
            if self.index.root["arrays"][array] in self._local_lists:
                pids = sorted(self.local.array_list(array))
            else:
                pids = sorted(self.index.array_list(array))
            for pid in pids:
                for name, rec in sorted(self._piece(array, pid).items()):
                    yield prefix + name, {"size": rec[0], "sha256": rec[1]}

    def __iter__(self):
        return (k for k, _ in self.items())
