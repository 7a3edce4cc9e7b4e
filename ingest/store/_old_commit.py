"""The commit protocol (DESIGN.md §5): all-or-nothing writes to a local Zarr store.

A ``Transaction`` holds an exclusive lock on the store and keeps an undo log: before a key
(chunk or metadata file) is first overwritten or created, its current file is hard-linked
into the journal (no copy: zarr replaces files by rename, so the old inode survives), or the
key is recorded as new. ``commit()`` writes the consolidated metadata last, then marks the
journal committed and drops it. If the process dies anywhere before that mark, the next
``Transaction`` (or ``recover``) restores every logged key, so the store is exactly as
readers of the previous consolidated metadata saw it. Appends are invisible to those readers
while in flight; rewrites of published time steps switch chunk by chunk, atomically.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from .errors import StoreError
from .store import META_DIR, consolidate

log = logging.getLogger(__name__)
TXN_DIR = "txn"


class Transaction:
    """Exclusive, undoable write session on one store (use as a context manager)."""

    def __init__(self, store_path: str | Path, group: str) -> None:
        self.root = Path(store_path)
        self.group = group.strip("/")
        self.meta = self.root / META_DIR
        self.dir = self.meta / TXN_DIR
        self._lock_fd: int | None = None
        self._logged: set[str] = set()
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Transaction":
        self.meta.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.meta / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"{self.root} is being written by another process") from None
            raise
        recover(self.root, _locked=True)
        (self.dir / "undo").mkdir(parents=True)
        (self.dir / "state").write_text(json.dumps(
            {"state": "open", "group": self.group, "dirs": _existing_dirs(self.root, self.group)}))
        self._log = open(self.dir / "keys.log", "a", encoding="utf-8")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._log is not None:
                self._log.close()
            if self.dir.exists():  # not committed: undo everything
                rollback(self.root)
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- undo log --------------------------------------------------------------------------
    @property
    def logged_keys(self) -> frozenset[str]:
        """Every key this transaction may have written or deleted so far."""
        return frozenset(self._logged)

    def protect(self, keys: Iterable[str]) -> None:
        """Log the current state of ``keys`` before they are written or deleted."""
        lines = []
        for key in keys:
            if key in self._logged:
                continue
            self._logged.add(key)
            src = self.root / key
            if src.exists():
                backup = self.dir / "undo" / uuid.uuid4().hex
                os.link(src, backup)
                lines.append(json.dumps({"key": key, "backup": backup.name}))
            else:
                lines.append(json.dumps({"key": key, "backup": None}))
        if lines:
            self._log.write("\n".join(lines) + "\n")
            self._log.flush()
            os.fsync(self._log.fileno())

    def protect_tree(self, prefix: str) -> None:
        """Log every key below ``prefix`` (e.g. all chunks of a coordinate array)."""
        base = self.root / prefix
        if base.is_dir():
            self.protect(f"{prefix}/{p.name}" for p in base.iterdir() if p.is_file())

    def protect_metadata(self) -> None:
        """Log the group's metadata files and every ancestor's .zmetadata/.zattrs."""
        parts = self.group.split("/")
        keys = []
        for depth in range(len(parts) + 1):
            prefix = "/".join(parts[:depth])
            for name in (".zmetadata", ".zattrs", ".zgroup"):
                keys.append(f"{prefix}/{name}" if prefix else name)
        base = self.root / self.group
        if base.is_dir():
            for child in base.iterdir():
                if child.is_dir():
                    keys += [f"{self.group}/{child.name}/.zarray", f"{self.group}/{child.name}/.zattrs"]
        self.protect(keys)

    def commit(self) -> None:
        """Publish: consolidated metadata last, then the commit mark, then drop the journal."""
        self.protect_metadata()
        consolidate(self.root, self.group)
        _fsync_dir(self.root)
        (self.dir / "state").write_text(json.dumps({"state": "committed", "group": self.group}))
        shutil.rmtree(self.dir)


def _existing_dirs(root: Path, group: str) -> list[str]:
    """The group, its ancestors and its children that exist before the transaction.

    Arrays or groups created inside the transaction are not in this list; a rollback
    removes them whole, so a crashed first write of a new variable leaves nothing behind.
    """
    parts = [p for p in group.split("/") if p]
    found = [""]
    for depth in range(1, len(parts) + 1):
        rel = "/".join(parts[:depth])
        if (root / rel).is_dir():
            found.append(rel)
    base = root / group
    if base.is_dir():
        found += [f"{group}/{c.name}" for c in base.iterdir() if c.is_dir()]
    return found


def _remove_new_dirs(root: Path, group: str, before: list[str]) -> None:
    keep = set(before)
    parts = [p for p in group.split("/") if p]
    candidates = ["/".join(parts[:d]) for d in range(1, len(parts) + 1)]
    base = root / group
    if base.is_dir():
        candidates += [f"{group}/{c.name}" for c in base.iterdir() if c.is_dir()]
    for rel in sorted(candidates, key=len, reverse=True):
        if rel not in keep and (root / rel).is_dir():
            shutil.rmtree(root / rel)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rollback(root: Path) -> None:
    """Restore every logged key to its state before the transaction, newest entries last."""
    txn = root / META_DIR / TXN_DIR
    log_file = txn / "keys.log"
    entries = []
    if log_file.exists():
        for line in log_file.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:  # a torn last line: that key was never written
                continue
    for entry in entries:
        target = root / entry["key"]
        if entry["backup"] is None:
            if target.exists():
                target.unlink()
        else:
            backup = txn / "undo" / entry["backup"]
            if backup.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(backup, target)
    state = _read_state(txn)
    if "dirs" in state:
        _remove_new_dirs(root, state.get("group", ""), state["dirs"])
    if entries:
        log.warning("rolled back an unfinished write of %d keys in %s", len(entries), root)
    shutil.rmtree(txn)


def _read_state(txn: Path) -> dict:
    try:
        return json.loads((txn / "state").read_text())
    except (OSError, ValueError):
        return {}


def recover(root: str | Path, _locked: bool = False) -> bool:
    """Finish or undo a transaction a crashed writer left behind. True if there was one."""
    root = Path(root)
    txn = root / META_DIR / TXN_DIR
    if not txn.exists():
        return False
    state = _read_state(txn)
    if state.get("state") == "committed":
        shutil.rmtree(txn)
    else:
        rollback(root)
    return True
