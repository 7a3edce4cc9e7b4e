"""The sync loop publishes in batches of whole time chunks and survives the gaps between
the store commit and the catalog commit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from catalog import open_catalog, session_scope
from catalog.queries import state_counts
from hub_fixtures import T1, WINDOWS, catalog_url, fast_retries, isolated_env, run, store_snapshot, sync_args  # noqa: F401
from ingest.store import read_published
from ingest.synth import make_product

GROUP = "S2/R051"


@pytest.fixture(scope="module")
def six_datatakes(tmp_path_factory):
    """Six datatakes of one small 31UET window: more than one time chunk (5)."""
    d = tmp_path_factory.mktemp("six")
    for i in range(6):
        make_product(d, tile="31UET", datatake_start=T1 + timedelta(days=5 * i),
                     platform="S2A" if i % 2 == 0 else "S2B", window=WINDOWS["31UET"], as_zip=True)
    return d


def test_a_backfill_is_published_in_whole_time_chunks(tmp_path, six_datatakes):
    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--source", six_datatakes))
    assert r.exit_code == 0, r.output
    state = read_published(store, GROUP)
    assert state.length == 6
    # two transactions: datatakes 1-5 (one time chunk) then 6
    assert state.version == 2
    assert sorted(p.name for p in (store / GROUP / "B04").glob("*.*.*"))[0].startswith("0.")
    assert {p.name.split(".")[0] for p in (store / GROUP / "B04").glob("*.*.*")} == {"0", "1"}


def test_crash_between_store_and_catalog_commit_is_reconciled(tmp_path, six_datatakes, monkeypatch):
    """The store commit happened, the catalog update did not: a rerun must publish the
    products in the catalog without writing anything to the store."""
    import ingest.publish.record as record_mod

    store = tmp_path / "cube.zarr"
    calls = {"n": 0}
    real = record_mod.record_publish

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash after the store commit")
        return real(*args, **kwargs)

    monkeypatch.setattr(record_mod, "record_publish", crash_on_second)
    r = run(*sync_args(store, "--source", six_datatakes))
    assert r.exit_code == 130
    assert read_published(store, GROUP).length == 6  # the store had committed both batches
    monkeypatch.setattr(record_mod, "record_publish", real)
    # the crashed worker is this very process (same pid), so let its leases lapse first
    from catalog import Product
    from sqlalchemy import update
    engine = open_catalog(catalog_url(store))
    with session_scope(engine) as s:
        s.execute(update(Product).values(lease_expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)))
    before = store_snapshot(store)
    r = run(*sync_args(store, "--source", six_datatakes))
    assert r.exit_code == 0, r.output
    assert store_snapshot(store) == before, "reconciling must not write to the store"
    with session_scope(engine) as s:
        counts = state_counts(s)
    assert counts["published"] == 6 and counts["ingesting"] == 0


def test_a_vanished_cache_file_fails_the_product_not_the_run(tmp_path, six_datatakes, monkeypatch):
    """A downloaded file that disappeared before ingest is a retryable failure (exit 10)."""
    import ingest.publish.sync as sync_mod

    store = tmp_path / "cube.zarr"
    real = sync_mod.read_product
    victim = sorted(six_datatakes.glob("*.zip"))[0]

    def read(path, *a, **k):
        if str(path) == str(victim):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(sync_mod, "read_product", read)
    r = run(*sync_args(store, "--source", six_datatakes))
    assert r.exit_code == 10
    assert "cannot read" in r.stderr
    assert read_published(store, GROUP).length == 5


def test_a_new_datatake_is_planned_without_touching_the_published_archive(tmp_path, six_datatakes):
    """Only time steps the incoming products touch need their products' files (which may be
    gone from the cache); the others are planned from their names alone."""
    from ingest.publish.engine import Cube, ingest_products
    from ingest.grid import NL_GRID
    from ingest.products.safe import read_product
    from ingest.warping.warp import parse_resampling

    paths = sorted(six_datatakes.glob("*.zip"))
    products = [read_product(p) for p in paths]
    cube = Cube(tmp_path / "cube.zarr", NL_GRID, 51)
    ingest_products(cube, products[:5], lambda n: pytest.fail(f"resolved {n}"),
                    parse_resampling({}), progress=False)

    def archive_gone(name):
        raise AssertionError(f"planning resolved the untouched product {name}")

    plan, report = ingest_products(cube, products[5:], archive_gone, parse_resampling({}), progress=False)
    assert report is not None and [s.is_new for s in plan.slots] == [True]
    assert read_published(cube.path, GROUP).length == 6
