"""Every commit is recorded in the catalog (``ingest.publish.record``): `s2ingest verify`
agrees after `overviews`, `quality rebuild` and `layers add`; a rerun with nothing to change
makes no new version (also after a run killed between its store commit and its catalog
commit, which the rerun records); a store version the catalog misses is recorded by the
next `sync`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub_fixtures import T1, catalog_url, isolated_env, make_products, run, store_snapshot, sync_args

__all__ = ["isolated_env"]  # autouse fixture


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> Path:
    """The two T1 products (31UET, 31UFT), zipped, in one folder."""
    return make_products(tmp_path_factory.mktemp("record-products"), times=(T1,))[0].parent


@pytest.fixture(scope="module")
def synced(products, tmp_path_factory) -> Path:
    """A cube with its catalog (read only for the tests: they copy it)."""
    store = tmp_path_factory.mktemp("record-cube") / "cube.zarr"
    r = run(*sync_args(store, "--source", products))
    assert r.exit_code == 0, r.output + r.stderr
    return store


@pytest.fixture()
def cube(synced, tmp_path) -> Path:
    """A private copy of the synced cube and its SQLite catalog."""
    dest = tmp_path / "c" / synced.name
    shutil.copytree(synced, dest)
    db = Path(catalog_url(synced).removeprefix("sqlite:///"))
    new = Path(catalog_url(dest).removeprefix("sqlite:///"))
    for f in db.parent.glob(db.name + "*"):
        shutil.copy2(f, new.with_name(new.name + f.name[len(db.name):]))
    return dest


def version(store: Path) -> int:
    from ingest.store import CubeStore

    return CubeStore.open(store).version()


def publish_row(store: Path, v: int):
    from sqlalchemy import select

    from catalog import Publish, open_catalog, session_scope

    with session_scope(open_catalog(catalog_url(store), create=False)) as s:
        return s.scalar(select(Publish).where(Publish.version == v))


def verify(store: Path) -> int:
    r = run("verify", "--store", store)
    return r.exit_code


def killed_after_commit(monkeypatch):
    """The next commit reaches the store, then the run is killed before the catalog hears of it."""
    import ingest.publish.commits as commits

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the store commit")

    monkeypatch.setattr(commits, "record_commit", killed)


def test_overviews_are_recorded_and_a_rerun_publishes_nothing(cube):
    before = version(cube)
    r = run("overviews", "--store", cube, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    v = version(cube)
    assert v == before + 1 and f"store version {v}" in r.output
    assert verify(cube) == 0
    row = publish_row(cube, v)
    assert row.group_path == "/S2/R051" and row.manifest_sha256 and not row.reconciled
    snapshot = store_snapshot(cube)
    r = run("overviews", "--store", cube, "--no-progress")
    assert r.exit_code == 0 and r.output.strip() == (
        f"overviews of /S2/R051 are current (last written in version {v}); nothing to publish")
    assert version(cube) == v and store_snapshot(cube) == snapshot


def test_overviews_killed_after_the_commit_are_recorded_by_the_rerun(cube, monkeypatch):
    killed_after_commit(monkeypatch)
    assert run("overviews", "--store", cube, "--no-progress").exit_code == 130
    v = version(cube)
    assert verify(cube) == 9  # "no publish row for the store's version"
    monkeypatch.undo()
    r = run("overviews", "--store", cube, "--no-progress")
    assert r.exit_code == 0 and "nothing to publish" in r.output, r.output + r.stderr
    assert version(cube) == v and verify(cube) == 0


def test_quality_rebuild_is_recorded_and_a_rerun_publishes_nothing(cube, monkeypatch):
    r = run("quality", "rebuild", "--store", cube, "--h3-resolution", "8", "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    v = version(cube)
    assert f"version {v}" in r.output and verify(cube) == 0
    r = run("quality", "rebuild", "--store", cube, "--h3-resolution", "8", "--no-progress")
    assert r.exit_code == 0 and r.output.strip() == (
        f"quality atlas of /S2/R051 is current (last written in version {v}); nothing to publish")
    assert version(cube) == v
    # killed after its commit (back to resolution 7): the rerun records it, makes no version
    killed_after_commit(monkeypatch)
    assert run("quality", "rebuild", "--store", cube, "--h3-resolution", "7", "--no-progress").exit_code == 130
    assert version(cube) == v + 1 and verify(cube) == 9
    monkeypatch.undo()
    r = run("quality", "rebuild", "--store", cube, "--h3-resolution", "7", "--no-progress")
    assert r.exit_code == 0 and "nothing to publish" in r.output
    assert version(cube) == v + 1 and verify(cube) == 0


def test_layers_add_is_recorded(cube, tmp_path):
    from ingest.layers import synth

    g, f = synth.provinces((80_000.0, 431_250.0, 90_000.0, 443_750.0))
    path = synth.write_vector(tmp_path / "provincie.geojson", g, f)
    r = run("layers", "add", "--store", cube, "--group", "NL", "--edition", "2023", "--attribute",
            "statcode", "--variable", "province", path)
    assert r.exit_code == 0, r.output + r.stderr
    assert verify(cube) == 0
    assert publish_row(cube, version(cube)).group_path == "/NL"


def test_a_version_without_publish_row_is_recorded_by_the_next_sync(cube, products):
    from ingest.publish.commits import publish_overviews

    (done,) = publish_overviews(cube)  # no catalog given: a commit the catalog never hears of
    assert done.changed and not done.recorded
    r = run("verify", "--store", cube)
    assert r.exit_code == 9 and f"no publish row for the store's version {done.version}" in r.output
    r = run(*sync_args(cube, "--source", products))  # nothing new to publish
    assert r.exit_code == 0, r.output + r.stderr
    assert f"recorded store version {done.version} in the catalog" in r.output
    assert version(cube) == done.version and verify(cube) == 0
    row = publish_row(cube, done.version)
    assert row.reconciled and row.group_path == "/S2/R051" and row.manifest_sha256


def test_no_catalog_no_record(tmp_path, synced):
    """A cube without a catalog (e.g. a mirror copy) is written, and nothing is recorded."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(synced, copy)
    r = run("overviews", "--store", copy, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    assert not Path(catalog_url(copy).removeprefix("sqlite:///")).exists()
    assert run("verify", "--store", copy).exit_code == 0


def test_init_is_recorded(tmp_path):
    store = tmp_path / "new.zarr"
    assert run("init", "--store", store).exit_code == 0
    assert version(store) == 1 and verify(store) == 0
    assert not publish_row(store, 1).reconciled
    assert run("init", "--store", store).exit_code == 0 and version(store) == 1


def test_a_mirror_beside_its_own_catalog_records_its_versions(cube, tmp_path):
    """A copy without catalog records nothing (none is made); a copy kept beside its own
    catalog gets each mirrored version recorded, so `verify` of the copy stays clean."""
    copy = tmp_path / "m" / "copy.zarr"
    r = run("mirror", cube, copy, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    assert not Path(catalog_url(copy).removeprefix("sqlite:///")).exists()
    r = run("db", "rebuild", "--store", copy)  # the copy gets a catalog of its own
    assert r.exit_code == 0, r.output + r.stderr
    assert verify(copy) == 0
    assert run("overviews", "--store", cube, "--no-progress").exit_code == 0  # the source moves on
    r = run("mirror", cube, copy, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    v = version(copy)
    assert v == version(cube)
    assert publish_row(copy, v) is not None and publish_row(copy, v).worker.startswith("mirror@")
    assert verify(copy) == 0
