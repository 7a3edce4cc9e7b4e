"""A store and its catalog know each other: the store's identity (``.s2ingest/id.json``) is
recorded in the catalog; a command given the catalog of another store refuses before any work
(exit 3, one line); a lost catalog is rebuilt from the store (`s2ingest db rebuild`), after
which `verify` passes and a rerun of `sync` publishes nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub_fixtures import T1, catalog_rows, catalog_url, isolated_env, make_products, run, store_snapshot, sync_args

__all__ = ["isolated_env"]  # autouse fixture


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> Path:
    """The two T1 products (31UET, 31UFT), zipped, in one folder."""
    return make_products(tmp_path_factory.mktemp("identity-products"), times=(T1,))[0].parent


@pytest.fixture(scope="module")
def synced(products, tmp_path_factory) -> Path:
    """A cube with a reference layer, and its catalog (read only: tests copy it)."""
    from ingest.layers import synth

    root = tmp_path_factory.mktemp("identity-cube")
    store = root / "cube.zarr"
    r = run(*sync_args(store, "--source", products))
    assert r.exit_code == 0, r.output + r.stderr
    g, f = synth.provinces((80_000.0, 431_250.0, 90_000.0, 443_750.0))
    path = synth.write_vector(root / "provincie.geojson", g, f)
    r = run("layers", "add", "--store", store, "--group", "NL", "--edition", "2023", "--attribute",
            "statcode", "--variable", "province", path)
    assert r.exit_code == 0, r.output + r.stderr
    return store


def _db_file(store: Path) -> Path:
    return Path(catalog_url(store).removeprefix("sqlite:///"))


@pytest.fixture()
def cube(synced, tmp_path) -> Path:
    """A private copy of the synced cube and its SQLite catalog."""
    dest = tmp_path / "c" / synced.name
    shutil.copytree(synced, dest)
    db, new = _db_file(synced), _db_file(dest)
    for f in db.parent.glob(db.name + "*"):
        shutil.copy2(f, new.with_name(new.name + f.name[len(db.name):]))
    return dest


def _identity(store: Path) -> str | None:
    p = store / ".s2ingest" / "id.json"
    return json.loads(p.read_text())["store_id"] if p.exists() else None


def _recorded(url: str) -> str | None:
    from catalog import open_catalog, recorded_store, session_scope

    with session_scope(open_catalog(url, create=False)) as s:
        row = recorded_store(s)
        return None if row is None else row.store_id


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_store_and_its_catalog_record_the_same_identity(synced):
    ident = _identity(synced)
    assert ident and len(ident) == 32
    assert _recorded(catalog_url(synced)) == ident


def test_the_catalog_of_another_store_is_refused_before_any_work(cube, tmp_path, products):
    other = tmp_path / "other" / "cube.zarr"
    other.parent.mkdir()
    assert run("init", "--store", other).exit_code == 0
    assert _identity(other) and _identity(other) != _identity(cube)
    foreign = catalog_url(cube)  # the catalog of another store
    snap, db_sha = store_snapshot(other), _sha(_db_file(cube))
    for args in (sync_args(other, "--source", products),
                 ["status", "--store", other], ["verify", "--store", other],
                 ["overviews", "--store", other, "--no-progress"],
                 ["quality", "rebuild", "--store", other, "--no-progress"],
                 ["init", "--store", other]):
        r = run(*args, "--db", foreign)
        assert r.exit_code == 3, (args, r.output, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "belongs to store" in lines[0] and "db rebuild" in lines[0], lines
        assert store_snapshot(other) == snap and _sha(_db_file(cube)) == db_sha, args
    # a new store (nothing there yet) given that catalog: refused too, nothing created
    new = tmp_path / "new" / "cube.zarr"
    new.parent.mkdir()
    r = run(*sync_args(new, "--source", products), "--db", foreign)
    assert r.exit_code == 3 and "no store identity yet" in r.stderr, r.output + r.stderr
    assert not new.exists()


def test_a_store_from_before_identities_gets_one_with_its_next_commit(cube):
    from sqlalchemy import delete

    from catalog import StoreIdentity, open_catalog, session_scope

    (cube / ".s2ingest" / "id.json").unlink()
    with session_scope(open_catalog(catalog_url(cube), create=False)) as s:
        s.execute(delete(StoreIdentity))
    assert run("verify", "--store", cube).exit_code == 0  # neither side knows: nothing to refuse
    r = run("overviews", "--store", cube, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    assert _identity(cube) is not None and _recorded(catalog_url(cube)) == _identity(cube)
    assert run("verify", "--store", cube).exit_code == 0


def test_a_lost_catalog_is_rebuilt_from_the_store(cube, products, tmp_path):
    before = catalog_rows(catalog_url(cube))
    version = json.loads((cube / ".zmetadata").read_text())["metadata"][".zattrs"]["s2ingest_store_version"]
    for f in _db_file(cube).parent.glob(_db_file(cube).name + "*"):
        f.unlink()
    r = run("verify", "--store", cube)  # no catalog: the store alone is checked
    assert r.exit_code == 0, r.output + r.stderr

    r = run("db", "rebuild", "--store", cube)
    assert r.exit_code == 0, r.output + r.stderr
    assert "2 products" in r.output and "1 layer editions" in r.output, r.output
    assert _recorded(catalog_url(cube)) == _identity(cube)
    after = catalog_rows(catalog_url(cube))
    assert {n: r["state"] for n, r in after.items()} == {n: r["state"] for n, r in before.items()}
    r = run("verify", "--store", cube)
    assert r.exit_code == 0 and "catalog" in r.output, r.output + r.stderr

    snap = store_snapshot(cube)
    r = run(*sync_args(cube, "--source", products))
    assert r.exit_code == 0, r.output + r.stderr
    assert "published 0" in r.output and "nothing new to publish" in r.output, r.output
    assert store_snapshot(cube) == snap
    assert json.loads((cube / ".zmetadata").read_text())["metadata"][".zattrs"]["s2ingest_store_version"] == version

    # a rebuild never merges into a catalog that has rows
    r = run("db", "rebuild", "--store", cube)
    assert r.exit_code == 3 and "is not empty" in r.stderr, r.output + r.stderr
    # into another database named with --db
    other = f"sqlite:///{tmp_path / 'rebuilt.sqlite'}"
    assert run("db", "rebuild", "--store", cube, "--db", other).exit_code == 0
    assert run("verify", "--store", cube, "--db", other).exit_code == 0
