"""The fake CDSE itself: filter parser, paging rules, token and download-server auth."""
from __future__ import annotations

import pytest
import requests

from ingest.testing import FakeCDSE, make_tiny_product, tiny_names
from ingest.testing.fakehub.cdse import FilterError, compile_filter

ITEM = {
    "Name": "S2B_MSIL2A_20230801T105619_N0509_R051_T31UFU_20230801T124759.SAFE", "Online": True,
    "_collection": "SENTINEL-2", "_bbox": (4.4, 52.2, 6.1, 53.2),
    "_attributes": {"relativeOrbitNumber": ("Integer", 51), "tileId": ("String", "31UFU"),
                    "cloudCover": ("Double", 12.5)},
    "_dates": {},
}


@pytest.mark.parametrize("text, expected", [
    ("Collection/Name eq 'SENTINEL-2'", True),
    ("contains(Name,'MSIL2A') and Collection/Name eq 'SENTINEL-1'", False),
    ("Attributes/OData.CSC.IntegerAttribute/any(att:att/Name eq 'relativeOrbitNumber' and "
     "att/OData.CSC.IntegerAttribute/Value eq 51)", True),
    ("Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' and "
     "att/OData.CSC.DoubleAttribute/Value le 10.00)", False),
    ("(Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'tileId' and att/OData.CSC.StringAttribute/Value eq "
     "'31UFT') or Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'tileId' and "
     "att/OData.CSC.StringAttribute/Value eq '31UFU'))", True),
    ("OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((5 52.5,5.1 52.5,5.1 52.6,5 52.5))')", True),
    ("OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((10 40,11 40,11 41,10 40))')", False),
    # the wrong attribute type never matches (as on the real hub)
    ("Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'relativeOrbitNumber' and "
     "att/OData.CSC.StringAttribute/Value eq '51')", False),
])
def test_filter_forms(text, expected):
    assert compile_filter(text)(ITEM) is expected


@pytest.mark.parametrize("text", ["tileId eq '31UFU'", "Collection/Name eq 'X' and", "(Online eq true"])
def test_bad_filters_are_rejected(text):
    with pytest.raises(FilterError):
        compile_filter(text)


@pytest.fixture()
def hub(tmp_path):
    for name in tiny_names(["31UFU"], days=range(1, 8)):
        make_tiny_product(tmp_path, name)
    with FakeCDSE(tmp_path, skip_cap=3, max_top=5) as h:
        yield h


def test_paging_rules(hub):
    url = f"{hub.catalogue_url}/Products"
    assert requests.get(url, params={"$top": "6"}, timeout=5).status_code == 400
    assert requests.get(url, params={"$skip": "4"}, timeout=5).status_code == 422
    body = requests.get(url, params={"$top": "2", "$count": "True"}, timeout=5).json()
    assert body["@odata.count"] == 7 and len(body["value"]) == 2 and "Attributes" not in body["value"][0]
    names = [v["Name"] for v in body["value"]]
    while "@odata.nextLink" in body:
        body = requests.get(body["@odata.nextLink"], timeout=5).json()
        names += [v["Name"] for v in body["value"]]
    assert len(set(names)) == 7 and names == sorted(names)


def test_token_and_download_auth(hub):
    bad = requests.post(hub.token_url, data={"client_id": "cdse-public", "grant_type": "password",
                                             "username": "user", "password": "x"}, timeout=5)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_grant"
    tok = requests.post(hub.token_url, data={"client_id": "cdse-public", "grant_type": "password",
                                             "username": "user", "password": "password"}, timeout=5).json()
    pid = hub.uuid_of(tiny_names(["31UFU"], days=[1])[0])
    first = requests.get(f"{hub.download_url}/Products({pid})/$value", allow_redirects=False,
                         headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=5)
    assert first.status_code == 307
    target = first.headers["Location"]
    assert str(hub.download.port) in target
    assert requests.get(target, timeout=5).status_code == 401
    ok = requests.get(target, headers={"Authorization": f"Bearer {tok['access_token']}", "Range": "bytes=10-"},
                      timeout=5)
    assert ok.status_code == 206 and ok.headers["Content-Range"].startswith("bytes 10-")
