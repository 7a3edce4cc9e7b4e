"""The transition table, and a property test: random operations never reach an illegal state."""
from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import catalog as c
from catalog import db
from catalog.models import Product
from catalog.states import (
    ALL_STATES, LEASED_STATES, RELEASE_TO, TERMINAL_STATES, TRANSITIONS, Guard, backoff, guard, is_allowed,
)
from ingest.errors import CatalogError

from catalog_fixtures import T0, memory_engine, product_name


def test_table_shape():
    assert {s for pair in TRANSITIONS for s in pair} <= set(ALL_STATES)
    for s in LEASED_STATES:  # a lapsed lease can be reclaimed by the same stage
        assert guard(s, s) is Guard.CLAIM
        assert is_allowed(s, RELEASE_TO[s])
    for s in TERMINAL_STATES:  # no stage ever takes them up; only an operator's retry revives a rejection
        out = {(f, t): g for (f, t), g in TRANSITIONS.items() if f == s}
        assert out == ({("rejected", "discovered"): Guard.FREE} if s == "rejected" else {}), f"{s} must be terminal"
    assert guard("published", "superseded") is Guard.FREE
    assert not is_allowed("superseded", "published")  # never revived
    assert not is_allowed("discovered", "published")
    for (f, t), g in TRANSITIONS.items():
        if g is Guard.LEASE:
            assert f in LEASED_STATES
        if g is Guard.CLAIM:
            assert t in LEASED_STATES


def test_backoff_is_exponential_and_capped():
    assert [backoff(n) for n in (1, 2, 3)] == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]
    assert backoff(50) == timedelta(hours=6)


# --------------------------------------------------------------------------- property test

# Three processings of one datatake/tile (one from a remote hub) and one other product.
PRODUCTS = [
    c.ProductRecord(product_name(baseline="0400", generated="20230824T000000"), hub="cdse"),
    c.ProductRecord(product_name(baseline="0509", generated="20230901T000000")),
    c.ProductRecord(product_name(baseline="0510", generated="20231201T000000"), hub="dhus"),
    c.ProductRecord(product_name(tile="31UET")),
]
WORKERS = ["w1", "w2"]
STAGES = {
    "downloading": ["discovered", "offline", "failed"],
    "ingesting": ["downloaded", "failed"],
}

idx = st.integers(0, len(PRODUCTS) - 1)
# None: "a product this worker holds (or held)", so that most reports are plausible ones;
# an explicit index tries the operation on any product, mostly an illegal one.
target = st.one_of(st.none(), st.none(), idx)
worker = st.sampled_from(WORKERS)
ops = st.one_of(
    st.tuples(st.just("discover"), st.lists(idx, min_size=1, max_size=3)),
    st.tuples(st.just("claim"), st.sampled_from(sorted(STAGES)), worker, st.integers(1, 3)),
    st.tuples(st.just("claim"), st.sampled_from(sorted(STAGES)), worker, st.integers(1, 3)),
    st.tuples(st.just("downloaded"), target, worker),
    st.tuples(st.just("downloaded"), target, worker),
    st.tuples(st.just("failed"), target, worker),
    st.tuples(st.just("offline"), target, worker),
    st.tuples(st.just("rejected"), target, st.sampled_from([*WORKERS, None])),
    st.tuples(st.just("published"), st.lists(target, min_size=1, max_size=2), worker),
    st.tuples(st.just("published"), st.lists(target, min_size=1, max_size=2), worker),
    st.tuples(st.just("release"), target, worker),
    st.tuples(st.just("renew"), target, worker),
    st.tuples(st.just("deleted"), idx),
    st.tuples(st.just("supersede")),
    st.tuples(st.just("tick"), st.integers(0, 30)),
    # the worker's natural next step, so that deep paths (published, superseded after
    # publishing, reclaims) are common
    st.tuples(st.just("work"), worker),
    st.tuples(st.just("work"), worker),
    st.tuples(st.just("work"), worker),
)


def _snapshot(session) -> dict[str, Product]:
    session.expire_all()
    return {p.name: p for p in session.scalars(select(Product))}


def _rows(engine) -> dict[str, dict]:
    with db.session_scope(engine) as s:
        cols = [col.key for col in Product.__table__.columns]
        return {p.name: {k: getattr(p, k) for k in cols} for p in _snapshot(s).values()}


def _resolve(i, w, rows) -> str | None:
    """The product name an op targets: by index, or the first one the worker holds."""
    if i is not None:
        return PRODUCTS[i].name
    held = sorted(n for n, r in rows.items() if r["lease_owner"] == (w or "w1"))
    return held[0] if held else None


def _work(s, w, now, rows, version) -> None:
    held = {r["state"]: r["id"] for r in rows.values() if r["lease_owner"] == w}
    if "ingesting" in held:
        c.record_publish(s, group="/S2/R122", version=version, product_ids=[held["ingesting"]], worker=w,
                         n_chunks_written=1, now=now)
    elif "downloading" in held:
        c.mark_downloaded(s, held["downloading"], w, local_path="/cache/x", now=now)
    elif not c.claim(s, **_stage("ingesting"), worker=w, lease_seconds=600, now=now):
        c.claim(s, **_stage("downloading"), worker=w, lease_seconds=600, now=now)


def _stage(to: str) -> dict:
    return {"from_states": STAGES[to], "to_state": to}


def _apply(s, op, now, rows, version):
    kind = op[0]
    ids = {n: r["id"] for n, r in rows.items()}
    if kind == "discover":
        c.record_discovered(s, [PRODUCTS[i] for i in op[1]], now=now)
    elif kind == "claim":
        c.claim(s, from_states=STAGES[op[1]], to_state=op[1], worker=op[2], lease_seconds=600, limit=op[3], now=now)
    elif kind == "work":
        _work(s, op[1], now, rows, version)
    elif kind == "supersede":
        c.apply_supersede(s, now=now)
    elif kind == "deleted":
        c.record_deleted_from_hub(s, [PRODUCTS[op[1]].name], now=now)
    elif kind == "published":
        names = {_resolve(i, op[2], rows) for i in op[1]}
        pids = sorted(ids[n] for n in names if n in ids)
        if pids:
            c.record_publish(s, group="/S2/R122", version=version, product_ids=pids, worker=op[2],
                             n_chunks_written=1, now=now)
    else:
        w = op[2] if len(op) > 2 else None
        name = _resolve(op[1], w, rows)
        if name not in ids:
            return
        pid = ids[name]
        if kind == "downloaded":
            c.mark_downloaded(s, pid, w, local_path="/cache/x", now=now)
        elif kind == "failed":
            c.mark_failed(s, pid, w, "boom", now=now)
        elif kind == "offline":
            c.mark_offline(s, pid, w, timedelta(minutes=30), now=now)
        elif kind == "rejected":
            c.mark_rejected(s, pid, "bad", worker=w, now=now)
        elif kind == "release":
            c.release(s, [pid], w, now=now)
        elif kind == "renew":
            c.renew_lease(s, [pid], w, 600, now=now)


def _check_invariants(rows: dict[str, dict]) -> None:
    by_id = {r["id"]: r for r in rows.values()}
    live_per_key: dict[tuple, int] = {}
    for name, r in rows.items():
        state = r["state"]
        assert state in ALL_STATES
        leased = r["lease_owner"] is not None and r["lease_expires_at"] is not None
        assert leased == (state in LEASED_STATES), (name, state, r["lease_owner"])
        if state == "superseded":
            newer = by_id[r["superseded_by"]]
            assert (newer["baseline"], newer["generation_time"]) > (r["baseline"], r["generation_time"]), \
                "an older product superseded a newer one"
        if state == "failed":
            assert r["next_attempt_at"] is not None and r["failed_stage"] in LEASED_STATES and r["attempts"] >= 1
        if state in ("rejected", "failed"):
            assert r["reason"]
        if state == "published":
            assert r["published_version"] is not None
        if state not in ("superseded", "rejected"):
            key = (r["platform"], r["datatake_start"], r["tile"])
            live_per_key[key] = live_per_key.get(key, 0) + 1
    assert all(n == 1 for n in live_per_key.values()), "two live processings of one datatake/tile"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(idx, min_size=1, max_size=4), st.lists(ops, min_size=1, max_size=40))
def test_random_operations_only_take_legal_transitions(initial, operations):
    engine = memory_engine()
    now, version = T0, 1
    try:
        with db.session_scope(engine) as s:
            c.record_discovered(s, [PRODUCTS[i] for i in initial], now=now)
        before = _rows(engine)
        _check_invariants(before)
        for op in operations:
            if op[0] == "tick":
                now += timedelta(minutes=op[1])
                continue
            raised = False
            try:
                with db.session_scope(engine) as s:
                    _apply(s, op, now, before, version)
            except CatalogError:
                raised = True  # refused: LeaseLostError, illegal transition... must change nothing
            after = _rows(engine)
            if raised:
                assert after == before, f"{op} raised but changed the catalog"
            for name, r in after.items():
                if name in before:
                    old = before[name]["state"]
                    assert r["state"] == old or is_allowed(old, r["state"]), f"{op}: {name} {old} -> {r['state']}"
                else:
                    assert r["state"] in ("discovered", "superseded"), f"{op}: new product {r['state']}"
            if any(r["state"] == "published" and r["published_version"] == version for r in after.values()):
                version += 1
            _check_invariants(after)
            before = after
    finally:
        engine.dispose()


def test_illegal_transition_message_names_both_states():
    engine = memory_engine()
    with db.session_scope(engine) as s:
        c.record_discovered(s, [PRODUCTS[3]], now=T0)
        pid = c.get_product(s, PRODUCTS[3].name).id
        with pytest.raises(CatalogError, match=r"T31UET_\d{8}T\d{6}: illegal transition discovered -> offline"):
            c.transition(s, pid, "offline")
    engine.dispose()
