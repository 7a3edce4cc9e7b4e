"""Where the bytes of a cube live: the backend interface of the store owner.

``CubeStore`` (``ingest.store.cube``) is the only code that knows the layout of a cube; it
reads and writes keys through a ``Backend``. A backend knows nothing of Zarr: it moves bytes
under string keys (``"S2/R051/B04/0.3.7"``), replaces a key atomically, and gives the writer
an exclusive lock.

A backend **declares what it can do** (as zarr-python's ``Store`` does with
``supports_writes``/``supports_listing``); the store asks these, never the backend's type:

- ``supports_writes``: keys can be written (False: a static HTTP server);
- ``supports_listing``: keys can be listed (False: a static HTTP server; the manifest names
  every key instead);
- ``local_path``: the folder of a location on this machine's file system, None elsewhere;
- ``parallel_moves``: how many keys of one rank the switch moves at once (1: one by one;
  more where a move is a network request);
- ``remove_all_removes_lock``: ``remove_all`` takes the writer lock with it (a folder and
  its lock file), so a failed first commit is removed after the lock is released; otherwise
  (an object store, whose lease object its holder deletes) it is removed while still locked.

A writer lock (``Backend.lock``, or an extra lock such as the catalog's store lease) yields
None or a ``Fence``: ``Transaction.commit`` enters ``fence()`` of every lock it holds around
the journal write (the commit point), so a writer whose lock was taken over meanwhile is
refused there (``StoreLeaseLostError``) and publishes nothing.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator


class Fence:
    """What a writer lock that can be taken over yields: ``fence()`` is entered around the
    journal write and raises ``StoreLeaseLostError`` if the lock is no longer this writer's;
    ``lost`` is True once the writer knows it was taken over (staging stops early).

    A lock of another package (the catalog's ``CatalogStoreLease``) yields an object with the
    same two members.

    DESIGN CHOICE: the check sits at the commit point, the one step that makes a commit
    irreversible; before it a writer that lost its lock has changed nothing published, after
    it the next writer rolls the journal forward whoever wrote it. A lock that cannot be lost
    (``flock``: the kernel holds it until the process dies) yields no fence.
    """

    def fence(self):
        return nullcontext()

    @property
    def lost(self) -> bool:
        return False


class Backend(ABC):
    """Bytes under keys. Keys use ``/``; no key starts or ends with ``/``."""

    url: str
    # -- what this backend can do (see the module's docstring) ---------------------------------
    supports_writes: bool = True
    supports_listing: bool = True
    parallel_moves: int = 1
    remove_all_removes_lock: bool = False

    @property
    def local_path(self) -> Path | None:
        """The folder of this location on this machine's file system; None elsewhere."""
        return None

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None where no such key exists."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any old value atomically."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key below ``prefix`` (recursive), in no particular order."""

    @abstractmethod
    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        """(keys, sub-prefixes) directly below ``prefix`` (names, not full keys)."""

    # -- what transactions need --------------------------------------------------------
    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Replace ``dst`` by ``src`` atomically; ``src`` is gone afterwards."""

    def move_if_present(self, src: str, dst: str) -> bool:
        """``move`` when ``src`` exists; False (nothing done) when it does not."""
        if not self.exists(src):
            return False
        self.move(src, dst)
        return True

    @abstractmethod
    def sync(self, key: str) -> None:
        """Make ``key`` (and the entry naming it) durable."""

    @abstractmethod
    def lock(self, timeout: float, on_wait: Callable[[str], None] | None = None):
        """Context manager: the exclusive writer lock, waiting at most ``timeout`` seconds;
        yields None or a ``Fence``."""

    def write_new(self, key: str, data: bytes) -> None:
        """Write a key that nobody reads yet (the staging area)."""
        self.put(key, data)

    def stream(self, key: str, *, deadline: float | None = None,
               block: int = 8 << 20) -> Iterator[bytes] | None:
        """The bytes of ``key`` in blocks of at most ``block`` bytes (None: no such key);
        ``deadline`` (``time.monotonic()``) bounds the whole transfer where the backend can
        stall (HTTP). A block may be a view of a buffer the next block reuses: consume it
        (write, hash, copy) before asking for the next. Close the iterator to stop early."""
        data = self.get(key)
        if data is None:
            return None
        return (data[i:i + block] for i in range(0, max(len(data), 1), block) if data[i:i + block])

    def write_new_from(self, key: str, blocks: Iterable[bytes]) -> None:
        """``write_new`` from blocks (an error while they are read leaves no key behind)."""
        self.write_new(key, b"".join(bytes(b) for b in blocks))

    def size(self, key: str) -> int | None:
        """The size of ``key`` in bytes, None where no such key exists."""
        data = self.get(key)
        return None if data is None else len(data)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key below ``prefix``."""
        for key in list(self.list(prefix)):
            self.delete(key)

    def has_prefix(self, prefix: str) -> bool:
        """True when any key lies below ``prefix``."""
        return next(iter(self.list(prefix)), None) is not None

    def is_empty(self) -> bool:
        """True when nothing at all is stored at this location (a new store)."""
        return next(iter(self.list("")), None) is None

    def remove_all(self) -> None:
        """Remove the whole location (a first commit that failed: nothing else was there)."""
        self.delete_prefix("")

    def describe_foreign(self) -> list[str]:
        """Names directly at the top of the location other than ``.s2ingest`` (sorted)."""
        keys, dirs = self.list_dir("")
        return sorted(n for n in [*keys, *dirs] if n != ".s2ingest")
