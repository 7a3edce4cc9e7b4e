"""Claims, leases and guarded transitions, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

import catalog as c
from catalog import db
from catalog.models import Product
from ingest.errors import CatalogError, LeaseLostError

from catalog_fixtures import (  # noqa: F401  (fixtures)
    T0, at, catalog_engine, pg_database_url, pg_engine, pg_migrated_url, product_name, sqlite_engine, sqlite_url,
)

DOWNLOAD = dict(from_states=["discovered", "offline", "failed"], to_state="downloading")
INGEST = dict(from_states=["downloaded", "failed"], to_state="ingesting")


def discover(engine, names, now=T0):
    with db.session_scope(engine) as s:
        c.record_discovered(s, names, now=now)
        return {p.name: p.id for p in s.scalars(select(Product))}


def claim(engine, worker, stage=DOWNLOAD, now=T0, limit=10, lease=60, **kw):
    with db.session_scope(engine) as s:
        return [p.name for p in c.claim(s, **stage, worker=worker, lease_seconds=lease, limit=limit, now=now, **kw)]


def state_of(engine, name):
    with db.session_scope(engine) as s:
        return s.scalar(select(Product).where(Product.name == name))


def to_ingesting(engine, ids, worker="w1", now=T0):
    claim(engine, worker, now=now)
    with db.session_scope(engine) as s:
        for pid in ids:
            c.mark_downloaded(s, pid, worker, local_path=f"/cache/{pid}", now=now)
    claim(engine, worker, INGEST, now=now)


NAMES = [product_name(start=f"202308{d:02d}T095559", generated=f"202308{d:02d}T120000") for d in (3, 1, 2)]


def test_claim_takes_due_work_oldest_datatake_first(catalog_engine):
    ids = discover(catalog_engine, NAMES)
    assert claim(catalog_engine, "w1", limit=2) == sorted(NAMES)[:2]
    assert claim(catalog_engine, "w2") == sorted(NAMES)[2:]
    assert claim(catalog_engine, "w3") == []
    p = state_of(catalog_engine, NAMES[1])
    assert (p.state, p.lease_owner, p.lease_expires_at) == ("downloading", "w1", at(1))
    assert ids


def test_claim_filters_by_orbit(catalog_engine):
    other = product_name(orbit=51, tile="31UET")
    discover(catalog_engine, [NAMES[0], other])
    assert claim(catalog_engine, "w1", orbit=51) == [other]


def test_failed_work_waits_for_backoff_and_returns_to_its_stage(catalog_engine):
    ids = discover(catalog_engine, NAMES[:1])
    pid = ids[NAMES[0]]
    claim(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        due = c.mark_failed(s, pid, "w1", "HTTP 503", now=T0)
    assert due == at(1)  # first failure: one minute
    assert claim(catalog_engine, "w2", now=at(0.5)) == []
    assert claim(catalog_engine, "w2", INGEST, now=at(5)) == []  # failed while downloading
    assert claim(catalog_engine, "w2", now=at(1)) == NAMES[:1]
    with db.session_scope(catalog_engine) as s:
        due = c.mark_failed(s, pid, "w2", "HTTP 503 again", now=at(1))
    assert due == at(3)  # second: two minutes
    p = state_of(catalog_engine, NAMES[0])
    assert (p.state, p.attempts, p.failed_stage, p.reason) == ("failed", 2, "downloading", "HTTP 503 again")
    assert p.lease_owner is None and p.lease_expires_at is None


def test_offline_product_is_retried_later_without_counting_an_attempt(catalog_engine):
    pid = discover(catalog_engine, NAMES[:1])[NAMES[0]]
    claim(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        c.mark_offline(s, pid, "w1", timedelta(minutes=30), now=T0)
    assert claim(catalog_engine, "w1", now=at(29)) == []
    assert claim(catalog_engine, "w1", now=at(30)) == NAMES[:1]
    assert state_of(catalog_engine, NAMES[0]).attempts == 0


def test_lapsed_lease_is_reclaimed_and_old_worker_cannot_publish(catalog_engine):
    ids = discover(catalog_engine, NAMES[:2])
    pids = list(ids.values())
    to_ingesting(catalog_engine, pids, "w1")
    # w1 hangs; its lease lapses; w2 reclaims one of its two products
    assert claim(catalog_engine, "w2", INGEST, now=at(0.5)) == []  # not lapsed yet
    assert claim(catalog_engine, "w2", INGEST, now=at(2), limit=1) == [sorted(NAMES[:2])[0]]
    reclaimed = state_of(catalog_engine, sorted(NAMES[:2])[0])
    assert (reclaimed.lease_owner, reclaimed.attempts) == ("w2", 1)
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(LeaseLostError, match="w1"):
            c.mark_published(s, pids, "w1", 1, now=at(2))
        # nothing was marked, and the transaction is still usable
        assert s.scalars(select(Product.state).order_by(Product.id)).all() == ["ingesting", "ingesting"]
    # also the product w1 still "holds" (expired, not reclaimed) cannot be published by w1
    with db.session_scope(catalog_engine) as s:
        other = ids[sorted(NAMES[:2])[1]]
        with pytest.raises(LeaseLostError):
            c.mark_published(s, [other], "w1", 1, now=at(2))
    with db.session_scope(catalog_engine) as s:
        assert c.mark_published(s, [reclaimed.id], "w2", 1, now=at(2)) == [reclaimed.id]
    assert state_of(catalog_engine, reclaimed.name).state == "published"


def test_record_publish_is_all_or_nothing(catalog_engine):
    ids = discover(catalog_engine, NAMES[:2])
    pids = sorted(ids.values())
    to_ingesting(catalog_engine, pids, "w1")
    claim(catalog_engine, "w2", INGEST, now=at(2), limit=1)
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(LeaseLostError):
            c.record_publish(s, group="/S2/R122", version=1, product_ids=pids, worker="w1",
                             n_chunks_written=4, now=at(2))
        assert c.next_version(s) == 1
        assert s.scalars(select(c.Publish)).all() == []


def test_renew_lease_and_release(catalog_engine):
    ids = discover(catalog_engine, NAMES[:2])
    pids = sorted(ids.values())
    claim(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        assert c.renew_lease(s, pids, "w1", 600, now=at(0.5)) == at(10.5)
        with pytest.raises(LeaseLostError):
            c.renew_lease(s, pids, "w2", 600, now=at(0.5))
    assert claim(catalog_engine, "w2", now=at(5)) == []  # renewed: not lapsed
    with db.session_scope(catalog_engine) as s:
        assert sorted(c.release(s, pids, "w1", now=at(6))) == pids
    p = state_of(catalog_engine, NAMES[0])
    assert (p.state, p.lease_owner) == ("discovered", None)
    assert sorted(claim(catalog_engine, "w2", now=at(6))) == sorted(NAMES[:2])


def test_illegal_transitions_name_the_product_and_both_states(catalog_engine):
    ids = discover(catalog_engine, NAMES[:1])
    pid = ids[NAMES[0]]
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(CatalogError, match=rf"{NAMES[0]}: illegal transition discovered -> published"):
            c.transition(s, pid, "published")
        with pytest.raises(CatalogError, match="only through claim"):
            c.transition(s, pid, "downloading")
        with pytest.raises(ValueError, match="unknown product state"):
            c.transition(s, pid, "finished")
        with pytest.raises(CatalogError, match="cannot claim products from published"):
            c.claim(s, from_states=["published"], to_state="ingesting", worker="w", lease_seconds=1)
        with pytest.raises(CatalogError, match="no product with id"):
            c.transition(s, 99999, "rejected")
    with db.session_scope(catalog_engine) as s:
        assert c.mark_rejected(s, pid, "not L2A") is True
        assert c.mark_rejected(s, pid, "not L2A") is False  # idempotent
        with pytest.raises(CatalogError, match="illegal transition rejected -> superseded"):
            c.transition(s, pid, "superseded")


def test_a_worker_cannot_report_on_work_it_does_not_hold(catalog_engine):
    pid = discover(catalog_engine, NAMES[:1])[NAMES[0]]
    claim(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(LeaseLostError):
            c.mark_downloaded(s, pid, "w2", local_path="/x", now=T0)
        with pytest.raises(CatalogError, match="lease holder"):
            c.mark_rejected(s, pid, "corrupt")  # without worker=
        assert c.mark_rejected(s, pid, "corrupt", worker="w1", now=T0)


def _claim_all(engine, worker, out, errors, barrier):
    try:
        barrier.wait()
        while True:
            with db.session_scope(engine) as s:
                got = c.claim(s, **DOWNLOAD, worker=worker, lease_seconds=300, limit=1)
                names = [p.name for p in got]
            if not names:
                return
            out.extend(names)
    except Exception as exc:  # pragma: no cover - reported below
        errors.append(exc)


@pytest.mark.parametrize("n_workers", [2, 4])
def test_concurrent_claims_never_share_a_product(catalog_engine, n_workers):
    names = [product_name(start=f"2023{m:02d}{d:02d}T095559", generated=f"2023{m:02d}{d:02d}T120000")
             for m in range(1, 7) for d in range(1, 11)]
    discover(catalog_engine, names)
    # one engine (own connection pool) per worker: as separate processes would have
    engines = [db.make_engine(catalog_engine.url) for _ in range(n_workers)]
    results: list[list[str]] = [[] for _ in range(n_workers)]
    errors: list[Exception] = []
    barrier = threading.Barrier(n_workers)
    threads = [threading.Thread(target=_claim_all, args=(engines[i], f"w{i}", results[i], errors, barrier))
               for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for e in engines:
        e.dispose()
    assert not errors, errors
    claimed = [n for r in results for n in r]
    assert len(claimed) == len(set(claimed)) == len(names)
    with db.session_scope(catalog_engine) as s:
        owners = dict(s.execute(select(Product.name, Product.lease_owner)).all())
    for i, r in enumerate(results):
        assert all(owners[n] == f"w{i}" for n in r)
