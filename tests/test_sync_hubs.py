"""``s2ingest sync`` end to end against the fake DHuS and CDSE hubs (ingest.testing.fakehub).

How the CLI reaches each hub (documented in ``s2ingest sync --help`` and ingest/config.py):

* DHuS: ``--hub dhus --url http://host/``; credentials in S2INGEST_DHUS_USER/PASSWORD.
* CDSE: the three URLs (catalogue, token, download) in the config file's ``[hub]`` section, whose
  keys go to ``make_source('cdse', ...)`` as they are; ``--url`` overrides the catalogue URL;
  credentials in S2INGEST_CDSE_USER/PASSWORD.

Exit codes under test (ingest/cli/main.py): 0 all good (offline products included: they are
waiting, not failed), 10 the run finished but some product was rejected or failed, 5 hub error
(credentials, hub down).
"""
from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest

from hub_fixtures import (
    T1, T2, assert_same_cube, catalog_rows, catalog_url, fast_retries, isolated_env, make_products, name_of,
    run, set_due_now, states, store_snapshot, sync_args, written_cube,
)
from ingest.testing import FakeCDSE, FakeDHuS

__all__ = ["fast_retries", "isolated_env"]  # fixtures used by name

DHUS_ENV = {"S2INGEST_DHUS_USER": "user", "S2INGEST_DHUS_PASSWORD": "password"}
CDSE_ENV = {"S2INGEST_CDSE_USER": "user", "S2INGEST_CDSE_PASSWORD": "password"}


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> list[Path]:
    """Four zips: 31UET and 31UFT of two datatakes (T1, T2)."""
    return make_products(tmp_path_factory.mktemp("products"))


@pytest.fixture(scope="module")
def product_dir(products) -> Path:
    return products[0].parent


@pytest.fixture(scope="module")
def local_cube(product_dir, tmp_path_factory) -> Path:
    """The reference: the same products through ``--hub local``."""
    store = tmp_path_factory.mktemp("local") / "cube.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(store.parent)
        r = run(*sync_args(store, "--hub", "local", "--source", product_dir))
    assert r.exit_code == 0, r.output + r.stderr
    return store


@pytest.fixture()
def dhus(product_dir):
    with FakeDHuS(product_dir) as hub:
        yield hub


@pytest.fixture()
def cdse(product_dir):
    with FakeCDSE(product_dir) as hub:
        yield hub


def cdse_config(hub: FakeCDSE, path: Path, **extra) -> Path:
    lines = ["[hub]", 'name = "cdse"', f'catalogue_url = "{hub.catalogue_url}"',
             f'token_url = "{hub.token_url}"', f'download_url = "{hub.download_url}"']
    lines += [f"{k} = {v!r}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def hub_sync(kind: str, hub, store: Path, *more, env=None):
    """One ``s2ingest sync`` against a fake hub of ``kind``."""
    if kind == "dhus":
        return run(*sync_args(store, "--hub", "dhus", "--url", hub.url, *more), env={**DHUS_ENV, **(env or {})})
    config = cdse_config(hub, store.parent / "s2ingest-cdse.toml")
    return run(*sync_args(store, "--config", config, *more), env={**CDSE_ENV, **(env or {})})


HUBS = ["dhus", "cdse"]
# The fault tests run against both hubs; the DHuS runs (sentinelsat) are the slower half.
HUB_PARAMS = [pytest.param("dhus", marks=pytest.mark.slow), "cdse"]


@pytest.fixture(params=HUB_PARAMS)
def hub(request, product_dir):
    yield from _hub(request, product_dir)


@pytest.fixture(params=HUBS)
def any_hub(request, product_dir):
    """Both hubs, neither marked slow (the core claim: every hub builds the same cube)."""
    yield from _hub(request, product_dir)


def _hub(request, product_dir):
    cls = FakeDHuS if request.param == "dhus" else FakeCDSE
    with cls(product_dir) as h:
        h.kind = request.param
        yield h


# ------------------------------------------------------------------------------------------
# 1. the same cube from every hub


def test_hub_builds_the_same_cube_as_local(any_hub, local_cube, tmp_path, products):
    hub = any_hub
    store = tmp_path / "cube.zarr"
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0, r.output + r.stderr
    assert "published 4" in r.output and "cube version 1: 2 time steps" in r.output
    assert set(states(store).values()) == {"published"}
    assert {row["hub"] for row in catalog_rows(catalog_url(store)).values()} == {hub.kind}
    assert_same_cube(store, local_cube)
    # the zips in the cache are the hub's bytes, verified
    cache = store.with_name(store.name + ".cache")
    assert sorted(p.name for p in cache.glob("*.zip")) == sorted(p.name for p in products)
    # a second run finds nothing new and writes nothing
    before = store_snapshot(store)
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0 and "nothing new to publish" in r.output
    assert store_snapshot(store) == before


# ------------------------------------------------------------------------------------------
# 2. dry run


def test_dry_run_lists_and_changes_nothing(tmp_path, cdse):
    store = tmp_path / "cube.zarr"
    r = hub_sync("cdse", cdse, store, "--dry-run")
    assert r.exit_code == 0, r.output + r.stderr
    assert "dry run: 4 products found; nothing was changed" in r.output
    assert r.output.count("would download") == 4 and r.output.count("would ingest") == 4
    assert not store.exists()
    assert not Path(catalog_url(store).removeprefix("sqlite:///")).exists(), "a dry run created the catalog"
    assert not store.with_name(store.name + ".cache").exists()
    assert not cdse.retrieval_requests and not any("$value" in q.path for q in cdse.requests)


def test_dry_run_after_a_sync_changes_nothing(tmp_path, cdse, products):
    store = tmp_path / "cube.zarr"
    assert hub_sync("cdse", cdse, store, "--until", "2023-06-15").exit_code == 0  # T1 only
    snap, rows = store_snapshot(store), catalog_rows(catalog_url(store))
    r = hub_sync("cdse", cdse, store, "--dry-run")
    assert r.exit_code == 0
    t2 = sorted(name_of(p) for p in products[2:])
    assert [line.split()[-1] for line in r.output.splitlines() if "would ingest" in line] == t2
    assert store_snapshot(store) == snap and catalog_rows(catalog_url(store)) == rows


# ------------------------------------------------------------------------------------------
# 3. filters


@pytest.mark.parametrize("args, expected", [
    (["--since", "2023-06-15"], {(T2, "31UET"), (T2, "31UFT")}),
    (["--until", "2023-06-15"], {(T1, "31UET"), (T1, "31UFT")}),
    # since inclusive, until exclusive, on the datatake start (to the second)
    (["--since", "2023-06-14T10:56:21", "--until", "2023-06-19T10:56:21"], {(T1, "31UET"), (T1, "31UFT")}),
    (["--tiles", "31UFT"], {(T1, "31UFT"), (T2, "31UFT")}),
    (["--tiles", "T31UET,31uft", "--since", "2023-06-19"], {(T2, "31UET"), (T2, "31UFT")}),
])
def test_filters_select_products(hub, tmp_path, args, expected):
    from ingest.products.names import ProductName

    r = hub_sync(hub.kind, hub, tmp_path / "cube.zarr", "--dry-run", *args)
    assert r.exit_code == 0, r.output + r.stderr
    names = [line.split()[-1] for line in r.output.splitlines() if "would ingest" in line]
    got = {(ProductName.parse(n).datatake_start, ProductName.parse(n).tile) for n in names}
    assert got == expected


def test_max_cloud_filters(cdse, tmp_path, products):
    covers = {p.name: p.cloud_cover for p in cdse.store.all()}
    assert len(set(covers.values())) > 1, "synthetic products should differ in cloud cover"
    limit = sorted(covers.values())[1]
    r = hub_sync("cdse", cdse, tmp_path / "cube.zarr", "--dry-run", "--max-cloud", str(limit))
    names = {line.split()[-1] for line in r.output.splitlines() if "would ingest" in line}
    assert names == {n for n, c in covers.items() if c <= limit}
    # and the local source reads cloud cover from MTD_MSIL2A.xml the same way
    r = run(*sync_args(tmp_path / "l.zarr", "--source", products[0].parent, "--dry-run", "--max-cloud", str(limit)))
    assert {line.split()[-1] for line in r.output.splitlines() if "would ingest" in line} == names


def test_bad_dates_are_option_errors(tmp_path):
    """The one date parser of the CLI (``cli.options.parse_when``): a bad date is a bad option
    value, exit 3 with one line, as for --time (it was click's usage error, exit 2)."""
    r = run(*sync_args(tmp_path / "c.zarr", "--source", tmp_path, "--since", "14/06/2023"))
    assert r.exit_code == 3 and "YYYY-MM-DD" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("s2ingest: error: --since")


# ------------------------------------------------------------------------------------------
# 4. faults through the full sync


def test_dropped_connection_is_resumed_in_one_run(hub, tmp_path, local_cube, products, fast_retries):
    name = name_of(products[1])
    hub.faults.drop_connection(name, after_bytes=200_000, times=2)
    store = tmp_path / "cube.zarr"
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0, r.output + r.stderr
    assert any(entry.startswith("drop:") for entry in hub.faults.log)
    if hub.kind == "cdse":  # our own download code resumes with Range (sentinelsat restarts on DHuS)
        ranges = [q.headers.get("Range") for q in hub.requests if q.path.endswith("$value")]
        assert any(rng and rng not in ("bytes=0-", "bytes=0-1") for rng in ranges), "restarted, not resumed"
    assert set(states(store).values()) == {"published"}
    assert_same_cube(store, local_cube)


def test_wrong_checksum_rejects_that_product_only(hub, tmp_path, products, fast_retries):
    bad = name_of(products[0])
    hub.faults.wrong_checksum(bad)
    store = tmp_path / "cube.zarr"
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 10, r.output + r.stderr
    assert f"rejected {bad}:" in r.stderr and "quarantined" in r.stderr
    rows = catalog_rows(catalog_url(store))
    assert rows[bad]["state"] == "rejected" and "checksum" in rows[bad]["reason"].lower()
    assert {n: r_["state"] for n, r_ in rows.items() if n != bad} == dict.fromkeys(
        [name_of(p) for p in products[1:]], "published")
    cache = store.with_name(store.name + ".cache")
    assert (cache / "quarantine" / f"{bad}.zip").exists()
    assert (cache / "quarantine" / f"{bad}.reason.txt").exists()
    assert not (cache / f"{bad}.zip").exists()
    published = {n for names in written_cube(store).ds["products"].values for n in names.split(",")}
    assert bad not in published and len(published) == 3
    st = run("status", "--store", store)
    assert f"rejected  {bad}: " in st.output


def test_offline_product_waits_then_is_published(hub, tmp_path, products, fast_retries):
    late = name_of(products[3])
    hub.faults.offline(late, requests=1)
    store = tmp_path / "cube.zarr"
    r = hub_sync(hub.kind, hub, store)
    # offline is not a failure: the product was ordered from the archive and is waiting (exit 0)
    assert r.exit_code == 0, r.output + r.stderr
    assert "offline 1" in r.output and "published 3" in r.output
    assert late in hub.retrieval_requests
    assert states(store)[late] == "offline"
    st = run("status", "--store", store)
    assert f"offline   {late}:" in st.output and "next attempt" in st.output
    # the same run again at once: the product is not due yet (retry in an hour), nothing changes
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0 and states(store)[late] == "offline"
    set_due_now(store)  # an hour later; the hub has it online now
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0, r.output + r.stderr
    assert "published 1" in r.output
    assert set(states(store).values()) == {"published"}
    ds = written_cube(store).ds
    assert late in ds["products"].values[1].split(",")


@pytest.mark.parametrize("kind", HUBS)
def test_wrong_credentials_exit_5(kind, product_dir, tmp_path):
    cls = FakeDHuS if kind == "dhus" else FakeCDSE
    env = {"S2INGEST_DHUS_PASSWORD": "wrong"} if kind == "dhus" else {"S2INGEST_CDSE_PASSWORD": "wrong"}
    store = tmp_path / "cube.zarr"
    with cls(product_dir) as hub:
        r = hub_sync(kind, hub, store, env=env)
    assert r.exit_code == 5, r.output + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2ingest: error:")
    assert "credentials" in lines[0] and f"S2INGEST_{kind.upper()}_USER" in lines[0]
    assert "Traceback" not in r.output + r.stderr
    # a failed first run leaves nothing behind: no store, no catalog, no cache
    assert not any(p.name.startswith("cube") for p in tmp_path.iterdir()), list(tmp_path.iterdir())
    # on a cube that exists, the products are not blamed: no failure recorded, no attempt counted
    with cls(product_dir) as hub:
        assert hub_sync(kind, hub, store, "--until", "2023-06-15").exit_code == 0
        r = hub_sync(kind, hub, store, env=env)
    assert r.exit_code == 5, r.output + r.stderr
    rows = catalog_rows(catalog_url(store))
    assert sum(r_["state"] == "published" for r_ in rows.values()) == 2
    if kind == "cdse":  # CDSE searches anonymously; the download refused: the products wait, due at once
        assert len(rows) == 4
        assert all(r_["state"] == "discovered" and r_["attempts"] == 0 and r_["next_attempt_at"] is None
                   for r_ in rows.values() if r_["state"] != "published")


def written_cube_exists(store: Path) -> bool:
    return any((store / "S2/R051/B02").glob("0.*"))


def test_hub_down_exit_5_and_no_damage(hub, tmp_path, fast_retries):
    store = tmp_path / "cube.zarr"
    assert hub_sync(hub.kind, hub, store, "--until", "2023-06-15").exit_code == 0
    snap, rows = store_snapshot(store), catalog_rows(catalog_url(store))
    hub.stop()
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 5, r.output + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2ingest: error:"), r.stderr
    assert "127.0.0.1" in lines[0] and ("did not answer" in lines[0] or "failed" in lines[0])
    assert store_snapshot(store) == snap
    assert catalog_rows(catalog_url(store)) == rows


# ------------------------------------------------------------------------------------------
# 5. keep/delete products, partial downloads


@pytest.mark.parametrize("flag, kept", [pytest.param("--keep-products", True, marks=pytest.mark.slow),
                                         ("--delete-products", False)])
def test_keep_or_delete_downloaded_zips(cdse, tmp_path, products, flag, kept):
    store = tmp_path / "cube.zarr"
    r = hub_sync("cdse", cdse, store, flag, "--until", "2023-06-15")
    assert r.exit_code == 0, r.output + r.stderr
    cache = store.with_name(store.name + ".cache")
    zips = sorted(p.name for p in cache.glob("*.zip"))
    assert zips == (sorted(p.name for p in products[:2]) if kept else [])
    assert not list(cache.glob("*.part"))
    assert set(states(store).values()) == {"published"}
    # the next datatake's publish must not need the deleted zips of the first one
    r = hub_sync("cdse", cdse, store, flag)
    assert r.exit_code == 0, r.output + r.stderr
    assert set(states(store).values()) == {"published"} and len(states(store)) == 4


def test_partial_download_is_never_ingested(cdse, tmp_path, products, fast_retries):
    store = tmp_path / "cube.zarr"
    victim = name_of(products[0])
    cdse.faults.drop_connection(victim, after_bytes=100_000, times=50)  # more than any retry budget
    r = hub_sync("cdse", cdse, store, "--until", "2023-06-15")
    assert r.exit_code == 10, r.output + r.stderr
    assert f"failed   {victim}:" in r.stderr and "will be retried" in r.stderr
    cache = store.with_name(store.name + ".cache")
    part = cache / f"{victim}.zip.part"
    assert part.exists() and 0 < part.stat().st_size < products[0].stat().st_size
    assert not (cache / f"{victim}.zip").exists()
    assert states(store)[victim] == "failed"
    names = {n for v in written_cube(store).ds["products"].values for n in v.split(",")}
    assert victim not in names and names == {name_of(products[1])}
    # later, the hub behaves: the .part is resumed (Range from its size), verified, ingested
    cdse.faults.clear()
    size = part.stat().st_size
    set_due_now(store)
    n_before = len(cdse.requests)
    r = hub_sync("cdse", cdse, store, "--until", "2023-06-15")
    assert r.exit_code == 0, r.output + r.stderr
    assert any(q.headers.get("Range") == f"bytes={size}-" for q in cdse.requests[n_before:])
    assert states(store)[victim] == "published" and not part.exists()


def test_part_files_in_a_source_folder_are_ignored(tmp_path, products):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(products[0], src / products[0].name)
    (src / f"{name_of(products[1])}.zip.part").write_bytes(products[1].read_bytes()[:50_000])
    r = run(*sync_args(tmp_path / "cube.zarr", "--source", src))
    assert r.exit_code == 0, r.output + r.stderr
    assert "found 1," in r.output
    assert list(states(tmp_path / "cube.zarr")) == [name_of(products[0])]


# ------------------------------------------------------------------------------------------
# 6. hub drift


def test_cdse_deleted_products_are_reported(cdse, tmp_path, products):
    store = tmp_path / "cube.zarr"
    since = "2023-06-01"
    assert hub_sync("cdse", cdse, store, "--since", since).exit_code == 0
    gone = name_of(products[2])
    cdse.delete_product(gone, cause="Obsolete")
    r = hub_sync("cdse", cdse, store, "--since", since)
    assert r.exit_code == 0, r.output + r.stderr
    assert f"deleted from hub {gone}" in r.output
    st = run("status", "--store", store)
    assert st.exit_code == 0
    assert f"deleted from hub {gone} (seen " in st.output and "state published" in st.output


def test_newer_baseline_supersedes_the_published_product(hub, tmp_path, products):
    store = tmp_path / "cube.zarr"
    assert hub_sync(hub.kind, hub, store).exit_code == 0
    old = name_of(products[0])  # 31UET at T1, baseline 05.09
    newer = make_products(tmp_path / "reprocessed", times=(T1,), tiles=("31UET",), baseline="05.10",
                          generation_time=datetime(2024, 2, 1, 12, 0, 0, tzinfo=T1.tzinfo))[0]
    hub.add_product(newer)
    r = hub_sync(hub.kind, hub, store)
    assert r.exit_code == 0, r.output + r.stderr
    st = run("status", "--store", store)
    assert f"superseded {old} by {name_of(newer)} (was published)" in st.output
    rows = catalog_rows(catalog_url(store))
    assert rows[old]["state"] == "superseded" and rows[name_of(newer)]["state"] == "published"
    ds = written_cube(store).ds
    assert ds.sizes["time"] == 2
    first = ds["products"].values[0].split(",")
    assert name_of(newer) in first and old not in first
    assert "05.10" in ds["baselines"].values[0]
