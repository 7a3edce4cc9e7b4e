"""Several ``sync`` processes (as on several machines) on one PostgreSQL catalog and one store.

Claims with leases split the products; the catalog's fenced store lease (``store_leases``)
serialises the commits, and a writer whose lease was taken over cannot publish.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text

from catalog import db, open_catalog, session_scope, store_lease
from catalog.models import Product as Row
from catalog.models import Publish, TimeStep
from catalog_fixtures import pg_database_url, pg_fresh_url, pg_migrated_url  # noqa: F401 (fixtures)
from conftest import GROUP, assert_cubes_equal, cli_env, snapshot_files
from ingest.errors import StoreBusyError, StoreLeaseLostError
from ingest.grid import NL_GRID
from ingest.store import CubeStore, read_published
from ingest.synth import make_product
from test_commit import _folder

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
T0 = datetime(2023, 4, 1, 10, 56, 19, tzinfo=timezone.utc)
TINY = {"31UET": (4704, 9822, 60, 120), "31UFT": (4704, 300, 60, 120)}  # 10 m pixels, overlapping
N_TAKES, N_PROCS = 20, 4


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> list[list[Path]]:
    """40 tiny products (2 tiles x 20 datatakes), dealt round-robin into 4 folders."""
    root = tmp_path_factory.mktemp("forty")
    folders: list[list[Path]] = [[] for _ in range(N_PROCS)]
    for i in range(N_TAKES):
        when = T0 + timedelta(days=5 * i)
        for tile, window in TINY.items():
            p = make_product(root / "all", tile=tile, datatake_start=when,
                             platform="S2A" if i % 2 == 0 else "S2B", window=window, cloudiness=0.2)
            folders[i % N_PROCS].append(p)
    return folders


def _sync(store: Path, source: Path, db_url: str, config: Path) -> subprocess.Popen:
    return subprocess.Popen([S2INGEST, "sync", "--config", str(config), "--store", str(store),
                             "--db", db_url, "--source", str(source), "--no-progress"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(url: str) -> dict:
    engine = open_catalog(url, create=False)
    with session_scope(engine) as s:
        out = {"products": sorted((r.name, r.state) for r in s.scalars(select(Row))),
               "steps": sorted((t.group_path, t.time.replace(tzinfo=None), t.platform, t.datatake_id)
                               for t in s.scalars(select(TimeStep))),
               "leases": [r.name for r in s.scalars(select(Row).where(Row.lease_owner.is_not(None)))],
               "published_in": {}}
        for p in s.scalars(select(Publish)):
            for product in p.products:
                out["published_in"].setdefault(product.name, []).append(p.version)
    engine.dispose()
    return out


@pytest.mark.slow
@pytest.mark.postgres
def test_four_syncs_on_one_postgresql_catalog_equal_one(tmp_path, forty, empty_config, pg_fresh_url):  # noqa: F811
    every = _folder([p for f in forty for p in f], tmp_path / "every")
    one = tmp_path / "one" / "cube.zarr"
    one.parent.mkdir()
    ref = _sync(one, every, f"sqlite:///{one.parent / 'one.sqlite'}", empty_config)
    store = tmp_path / "team" / "cube.zarr"
    store.parent.mkdir()
    procs = [_sync(store, _folder(f, tmp_path / f"src{i}"), pg_fresh_url, empty_config)
             for i, f in enumerate(forty)]
    for p in [ref, *procs]:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err

    times = read_published(store, GROUP).times
    assert len(times) == N_TAKES and list(times) == sorted(set(times))
    assert_cubes_equal(store, one)
    team, single = _rows(pg_fresh_url), _rows(f"sqlite:///{one.parent / 'one.sqlite'}")
    assert team["products"] == single["products"] and {s for _, s in team["products"]} == {"published"}
    assert team["steps"] == single["steps"] and team["leases"] == []
    # each product published exactly once (in one publish row; reconciliations add none)
    assert len(team["published_in"]) == 2 * N_TAKES
    assert all(len(v) == 1 for v in team["published_in"].values()), team["published_in"]
    engine = db.make_engine(pg_fresh_url)
    with engine.connect() as c:  # the store lease was taken by every commit and given back
        row = c.execute(text("SELECT holder, token FROM store_leases")).one()
    engine.dispose()
    assert row.holder is None and row.token >= 2
    r = subprocess.run([S2INGEST, "verify", "--config", str(empty_config), "--store", str(store),
                        "--db", pg_fresh_url, "--deep"], env=cli_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the lease and its fence ------------------------------------------------------------------
@pytest.fixture
def pg(pg_migrated_url):  # noqa: F811
    engine = db.make_engine(pg_migrated_url)
    with engine.begin() as c:
        c.execute(text("DELETE FROM store_leases"))
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_the_store_lease_excludes_a_second_holder_and_is_taken_over_when_expired(pg):
    with store_lease(pg, "s3://b/nl.zarr", holder="host-a:1") as a:
        with pytest.raises(StoreBusyError, match=r"another process \(host-a:1\)"):
            with store_lease(pg, "s3://b/nl.zarr", 0.6, holder="host-b:2"):
                pass
        with pg.begin() as c:  # host-a stops renewing: its lease runs out
            c.execute(text("UPDATE store_leases SET expires_at = now() - interval '1 second'"))
        a._stop.set()
        with store_lease(pg, "s3://b/nl.zarr", 5, holder="host-b:2") as b:
            assert b.token == a.token + 1
            with pytest.raises(StoreLeaseLostError, match="took over"):
                with a.fence():
                    pass
            with b.fence():
                pass
    with pg.connect() as c:  # host-a's exit did not release host-b's lease; host-b's did
        assert c.execute(text("SELECT holder, token FROM store_leases")).one() == (None, b.token)


@pytest.mark.postgres
def test_a_writer_whose_store_lease_was_taken_over_cannot_publish(tmp_path, pg):
    path = tmp_path / "cube.zarr"
    store, _ = CubeStore.create(path, NL_GRID)
    store.add_lock(lambda timeout, on_wait: store_lease(pg, str(path), timeout, on_wait, holder="me:1"))
    before = snapshot_files(path)
    with pytest.raises(StoreLeaseLostError, match="nothing was published"):
        with store.transaction(timeout=5) as tx:
            tx.update_attrs("", {"note": "never published"})
            with pg.begin() as c:  # another machine takes the lease over after an expiry
                c.execute(text("UPDATE store_leases SET holder = 'other:2', token = token + 1"))
            tx.commit()
    after = snapshot_files(path)
    published = {k: v for k, v in after.items() if not k.startswith(".s2ingest/")}
    assert published == {k: v for k, v in before.items() if not k.startswith(".s2ingest/")}
    assert not any(k.endswith("journal.json") for k in after)
    assert store.version() == 1 and "note" not in store.consolidated("")[".zattrs"]
    with pg.connect() as c:  # the loser did not release the winner's lease
        assert c.execute(text("SELECT holder FROM store_leases")).scalar_one() == "other:2"
