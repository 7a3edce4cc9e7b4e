"""Reading the keys of a source for a copy: streamed, checked while they flow, bounded.

A key is read in blocks and hashed as it is written (one read, no second pass): never more
than the manifest's size plus one block is read (a body that goes on is refused the moment it
passes the recorded size), and the whole transfer of one key, retries included, ends within
``transfer_timeout`` seconds (a stalled or trickling source is given up with one line naming
the key and the source). A key that does not match its manifest entry is read again (with
backoff) unless the source meanwhile published a newer version (``SourceMoved``).
"""
from __future__ import annotations

import hashlib
import threading
import time
from typing import Callable, Iterator

from ingest.errors import StoreError, TransferTimeoutError
from ingest.store.bookkeeping.codec import object_key

DEFAULT_TRANSFER_TIMEOUT = 600.0  # seconds one key may take at most, retries included
BLOCK = 8 << 20  # bytes read (and hashed, and written) at once


class SourceMoved(Exception):
    """The source published a newer version that changed a key of the one being copied."""

    def __init__(self, key: str, newer: int) -> None:
        super().__init__(key)
        self.key = key
        self.newer = newer


class _Mismatch(Exception):
    """What was read is not what the manifest records (too long, too short, other bytes)."""


class Fetcher:
    """Reads source keys in parallel threads (one connection per thread), checked, with
    retries, each key within ``transfer_timeout`` seconds."""

    def __init__(self, src, version: int, retries: int,
                 transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT, block: int = BLOCK) -> None:
        self.src = src
        self.version = version
        self.retries = retries
        self.timeout = transfer_timeout
        self.block = block
        self._local = threading.local()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop every transfer under way at its next block (the copy failed elsewhere)."""
        self._cancelled.set()

    def _streamer(self) -> Callable[..., Iterator[bytes] | None]:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self.src.key_streamer()
        return stream

    def _checked(self, blocks: Iterator[bytes], size: int, sha: str) -> Iterator[bytes]:
        """``blocks`` passed on while counted and hashed; _Mismatch as soon as they pass
        ``size``, or at their end when they are fewer or other bytes."""
        h = hashlib.sha256()
        n = 0
        try:
            for data in blocks:
                if self._cancelled.is_set():
                    raise StoreError(f"{self.src.url}: the copy stopped")
                n += len(data)
                if n > size:
                    raise _Mismatch(f"more than the {size} bytes the manifest records")
                h.update(data)
                yield data
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
        if n != size or h.hexdigest() != sha:
            raise _Mismatch(f"{n} bytes, sha256 {h.hexdigest()[:12]}…; expected {size} bytes, "
                            f"sha256 {sha[:12]}…")

    def get(self, key: str, size: int, sha: str) -> bytes:
        """The bytes of ``key`` as the version's manifest names them (small keys)."""
        out: list[bytes] = []
        self.fetch(key, size, sha, lambda blocks: out.extend(bytes(b) for b in blocks))
        return b"".join(out)

    def fetch(self, key: str, size: int, sha: str, write: Callable[[Iterator[bytes]], None]) -> None:
        """Pass the bytes of ``key`` to ``write`` as checked blocks (``write`` consumes them;
        an exception raised while they flow must leave nothing behind), retried as needed."""
        deadline = time.monotonic() + self.timeout
        delay = 0.2
        for attempt in range(self.retries + 1):
            problem = None
            try:
                blocks = self._streamer()(key, deadline=deadline, block=self.block)
                if blocks is None:
                    problem = "missing"
                else:
                    write(self._checked(blocks, size, sha))
                    return
            except _Mismatch as exc:
                problem = str(exc)
            except TransferTimeoutError as exc:
                raise self._too_slow(key) from exc
            except StoreError as exc:
                if self._cancelled.is_set():
                    raise
                if attempt == self.retries:
                    raise StoreError(f"cannot read {self.src.url}/{key} after {attempt + 1} tries: "
                                     f"{exc}") from exc
            if time.monotonic() >= deadline:
                raise self._too_slow(key)
            if problem is not None and self._kept(key, size, sha, deadline, write):
                return  # rewritten since: the bytes the source kept for the version
            if problem is not None:
                newer = self.src.version()
                if newer != self.version:
                    raise SourceMoved(key, newer)
                if attempt == self.retries:
                    raise StoreError(f"{self.src.url}/{key} does not match the manifest of version "
                                     f"{self.version} ({problem}); the source is damaged "
                                     "(`s2ingest verify --deep` there)")
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _kept(self, key: str, size: int, sha: str, deadline: float,
              write: Callable[[Iterator[bytes]], None]) -> bool:
        """Pass the bytes the source kept under ``.s2ingest/objects/`` for ``sha`` (a key that
        a later commit rewrote, DESIGN.md §5); False when it kept none that match."""
        blocks = self._streamer()(object_key(sha), deadline=deadline, block=self.block)
        if blocks is None:
            return False
        try:
            write(self._checked(blocks, size, sha))
        except _Mismatch:
            return False
        return True

    def _too_slow(self, key: str) -> TransferTimeoutError:
        return TransferTimeoutError(
            f"{key} from {self.src.url}: not received within --transfer-timeout "
            f"{self.timeout:g} s (the source stalled or sends too slowly); what was fetched "
            "is kept, rerun to resume")
