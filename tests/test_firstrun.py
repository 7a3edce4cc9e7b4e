"""What a new user hits in the first hour: each case through the command line, with its exit
code, its message, and nothing created or left behind."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hub_fixtures import (
    T1, catalog_rows, catalog_url, isolated_env, make_products, name_of, run, states, sync_args,
)

__all__ = ["isolated_env"]  # autouse fixture


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def one_error_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("s2ingest: error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> list[Path]:
    return make_products(tmp_path_factory.mktemp("firstrun-products"))


def copy_to(tmp_path: Path, *paths: Path, name: str = "src") -> Path:
    import shutil

    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy2(p, d / p.name)
    return d


# ------------------------------------------------------------------------------------------
# 1. a second `demo` reuses what is there, publishes nothing and says so


@pytest.fixture()
def no_gc():
    """Objects in reference cycles are freed only when the test says so: a catalog engine left
    to the garbage collector keeps its SQLite -wal/-shm files (and a later checkpoint touches
    the catalog) at a moment no test controls."""
    import gc

    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.slow
def test_demo_twice_changes_nothing_the_second_time(tmp_path, monkeypatch, no_gc):
    import ingest.demo.build as demo
    from ingest.store import read_published

    monkeypatch.setattr(demo, "DEMO_DATATAKES", demo.DEMO_DATATAKES[:2])  # two datatakes are enough
    root = tmp_path / "s2ingest-demo"
    r = run("demo", root, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    store = root / "cube.zarr"
    # every catalog connection the command opened is closed when it returns (in-process too)
    assert not list(root.glob("*.sqlite-wal")) and not list(root.glob("*.sqlite-shm"))
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    version = read_published(store, "S2/R051").version

    r = run("demo", root, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    assert "reused 4 products" in r.output and "synth " not in r.output
    assert r.output.count("already published") == 6
    assert f"nothing new: cube at version {version}, 2 time steps" in r.output, r.output
    assert "published 0 products" not in r.output and "None" not in r.output
    assert not list(root.glob("*.sqlite-wal")) and not list(root.glob("*.sqlite-shm"))
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    sqlite_side = ("-wal", "-shm", "-journal")
    changed = sorted(str(p.relative_to(root)) for p in after
                     if p in before and before[p] != after[p] and not p.name.endswith(sqlite_side))
    added = sorted(str(p.relative_to(root)) for p in set(after) - set(before))
    removed = sorted(str(p.relative_to(root)) for p in set(before) - set(after))
    assert (changed, added, removed) == ([], [], []), (changed, added, removed)
    assert read_published(store, "S2/R051").version == version
    # every commit of the demo (the cube, its overviews, imagery, layers) is in its catalog
    r = run("verify", "--store", store)
    assert r.exit_code == 0, r.output + r.stderr
    # the README's parcel examples lie inside the demo's imagery (an empty answer would say why)
    import re

    from fastapi.testclient import TestClient

    from ingest.serve import create_app

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    examples = set(re.findall(r"`GET /api/[a-z]+\?parcel=(\d+)", readme))
    assert examples, "no parcel example in the README"
    client = TestClient(create_app(str(store)))
    for pid in examples:
        body = client.get(f"/api/series?parcel={pid}").json()
        assert "reason" not in body and all(r["count"] > 0 for r in body["series"]), (pid, body)


# ------------------------------------------------------------------------------------------
# 2. stats --stat classes: SCL pixels per class, zone and date


@pytest.fixture(scope="module")
def layered_cube(tmp_path_factory) -> tuple[Path, tuple[float, float, float, float]]:
    """Imagery-like SCL over 2x2 map sheets with provinces, municipalities and parcels."""
    from ingest.layers import synth

    tmp = tmp_path_factory.mktemp("layered")
    area = (85_000.0, 431_250.0, 95_000.0, 443_750.0)
    store = tmp / "cube.zarr"
    g, f = synth.municipalities(area)
    gm = synth.write_vector(tmp / "gm.gpkg", g, f)
    g, f = synth.provinces(area)
    pv = synth.write_vector(tmp / "pv.geojson", g, f)
    lg, lf = synth.landuse(area, seed=1)
    pg, pf = synth.parcels(lg, lf["BG2015"], 2023, seed=1)
    brp = synth.write_vector(tmp / "brp.gpkg", pg, pf)
    for args in (["--group", "NL", "--variable", "municipality", "--attribute", "statcode", gm],
                 ["--group", "NL", "--variable", "province", "--attribute", "statcode", pv],
                 ["--group", "NL/BRP", "--attribute", "gewascode", brp]):
        r = run("layers", "add", "--store", store, "--edition", "2023", *args)
        assert r.exit_code == 0, r.output + r.stderr
    synth.imagery_group(store, area, n_times=3)
    return store, area


@pytest.mark.parametrize("by", ["NL/province", "NL/municipality", "NL/BRP/parcel"])
def test_scl_class_counts_per_zone_and_date(layered_cube, tmp_path, by):
    from ingest.grid import NL_GRID

    store, area = layered_cube
    out = tmp_path / "classes.csv"
    r = run("stats", "--store", store, "--by", by, "--edition", "2023", "--variable", "SCL",
            "--stat", "classes", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output + r.stderr
    got = pd.read_csv(out, parse_dates=["time"])
    zone = by.rsplit("/", 1)[1]
    assert list(got.columns) == [zone, "time", "class", "count"]

    # the same counts straight from the arrays
    win = NL_GRID.window_for_bounds(area)
    sel = {"y": slice(win.row_off, win.row_off + win.height), "x": slice(win.col_off, win.col_off + win.width)}
    group = "/" + by.rsplit("/", 1)[0]
    z = xr.open_zarr(store, group=group, consolidated=True, mask_and_scale=False)[zone].isel(edition=0, **sel).values
    scl = xr.open_zarr(store, group="/S2/R051", consolidated=False, mask_and_scale=False)
    times = scl.time.values
    scl = scl.SCL.isel(**sel).values
    rows = []
    for ti, t in enumerate(times):
        for code in np.unique(z[z > 0]):
            classes, counts = np.unique(scl[ti][(z == code) & (scl[ti] != 0)], return_counts=True)
            rows += [(int(code), pd.Timestamp(t), int(c), int(n)) for c, n in zip(classes, counts)]
    want = pd.DataFrame(rows, columns=[zone, "time", "class", "count"])
    key = [zone, "time", "class"]
    got = got[got["count"] > 0].sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert len(got) > 0 and (zone == "province" or len(np.unique(z[z > 0])) > 1)


# ------------------------------------------------------------------------------------------
# 3. sentinelsat's DHUS_USER / DHUS_PASSWORD / DHUS_URL; short hub errors


def test_sentinelsat_credentials_are_accepted(products, tmp_path):
    from ingest.testing import FakeDHuS

    store = tmp_path / "cube.zarr"
    with FakeDHuS(products[0].parent) as hub:
        env = {"DHUS_USER": "user", "DHUS_PASSWORD": "password", "DHUS_URL": hub.url}
        r = run(*sync_args(store, "--hub", "dhus", "--until", "2023-06-15"), env=env)
        assert r.exit_code == 0, r.output + r.stderr
        assert "published 2" in r.output
        # ours win over sentinelsat's
        r = run(*sync_args(store, "--hub", "dhus"), env={**env, "S2INGEST_DHUS_PASSWORD": "wrong"})
    assert r.exit_code == 5
    line = one_error_line(r)
    assert "credentials" in line and "DHUS_USER" in line


def test_unknown_hub_host_is_one_short_line_without_retries(tmp_path, monkeypatch):
    store = tmp_path / "cube.zarr"
    from ingest.sources.download import RetryPolicy

    slept = []  # the backoff waits asked for (not the wall clock: a loaded machine is no defect)
    monkeypatch.setattr(RetryPolicy, "wait", lambda self, failures, retry_after=None: slept.append(
        retry_after if retry_after is not None else self.backoff(failures)) or 0.0)
    r = run(*sync_args(store, "--hub", "dhus", "--url", "http://no-such-hub.invalid/"),
            env={"DHUS_USER": "u", "DHUS_PASSWORD": "p"})
    assert r.exit_code == 5
    line = one_error_line(r)
    assert len(line) < 200 and "no-such-hub.invalid" in line and "DNS" in line
    assert "q=" not in line and "footprint" not in line.lower()
    assert slept == [], slept  # no retries with backoff: nothing to wait for
    assert files_under(tmp_path) <= {"home"}


# ------------------------------------------------------------------------------------------
# 4. a rejected product comes back when its file changed, or on `retry`


def test_replaced_file_is_a_new_candidate_and_retry_requeues(products, tmp_path):
    store = tmp_path / "cube.zarr"
    good = products[0]
    src = tmp_path / "src"
    src.mkdir()
    bad = src / good.name
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 10 and states(store) == {name_of(good): "rejected"}

    r = run(*sync_args(store, "--source", src))  # the same broken file: stays rejected
    assert r.exit_code == 0 and "new 0" in r.output and states(store)[name_of(good)] == "rejected"

    bad.write_bytes(good.read_bytes())  # the intact file
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0, r.output + r.stderr
    assert "found 1, new 1" in r.output and "published 1" in r.output
    assert states(store)[name_of(good)] == "published"


def test_retry_command(products, tmp_path):
    store = tmp_path / "cube.zarr"
    src = copy_to(tmp_path, products[1])
    # an R051 product whose metadata is fine but whose file fails verification the first time:
    # simulate with a rejected row instead (the reason does not matter to `retry`)
    assert run(*sync_args(store, "--source", src)).exit_code == 0
    from sqlalchemy import update

    from catalog import Product, open_catalog, session_scope

    engine = open_catalog(catalog_url(store), create=False)
    with session_scope(engine) as s:
        s.execute(update(Product).values(state="rejected", reason="operator test", published_version=None))
    engine.dispose()

    r = run("retry", "--store", store)
    assert r.exit_code == 3 and "--rejected" in one_error_line(r)
    r = run("retry", "--store", store, "S2A_MSIL2A_20230614T105621_N0509_R051_T31UET_20230614T134821")
    assert r.exit_code == 7 and "no product" in one_error_line(r)
    r = run("retry", "--store", store, "--rejected")
    assert r.exit_code == 0 and f"re-queued {name_of(products[1])} (was rejected)" in r.output
    assert states(store)[name_of(products[1])] == "discovered"
    r = run("retry", "--store", store, name_of(products[1]))
    assert r.exit_code == 7 and "discovered, not rejected or failed" in one_error_line(r)
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0 and states(store)[name_of(products[1])] == "published"


# ------------------------------------------------------------------------------------------
# 5./6. nothing created by read-only or failing commands; one store check


def test_status_on_a_missing_store_creates_nothing_and_points_at_init(tmp_path):
    r = run("status", "--store", tmp_path / "nonexist.zarr")
    assert r.exit_code == 7
    line = one_error_line(r)
    assert "nonexist.catalog.sqlite" in line and "s2ingest init --store" in line
    assert files_under(tmp_path) <= {"home"}


def test_db_that_is_not_a_url_creates_nothing(tmp_path):
    for args in (["status"], ["init"], ["db", "current"]):
        r = run(*args, "--store", tmp_path / "c.zarr", "--db", "notaurl")
        assert r.exit_code == 3, (args, r.output, r.stderr)
        assert "not a database URL" in one_error_line(r)
    r = run("db", "current", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}")
    assert r.exit_code == 0 and "revision None" in r.output
    assert files_under(tmp_path) <= {"home"}


@pytest.mark.parametrize("origin", ["option", "env", "config"])
def test_store_that_is_a_file_is_exit_6_whatever_its_origin(products, tmp_path, origin):
    regular = tmp_path / "regular.txt"
    regular.write_text("not a cube\n")
    src = copy_to(tmp_path, products[0])
    before = files_under(tmp_path)
    args, env = ["sync", "--no-progress", "--source", src], None
    if origin == "option":
        args += ["--store", regular]
    elif origin == "env":
        env = {"S2INGEST_STORE": str(regular)}
    else:
        (tmp_path / "s2ingest.toml").write_text(f'store = "{regular}"\n')
        before = files_under(tmp_path)
    r = run(*args, env=env)
    assert r.exit_code == 6, r.output + r.stderr
    assert "regular.txt is a file" in one_error_line(r)
    assert files_under(tmp_path) == before
    assert regular.read_text() == "not a cube\n"


def test_folder_of_other_files_is_not_made_a_cube(products, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("mine\n")
    src = copy_to(tmp_path, products[0])
    before = files_under(tmp_path)
    for args in (sync_args(d, "--source", src), ["init", "--store", d], ["status", "--store", d]):
        r = run(*args)
        assert r.exit_code == 6, (args, r.output, r.stderr)
        assert "not an s2ingest cube" in one_error_line(r) and "thesis.txt" in r.stderr
    assert files_under(tmp_path) == before
    # an empty folder is fine
    e = tmp_path / "e"
    e.mkdir()
    assert run(*sync_args(e, "--source", src)).exit_code == 0


def test_failed_first_sync_leaves_nothing(tmp_path):
    from ingest.testing import free_port

    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--hub", "dhus", "--url", f"http://127.0.0.1:{free_port()}/"),
            env={"DHUS_USER": "u", "DHUS_PASSWORD": "p", "S2INGEST_THREADS": "1"})
    assert r.exit_code == 5
    assert files_under(tmp_path) <= {"home"}


def test_a_new_cube_in_a_new_folder(products, tmp_path):
    """``sync``/``init`` of a store whose folder does not exist yet make the folder (store and
    catalog beside it), instead of blaming the catalog database."""
    src = copy_to(tmp_path, *products)
    store = tmp_path / "new" / "dir" / "cube.zarr"
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0, r.output + r.stderr
    assert (tmp_path / "new" / "dir" / "cube.catalog.sqlite").exists()
    other = tmp_path / "other" / "deeper" / "cube.zarr"
    r = run("init", "--store", other)
    assert r.exit_code == 0, r.output + r.stderr
    assert other.is_dir()


# ------------------------------------------------------------------------------------------
# 7. skipped inputs are reported


def test_skipped_inputs_are_reported(products, tmp_path):
    r008 = make_products(tmp_path / "r008", times=(T1,), tiles=("31UET",), relative_orbit=8)[0]
    src = copy_to(tmp_path, r008, products[1])
    with zipfile.ZipFile(src / "holiday-photos.zip", "w") as zf:
        zf.writestr("a.txt", "x")
    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0, r.output + r.stderr
    line = next(line for line in r.output.splitlines() if line.startswith("skipped"))
    assert "skipped 2 in" in line and "1 of relative orbit 8 (the cube is 51)" in line
    assert "1 not a Sentinel-2 product name" in line and "-v" in line
    r = run("-v", *sync_args(store, "--source", src))
    assert "holiday-photos.zip: not a Sentinel-2 product name" in r.output
    assert f"{r008.name}: of relative orbit 8" in r.output


# ------------------------------------------------------------------------------------------
# 8. Ctrl-C gives the leases back


def test_sigint_releases_leases(products, tmp_path):
    src = copy_to(tmp_path, *products)
    store = tmp_path / "cube.zarr"
    db = Path(catalog_url(store).removeprefix("sqlite:///"))
    exe = Path(sys.executable).with_name("s2ingest")
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2INGEST_")}
    # the sync stops where it holds its ingest leases, until told (no guessing with sleeps)
    release = tmp_path / "release"
    env["S2INGEST_FAULT"] = f"sync.claimed=wait:{release}"
    # a test run started as a background job of a non-interactive shell ignores SIGINT, and a
    # child inherits that (Python then keeps Ctrl-C ignored): the sync must get it as a user does
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen([str(exe), "sync", "--store", str(store), "--source", str(src), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    reached = Path(f"{release}.reached")
    while not reached.exists() and p.poll() is None:  # bounded by the sync itself
        time.sleep(0.05)
    assert reached.exists(), p.communicate()
    with sqlite3.connect(db) as con:
        leased = con.execute("select count(*) from products where lease_owner is not null").fetchone()[0]
    assert leased, "the sync holds no lease at sync.claimed"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, out + err
    assert "interrupted" in err
    st = run("status", "--store", store)
    assert st.exit_code == 0 and "lease " not in st.output, st.output
    assert all(r["lease_owner"] is None for r in catalog_rows(catalog_url(store)).values())
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == 0 and "crashed worker" not in r.stderr
    assert set(states(store).values()) == {"published"}


# ------------------------------------------------------------------------------------------
# 9. progress and labels


def test_piped_sync_gets_plain_lines_not_bars(products, tmp_path):
    src = copy_to(tmp_path, *products[:2])
    store = tmp_path / "cube.zarr"
    r = run("sync", "--store", store, "--source", src)  # CliRunner's stderr is no terminal
    assert r.exit_code == 0, r.output + r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "%|" not in r.stderr
    assert "fetching and verifying 2 products" in r.output
    assert "warping and writing 2 products (batch 1/1)" in r.output


def test_status_says_which_version_is_which(products, tmp_path):
    store = tmp_path / "cube.zarr"
    assert run(*sync_args(store, "--source", copy_to(tmp_path, *products[:2]))).exit_code == 0
    out = run("status", "--store", store).output
    assert "store version 1 (this group last written in version 1)" in out
    assert "last publish: cube version 1 (/S2/R051)" in out


def test_synth_overwrite_flag(tmp_path):
    args = ["synth", tmp_path / "p", "--window", "0", "0", "60", "60"]
    assert run(*args).exit_code == 0
    r = run(*args)
    assert r.exit_code == 3 and "--overwrite" in one_error_line(r) and "overwrite=True" in r.stderr
    assert run(*args, "--overwrite").exit_code == 0
