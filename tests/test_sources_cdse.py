"""Our CDSE client against the fake CDSE: token, filters, paging, redirect, resume, faults."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from ingest.errors import AuthenticationError, HubUnreachableError, ProductOfflineError
from ingest.sources import ProductQuarantinedError, RetryPolicy, fetch_many, make_source
from ingest.sources.cdse import CdseSource, build_filter
from ingest.testing import FakeCDSE, free_port, make_tiny_product, tiny_names

UTC = timezone.utc
AUG = (datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 9, 1, tzinfo=UTC))


@pytest.fixture()
def products(tmp_path) -> Path:
    d = tmp_path / "hub"
    for i, name in enumerate(tiny_names(["31UFU", "31UFT"], days=range(1, 7))):
        # a big-ish payload so drops and resumes happen mid-file; cloud cover 0..55
        make_tiny_product(d, name, cloud_cover=5.0 * i, payload=bytes(range(256)) * 1600)
    make_tiny_product(d, tiny_names(["31UFU"], days=[3], orbit=8)[0])  # another orbit
    make_tiny_product(d, tiny_names(["31UFU"], days=[3], month="202310")[0])  # outside the dates
    return d


@pytest.fixture()
def hub(products):
    with FakeCDSE(products) as h:
        yield h


def source(hub: FakeCDSE, waits: list | None = None, **kw) -> CdseSource:
    policy = RetryPolicy(attempts=4, sleep=(waits if waits is not None else []).append)
    return make_source("cdse", policy=policy, **hub.source_options(), **kw)


def test_search_filters_on_orbit_dates_tiles_cloud(hub):
    recs = source(hub).search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"], max_cloud=30)
    assert [r.tile for r in recs] == ["31UFU"] * 4  # clouds 0, 10, 20, 30
    assert all(r.relative_orbit == 51 and r.cloud_cover <= 30 for r in recs)
    assert all(r.checksum and r.checksum[0] == "MD5" for r in recs)  # BLAKE3 is skipped
    assert recs == sorted(recs, key=lambda r: r.datatake_start)
    everything = source(hub).search(51)
    assert len(everything) == 13  # the orbit-8 product is filtered by the hub


def test_filter_is_what_the_hub_parses(hub):
    f = build_filter(51, [(4, 52), (5, 52), (5, 53), (4, 52)], *AUG, ["31UFU", "T31UFT"], 40, "S2MSI2A")
    assert "relativeOrbitNumber' and att/OData.CSC.IntegerAttribute/Value eq 51" in f
    assert "OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((4 52,5 52,5 53,4 52))')" in f
    r = requests.get(f"{hub.catalogue_url}/Products", params={"$filter": f, "$top": "100"}, timeout=10)
    assert r.status_code == 200 and len(r.json()["value"]) == 9
    bad = requests.get(f"{hub.catalogue_url}/Products", params={"$filter": "tileId eq 'x'"}, timeout=10)
    assert bad.status_code == 400


def test_area_outside_tiles_finds_nothing(hub):
    assert source(hub).search(51, area=[(10, 40), (11, 40), (11, 41), (10, 40)]) == []


def test_paging_past_the_skip_cap_follows_next_link(products):
    with FakeCDSE(products, skip_cap=4) as hub:
        recs = source(hub, page_size=3).search(51, since=AUG[0], until=AUG[1])
        skips = [r.path for r in hub.requests if "/odata/v1/Products?" in r.path]
        direct = requests.get(f"{hub.catalogue_url}/Products", params={"$skip": "6", "$top": "3"}, timeout=10)
    assert len(recs) == 12 and len({r.name for r in recs}) == 12
    assert len(skips) == 4 and "skiptoken" in skips[-1]
    assert direct.status_code == 422


def test_download_redirect_resends_bearer_token(hub, tmp_path):
    rec = source(hub).search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    path = source(hub).fetch(rec, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / f"{rec.name}.zip" and path.exists()
    assert not list((tmp_path / "cache").glob("*.part"))
    served = [r for r in hub.requests if r.server == "download"]
    assert served and served[-1].headers["Authorization"].startswith("Bearer ")
    # the plain requests way loses the header across hosts and is refused
    token = served[-1].headers["Authorization"]
    naive = requests.get(f"{hub.download_url}/Products({rec.hub_id})/$value", headers={"Authorization": token},
                         timeout=10)
    assert naive.status_code == 401


def test_resume_after_dropped_connection(hub, tmp_path):
    rec = source(hub).search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    hub.faults.drop_connection(rec.name, after_bytes=300_000)
    waits: list[float] = []
    source(hub, waits).fetch(rec, tmp_path, progress=False)
    ranges = [r.headers.get("Range") for r in hub.requests if r.server == "download"]
    # requests drops the partial 64 KiB chunk it was reading when the connection broke
    assert ranges == [None, f"bytes={300_000 // 65536 * 65536}-"]
    assert len(waits) == 1


def test_server_ignoring_range_restarts_from_zero(hub, tmp_path):
    rec = source(hub).search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    hub.faults.drop_connection(rec.name, after_bytes=200_000).ignore_range(rec.name)
    path = source(hub).fetch(rec, tmp_path, progress=False)
    assert path.stat().st_size == rec.size  # not 196 608 + size
    assert [r.headers.get("Range") for r in hub.requests if r.server == "download"] == [None, "bytes=196608-"]


def test_429_retry_after_is_honoured(hub, tmp_path):
    rec = source(hub).search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    hub.faults.status(429, route="download", retry_after=7)
    waits: list[float] = []
    assert source(hub, waits).fetch(rec, tmp_path, progress=False).exists()
    assert waits == [7.0]


def test_503_on_search_is_retried(hub):
    hub.faults.status(503, route="search", times=2, retry_after=3)
    waits: list[float] = []
    assert len(source(hub, waits).search(51, since=AUG[0], until=AUG[1])) == 12
    assert waits == [3.0, 3.0]


def test_offline_product_raises_then_is_fetched_later(hub, tmp_path):
    name = tiny_names(["31UFU"], days=[2])[0]
    hub.faults.offline(name, requests=1)
    src = source(hub)
    rec = next(r for r in src.search(51, since=AUG[0], until=AUG[1]) if r.name == name)
    assert rec.online is False
    with pytest.raises(ProductOfflineError):
        src.fetch(rec, tmp_path, progress=False)
    assert hub.retrieval_requests == [name]
    assert not (tmp_path / f"{name}.zip").exists()
    assert src.fetch(rec, tmp_path, progress=False).exists()  # next run: online


def test_wrong_password_gives_a_clear_message(hub, monkeypatch):
    monkeypatch.delenv("S2INGEST_CDSE_USER", raising=False)
    opts = hub.source_options() | {"password": "wrong"}
    src = CdseSource(**opts, policy=RetryPolicy(sleep=lambda s: None))
    rec = source(hub).search(51, since=AUG[0], until=AUG[1])[0]
    with pytest.raises(AuthenticationError) as err:
        src.fetch(rec, "/nonexistent-never-written", progress=False)
    msg = str(err.value)
    assert "S2INGEST_CDSE_USER" in msg and "S2INGEST_CDSE_PASSWORD" in msg and "machine 127.0.0.1" in msg


def test_credentials_from_environment(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("S2INGEST_CDSE_USER", hub.user)
    monkeypatch.setenv("S2INGEST_CDSE_PASSWORD", hub.password)
    opts = {k: v for k, v in hub.source_options().items() if k not in ("user", "password")}
    src = make_source("cdse", **opts, policy=RetryPolicy(sleep=lambda s: None))
    rec = src.search(51, since=AUG[0], until=AUG[1])[0]
    assert src.fetch(rec, tmp_path, progress=False).exists()


def test_expired_token_is_refreshed_once(hub, tmp_path):
    src = source(hub)
    recs = src.search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])
    src.fetch(recs[0], tmp_path, progress=False)
    hub.expire_tokens()
    src.fetch(recs[1], tmp_path, progress=False)
    assert hub.token_grants == ["password", "refresh_token"]


def test_token_refreshed_before_expiry(products, tmp_path):
    now = [1000.0]
    with FakeCDSE(products, clock=lambda: now[0]) as hub:
        src = source(hub, clock=lambda: now[0])
        recs = src.search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])
        src.fetch(recs[0], tmp_path, progress=False)
        now[0] += 590  # within the safety margin of a 600 s token
        src.fetch(recs[1], tmp_path, progress=False)
        assert hub.token_grants == ["password", "refresh_token"]
        assert not [r for r in hub.requests if r.server == "download" and r.headers.get("Authorization") is None]


def test_persistent_401_is_an_authentication_error(hub, tmp_path):
    rec = source(hub).search(51, since=AUG[0], until=AUG[1])[0]
    hub.faults.status(401, route="download", times=5)
    with pytest.raises(AuthenticationError, match="S2INGEST_CDSE_PASSWORD"):
        source(hub).fetch(rec, tmp_path, progress=False)


def test_hub_down_is_unreachable(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    waits: list[float] = []
    src = CdseSource(f"{base}/odata/v1", f"{base}/token", f"{base}/odata/v1", "u", "p",
                     policy=RetryPolicy(attempts=3, sleep=waits.append))
    with pytest.raises(HubUnreachableError, match="did not answer after 3 attempts"):
        src.search(51)
    assert len(waits) == 2 and waits[1] > waits[0] * 1.0 / 3  # backoff grows (with jitter)


def test_hub_stopped_mid_run(hub, tmp_path):
    src = source(hub)
    rec = src.search(51, since=AUG[0], until=AUG[1])[0]
    hub.stop()
    with pytest.raises(HubUnreachableError):
        src.fetch(rec, tmp_path, progress=False)


def test_wrong_hub_checksum_ends_in_quarantine(hub, tmp_path):
    src = source(hub)
    rec = src.search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    hub.faults.wrong_checksum(rec.name)
    with pytest.raises(ProductQuarantinedError) as err:
        src.fetch(rec, tmp_path, progress=False)
    q = tmp_path / "quarantine"
    assert err.value.path == q / f"{rec.name}.zip" and err.value.path.exists()
    assert "verification failed 3 times" in (q / f"{rec.name}.reason.txt").read_text()
    assert not (tmp_path / f"{rec.name}.zip").exists() and not list(tmp_path.glob("*.part"))
    assert len([r for r in hub.requests if r.server == "download"]) == 3


def test_missing_hub_checksum_still_verifies_manifest(hub, tmp_path):
    src = source(hub)
    hub.faults.missing_checksum()
    rec = src.search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[0]
    assert rec.checksum is None
    assert src.fetch(rec, tmp_path, progress=False).exists()


def test_product_bad_at_the_hub_is_quarantined_at_once(tmp_path):
    d = tmp_path / "hub"
    bad = make_tiny_product(d, tiny_names(["31UFU"])[0], corrupt_member=True)
    with FakeCDSE(d) as hub:
        src = source(hub)
        rec = src.search(51)[0]
        with pytest.raises(ProductQuarantinedError, match="hub's own copy is bad"):
            src.fetch(rec, tmp_path / "cache", progress=False)
        assert len([r for r in hub.requests if r.server == "download"]) == 1
    assert (tmp_path / "cache" / "quarantine" / bad.name).exists()


def test_fetch_many_reports_each_product(hub, tmp_path):
    src = source(hub)
    recs = src.search(51, since=AUG[0], until=AUG[1], tiles=["31UFU"])[:4]
    hub.faults.offline(recs[1].name).wrong_checksum(recs[2].name)
    outcomes = fetch_many(src, recs, tmp_path, max_workers=2, progress=False)
    assert [o.status for o in outcomes] == ["fetched", "offline", "quarantined", "fetched"]
    assert [o.record for o in outcomes] == recs
    assert outcomes[0].path.exists() and outcomes[2].path.parent.name == "quarantine"


def test_deleted_products(hub):
    src = source(hub)
    name = tiny_names(["31UFT"], days=[4])[0]
    hub.delete_product(name, cause="Obsolete", when=datetime(2024, 5, 1, tzinfo=UTC))
    gone = src.deleted_products(datetime(2024, 1, 1, tzinfo=UTC))
    assert [(d.name, d.cause) for d in gone] == [(name, "Obsolete")]
    assert src.deleted_products(datetime(2024, 6, 1, tzinfo=UTC)) == []
    assert name not in {r.name for r in src.search(51)}
