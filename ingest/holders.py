"""Who holds a lock, and the one bounded wait for it (a shared leaf: the standard library only).

Every lock of s2ingest names its holder ``host:pid``: the store's ``flock`` file and its S3
lease object, the catalog's store lease and its migration lock file, and the workers' leases
on catalog rows (``sync``). This module says who this process is (``me``), reads a holder
back (``parse``), tells whether a holder of this host is still running (``alive``), and
waits for a lock with a deadline (``wait``): it polls, tells the caller once whom it waits
for, and gives up with the caller's own error naming the holder.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from typing import Callable

Take = Callable[[], tuple[bool, str | None]]  # one attempt: (taken, who holds it when not)


def host() -> str:
    """This machine's name, as holders name it."""
    return socket.gethostname()


def me() -> str:
    """The holder name of this process: ``host:pid``."""
    return f"{host()}:{os.getpid()}"


def parse(holder: str | None) -> tuple[str, int] | None:
    """(host, pid) of a ``host:pid`` holder; None for anything else (e.g. ``layers@host:pid``
    parses with host ``layers@host``, which is never this host)."""
    host, _, pid = (holder or "").rpartition(":")
    if not host or not pid.isdigit():
        return None
    return host, int(pid)


def alive(holder: str | None) -> bool | None:
    """Is ``holder`` still running? True or False for a holder of this host (this process is
    alive), None for a holder of another host (or a name that is not ``host:pid``)."""
    parsed = parse(holder)
    if parsed is None or parsed[0] != host():
        return None
    pid = parsed[1]
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, run by another user
        return True
    return True


def shown(holder: str | None) -> str:
    """`` (holder)`` for a message, or nothing when the holder is not known."""
    return f" ({holder})" if holder else ""


def wait(take: Take, *, timeout: float, poll: float,
         busy: Callable[[str | None], BaseException],
         on_wait: Callable[[str | None], None] | None = None) -> None:
    """Call ``take()`` every ``poll`` seconds until it succeeds, for at most ``timeout`` seconds.

    ``take`` returns (taken, holder): the holder is who keeps the lock when it was not taken
    (None: unknown). ``on_wait(holder)`` is told once, when the first attempt failed; when the
    deadline passes, ``busy(holder)`` is raised (the caller's error, naming the holder).

    DESIGN CHOICE: polling a non-blocking attempt instead of a blocking call: the wait is
    bounded on our side, ends with a message naming the holder, and an interrupted wait
    (Ctrl-C) leaves no queued request behind (PostgreSQL) and no blocked thread.
    """
    deadline = time.monotonic() + timeout
    told = False
    while True:
        taken, holder = take()
        if taken:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise busy(holder)
        if not told and on_wait is not None:
            on_wait(holder)
            told = True
        time.sleep(min(poll, left))


def wait_as_writer(take: Take, *, where: str, timeout: float, poll: float,
                   error: Callable[[str], BaseException],
                   on_wait: Callable[[str], None] | None = None, note: str = "") -> None:
    """``wait`` for the writer lock of the store ``where``, with the messages every writer
    lock gives: ``on_wait`` hears "waiting for <where>: another process (<holder>) is writing
    it", and ``error`` is raised with "<where> is being written by another process
    (<holder>)<note>; gave up after waiting <timeout> s"."""
    wait(take, timeout=timeout, poll=poll,
         busy=lambda holder: error(f"{where} is being written by another process{shown(holder)}"
                                   f"{note}; gave up after waiting {timeout:.0f} s"),
         on_wait=None if on_wait is None else lambda holder: on_wait(
             f"waiting for {where}: another process{shown(holder)} is writing it"))


# -- a lock file that names its holder (flock) --------------------------------------------------
def try_flock(fd: int) -> bool:
    """One non-blocking attempt at an exclusive ``flock`` on ``fd``; False when another
    process holds it (any other failure raises its ``OSError``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unflock(fd: int) -> None:
    """Release the ``flock`` on ``fd``."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def record(fd: int) -> None:
    """Write this process's holder name into the lock file ``fd`` (which it holds)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, me().encode("utf-8"), 0)


def recorded(fd: int) -> str | None:
    """The holder name written in the lock file ``fd``; None when empty or unreadable."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None
