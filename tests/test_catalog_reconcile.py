"""Reconciling the catalog with the store after a crash; cube version summaries; release_all;
migration 0002 on an existing catalog. On SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select, text

import catalog as c
from catalog import db
from catalog.models import Base, Product, Publish, PublishProduct, TimeStep
from ingest.errors import CatalogError, LeaseLostError

from catalog_fixtures import (  # noqa: F401  (fixtures)
    T0, at, catalog_engine, pg_database_url, pg_engine, pg_fresh_url, pg_migrated_url, product_name,
    sqlite_engine, sqlite_url,
)

GROUP = "/S2/R122"  # product_name() defaults to orbit 122
DAYS = (1, 2, 3)
NAMES = [product_name(start=f"202308{d:02d}T095559", generated=f"202308{d:02d}T120000") for d in DAYS]
TIMES = [datetime(2023, 8, d, 9, 55, 59, tzinfo=timezone.utc) for d in DAYS]
AXIS = [c.TimeStepRecord(t, "S2B", f"GS2B_202308{d:02d}T095559_0{d}") for t, d in zip(TIMES, DAYS)]
SHA = "ab" * 32


def discover(engine, names=NAMES):
    with db.session_scope(engine) as s:
        c.record_discovered(s, names, now=T0)
        return {p.name: p.id for p in s.scalars(select(Product))}


def to_ingesting(engine, worker="w1", now=T0, lease=60):
    with db.session_scope(engine) as s:
        got = c.claim(s, from_states=["discovered"], to_state="downloading", worker=worker,
                      lease_seconds=lease, limit=10, now=now)
        for p in got:
            c.mark_downloaded(s, p.id, worker, local_path=f"/cache/{p.name}", now=now)
    with db.session_scope(engine) as s:
        c.claim(s, from_states=["downloaded"], to_state="ingesting", worker=worker,
                lease_seconds=lease, limit=10, now=now)


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every row of every table: "changes nothing" means this is equal before and after."""
    with engine.connect() as conn:
        return {t.name: sorted(tuple(map(repr, r)) for r in conn.execute(t.select()))
                for t in Base.metadata.sorted_tables}


def reconcile(engine, *, version=1, axis=AXIS, names=NAMES, worker="w2", now=None):
    with db.session_scope(engine) as s:
        return c.reconcile_published(s, group=GROUP, version=version, time_steps=list(axis),
                                     products_in_store=set(names), worker=worker, now=now or at(30))


def products(engine) -> dict[str, Product]:
    with db.session_scope(engine) as s:
        return {p.name: p for p in s.scalars(select(Product))}


# --------------------------------------------------------------------------- reconcile_published

def test_crash_after_store_commit_is_repaired_and_idempotent(catalog_engine):
    """The store committed version 1 with three datatakes; the worker died before the catalog
    commit: products still ingesting under its lease, no publish row, no time steps."""
    discover(catalog_engine)
    to_ingesting(catalog_engine, "dead:1")
    report = reconcile(catalog_engine)
    assert report.published == tuple(sorted(NAMES))
    assert report.time_steps_added == tuple(TIMES) and report.publish_created and report.changed
    assert report.unknown == () and report.conflicts == () and report.unpublished == ()
    rows = products(catalog_engine)
    for name in NAMES:
        p = rows[name]
        assert (p.state, p.published_version, p.lease_owner, p.lease_expires_at) == ("published", 1, None, None)
        assert "w2" in p.reason and "reconcile" in p.reason
        assert p.time_step_id is not None
    with db.session_scope(catalog_engine) as s:
        st = c.status(s, now=at(30))
        assert st.counts["published"] == 3 and st.time_steps == {GROUP: 3}
        assert st.last_publish.version == 1 and st.last_publish.n_products == 3
        pub = s.scalar(select(Publish))
        assert (pub.version, pub.group_path, pub.worker, pub.reconciled, pub.n_time_steps) == (1, GROUP, "w2", True, 3)
        steps = s.scalars(select(TimeStep).order_by(TimeStep.time)).all()
        assert [(x.time, x.platform, x.datatake_id, x.published_version) for x in steps] == \
            [(r.time, r.platform, r.datatake_id, 1) for r in AXIS]
        assert c.next_version(s) == 2
    before = snapshot(catalog_engine)
    again = reconcile(catalog_engine, now=at(40))
    assert not again.changed and again.published == () and not again.publish_created
    assert snapshot(catalog_engine) == before


def test_published_without_publish_row_or_time_steps_is_completed(catalog_engine):
    """Today's rerun path: mark_published ran, record_publish did not."""
    ids = discover(catalog_engine)
    to_ingesting(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        c.mark_published(s, list(ids.values()), "w1", 1, now=at(0.5))
    report = reconcile(catalog_engine)
    assert report.published == () and report.publish_created and report.relinked == 3
    assert report.time_steps_added == tuple(TIMES)
    with db.session_scope(catalog_engine) as s:
        assert c.status(s, now=at(30)).time_steps == {GROUP: 3}
        assert s.scalar(select(Publish.reconciled)) is True
    before = snapshot(catalog_engine)
    assert not reconcile(catalog_engine).changed
    assert snapshot(catalog_engine) == before


def test_time_axis_follows_the_store_and_missing_products_are_ingested_again(catalog_engine):
    ids = discover(catalog_engine)
    to_ingesting(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        c.record_publish(s, group=GROUP, version=1, product_ids=list(ids.values()), worker="w1",
                         n_chunks_written=9, time_steps=AXIS, now=at(0.5))
        # a product published without any local copy recorded
        s.execute(text("UPDATE products SET local_path = NULL WHERE name = :n"), {"n": NAMES[1]})
    # The store (version 2) lost the first two datatakes, relabelled the third, gained a fourth.
    new_time = datetime(2023, 8, 4, 9, 55, 59, tzinfo=timezone.utc)
    axis = [c.TimeStepRecord(TIMES[2], "S2A", "GS2A_X"), c.TimeStepRecord(new_time, "S2A", "")]
    report = reconcile(catalog_engine, version=2, axis=axis, names=[NAMES[2]])
    assert report.time_steps_removed == tuple(TIMES[:2])
    assert report.time_steps_updated == (TIMES[2],)
    assert report.time_steps_added == (new_time,)
    assert report.unpublished == tuple(sorted(NAMES[:2]))
    rows = products(catalog_engine)
    assert rows[NAMES[0]].state == "downloaded" and rows[NAMES[1]].state == "discovered"
    for n in NAMES[:2]:
        assert rows[n].published_version is None and rows[n].time_step_id is None
        assert "not in the store at version 2" in rows[n].reason
    assert rows[NAMES[2]].state == "published" and rows[NAMES[2]].published_version == 1  # kept
    with db.session_scope(catalog_engine) as s:
        steps = {x.time: x for x in s.scalars(select(TimeStep))}
        assert set(steps) == {TIMES[2], new_time}
        assert (steps[TIMES[2]].platform, steps[TIMES[2]].datatake_id, steps[TIMES[2]].published_version) == \
            ("S2A", "GS2A_X", 2)
        assert steps[new_time].datatake_id is None  # "" from the store means unknown
        assert rows[NAMES[2]].time_step_id == steps[TIMES[2]].id
        assert [p.version for p in s.scalars(select(Publish).order_by(Publish.version))] == [1, 2]
    # The products sent back are claimable by the next run's stages.
    with db.session_scope(catalog_engine) as s:
        got = c.claim(s, from_states=["downloaded"], to_state="ingesting", worker="w3", lease_seconds=60, now=at(31))
        assert [p.name for p in got] == [NAMES[0]]
    before = snapshot(catalog_engine)
    assert not reconcile(catalog_engine, version=2, axis=axis, names=[NAMES[2]]).changed
    assert snapshot(catalog_engine) == before


def test_live_lease_is_overridden_and_its_worker_cannot_publish(catalog_engine):
    ids = discover(catalog_engine, NAMES[:1])
    to_ingesting(catalog_engine, "alive:9", lease=3600)
    report = reconcile(catalog_engine, axis=AXIS[:1], names=NAMES[:1])
    assert report.published == (NAMES[0],)
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(LeaseLostError):
            c.mark_published(s, [ids[NAMES[0]]], "alive:9", 1, now=at(31))


def test_terminal_states_are_not_revived(catalog_engine):
    newer = product_name(start="20230801T095559", baseline="0510", generated="20230901T120000")
    ids = discover(catalog_engine, NAMES)
    to_ingesting(catalog_engine, "w1")
    with db.session_scope(catalog_engine) as s:
        c.mark_rejected(s, ids[NAMES[1]], "broken", worker="w1", now=at(0.5))
        c.record_discovered(s, [newer], now=at(2))  # a reprocessing: supersedes NAMES[0] (ingesting)
    assert products(catalog_engine)[NAMES[0]].state == "superseded"
    report = reconcile(catalog_engine, names=NAMES + ["S2A_MSIL2A_20230805T095559_N0509_R122_T31UFU_20230805T120000"])
    assert report.published == (NAMES[2],)
    assert report.stamped == (NAMES[0],) and report.conflicts == (NAMES[1],)
    assert report.unknown == ("S2A_MSIL2A_20230805T095559_N0509_R122_T31UFU_20230805T120000",)
    rows = products(catalog_engine)
    assert (rows[NAMES[0]].state, rows[NAMES[0]].published_version) == ("superseded", 1)
    assert rows[NAMES[1]].state == "rejected"
    with db.session_scope(catalog_engine) as s:
        assert [r.superseded_name for r in c.pending_replacements(s)] == [NAMES[0]]
    before = snapshot(catalog_engine)
    assert not reconcile(catalog_engine, names=NAMES).changed
    assert snapshot(catalog_engine) == before


def test_refusals_change_nothing(catalog_engine):
    discover(catalog_engine)
    with db.session_scope(catalog_engine) as s:
        c.record_publish(s, group="/NL/BRP", version=1, product_ids=[], worker="layers", n_chunks_written=1)
    before = snapshot(catalog_engine)
    with pytest.raises(CatalogError, match=r"cube version 1, which the catalog records for /NL/BRP"):
        reconcile(catalog_engine)
    with pytest.raises(CatalogError, match="twice"):
        reconcile(catalog_engine, version=2, axis=AXIS + AXIS[:1])
    with pytest.raises(CatalogError, match="naive"):
        reconcile(catalog_engine, version=2, axis=[c.TimeStepRecord(datetime(2023, 8, 1), "S2A")])
    with pytest.raises(CatalogError, match="version 0 has published nothing"):
        reconcile(catalog_engine, version=0)
    assert snapshot(catalog_engine) == before


def test_empty_store_group_and_layer_groups(catalog_engine):
    discover(catalog_engine)
    assert not reconcile(catalog_engine, version=0, axis=[], names=[]).changed
    with db.session_scope(catalog_engine) as s:
        report = c.reconcile_published(s, group="/NL", version=1, time_steps=[AXIS[0]], products_in_store=set(),
                                       worker=None, now=at(1))
    assert report.time_steps_added == (TIMES[0],) and report.publish_created and report.published == ()


# --------------------------------------------------------------------------- release_all

def test_release_all_gives_back_every_lease_of_one_worker(catalog_engine):
    more = [product_name(start=f"202308{d:02d}T095559", generated=f"202308{d:02d}T120000") for d in (5, 6)]
    ids = discover(catalog_engine, NAMES + more)
    to_ingesting(catalog_engine, "me:1")  # all five ingesting under my lease
    with db.session_scope(catalog_engine) as s:
        c.release(s, [ids[n] for n in more], "me:1", now=T0)
        c.claim(s, from_states=["downloaded"], to_state="ingesting", worker="other:2", lease_seconds=600,
                limit=1, now=T0)  # more[0]
        c.claim(s, from_states=["discovered"], to_state="downloading", worker="me:1", lease_seconds=60,
                limit=5, now=T0)  # nothing left there
    with db.session_scope(catalog_engine) as s:
        released = c.release_all(s, "me:1", now=at(5))  # leases lapsed at 1 min: released anyway
    assert sorted(released) == sorted(ids[n] for n in NAMES)
    rows = products(catalog_engine)
    assert {rows[n].state for n in NAMES} == {"downloaded"}
    assert all(rows[n].lease_owner is None for n in NAMES)
    assert (rows[more[0]].state, rows[more[0]].lease_owner) == ("ingesting", "other:2")
    with db.session_scope(catalog_engine) as s:
        assert c.release_all(s, "me:1") == []
        with pytest.raises(CatalogError):
            c.release_all(s, "")


# --------------------------------------------------------------------------- record_version / versions

CHANGES = {"B04/1.0.0": {"size": 10, "sha256": "cd" * 32}, "B04/0.0.0": None}


def test_record_version_fills_the_publish_row_and_is_idempotent(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        c.record_publish(s, group=GROUP, version=1, product_ids=[], worker="w1", n_chunks_written=1, now=at(1))
        pub = c.record_version(s, 1, None, SHA, 12, CHANGES, GROUP)
        assert pub.changes == [{"key": "B04/0.0.0", "size": None, "sha256": None},
                               {"key": "B04/1.0.0", "size": 10, "sha256": "cd" * 32}]
    before = snapshot(catalog_engine)
    with db.session_scope(catalog_engine) as s:
        c.record_version(s, version=1, parent=None, manifest_sha256=SHA, n_keys=12,
                         changes=list(reversed(pub.changes)), group=GROUP)
    assert snapshot(catalog_engine) == before
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(CatalogError, match="another manifest summary.*manifest_sha256"):
            c.record_version(s, 1, None, "ef" * 32, 12, CHANGES, GROUP)
        with pytest.raises(CatalogError, match="belongs to /S2/R122, not /S2/R051"):
            c.record_version(s, 1, None, SHA, 12, CHANGES, "/S2/R051")
        with pytest.raises(CatalogError, match="64 lowercase hex"):
            c.record_version(s, 2, 1, "nothex", 1, None, GROUP)
        with pytest.raises(CatalogError, match="earlier version"):
            c.record_version(s, 2, 2, SHA, 1, None, GROUP)
        with pytest.raises(CatalogError, match="size must be"):
            c.record_version(s, 2, 1, SHA, 1, {"k": {"size": -1, "sha256": SHA}}, GROUP)
    assert snapshot(catalog_engine) == before


def test_record_version_creates_a_missing_version_and_versions_lists_newest_first(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        c.record_publish(s, group=GROUP, version=1, product_ids=[], worker="w1", n_chunks_written=1, now=at(1))
        c.record_version(s, 1, None, SHA, 3, CHANGES, GROUP)
        c.record_version(s, 2, 1, "ef" * 32, 4, {"B04/2.0.0": {"size": 5, "sha256": "01" * 32}}, GROUP,
                         worker="w2", now=at(2))
        assert c.next_version(s) == 3
        c.record_version(s, 2, 1, "ef" * 32, 4, {"B04/2.0.0": {"size": 5, "sha256": "01" * 32}}, GROUP)
    with db.session_scope(catalog_engine) as s:
        vs = c.versions(s, 10)
        assert [(v.version, v.parent_version, v.manifest_sha256, v.n_keys, v.reconciled) for v in vs] == \
            [(2, 1, "ef" * 32, 4, False), (1, None, SHA, 3, False)]
        assert vs[0].created_at == at(2) and vs[0].worker == "w2"
        assert vs[0].changes == [{"key": "B04/2.0.0", "size": 5, "sha256": "01" * 32}]
        assert [v.version for v in c.versions(s, 1)] == [2]
        assert c.versions(s, 10, group="/NL") == []
        assert s.scalar(select(Publish.n_chunks_written).where(Publish.version == 2)) == 1


def test_reconciled_version_takes_its_summary_later(catalog_engine):
    discover(catalog_engine)
    to_ingesting(catalog_engine, "dead:1")
    reconcile(catalog_engine)
    with db.session_scope(catalog_engine) as s:
        c.record_version(s, 1, None, SHA, 7, None, GROUP)
        (v,) = c.versions(s, 5)
        assert (v.reconciled, v.manifest_sha256, v.n_keys, v.changes) == (True, SHA, 7, None)


# --------------------------------------------------------------------------- migration 0002

def _fill_at_0001(url: str) -> None:
    """Rows as a 0001 catalog holds them (plain SQL: the models are at head). No explicit ids,
    so PostgreSQL's sequences stay right for the inserts after the upgrade."""
    engine = db.make_engine(url)
    ts = "2024-03-01 12:00:00"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO publishes (version, group_path, published_at, worker, n_time_steps, n_chunks_written) "
            "VALUES (1, :g, :t, 'w1', 1, 5), (2, :g, :t, 'w1', 1, 2)"), {"g": GROUP, "t": ts})
        conn.execute(text(
            "INSERT INTO time_steps (group_path, time, platform, datatake_id, published_version) "
            "VALUES (:g, :t, 'S2B', 'GS2B_X', 2)"), {"g": GROUP, "t": ts})
        conn.execute(text(
            "INSERT INTO products (name, platform, datatake_start, tile, relative_orbit, baseline, "
            "generation_time, hub, state, attempts, published_version, time_step_id, created_at, updated_at) "
            "VALUES (:n, 'S2B', :t, '31UFU', 122, '05.09', :t, 'local', 'published', 0, 2, "
            "(SELECT id FROM time_steps WHERE group_path = :g), :t, :t)"),
            {"n": NAMES[0], "t": ts, "g": GROUP})
        conn.execute(text(
            "INSERT INTO publish_products (publish_id, product_id) "
            "SELECT p.id, x.id FROM publishes p, products x WHERE p.version = 2 AND x.name = :n"), {"n": NAMES[0]})
    engine.dispose()


def _check_upgraded(url: str) -> None:
    assert db.upgrade(url) == db.head_revision() == "0006"
    engine = db.make_engine(url)
    try:
        with db.session_scope(engine) as s:
            vs = c.versions(s, 10)
            assert [(v.version, v.worker, v.reconciled, v.manifest_sha256, v.n_keys, v.changes) for v in vs] == \
                [(2, "w1", False, None, None, None), (1, "w1", False, None, None, None)]
            assert all(v.created_at == v.published_at == T0 for v in vs)
            assert c.get_product(s, NAMES[0]).state == "published"
            assert c.status(s, now=T0).time_steps == {GROUP: 1}
            assert len(s.scalars(select(PublishProduct)).all()) == 1
            c.record_version(s, 2, 1, SHA, 3, None, GROUP)
            c.record_publish(s, group=GROUP, version=3, product_ids=[], worker="w2", n_chunks_written=0)
    finally:
        engine.dispose()
    assert db.downgrade(url, "0001") == "0001"  # and back, rows kept
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM publishes")).scalar_one() == 3
    engine.dispose()
    assert db.upgrade(url) == "0006"


def test_migration_0002_upgrades_an_existing_sqlite_catalog(sqlite_url):
    assert db.upgrade(sqlite_url, "0001") == "0001"
    _fill_at_0001(sqlite_url)
    _check_upgraded(sqlite_url)


@pytest.mark.postgres
def test_migration_0002_upgrades_an_existing_postgres_catalog(pg_fresh_url):
    assert db.upgrade(pg_fresh_url, "0001") == "0001"
    _fill_at_0001(pg_fresh_url)
    _check_upgraded(pg_fresh_url)
