"""sentinelsat 1.2.1 (unmodified) and DhusSource against the fake DHuS."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sentinelsat import SentinelAPI
from sentinelsat.exceptions import InvalidChecksumError, InvalidKeyError, UnauthorizedError

from ingest.errors import AuthenticationError, HubUnreachableError, ProductOfflineError
from ingest.sources import ProductQuarantinedError, RetryPolicy, make_source
from ingest.sources.dhus import DhusSource
from ingest.testing import FakeDHuS, free_port, make_tiny_product, tiny_names

UTC = timezone.utc
AUG = dict(since=datetime(2023, 8, 1, tzinfo=UTC), until=datetime(2023, 9, 1, tzinfo=UTC))
AREA = "POLYGON((4.6 52.4,5.0 52.4,5.0 52.8,4.6 52.8,4.6 52.4))"  # inside 31UFU only


@pytest.fixture()
def products(tmp_path) -> Path:
    d = tmp_path / "hub"
    for i, name in enumerate(tiny_names(["31UFU", "31UES"], days=range(1, 5))):
        make_tiny_product(d, name, cloud_cover=10.0 * i, payload=bytes(range(256)) * 1600)
    make_tiny_product(d, tiny_names(["31UFU"], days=[2], orbit=8)[0])
    return d


@pytest.fixture()
def hub(products):
    with FakeDHuS(products) as h:
        yield h


def api_for(hub: FakeDHuS, password: str = "password") -> SentinelAPI:
    return SentinelAPI("user", password, hub.url, show_progressbars=False)


def dhus(hub: FakeDHuS, waits: list | None = None, **kw) -> DhusSource:
    policy = RetryPolicy(attempts=4, sleep=(waits if waits is not None else []).append)
    return make_source("dhus", url=hub.url, user="user", password="password", policy=policy, progress=False, **kw)


# -- sentinelsat as the client ------------------------------------------------------------------

def test_sentinelsat_query(hub):
    api = api_for(hub)
    found = api.query(area=AREA, date=(datetime(2023, 8, 1), datetime(2023, 8, 3)), platformname="Sentinel-2",
                      producttype="S2MSI2A", relativeorbitnumber=51, cloudcoverpercentage=(0, 100))
    titles = sorted(p["title"] for p in found.values())
    assert titles == sorted(tiny_names(["31UFU"], days=[1, 2]))
    assert api.count(relativeorbitnumber=8) == 1
    gdf_ready = api.to_geojson(found)  # needs footprint + gmlfootprint
    assert len(gdf_ready["features"]) == 2
    assert api.get_products_size(found) == 0.0  # GB, rounded: parses our 'x.xx MB' sizes


def test_sentinelsat_query_sets_and_paging(products):
    with FakeDHuS(products) as hub:
        api = api_for(hub)
        api.page_size = 3
        found = api.query(filename={"S2*_T31UFU_*", "S2*_T31UES_*"}, relativeorbitnumber=51)
        assert len(found) == 8
        with pytest.raises(Exception, match="undefined field"):
            api.query(raw="nosuchfield:1")


def test_sentinelsat_download_and_odata(hub, tmp_path):
    api = api_for(hub)
    name = tiny_names(["31UFU"], days=[1])[0]
    uuid = hub.uuid_of(name)
    info = api.get_product_odata(uuid, full=True)
    assert info["title"] == name and info["md5"] and info["Online"] is True
    out = api.download(uuid, tmp_path)
    assert Path(out["path"]).name == f"{name}.zip"
    assert hashlib.md5(Path(out["path"]).read_bytes()).hexdigest() == info["md5"]
    with pytest.raises(InvalidKeyError):
        api.get_product_odata("nope")


def test_sentinelsat_resumes_after_drop(hub, tmp_path):
    api = api_for(hub)
    name = tiny_names(["31UFU"], days=[1])[0]
    hub.faults.drop_connection(name, after_bytes=200_000)
    with pytest.raises(Exception):
        api.download(hub.uuid_of(name), tmp_path)
    assert (tmp_path / f"{name}.zip.incomplete").exists()
    api.download(hub.uuid_of(name), tmp_path)
    assert hub.requests[-1].headers.get("Range", "").startswith("bytes=")


def test_sentinelsat_checksum_failure(hub, tmp_path):
    name = tiny_names(["31UFU"], days=[1])[0]
    hub.faults.wrong_checksum(name)
    with pytest.raises(InvalidChecksumError):
        api_for(hub).download(hub.uuid_of(name), tmp_path)


def test_sentinelsat_wrong_password(hub):
    with pytest.raises(UnauthorizedError):
        api_for(hub, "wrong").query(relativeorbitnumber=51)


def test_sentinelsat_lta_trigger(hub, tmp_path):
    name = tiny_names(["31UFU"], days=[1])[0]
    hub.faults.offline(name, requests=1)
    api = api_for(hub)
    assert api.is_online(hub.uuid_of(name)) is False
    assert api.trigger_offline_retrieval(hub.uuid_of(name)) is True  # 202
    assert api.is_online(hub.uuid_of(name)) is True


# -- DhusSource -----------------------------------------------------------------------------------

def test_source_search(hub):
    recs = dhus(hub).search(51, tiles=["31UFU"], max_cloud=45, **AUG)
    assert [r.tile for r in recs] == ["31UFU"] * 3  # clouds 0, 20, 40
    assert all(r.hub == "dhus" and r.relative_orbit == 51 and r.size for r in recs)
    assert len(dhus(hub).search(51, **AUG)) == 8  # the NL grid covers both tiles


def test_source_fetch_verifies_and_renames(hub, tmp_path):
    rec = dhus(hub).search(51, tiles=["31UFU"], **AUG)[0]
    path = dhus(hub).fetch(rec, tmp_path)
    assert path == tmp_path / f"{rec.name}.zip"
    assert not list(tmp_path.glob("*.incomplete")) and not list((tmp_path / ".dhus").iterdir())


def test_source_resume_after_drop(hub, tmp_path):
    rec = dhus(hub).search(51, tiles=["31UFU"], **AUG)[0]
    hub.faults.drop_connection(rec.name, after_bytes=200_000)
    waits: list[float] = []
    assert dhus(hub, waits).fetch(rec, tmp_path).exists()
    assert len(waits) == 1
    ranges = [r.headers.get("Range") for r in hub.requests
              if r.path.endswith("')/$value") and r.method == "GET"]
    # sentinelsat resumes its .incomplete file (its 1 MiB chunk was lost with the connection)
    assert ranges == [None, "bytes=0-"]


def test_source_ignore_range_is_caught_by_verification(hub, tmp_path):
    rec = dhus(hub).search(51, tiles=["31UFU"], **AUG)[0]
    hub.faults.drop_connection(rec.name, after_bytes=200_000).ignore_range(rec.name)
    # sentinelsat appends the full 200 body to its partial file; our check rejects it, the retry is clean
    assert dhus(hub).fetch(rec, tmp_path).exists()


def test_source_checksum_keeps_failing_quarantines(hub, tmp_path):
    rec = dhus(hub).search(51, tiles=["31UFU"], **AUG)[0]
    hub.faults.wrong_checksum(rec.name)
    with pytest.raises(ProductQuarantinedError):
        dhus(hub).fetch(rec, tmp_path)
    assert (tmp_path / "quarantine" / f"{rec.name}.zip").exists()
    assert (tmp_path / "quarantine" / f"{rec.name}.reason.txt").exists()
    assert not (tmp_path / f"{rec.name}.zip").exists()


def test_source_offline_then_online(hub, tmp_path):
    rec = dhus(hub).search(51, tiles=["31UFU"], **AUG)[0]
    hub.faults.offline(rec.name, requests=1)
    with pytest.raises(ProductOfflineError):
        dhus(hub).fetch(rec, tmp_path)
    assert hub.retrieval_requests == [rec.name]
    assert dhus(hub).fetch(rec, tmp_path).exists()


def test_source_wrong_password_message(hub, monkeypatch):
    monkeypatch.delenv("S2INGEST_DHUS_USER", raising=False)
    src = DhusSource(hub.url, "user", "wrong", policy=RetryPolicy(sleep=lambda s: None), progress=False)
    with pytest.raises(AuthenticationError, match="S2INGEST_DHUS_USER.*machine 127.0.0.1"):
        src.search(51)


def test_source_credentials_from_env(hub, monkeypatch):
    monkeypatch.setenv("S2INGEST_DHUS_USER", "user")
    monkeypatch.setenv("S2INGEST_DHUS_PASSWORD", "password")
    assert DhusSource(hub.url, progress=False).search(51, **AUG)


def test_source_429_retry_after(hub):
    hub.faults.status(429, route="search", retry_after=5)
    waits: list[float] = []
    assert dhus(hub, waits).search(51, **AUG)
    assert waits == [5.0]


def test_source_hub_down():
    waits: list[float] = []
    src = DhusSource(f"http://127.0.0.1:{free_port()}/", "u", "p", progress=False,
                     policy=RetryPolicy(attempts=3, sleep=waits.append))
    with pytest.raises(HubUnreachableError):
        src.search(51)
    assert len(waits) == 2
