"""Where the bytes of a cube live: the backend interface of the store owner.

``CubeStore`` (``ingest.store.cube``) is the only code that knows the layout of a cube; it
reads and writes keys through a ``Backend``. A backend knows nothing of Zarr: it moves bytes
under string keys (``"S2/R051/B04/0.3.7"``), replaces a key atomically, and gives the writer
an exclusive lock. ``LocalBackend`` keeps keys as files under a directory; ``HTTPBackend``
reads a cube served by any static web server (read only, e.g. for ``s2ingest verify``).
``S3Backend`` (``ingest.store.s3``) keeps keys as objects under an ``s3://bucket/prefix``
(``move`` is a server-side copy + delete, which the roll-forward journal tolerates; the lock is
a lease object taken with conditional PUTs).

A writer lock (``Backend.lock``, or an extra lock such as the catalog's store lease) may yield
a ``Fence``: ``Transaction.commit`` enters ``fence()`` of every lock it holds around the
journal write (the commit point), so a writer whose lock was taken over meanwhile is refused
there (``StoreLeaseLostError``) and publishes nothing.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from ingest.errors import StoreError, StoreBusyError


class Fence:
    """What a writer lock that can be taken over yields: ``fence()`` is entered around the
    journal write and raises ``StoreLeaseLostError`` if the lock is no longer this writer's.

    DESIGN CHOICE: the check sits at the commit point, the one step that makes a commit
    irreversible; before it a writer that lost its lock has changed nothing published, after
    it the next writer rolls the journal forward whoever wrote it. A lock that cannot be lost
    (``flock``: the kernel holds it until the process dies) needs no fence.
    """

    def fence(self):
        return nullcontext()

    @property
    def lost(self) -> bool:
        """True once this writer knows the lock was taken over (staging stops early)."""
        return False


class Backend(ABC):
    """Bytes under keys. Keys use ``/``; no key starts or ends with ``/``."""

    url: str
    writable: bool = True

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
        """Context manager: the exclusive writer lock, waiting at most ``timeout`` seconds."""

    def write_new(self, key: str, data: bytes) -> None:
        """Write a key that nobody reads yet (the staging area)."""
        self.put(key, data)

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


class LocalBackend(Backend):
    """Keys as files under a directory (POSIX: rename is atomic, hard links are cheap)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        # DESIGN CHOICE: temp file in the same directory + rename: a reader sees the old
        # bytes or the new ones, never a torn file (what zarr-python's LocalStore does too).
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_new(self, key: str, data: bytes) -> None:
        """Write a key nobody reads yet (staging): no temp file needed."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(".partial"):
                    continue
                yield name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        keys, dirs = [], []
        try:
            with os.scandir(self.path(prefix)) as entries:
                for e in entries:
                    if e.is_dir():
                        dirs.append(e.name)
                    elif not e.name.endswith(".partial"):
                        keys.append(e.name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return keys, dirs

    def move(self, src: str, dst: str) -> None:
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(src), target)

    def sync(self, key: str) -> None:
        p = self.path(key)
        for target in (p, p.parent):
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def is_empty(self) -> bool:
        return not self.root.exists()

    def has_prefix(self, prefix: str) -> bool:
        return self.path(prefix).exists()

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def lock(self, timeout: float, on_wait: Callable[[str], None] | None = None):
        """``flock`` on ``.s2ingest/lock``, polled until ``timeout`` (the kernel drops it when
        the holder dies, so a crashed writer never blocks the next one)."""
        lock_path = self.root / ".s2ingest" / "lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                holder = _read_holder(lock_path)
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"{self.root} is being written by another process{holder}; "
                        f"gave up after waiting {timeout:.0f} s") from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for {self.root}: another process{holder} is writing it")
                    told = True
                time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.uname().nodename}:{os.getpid()}".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists (a lock holder's liveness)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


class HTTPBackend(Backend):
    """A cube served over plain HTTP(S) by a static file server: read only."""

    writable = False

    def __init__(self, url: str, session=None) -> None:
        import requests

        self.url = url.rstrip("/")
        self._session = session or requests.Session()

    def _request(self, method: str, key: str):
        """The response, None for 404; any other failure is one StoreError naming the URL."""
        import requests

        try:
            r = self._session.request(method, f"{self.url}/{key}", timeout=60, allow_redirects=True)
        except requests.RequestException as exc:
            raise StoreError(f"cannot read {self.url}/{key}: {exc.__class__.__name__}") from exc
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise StoreError(f"cannot read {self.url}/{key}: HTTP {r.status_code}")
        return r

    def get(self, key: str) -> bytes | None:
        r = self._request("GET", key)
        return None if r is None else r.content

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        r = self._request("HEAD", key)
        if r is None:
            return None
        length = r.headers.get("Content-Length")
        return int(length) if length is not None else len(self.get(key) or b"")

    def _read_only(self, *_a, **_k):
        raise StoreError(f"{self.url} is read only (HTTP)")

    put = delete = move = sync = _read_only  # type: ignore[assignment]

    def list(self, prefix: str = "") -> Iterator[str]:
        raise StoreError(f"{self.url}: a static HTTP server cannot list keys; use the manifest")

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        raise StoreError(f"{self.url}: a static HTTP server cannot list keys; use the manifest")

    def lock(self, timeout: float, on_wait=None):
        self._read_only()


def is_url(location: str | os.PathLike[str]) -> bool:
    """A store location that is a URL (s3://, http(s)://), not a local path."""
    return "://" in str(location)


def backend_for(location: str | os.PathLike[str]) -> Backend:
    """The backend of a store location: a local path, an s3:// or an http(s):// URL."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        return HTTPBackend(text)
    if text.startswith("s3://"):
        from ingest.store.s3 import S3Backend

        return S3Backend(text)
    if "://" in text:
        raise StoreError(f"{text}: unsupported store URL (a local path, s3:// or http(s):// URL)")
    return LocalBackend(text)
