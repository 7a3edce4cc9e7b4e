"""LocalSource: a directory of zips and .SAFE folders."""
from __future__ import annotations

import zipfile
from datetime import datetime, timezone

import pytest

from ingest.errors import CorruptProductError
from ingest.sources import make_source
from ingest.testing import make_tiny_product, tiny_names

UTC = timezone.utc


@pytest.fixture()
def archive(tmp_path):
    d = tmp_path / "archive"
    names = tiny_names(["31UFU", "31UFT"], days=[1, 2, 3])
    for i, name in enumerate(names):
        make_tiny_product(d, name, cloud_cover=20.0 * i)
    folder = make_tiny_product(tmp_path, tiny_names(["31UGU"], days=[2])[0])
    with zipfile.ZipFile(folder) as zf:
        zf.extractall(d)
    make_tiny_product(d, tiny_names(["31UFU"], days=[2], orbit=8)[0])
    (d / "notes.zip").write_bytes(b"not a product")
    return d


def test_search_by_name(archive):
    src = make_source("local", directory=archive)
    recs = src.search(51, since=datetime(2023, 8, 2, tzinfo=UTC), until=datetime(2023, 8, 3, tzinfo=UTC))
    assert sorted(r.tile for r in recs) == ["31UFT", "31UFU", "31UGU"]
    assert {r.relative_orbit for r in recs} == {51}
    assert [r.tile for r in src.search(51, tiles=["T31UFU"], max_cloud=50)] == ["31UFU", "31UFU"]  # 0, 40


def test_fetch_returns_the_product_in_place(archive, tmp_path):
    src = make_source("local", directory=archive)
    for rec in src.search(51):
        assert src.fetch(rec, tmp_path / "cache") == archive / rec.hub_id.split("/")[-1]
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_corrupt_local_product_is_permanent_error(tmp_path):
    make_tiny_product(tmp_path, tiny_names()[0], corrupt_member=True)
    src = make_source("local", directory=tmp_path)
    rec = src.search(51)[0]
    with pytest.raises(CorruptProductError):
        src.fetch(rec, tmp_path)
    assert (tmp_path / f"{rec.name}.zip").exists()  # the user's file is left alone


def test_unknown_hub():
    with pytest.raises(ValueError, match="unknown hub"):
        make_source("scihub")
