"""The ``s2ingest`` command line: help, settings (options, env, config file), the catalog, and
bad input (one clear line on stderr, the documented exit code, no damage).

Exit codes (ingest/cli/exits.py): 2 usage, 3 config, 4 product, 5 hub, 6 grid/store,
7 catalog, 10 the run finished but some products were rejected or failed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path

import pytest

from hub_fixtures import (
    T1, T2, catalog_rows, catalog_url, isolated_env, make_products, name_of, run, states, store_snapshot,
    sync_args, written_cube,
)

__all__ = ["isolated_env"]  # autouse fixture

COMMANDS_WITH_CUBE = [["init"], ["sync"], ["status"], ["db", "upgrade"], ["db", "current"]]


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> list[Path]:
    """31UET and 31UFT of two datatakes (T1, T2), zipped."""
    return make_products(tmp_path_factory.mktemp("cli-products"))


@pytest.fixture(scope="module")
def published(products, tmp_path_factory) -> Path:
    """A cube with the T1 products published (read-only for the tests that use it: copy it)."""
    base = tmp_path_factory.mktemp("published")
    src = base / "src"
    src.mkdir()
    for p in products[:2]:
        shutil.copy2(p, src / p.name)
    store = base / "cube.zarr"
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0, r.output + r.stderr
    return store


def copy_cube(store: Path, dest_dir: Path) -> Path:
    """A private copy of a cube and its SQLite catalog (the catalog stores no absolute store path)."""
    dest = dest_dir / store.name
    shutil.copytree(store, dest)
    db = Path(catalog_url(store).removeprefix("sqlite:///"))
    new = Path(catalog_url(dest).removeprefix("sqlite:///"))
    for f in db.parent.glob(db.name + "*"):  # with its -wal/-shm companions
        shutil.copy2(f, new.with_name(new.name + f.name[len(db.name):]))
    return dest


def source_dir(tmp_path: Path, *paths: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy2(p, d / p.name)
    return d


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s2ingest: error: "), lines[0]
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


def rewrite_member(src: Path, dest: Path, suffix: str, edit) -> Path:
    """Copy a product zip with one member edited and manifest.safe's checksum and size updated,
    so the product passes verification and the edit reaches the reader."""
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        data = {i.filename: zin.read(i.filename) for i in infos}
    member = next(n for n in data if n.endswith(suffix))
    new = edit(data[member])
    data[member] = new
    man = next(n for n in data if n.endswith("manifest.safe"))
    rel = member.split(".SAFE/", 1)[1]
    text = data[man].decode()
    m = re.search(r'size="(\d+)">\s*<fileLocation href="\./' + re.escape(rel)
                  + r'"[^>]*>\s*<checksum checksumName="([^"]+)">([0-9a-fA-F]+)<', text)
    assert m, f"{rel} not in manifest.safe"
    algo = {"MD5": "md5", "SHA3-256": "sha3_256"}[m.group(2)]
    text = (text[:m.start(1)] + str(len(new)) + text[m.end(1):m.start(3)]
            + hashlib.new(algo, new).hexdigest() + text[m.end(3):])
    data[man] = text.encode()
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for i in infos:
            zout.writestr(i, data[i.filename])
    return dest


# ------------------------------------------------------------------------------------------
# 1. help and version


def test_version():
    from ingest import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"s2ingest, version {__version__}"


def test_every_command_has_help():
    from ingest.cli.main import cli

    r = run("--help")
    assert r.exit_code == 0 and "--store and --db" in r.output
    names = cli.list_commands(None)
    assert {"init", "sync", "status", "synth", "db"} <= set(names)
    for name in names:
        cmd = cli.get_command(None, name)
        subs = [[name, sub] for sub in getattr(cmd, "commands", {})] or [[name]]
        for args in [[name]] + subs:
            r = run(*args, "--help")
            assert r.exit_code == 0, (args, r.stderr)
            assert r.output.startswith("Usage: "), args
            body = r.output.split("\n", 2)[-1]
            assert len(body.strip()) > 40, f"{args}: help does not explain"
    for args in COMMANDS_WITH_CUBE:
        out = run(*args, "--help").output
        assert "--store" in out and "--db" in out and "--config" in out, args
        assert "S2INGEST_STORE" in out and "S2INGEST_DB_URL" in out, args
    sync_help = run("sync", "--help").output
    for opt in ("--orbit", "--hub", "--source", "--since", "--until", "--tiles", "--max-cloud", "--dry-run",
                "--keep-products", "--delete-products", "--resampling"):
        assert opt in sync_help
    assert "10" in sync_help and "rejected" in sync_help  # the partial exit status is documented
    assert "offline" in sync_help and "token_url" in sync_help  # offline is exit 0; CDSE URLs via [hub]


# ------------------------------------------------------------------------------------------
# 2. init -> sync -> status; env vars, config files, side-by-side cubes


def test_init_sync_status(tmp_path, products):
    store = tmp_path / "cube.zarr"
    r = run("init", "--store", store)
    assert r.exit_code == 0, r.stderr
    assert "grid NL" in r.output and "EPSG:28992" in r.output and "group /S2/R051" in r.output
    assert run("init", "--store", store).exit_code == 0  # idempotent
    r = run("status", "--store", store)
    assert r.exit_code == 0 and "0 time steps" in r.output and "published 0" in r.output

    src = source_dir(tmp_path, *products)
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0, r.stderr
    assert "found 4, new 4, downloaded 4, published 4" in r.output and "2 time steps" in r.output
    r = run("status", "--store", store)
    assert r.exit_code == 0
    out = r.output
    assert "cube    /S2/R051: 2 time steps (2023-06-14 .. 2023-06-19), store version 2" in out
    assert "published 4" in out and "rejected 0" in out and "failed 0" in out
    assert "time steps in catalog /S2/R051: 2" in out
    assert re.search(r"last publish: cube version 2 \(/S2/R051\) at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, 4 products", out)


def test_env_vars_and_config_file_keep_two_cubes_apart(tmp_path, products):
    """Cube A by environment variables, cube B by a config file, in one directory."""
    src_a = source_dir(tmp_path / "a", *products[:2])  # T1
    src_b = source_dir(tmp_path / "b", *products[2:])  # T2
    env_a = {"S2INGEST_STORE": str(tmp_path / "a.zarr"),
             "S2INGEST_DB_URL": f"sqlite:///{tmp_path / 'catalog-a.sqlite'}"}
    config = tmp_path / "b.toml"
    config.write_text(f'store = "{tmp_path / "b.zarr"}"\ndb = "sqlite:///{tmp_path / "catalog-b.sqlite"}"\n'
                      f'orbit = 51\n[hub]\nname = "local"\ndirectory = "{src_b}"\n')
    r = run("sync", "--no-progress", "--source", src_a, env=env_a)
    assert r.exit_code == 0, r.stderr
    snap_a = store_snapshot(tmp_path / "a.zarr")
    r = run("sync", "--no-progress", "--config", config)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "a.zarr").is_dir() and (tmp_path / "b.zarr").is_dir()
    assert not (tmp_path / "s2ingest-cube.zarr").exists()  # the default store was never used
    assert store_snapshot(tmp_path / "a.zarr") == snap_a
    assert set(states(tmp_path / "a.zarr", env_a["S2INGEST_DB_URL"])) == {name_of(p) for p in products[:2]}
    assert set(states(tmp_path / "b.zarr", f"sqlite:///{tmp_path / 'catalog-b.sqlite'}")) == \
        {name_of(p) for p in products[2:]}
    st_a = run("status", env=env_a).output
    st_b = run("status", "--config", config).output
    assert "(2023-06-14 .. 2023-06-14)" in st_a and "(2023-06-19 .. 2023-06-19)" in st_b
    # the command line wins over the environment
    st = run("status", "--config", config, env=env_a).output
    assert "(2023-06-19 .. 2023-06-19)" in st_b and str(tmp_path / "b.zarr") not in st  # env beats file
    assert str(tmp_path / "a.zarr") in st
    st = run("status", "--store", tmp_path / "b.zarr", "--db", f"sqlite:///{tmp_path / 'catalog-b.sqlite'}",
             env=env_a).output
    assert "(2023-06-19 .. 2023-06-19)" in st


def test_s2ingest_toml_in_the_working_directory_is_read(tmp_path, products):
    Path("s2ingest.toml").write_text(f'store = "{tmp_path / "here.zarr"}"\n')
    r = run("init")
    assert r.exit_code == 0 and str(tmp_path / "here.zarr") in r.output


def _pg_admin():
    psycopg = pytest.importorskip("psycopg")
    base = os.environ.get("S2INGEST_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    server = base.rsplit("/", 1)[0]
    try:
        conn = psycopg.connect(server + "/postgres", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {server}: {exc}")
    return conn, server


@pytest.fixture()
def fresh_pg_db():
    conn, server = _pg_admin()
    name = f"s2ingest_cli_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.mark.postgres
def test_postgresql_catalog(tmp_path, products, fresh_pg_db):
    store = tmp_path / "cube.zarr"
    r = run("init", "--store", store, "--db", fresh_pg_db)
    assert r.exit_code == 0, r.stderr
    assert "postgresql" in r.output and not (tmp_path / "cube.catalog.sqlite").exists()
    r = run(*sync_args(store, "--db", fresh_pg_db, "--source", source_dir(tmp_path, *products[:2])))
    assert r.exit_code == 0, r.stderr
    assert set(states(store, fresh_pg_db).values()) == {"published"}
    st = run("status", "--store", store, "--db", fresh_pg_db)
    assert st.exit_code == 0 and "published 2" in st.output and "1 time steps" in st.output
    assert not (tmp_path / "cube.catalog.sqlite").exists()


# ------------------------------------------------------------------------------------------
# 3. db upgrade / current


def test_db_upgrade_and_current(tmp_path):
    from catalog import head_revision

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    r = run("db", "current", "--db", url)
    assert r.exit_code == 0 and "revision None" in r.output and f"(this s2ingest: {head_revision()})" in r.output
    r = run("db", "upgrade", "--db", url)
    assert r.exit_code == 0 and f"at revision {head_revision()}" in r.output
    r = run("db", "current", "--db", url)
    assert r.exit_code == 0 and f"revision {head_revision()} (this s2ingest: {head_revision()})" in r.output
    assert run("db", "upgrade", "--db", url).exit_code == 0  # idempotent
    # the default catalog is the SQLite file beside the store
    r = run("db", "upgrade", "--store", tmp_path / "x.zarr")
    assert r.exit_code == 0 and (tmp_path / "x.catalog.sqlite").exists()


def test_outdated_catalog_is_refused_with_a_hint(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    assert run("db", "upgrade", "--db", url).exit_code == 0
    from catalog import downgrade

    downgrade(url, "base")
    r = run("status", "--db", url, "--store", tmp_path / "old.zarr")
    assert r.exit_code == 7
    assert "db upgrade" in one_error_line(r)


# ------------------------------------------------------------------------------------------
# 4. bad input: one clear line, documented exit code, no damage


def _sync_bad(tmp_path, published, bad: Path, products):
    """Sync a source of the good T2 products plus ``bad`` into a copy of the published cube."""
    store = copy_cube(published, tmp_path)
    before = catalog_rows(catalog_url(store))
    src = source_dir(tmp_path, *products[2:], bad)
    r = run(*sync_args(store, "--source", src))
    return store, before, r


def _assert_rejected_rest_published(store, before, r, bad_name, *words):
    assert r.exit_code == 10, r.output + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].strip().startswith(f"rejected {bad_name}: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    rows = catalog_rows(catalog_url(store))
    assert rows[bad_name]["state"] == "rejected" and rows[bad_name]["reason"]
    for name, row in before.items():  # published products stay published
        assert rows[name]["state"] == "published" and rows[name]["published_version"] == row["published_version"]
    assert sum(r_["state"] == "published" for r_ in rows.values()) == 4
    st = run("status", "--store", store).output
    assert f"rejected  {bad_name}: " in st


def test_truncated_zip_is_rejected_others_published(tmp_path, published, products):
    bad = tmp_path / "bad" / products[0].name.replace("20230614T105621", "20230624T105621", 1).replace(
        "20230614T134821", "20230624T134821")
    bad.parent.mkdir()
    bad.write_bytes(products[0].read_bytes()[: products[0].stat().st_size // 2])
    store, before, r = _sync_bad(tmp_path, published, bad, products)
    _assert_rejected_rest_published(store, before, r, name_of(bad), "not a readable zip")
    assert written_cube(store).ds.sizes["time"] == 2


def test_malformed_mtd_is_rejected(tmp_path, published, products, monkeypatch):
    later = make_products(tmp_path / "later", times=(T2.replace(day=24),), tiles=("31UFT",))[0]
    bad = rewrite_member(later, tmp_path / later.name, "/MTD_MSIL2A.xml", lambda b: b[: len(b) // 2])
    store, before, r = _sync_bad(tmp_path, published, bad, products)
    _assert_rejected_rest_published(store, before, r, name_of(bad), "MTD_MSIL2A")


def test_product_of_another_orbit(tmp_path, products):
    """An R008 product is not part of an R051 cube: the search skips it by name; one whose name
    and metadata disagree about the orbit is rejected naming the orbit."""
    r008 = make_products(tmp_path / "r008", times=(T1,), tiles=("31UET",), relative_orbit=8)[0]
    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--source", source_dir(tmp_path, r008, products[1])))
    assert r.exit_code == 0 and "found 1," in r.output
    assert name_of(r008) not in states(store)
    # an R051 product whose MTD says orbit 8
    liar = rewrite_member(products[0], tmp_path / products[0].name, "/MTD_MSIL2A.xml",
                          lambda b: b.replace(b"<SENSING_ORBIT_NUMBER>51<", b"<SENSING_ORBIT_NUMBER>8<"))
    r = run(*sync_args(store, "--source", source_dir(tmp_path / "liar", liar)))
    assert r.exit_code == 10
    line = r.stderr.strip()
    assert line.startswith(f"rejected {name_of(liar)}: ") and "orbit" in line.lower()


def test_product_outside_the_grid_is_rejected(tmp_path, published, products):
    # the lower left corner of 31UES is in Belgium/France, south of the RD grid
    from ingest.synth import make_product

    outside = make_product(tmp_path / "out", tile="31UES", datatake_start=T1, window=(10200, 0, 60, 60), as_zip=True)
    store, before, r = _sync_bad(tmp_path, published, outside, products)
    _assert_rejected_rest_published(store, before, r, name_of(outside), "does not overlap grid NL")


def test_synth_unknown_tile_is_a_config_error(tmp_path):
    r = run("synth", tmp_path / "x", "--tile", "33UVP", "--window", "0", "0", "60", "60")
    assert r.exit_code == 3
    line = one_error_line(r)
    assert "unknown tile '33UVP'" in line and "31UET" in line


@pytest.mark.parametrize("spec, words", [
    ("B99=cubic", ["B99"]),
    ("B04=fancy", ["fancy", "B04"]),
    ("B04", ["VAR=METHOD"]),
])
def test_bad_resampling_exit_3(tmp_path, published, spec, words):
    store = copy_cube(published, tmp_path)
    snap = store_snapshot(store)
    r = run(*sync_args(store, "--source", tmp_path, "--resampling", spec))
    assert r.exit_code == 3, r.output + r.stderr
    line = one_error_line(r)
    for w in words:
        assert w in line
    assert store_snapshot(store) == snap


def test_store_of_another_grid_exit_6(tmp_path, published, products):
    import json

    from ingest.grid import NL_GRID

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**NL_GRID.to_dict(), "name": "NLW", "bounds": [0.0, 300000.0, 200000.0, 643750.0]}))
    store = copy_cube(published, tmp_path)
    snap = store_snapshot(store)
    r = run("init", "--store", store, "--grid", other)
    assert r.exit_code == 6, r.output + r.stderr
    line = one_error_line(r)
    assert "grid" in line.lower()
    assert store_snapshot(store) == snap
    # and the other way: a store made with the other grid refuses a sync asking for another grid
    store2 = tmp_path / "other.zarr"
    assert run("init", "--store", store2, "--grid", other).exit_code == 0
    snap2 = store_snapshot(store2)
    src = source_dir(tmp_path, products[0])
    r = run(*sync_args(store2, "--source", src, "--grid", "NL"))
    assert r.exit_code == 6 and "grid" in one_error_line(r).lower()
    assert store_snapshot(store2) == snap2


def test_a_cube_made_with_a_grid_file_syncs_with_its_own_grid(tmp_path, products):
    """The store is the authority on its grid: a plain sync (no --grid) uses the store's."""
    import json

    from ingest.grid import NL_GRID
    from ingest.store import CubeStore, read_published

    other = tmp_path / "fine.json"
    other.write_text(json.dumps({**NL_GRID.to_dict(), "name": "fine",
                                 "bounds": [80000.0, 420000.0, 110000.0, 450000.0],
                                 "chunk_shape": [500, 500]}))
    store = tmp_path / "fine.zarr"
    assert run("init", "--store", store, "--grid", other).exit_code == 0
    r = run(*sync_args(store, "--source", source_dir(tmp_path, products[0])))
    assert r.exit_code == 0, r.output + r.stderr
    assert "published 1" in r.output
    assert CubeStore.open(store).grid.name == "fine"
    assert len(read_published(store, "S2/R051").times) == 1
    assert run("init", "--store", store).exit_code == 0  # init without --grid keeps the store's
    assert run("init", "--store", store, "--grid", other).exit_code == 0  # the same grid: fine


def test_unreachable_postgresql_exit_7(tmp_path):
    from ingest.testing import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    for args in (["status"], ["init"], ["db", "current"]):
        r = run(*args, "--store", tmp_path / "c.zarr", "--db", url)
        assert r.exit_code == 7, (args, r.output, r.stderr)
        line = one_error_line(r)
        assert "127.0.0.1" in line and ("reach" in line.lower() or "connect" in line.lower())


def test_synth_window_not_multiple_of_6_exit_3(tmp_path):
    r = run("synth", tmp_path / "x", "--window", "0", "0", "61", "60")
    assert r.exit_code == 3
    assert "multiples of 6" in one_error_line(r)
    assert not list((tmp_path / "x").glob("*.zip")) and not list((tmp_path / "x").glob("*.SAFE"))


def test_missing_source_and_bad_config(tmp_path):
    r = run("sync", "--store", tmp_path / "c.zarr")
    assert r.exit_code == 3 and "--source" in one_error_line(r)
    r = run("status", "--config", tmp_path / "nope.toml")
    assert r.exit_code in (2, 3) and "nope.toml" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("store = [\n")
    r = run("status", "--config", bad)
    assert r.exit_code == 3 and "bad.toml" in one_error_line(r)
    bad.write_text('colour = "blue"\n')
    r = run("status", "--config", bad)
    assert r.exit_code == 3 and "colour" in one_error_line(r)


def test_unknown_hub_option_in_config_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hub]\nname = "cdse"\ncatalog_url = "http://127.0.0.1:9/odata/v1"\n')  # typo
    r = run(*sync_args(tmp_path / "c.zarr", "--config", cfg))
    assert r.exit_code == 3, r.output + r.stderr
    assert "catalog_url" in one_error_line(r)


# ------------------------------------------------------------------------------------------
# 5. synth -> sync


def test_synth_zip_is_ingested_by_sync(tmp_path):
    out = tmp_path / "synth"
    r = run("synth", out, "--tile", "31UET", "--window", "5400", "9840", "180", "360", "--zip")
    assert r.exit_code == 0, r.stderr
    [written] = [Path(line) for line in r.output.split()]
    assert written.suffix == ".zip" and written.parent == out and written.exists()
    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--source", out))
    assert r.exit_code == 0, r.stderr
    assert "published 1" in r.output
    assert states(store) == {name_of(written): "published"}
    ds = written_cube(store).ds
    assert list(ds["products"].values) == [name_of(written)]
