"""Fault-injection points of the commit protocol (tests kill the process at each one).

``point(name)`` does nothing unless the environment variable ``S2INGEST_FAULT`` names it:
``S2INGEST_FAULT=switch.data`` kills the process (SIGKILL, as ``kill -9`` would) at the
first pass; ``S2INGEST_FAULT=switch.data@3`` at the third; ``S2INGEST_FAULT=stage.chunk=enospc``
raises ``OSError(ENOSPC)`` there instead (a disk that fills up);
``S2INGEST_FAULT=sync.claimed=wait:FILE`` creates ``FILE.reached`` and waits there until
``FILE`` exists (a test acts at a known moment, e.g. sends Ctrl-C, instead of guessing it with
a sleep). Every point is listed in ``POINTS`` so a test can walk all of them.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time

POINTS = (
    "txn.locked",          # lock held, before recovery
    "stage.chunk",         # a chunk written to the staging area
    "stage.done",          # every chunk staged; metadata and journal not yet written
    "stage.metadata",      # about to stage the metadata (=enospc: the disk is full there)
    "keep.object",         # one overwritten chunk's old bytes kept under .s2ingest/objects/
    "bookkeeping.write",   # about to write the new version's pieces, lists and snapshot
    "bookkeeping.written",  # those written (nothing names them yet); the root not staged
    "journal.write",       # about to write the journal (=enospc: the disk is full there)
    "journal.written",     # the journal (the commit record) is durable; no key switched yet
    "switch.data",         # one data chunk switched
    "switch.coords",       # one coordinate chunk switched
    "switch.metadata",     # one array/group metadata document switched
    "switch.group-zmetadata",  # a group's consolidated metadata replaced (root not yet)
    "switch.root-zmetadata",   # the root's consolidated metadata replaced: the version is out
    "commit.marked",       # the journal is marked committed, not yet removed
    "catalog.before-commit",   # the store is committed; the catalog not yet
    "mirror.fetched",      # a mirror fetched one key into the copy's .s2ingest/mirror/ (not yet published)
    "sync.claimed",        # sync holds the leases of the products it is about to ingest
)

_lock = threading.Lock()
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Crash or fail here if ``S2INGEST_FAULT`` asks for it (see the module docstring)."""
    spec = os.environ.get("S2INGEST_FAULT")
    if not spec:
        return
    target, _, action = spec.partition("=")
    target, _, nth = target.partition("@")
    if target != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit != int(nth or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action.startswith("wait:"):
        release = action[len("wait:"):]
        with open(release + ".reached", "w"):
            pass
        while not os.path.exists(release):  # a signal (Ctrl-C) interrupts the wait
            time.sleep(0.05)
        return
    os.kill(os.getpid(), signal.SIGKILL)
