"""download.py: backoff, Retry-After, Range bookkeeping, quarantine, fetch_many."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from ingest.errors import AuthenticationError, ChecksumError, HubError, ProductOfflineError
from ingest.sources import ProductQuarantinedError, ProductRecord, RetryPolicy, Source, fetch_many, quarantine
from ingest.sources.download import _content_range_start, fetch_with_verification, parse_retry_after
from ingest.testing import make_tiny_product, tiny_names


def test_backoff_grows_and_is_bounded():
    policy = RetryPolicy(base_delay=1, max_delay=10, jitter=0.5, rng=random.Random(1))
    delays = [policy.backoff(n) for n in range(1, 8)]
    assert all(0.5 * min(10, 2 ** (n - 1)) <= d <= 1.5 * min(10, 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    assert max(delays) <= 15


def test_retry_after_is_exact_and_capped():
    waits: list[float] = []
    policy = RetryPolicy(sleep=waits.append, max_retry_after=60)
    policy.wait(1, 7.0)
    policy.wait(1, 3600.0)
    assert waits == [7.0, 60.0]


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(soon) <= 31
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_content_range():
    assert _content_range_start("bytes 100-199/200") == 100
    assert _content_range_start("bytes */200") is None
    assert _content_range_start(None) is None


def test_quarantine_keeps_both_files(tmp_path):
    for i in range(2):
        bad = tmp_path / "x.zip.part"
        bad.write_bytes(b"bad %d" % i)
        dest = quarantine(bad, tmp_path, "x", f"reason {i}")
        assert dest.parent == tmp_path / "quarantine" and dest.exists() and not bad.exists()
    assert len(list((tmp_path / "quarantine").glob("x*.zip"))) == 2
    assert "reason 1" in (tmp_path / "quarantine" / "x.reason.txt").read_text()


def _record(name: str) -> ProductRecord:
    return ProductRecord.from_name(name, hub="test", hub_id=name)


def test_fetch_with_verification_retries_then_succeeds(tmp_path):
    name = tiny_names()[0]
    good = make_tiny_product(tmp_path / "src", name)
    bad = make_tiny_product(tmp_path / "bad", name, corrupt_member=True)
    calls = []

    def download(part: Path) -> Path:
        calls.append(part)
        part.write_bytes((bad if len(calls) == 1 else good).read_bytes())
        return part

    path = fetch_with_verification(_record(name), tmp_path / "cache", download)
    assert path == tmp_path / "cache" / f"{name}.zip" and len(calls) == 2
    assert path.read_bytes() == good.read_bytes()
    # already there: no download at all
    assert fetch_with_verification(_record(name), tmp_path / "cache", download) == path and len(calls) == 2


def test_never_a_partial_file_under_the_final_name(tmp_path):
    name = tiny_names()[0]

    def broken(part: Path) -> Path:
        part.write_bytes(b"PK\x03\x04 truncated")
        raise HubError("connection kept dropping")

    with pytest.raises(HubError):
        fetch_with_verification(_record(name), tmp_path, broken)
    assert not (tmp_path / f"{name}.zip").exists()
    assert (tmp_path / f"{name}.zip.part").exists()  # kept for the next run to resume


class StubSource(Source):
    hub = "stub"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def search(self, *a, **k):
        return []

    def fetch(self, record, cache_dir, progress=True):
        what = self.behaviour[record.name]
        if isinstance(what, BaseException):
            raise what
        return Path(cache_dir) / what


def test_fetch_many_outcomes_and_order(tmp_path):
    names = tiny_names(["31UFU"], days=range(1, 6))
    q = ProductQuarantinedError(names[2], "bad", tmp_path / "quarantine" / "x.zip")
    behaviour = {names[0]: "a.zip", names[1]: ProductOfflineError("lta"), names[2]: q,
                 names[3]: ChecksumError("odd"), names[4]: RuntimeError("bug")}
    out = fetch_many(StubSource(behaviour), [_record(n) for n in names], tmp_path, max_workers=3, progress=False)
    assert [o.status for o in out] == ["fetched", "offline", "quarantined", "failed", "failed"]
    assert out[0].path == tmp_path / "a.zip" and out[2].path == q.path
    assert "bug" in out[4].message


def test_fetch_many_stops_new_fetches_on_bad_credentials(tmp_path):
    names = tiny_names(["31UFU"], days=range(1, 5))
    calls = []

    class Refusing(StubSource):
        def fetch(self, record, cache_dir, progress=True):
            calls.append(record.name)
            raise AuthenticationError("wrong password")

    out = fetch_many(Refusing({}), [_record(n) for n in names], tmp_path, max_workers=1, progress=False)
    assert len(calls) == 1
    assert all(o.status == "failed" and isinstance(o.error, AuthenticationError) for o in out)
