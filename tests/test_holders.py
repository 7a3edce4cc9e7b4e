"""Lock holders (``ingest.holders``): names, liveness, the bounded wait, the lock file."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ingest import holders


class Busy(Exception):
    pass


def test_a_holder_is_host_colon_pid():
    assert holders.me() == f"{holders.host()}:{os.getpid()}"
    assert holders.parse(holders.me()) == (holders.host(), os.getpid())
    assert holders.parse("layers@box:12") == ("layers@box", 12)  # never this host
    for other in (None, "", "box", "box:", ":12", "box:12a"):
        assert holders.parse(other) is None


def test_alive_knows_this_host_only():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert holders.alive(holders.me()) is True
    assert holders.alive(f"{holders.host()}:{int(done.stdout)}") is False  # exited
    assert holders.alive("elsewhere.invalid:1") is None
    assert holders.alive(f"layers@{holders.me()}") is None
    assert holders.alive(None) is None


def test_wait_tells_once_and_takes_when_free():
    attempts, told = [], []

    def take():
        attempts.append(1)
        return len(attempts) >= 3, "box:7"

    holders.wait(take, timeout=60, poll=0.001, busy=Busy, on_wait=told.append)
    assert len(attempts) == 3 and told == ["box:7"]


def test_wait_gives_up_with_the_callers_error_naming_the_holder():
    told = []
    with pytest.raises(Busy, match="box:7"):
        holders.wait(lambda: (False, "box:7"), timeout=0, poll=0.001, busy=Busy, on_wait=told.append)
    assert told == []  # no time left to wait: nothing to tell
    with pytest.raises(Busy, match=r"^s3://b/c is being written by another process \(box:7\) "
                                   r"\(note\); gave up after waiting 0 s$"):
        holders.wait_as_writer(lambda: (False, "box:7"), where="s3://b/c", timeout=0, poll=0.001,
                               error=Busy, note=" (note)")
    heard = []
    with pytest.raises(Busy, match=r"another process;"):  # holder unknown: not named
        holders.wait_as_writer(lambda: (False, None), where="w", timeout=0.01, poll=0.001,
                               error=Busy, on_wait=heard.append)
    assert heard == ["waiting for w: another process is writing it"]


def test_a_lock_file_names_its_holder(tmp_path):
    path = tmp_path / "lock"
    a = os.open(path, os.O_RDWR | os.O_CREAT)
    b = os.open(path, os.O_RDWR)  # another open file: flock excludes it
    try:
        assert holders.recorded(a) is None
        assert holders.try_flock(a)
        holders.record(a)
        assert not holders.try_flock(b)
        assert holders.recorded(b) == holders.me()
        holders.unflock(a)
        assert holders.try_flock(b)
    finally:
        os.close(a)
        os.close(b)
