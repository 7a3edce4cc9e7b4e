"""The fake DHuS itself: query parsing, auth, errors, Range."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import requests

from ingest.testing import FakeDHuS, make_tiny_product, tiny_names
from ingest.testing.fakehub.common import ProductStore
from ingest.testing.fakehub.dhus import QueryError, compile_query


@pytest.fixture()
def store(tmp_path):
    for name in tiny_names(["31UFU", "31UES"], days=[1, 2]):
        make_tiny_product(tmp_path, name, cloud_cover=30)
    return ProductStore(tmp_path)


@pytest.mark.parametrize("q, n", [
    ('platformname:"Sentinel-2" producttype:"S2MSI2A" relativeorbitnumber:51', 4),
    ('beginPosition:["2023-08-02T00:00:00Z" TO *]', 2),
    ('cloudcoverpercentage:["0" TO "20"]', 0),
    ('(filename:S2*_T31UFU_* OR filename:S2*_T31UES_*) relativeorbitnumber:8', 0),
    ('filename:S2*_T31UFU_* footprint:"Intersects(POLYGON((4.6 52.4,5 52.4,5 52.8,4.6 52.4)))"', 2),
    ('footprint:"Intersects(POLYGON((10 40,11 40,11 41,10 40)))"', 0),
])
def test_queries(store, q, n):
    pred = compile_query(q)
    assert sum(pred(p) for p in store.all()) == n


def test_unknown_field():
    with pytest.raises(QueryError, match="undefined field"):
        compile_query("nosuch:1")


def test_http_behaviour(store):
    with FakeDHuS(store) as hub:
        assert requests.get(f"{hub.url}search?q=*", timeout=5).status_code == 401
        r = requests.get(f"{hub.url}search?q=*", timeout=5)
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        auth = ("user", "password")
        r = requests.get(f"{hub.url}odata/v1/Products('x')?$format=json", auth=auth, timeout=5)
        assert r.status_code == 404 and "InvalidKeyException" in r.headers["cause-message"]
        pid = hub.uuid_of(tiny_names(["31UFU"], days=[1])[0])
        head = requests.head(f"{hub.url}odata/v1/Products('{pid}')/$value", auth=auth, timeout=5)
        assert head.headers["Content-Disposition"].endswith('.zip"') and head.headers["Accept-Ranges"] == "bytes"
        size = int(head.headers["Content-Length"])
        part = requests.get(f"{hub.url}odata/v1/Products('{pid}')/$value", auth=auth,
                            headers={"Range": f"bytes={size - 10}-"}, timeout=5)
        assert part.status_code == 206 and len(part.content) == 10
        past = requests.get(f"{hub.url}odata/v1/Products('{pid}')/$value", auth=auth,
                            headers={"Range": f"bytes={size}-"}, timeout=5)
        assert past.status_code == 416
        stub = requests.get(f"{hub.url}api/stub/version", auth=auth, timeout=5).json()
        assert "value" in stub
    assert datetime.now(timezone.utc)  # server stopped cleanly
