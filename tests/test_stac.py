"""The STAC Collection of the cube (``stac/collection.json``, ``ingest.store.stac``) and the GeoZarr
conventions of its groups (``ingest.store.geozarr``), issue 21.

The Collection is validated by pystac's validator (jsonschema) against the core STAC schemas
pystac ships and the extension schemas kept in tests/data/stac-extensions, with every network
read refused; the conventions by zarr-cm (the zarr-conventions reference implementation) where
it installs. xdggs, odc-stac and xpystac are used when they install.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import xarray as xr

from conftest import D1, GROUP, build_cube

from ingest.publish.commits import publish_overviews, publish_quality
from ingest.store import CubeStore
from ingest.store.stac import COLLECTION_KEY, EXTENSIONS, ZARR_MEDIA_TYPE

SCHEMAS = Path(__file__).parent / "data" / "stac-extensions"


@pytest.fixture(scope="module")
def cube(tmp_path_factory, products) -> Path:
    """One datatake (two tiles), its overview levels and its quality atlas: three commits."""
    store = tmp_path_factory.mktemp("stac") / "cube.zarr"
    build_cube(store, [products.scene[(D1, "31UET")], products.scene[(D1, "31UFT")]], products)
    publish_overviews(store)
    publish_quality(store, GROUP)
    return store


def collection(store: Path) -> dict:
    return json.loads((store / COLLECTION_KEY).read_text())


@pytest.fixture
def offline_validator(monkeypatch):
    """pystac's JSON-schema validator fed the local schemas; any read of a URL fails the test."""
    import pystac
    import pystac.validation
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    def local_only(self, href, *args, **kwargs):
        if "://" in str(href):
            raise AssertionError(f"tried to fetch {href}")
        return Path(href).read_text(encoding="utf-8")

    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", local_only)
    validator = JsonSchemaSTACValidator()
    for path in SCHEMAS.glob("*.json"):
        doc = json.loads(path.read_text())
        validator.schema_cache[doc["$id"]] = doc
    assert set(EXTENSIONS.values()) <= set(validator.schema_cache)
    pystac.validation.set_validator(validator)
    yield validator
    pystac.validation.set_validator(JsonSchemaSTACValidator())


def test_every_commit_writes_the_collection_of_its_version(cube):
    store = CubeStore.open(cube)
    doc = collection(cube)
    version = store.version()
    assert doc["s2ingest:store_version"] == version
    manifest = store.manifest(version)
    raw = (cube / COLLECTION_KEY).read_bytes()
    entry = manifest["keys"][COLLECTION_KEY]
    assert (entry["size"], entry["sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    links = {ln["href"] for ln in doc["links"] if ln["rel"] == "describedby"}
    manifest_href = f"../.s2ingest/roots/v{version:08d}.json"
    assert manifest_href in links and (cube / "stac" / manifest_href).resolve().is_file()


def test_the_collection_validates_offline(cube, offline_validator):
    import pystac
    import pystac.validation

    doc = collection(cube)
    assert sorted(doc["stac_extensions"]) == sorted(EXTENSIONS.values())
    validated = pystac.validation.validate_dict(doc)
    assert set(EXTENSIONS.values()) <= set(validated)
    coll = pystac.Collection.from_file(str(cube / COLLECTION_KEY))  # reads the local file only
    assert coll.validate() and coll.get_root() is coll
    broken = json.loads(json.dumps(doc))
    broken["assets"][GROUP]["proj:shape"] = [1, 2, 3]
    with pytest.raises(pystac.errors.STACValidationError):
        pystac.validation.validate_dict(broken)


def test_the_datacube_fields_match_the_cube(cube):
    doc = collection(cube)
    ds = xr.open_zarr(cube, group=GROUP, consolidated=True)
    dims = doc["cube:dimensions"]
    assert set(dims) == set(ds.sizes) == {"time", "y", "x"}
    assert set(doc["cube:variables"]) == set(ds.data_vars)
    for name, var in doc["cube:variables"].items():
        assert tuple(var["dimensions"]) == ds[name].dims
    times = [t.astype("datetime64[ms]").item().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" for t in ds.time.values]
    assert dims["time"]["values"] == times and dims["time"]["extent"] == [times[0], times[-1]]
    assert dims["x"]["extent"] == [float(ds.x[0]), float(ds.x[-1])]
    assert dims["y"]["extent"] == [float(ds.y[-1]), float(ds.y[0])]
    assert doc["extent"]["temporal"]["interval"][0][0].startswith(times[0][:19])
    west, south, east, north = doc["extent"]["spatial"]["bbox"][0]
    assert 3.0 < west < east < 7.7 and 50.5 < south < north < 54.0  # the Netherlands (RD grid)


def test_one_zarr_asset_per_group_with_projection_and_bands(cube):
    doc = collection(cube)
    store = CubeStore.open(cube)
    assets = doc["assets"]
    levels = [k for k in assets if k.startswith(f"{GROUP}/overviews/")]
    assert GROUP in assets and f"{GROUP}/quality" in assets and levels
    for key, asset in assets.items():
        assert asset["type"] == ZARR_MEDIA_TYPE and asset["href"] == f"../{key}"
        assert (cube / key / ".zgroup").is_file() and (cube / key / ".zmetadata").is_file()
        assert asset["zarr:node_type"] == "group" and asset["zarr:zarr_format"] == 2 and asset["zarr:consolidated"]
    native = assets[GROUP]
    grid = store.grid
    assert native["proj:code"] == grid.crs and native["proj:shape"] == list(grid.shape)
    assert native["proj:transform"] == list(grid.transform)[:6]
    for key in levels:
        f = int(key.rsplit("/", 1)[1])
        assert assets[key]["proj:transform"][0] == grid.resolution * f
    bands = {b["name"]: b for b in native["bands"]}
    ds = xr.open_zarr(cube, group=GROUP, consolidated=True, mask_and_scale=False)
    assert list(bands) == list(doc["cube:variables"])
    assert bands["B04"]["raster:scale"] == ds["B04"].attrs["scale_factor"] and bands["B04"]["nodata"] == 0
    assert bands["B04"]["eo:center_wavelength"] == pytest.approx(0.6646) and bands["B04"]["eo:common_name"] == "red"
    assert bands["SCL"]["data_type"] == "uint8" and "eo:center_wavelength" not in bands["SCL"]


def test_serve_serves_the_collection_and_the_groups_it_names(cube):
    from fastapi.testclient import TestClient

    from ingest.serve.app import create_app

    client = TestClient(create_app(str(cube)))
    r = client.get("/stac/collection.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["links"][0] == {"rel": "self", "href": "http://testserver/stac/collection.json",
                               "type": "application/json"}
    href = doc["assets"][GROUP]["href"]
    assert href == f"http://testserver/store/{GROUP}"
    zmeta = client.get(href.removeprefix("http://testserver") + "/.zmetadata")
    assert zmeta.status_code == 200 and "B04/.zarray" in zmeta.json()["metadata"]
    assert client.get("/store/stac/collection.json").content == (cube / COLLECTION_KEY).read_bytes()
    for bad in ("/store/.s2ingest/lock", "/store/nothing/here", "/store/..%2Fx"):
        assert client.get(bad).status_code == 404, bad


# -- GeoZarr conventions ---------------------------------------------------------------------
def _attrs(cube: Path, path: str) -> dict:
    return json.loads((cube / path / ".zattrs").read_text())


def test_imagery_group_and_levels_carry_proj_spatial_and_multiscales(cube):
    store = CubeStore.open(cube)
    grid = store.grid
    a = _attrs(cube, GROUP)
    assert a["Conventions"] == "CF-1.8"  # CF stays
    names = {c["name"] for c in a["zarr_conventions"]}
    assert {"multiscales", "proj", "spatial"} <= names
    assert a["proj:code"] == grid.crs and a["spatial:dimensions"] == ["y", "x"]
    assert a["spatial:transform"] == list(grid.transform)[:6] and a["spatial:shape"] == list(grid.shape)
    layout = a["multiscales"]["layout"]
    assert [e["asset"] for e in layout][:2] == ["overviews/2", "overviews/4"]
    assert layout[1]["derived_from"] == "overviews/2" and layout[1]["transform"]["scale"] == [2.0, 2.0]
    for entry in layout:
        f = int(entry["asset"].rsplit("/", 1)[1])
        level = _attrs(cube, f"{GROUP}/{entry['asset']}")
        assert level["spatial:transform"] == entry["spatial:transform"] == [grid.resolution * f, 0.0, grid.bounds[0],
                                                                           0.0, -grid.resolution * f, grid.bounds[3]]
        assert level["proj:code"] == grid.crs and {"proj", "spatial"} <= {c["name"] for c in level["zarr_conventions"]}
    ov = _attrs(cube, f"{GROUP}/overviews")
    assert [e["asset"] for e in ov["multiscales"]["layout"]] == [e["asset"].split("/")[1] for e in layout]


def test_conventions_validate_with_zarr_cm(cube):
    zarr_cm = pytest.importorskip("zarr_cm")
    from zarr_cm import multiscales, proj, spatial

    for path in (GROUP, f"{GROUP}/overviews", f"{GROUP}/overviews/2"):
        doc = {"zarr_format": 3, "node_type": "group", "attributes": _attrs(cube, path)}
        for conv in (proj, spatial):
            conv.validate_group_metadata(doc)
        if "multiscales" in doc["attributes"]:
            multiscales.validate_group_metadata(doc)
    assert zarr_cm is not None


def test_quality_atlas_has_a_dggs_description(cube):
    a = _attrs(cube, f"{GROUP}/quality")
    assert a["dggs"] == {"name": "h3", "refinement_level": a["h3_resolution"], "spatial_dimension": "cell",
                         "coordinate": "cell", "compression": "none"}
    assert "dggs" in {c["name"] for c in a["zarr_conventions"]}


def test_xdggs_indexes_the_quality_atlas(cube):
    xdggs = pytest.importorskip("xdggs")
    ds = xr.open_zarr(cube, group=f"{GROUP}/quality", consolidated=True)
    decoded = xdggs.decode(ds, convention="zarr", name="cell")  # the "dggs" convention of the group
    assert decoded.dggs.grid_info.level == ds.attrs["h3_resolution"]
    assert decoded.dggs.coord.name == "cell"
    centers = decoded.dggs.cell_centers()  # H3 cell centres, as the atlas' own lat/lon say
    assert abs(centers["latitude"].values - ds["lat"].values).max() < 1e-6


def test_gdal_and_rioxarray_still_read_the_cube(cube):
    import rasterio
    import rioxarray  # noqa: F401

    ds = xr.open_zarr(cube, group=GROUP, consolidated=True)
    assert ds["B04"].rio.crs.to_epsg() == 28992
    with rasterio.open(f'ZARR:"{cube}":/{GROUP}/B04') as src:
        assert src.crs.to_epsg() == 28992 and src.transform.a == 10.0


@pytest.mark.slow
def test_xpystac_or_odc_stac_open_the_cube_from_the_collection(cube):
    import pystac

    coll = pystac.Collection.from_file(str(cube / COLLECTION_KEY))
    asset = coll.assets[GROUP]
    asset.href = asset.get_absolute_href()  # relative to the Collection: ../S2/R051
    try:
        import xpystac  # noqa: F401
    except ImportError:
        pytest.skip("xpystac does not install here")
    ds = xr.open_dataset(asset, chunks={})
    assert set(coll.extra_fields["cube:variables"]) <= set(ds.data_vars)
