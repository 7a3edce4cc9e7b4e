"""Discovery, the supersede rule, hub drift and the status summary."""
from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

import catalog as c
from catalog import db
from catalog.models import Product
from ingest.errors import CatalogError, LeaseLostError

from catalog_fixtures import (  # noqa: F401  (fixtures)
    T0, at, catalog_engine, memory_engine, pg_database_url, pg_engine, pg_migrated_url, product_name,
    sqlite_engine, sqlite_url,
)

# one datatake + tile, four processings: (baseline, generation time)
VERSIONS = [("0400", "20230824T000000"), ("0509", "20230823T124759"), ("0509", "20230901T080000"),
            ("0510", "20231201T000000")]
NAMES = [product_name(baseline=b, generated=g) for b, g in VERSIONS]  # oldest .. newest


def states(session):
    return {p.name: (p.state, p.superseder.name if p.superseder else None)
            for p in session.scalars(select(Product))}


def test_discovery_is_idempotent_by_name_and_identity(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        new, known = c.record_discovered(s, [NAMES[0], NAMES[1]], now=T0)
        assert (new, known) == ([NAMES[0], NAMES[1]], [])
    with db.session_scope(catalog_engine) as s:
        new, known = c.record_discovered(s, [
            NAMES[0] + ".SAFE",  # same name
            f"/data/{NAMES[1]}.zip",
            c.ProductRecord(name=NAMES[2], hub="cdse", hub_id="uuid-2", checksum_algorithm="MD5",
                            checksum_value="ab" * 16, size_bytes=123, cloud_cover=12.5, online=True),
            {"name": NAMES[2], "hub": "dhus"},  # twice in one batch
        ], now=at(1))
        assert (new, known) == ([NAMES[2]], [NAMES[0], NAMES[1], NAMES[2]])
        p = c.get_product(s, NAMES[2] + ".SAFE")
        assert (p.hub, p.hub_id, p.size_bytes, p.online, p.baseline, p.relative_orbit, p.tile) == (
            "cdse", "uuid-2", 123, True, "05.09", 122, "31UFU")
        assert p.datatake_start == datetime(2023, 8, 23, 9, 55, 59, tzinfo=timezone.utc)
    # identity without the name: same datatake/tile/baseline/generation under another name
    same_identity = c.ProductRecord(name=product_name(baseline="0400", generated="20230101T000000"),
                                    generation_time=datetime(2023, 8, 24, tzinfo=timezone.utc))
    with db.session_scope(catalog_engine) as s:
        assert c.record_discovered(s, [same_identity], now=at(2)) == ([], [same_identity.name])
        assert len(s.scalars(select(Product)).all()) == 3


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_supersede_does_not_depend_on_arrival_order(order):
    engine = memory_engine()
    for step, i in enumerate(order):
        with db.session_scope(engine) as s:
            c.record_discovered(s, [NAMES[i]], now=at(step))
    with db.session_scope(engine) as s:
        got = states(s)
    newest = NAMES[-1]
    assert got[newest] == ("discovered", None)
    assert all(got[n] == ("superseded", newest) for n in NAMES[:-1])
    engine.dispose()


def test_published_product_superseded_is_reported_for_replacement(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[1]], now=T0)
    with db.session_scope(catalog_engine) as s:
        (p,) = c.claim(s, from_states=["discovered"], to_state="downloading", worker="w", lease_seconds=60, now=T0)
        c.mark_downloaded(s, p.id, "w", local_path="/x", now=T0)
        c.claim(s, from_states=["downloaded"], to_state="ingesting", worker="w", lease_seconds=60, now=T0)
        c.record_publish(s, group="/S2/R122", version=1, product_ids=[p.id], worker="w", n_chunks_written=2,
                         time_steps=[c.TimeStepRecord(p.datatake_start, "S2B", "GS2B_x")], now=T0)
    # an older processing arrives late: superseded at once, nothing to replace
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[0]], now=at(1))
        assert states(s)[NAMES[0]] == ("superseded", NAMES[1])
        assert c.pending_replacements(s) == []
    # a newer processing arrives: the published one is superseded and must be replaced
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[3]], now=at(2), supersede=False)
        (r,) = c.apply_supersede(s, now=at(2))
        assert (r.superseded_name, r.by_name, r.published_version, r.group) == (NAMES[1], NAMES[3], 1, "/S2/R122")
        assert c.apply_supersede(s, now=at(3)) == []  # reported once...
        assert [x.superseded_name for x in c.pending_replacements(s)] == [NAMES[1]]  # ...but derivable
        assert states(s)[NAMES[0]] == ("superseded", NAMES[3])  # chains point at the newest
        old = c.get_product(s, NAMES[1])
        assert old.published_version == 1 and old.time_step is not None


def test_supersede_takes_over_leased_work(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[0]], now=T0)
        (p,) = c.claim(s, from_states=["discovered"], to_state="downloading", worker="w", lease_seconds=60, now=T0)
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[2]], now=at(0.1))
    with db.session_scope(catalog_engine) as s:
        with pytest.raises(LeaseLostError):
            c.mark_downloaded(s, p.id, "w", local_path="/x", now=at(0.2))


def test_rejected_products_do_not_supersede(catalog_engine):
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[3]], now=T0)
        c.mark_rejected(s, c.get_product(s, NAMES[3]).id, "corrupt zip", now=T0)
        c.record_discovered(s, [NAMES[1]], now=at(1))
        assert states(s)[NAMES[1]] == ("discovered", None)


def test_deleted_from_hub(catalog_engine):
    local = product_name(tile="31UET")
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [c.ProductRecord(NAMES[0], hub="cdse"), c.ProductRecord(local)], now=T0)
        gone = product_name(tile="31UGV")  # never catalogued
        assert c.record_deleted_from_hub(s, [NAMES[0], local, gone], now=at(1)) == [NAMES[0], local, gone]
        assert c.record_deleted_from_hub(s, [NAMES[0]], now=at(2)) == []
        assert c.get_product(s, NAMES[0]).state == "rejected"
        assert c.get_product(s, local).state == "discovered"  # we have the file
        st = c.status(s, now=at(2))
        assert {d.name: d.state for d in st.deleted_from_hub} == {NAMES[0]: "rejected", local: "discovered", gone: None}


def test_status_summary(catalog_engine):
    other = [product_name(start=f"202309{d:02d}T095559", generated=f"202309{d:02d}T120000") for d in (1, 2, 3)]
    with db.session_scope(catalog_engine) as s:
        c.record_discovered(s, [NAMES[1], *other], now=T0)
        got = c.claim(s, from_states=["discovered"], to_state="downloading", worker="w", lease_seconds=60,
                      limit=4, now=T0)
        ids = {p.name: p.id for p in got}
    with db.session_scope(catalog_engine) as s:
        c.mark_downloaded(s, ids[NAMES[1]], "w", local_path="/a", now=T0)
        c.mark_failed(s, ids[other[0]], "w", "HTTP 500", now=at(0.5))
        c.mark_rejected(s, ids[other[1]], "checksum mismatch", worker="w", now=at(0.6))
    with db.session_scope(catalog_engine) as s:
        (p,) = c.claim(s, from_states=["downloaded"], to_state="ingesting", worker="w", lease_seconds=60, now=at(3))
        c.record_publish(s, group="/S2/R122", version=c.next_version(s), product_ids=[p.id], worker="w",
                         n_chunks_written=7, manifest_path="manifests/v1.json", manifest={"B04/0.0.0": [10, "h"]},
                         time_steps=[c.TimeStepRecord(p.datatake_start, "S2B")], now=at(3.5))
        c.record_discovered(s, [NAMES[3]], now=at(5))
        c.record_layer(s, group="/NL/BRP", name="gewas", edition="2023", source_name="brp2023.gpkg",
                       sha256="0" * 64, version=2, now=at(6))
    with db.session_scope(catalog_engine) as s:
        st = c.status(s, now=at(10))
    assert st.counts["superseded"] == 1 and st.counts["rejected"] == 1 and st.counts["failed"] == 1
    assert st.counts["discovered"] == 1 and st.counts["downloading"] == 1 and st.total == 5
    assert st.time_steps == {"/S2/R122": 1}
    assert (st.last_publish.version, st.last_publish.group, st.last_publish.published_at,
            st.last_publish.n_products, st.last_publish.n_chunks_written) == (1, "/S2/R122", at(3.5), 1, 7)
    assert [(x.name, x.state, x.reason) for x in st.problems] == [
        (other[1], "rejected", "checksum mismatch"), (other[0], "failed", "HTTP 500")]  # most recent first
    assert [(x.name, x.superseded_by, x.was_published) for x in st.superseded] == [(NAMES[1], NAMES[3], True)]
    assert [(x.name, x.owner, x.expired) for x in st.leases] == [(other[2], "w", True)]
    assert st.due == 3  # the new product, the failed one (backoff over), the lapsed lease
    with db.session_scope(catalog_engine) as s:
        from catalog.queries import layers
        assert [(x.group, x.name, x.edition) for x in layers(s)] == [("/NL/BRP", "gewas", "2023")]
        with pytest.raises(CatalogError, match="version 1"):
            c.record_publish(s, group="/S2/R122", version=1, product_ids=[], worker="w", n_chunks_written=0)
