"""A cube in a folder of this machine: keys as files (``LocalBackend``)."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ingest import holders
from ingest.errors import StoreBusyError
from ingest.store.backends.base import Backend

LOCK_POLL_SECONDS = 0.2


def _in_folder(target: str, make: Callable[[], object]):
    """``make()``, creating ``target``'s folder first only when it is missing (one failed
    open instead of a mkdir per key: most keys go into folders that exist)."""
    try:
        return make()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return make()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class LocalBackend(Backend):
    """Keys as files under a directory (POSIX: rename is atomic, hard links are cheap)."""

    remove_all_removes_lock = True  # the folder goes with its lock file

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        # DESIGN CHOICE: keys become file names by string concatenation, not pathlib: a
        # commit or a copy touches thousands of keys, and a Path per key costs more than the
        # system call it names
        self._prefix = os.path.join(self.url, "")

    @property
    def local_path(self) -> Path:
        return self.root

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _fs(self, key: str) -> str:
        """The file name of ``key`` (the folder itself for "")."""
        return self._prefix + key if key else self.url

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._fs(key), "rb", buffering=0) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes) -> None:
        # DESIGN CHOICE: temp file in the same directory + rename: a reader sees the old
        # bytes or the new ones, never a torn file (what zarr-python's LocalStore does too).
        target = self._fs(key)
        folder, name = os.path.split(target)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
        try:
            with _in_folder(target, lambda: open(tmp, "wb", buffering=0)) as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            _unlink(tmp)
            raise

    def write_new(self, key: str, data: bytes) -> None:
        """Write a key nobody reads yet (staging): no temp file needed."""
        target = self._fs(key)
        with _in_folder(target, lambda: open(target, "wb", buffering=0)) as f:
            f.write(data)

    def stream(self, key: str, *, deadline: float | None = None,
               block: int = 8 << 20) -> Iterator[bytes] | None:
        """The file in blocks read into one reused buffer (no allocation per block): each
        block is valid until the next one is asked for."""
        try:
            f = open(self._fs(key), "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return self._blocks(f, block)

    @staticmethod
    def _blocks(f, block: int) -> Iterator[bytes]:
        with f:
            size = os.fstat(f.fileno()).st_size
            buf = memoryview(bytearray(max(1, min(block, size + 1))))
            while n := f.readinto(buf):
                yield buf[:n]  # type: ignore[misc]

    def write_new_from(self, key: str, blocks: Iterable[bytes]) -> None:
        """Written in place (nobody reads it yet); an error while the blocks are read
        removes what was written."""
        target = self._fs(key)
        try:
            with _in_folder(target, lambda: open(target, "wb", buffering=0)) as f:
                for data in blocks:
                    f.write(data)
        except BaseException:
            _unlink(target)
            raise

    def delete(self, key: str) -> None:
        _unlink(self._fs(key))

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._fs(key))

    def size(self, key: str) -> int | None:
        try:
            return os.stat(self._fs(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
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
        target, source = self._fs(dst), self._fs(src)
        _in_folder(target, lambda: os.replace(source, target))

    def move_if_present(self, src: str, dst: str) -> bool:
        """``move`` when ``src`` exists (one rename, no separate check)."""
        try:
            self.move(src, dst)
        except FileNotFoundError:
            if os.path.exists(self._fs(src)):
                raise
            return False
        return True

    def sync(self, key: str) -> None:
        p = self._fs(key)
        for target in (p, os.path.dirname(p)):
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
        """``flock`` on ``.s2ingest/lock``, polled every 0.2 s until ``timeout`` (the kernel
        drops it when the holder dies, so a crashed writer never blocks the next one); the
        lock file names its holder (``host:pid``) for the messages of those who wait."""
        lock_path = self.root / ".s2ingest" / "lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            holders.wait_as_writer(
                lambda: (True, None) if holders.try_flock(fd) else (False, holders.recorded(fd)),
                where=str(self.root), timeout=timeout, poll=LOCK_POLL_SECONDS,
                error=StoreBusyError, on_wait=on_wait)
            holders.record(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                holders.unflock(fd)
        finally:
            os.close(fd)
