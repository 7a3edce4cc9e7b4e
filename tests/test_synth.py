"""The synthetic-product kit: structure per baseline, checksums, JP2 georeferencing, GDAL, content."""
from __future__ import annotations

import hashlib
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from defusedxml import ElementTree as DET

from ingest.errors import ConfigError
from ingest.synth import (
    absolute_orbit_for,
    coords_value,
    decode_coords,
    get_tile,
    image_variables,
    make_product,
    make_twins,
    product_name,
    relative_orbit_of,
    render,
    swath_edge_across,
)
from ingest.synth.scene import SceneParams

START = datetime(2023, 7, 14, 10, 56, 19)
WIN = (3000, 3000, 600, 600)
SMALL = (3000, 3000, 120, 120)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root, name: str):
    return [e for e in root.iter() if _local(e.tag) == name]


def _text(root, name: str) -> str:
    return _find_all(root, name)[0].text


def _granule(safe: Path) -> Path:
    return next((safe / "GRANULE").iterdir())


@pytest.fixture(scope="module")
def product(tmp_path_factory) -> Path:
    return make_product(tmp_path_factory.mktemp("p"), datatake_start=START, window=WIN, cloudiness=0.3)


# -- names and layout -------------------------------------------------------------------------
def test_product_name_and_ids(product):
    name = product_name(datatake_start=START, generation_time=datetime(2023, 7, 14, 13, 48, 19))
    assert name == "S2A_MSIL2A_20230714T105619_N0509_R051_T31UFU_20230714T134819"
    assert product.name == name + ".SAFE"
    root = DET.parse(product / "MTD_MSIL2A.xml").getroot()
    absorbit = absolute_orbit_for("S2A", START, 51)
    assert _find_all(root, "Datatake")[0].get("datatakeIdentifier") == f"GS2A_20230714T105619_{absorbit:06d}_N05.09"
    assert _granule(product).name == f"L2A_T31UFU_A{absorbit:06d}_20230714T105613"
    assert (product / "DATASTRIP" / "DS_2APS_20230714T134819_S20230714T105613" / "QI_DATA").is_dir()
    for f in ("manifest.safe", "INSPIRE.xml", "HTML", "rep_info", "MTD_MSIL2A.xml"):
        assert (product / f).exists()
    for d in ("IMG_DATA/R10m", "IMG_DATA/R20m", "IMG_DATA/R60m", "QI_DATA", "AUX_DATA"):
        assert (_granule(product) / d).is_dir()


def test_absolute_orbit_matches_real_products():
    # real: S2B R122 abs 33753 (2023-08-23), S2A R029 abs 42640 (2023-08-21), S2A R013 abs 19029
    assert absolute_orbit_for("S2B", datetime(2023, 8, 23, 9, 55, 59), 122) == 33753
    assert absolute_orbit_for("S2A", datetime(2023, 8, 21, 22, 19, 41), 29) == 42640
    assert absolute_orbit_for("S2A", datetime(2019, 2, 12, 19, 26, 51), 13) == 19029
    a = absolute_orbit_for("S2A", START, 51)
    assert relative_orbit_of("S2A", a) == 51


@pytest.mark.parametrize("baseline", ["02.12", "02.14", "04.00", "05.09", "05.11"])
def test_layout_per_baseline(tmp_path, baseline):
    safe = make_product(tmp_path, datatake_start=START, baseline=baseline, window=SMALL)
    root = DET.parse(safe / "MTD_MSIL2A.xml").getroot()
    files = [e.text for e in _find_all(root, "IMAGE_FILE")]
    assert len(files) == (36 if baseline >= "04.00" else 35)
    assert all(not f.endswith(".jp2") and (safe / (f + ".jp2")).is_file() for f in files)
    by_res = {r: sorted(f.rsplit("_", 2)[1] for f in files if f.endswith(f"_{r}m")) for r in (10, 20, 60)}
    assert by_res[10] == sorted(["B02", "B03", "B04", "B08", "AOT", "WVP", "TCI"])
    b20 = ["B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "AOT", "WVP", "SCL", "TCI"]
    assert by_res[20] == sorted(b20 + (["B01"] if baseline >= "04.00" else []))
    assert by_res[60] == sorted(["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12",
                                 "AOT", "WVP", "SCL", "TCI"])
    assert _text(root, "PROCESSING_BASELINE") == baseline
    offsets = _find_all(root, "BOA_ADD_OFFSET")
    assert (len(offsets) == 13 and {o.text for o in offsets} == {"-1000"}) if baseline >= "04.00" else not offsets
    assert {e.text for e in _find_all(root, "SPECIAL_VALUE_INDEX")} == {"0", "65535"}
    assert _text(root, "BOA_QUANTIFICATION_VALUE") == "10000"
    psd = "psd-15" if baseline >= "05.11" else "psd-14"
    assert psd in root.tag
    qi = _granule(safe) / "QI_DATA"
    for f in ("MSK_CLDPRB_20m.jp2", "MSK_CLDPRB_60m.jp2", "MSK_SNWPRB_20m.jp2", "MSK_SNWPRB_60m.jp2"):
        with rasterio.open(qi / f) as ds:
            assert ds.dtypes[0] == "uint8"
    if baseline >= "04.00":
        assert (qi / "MSK_CLASSI_B00.jp2").is_file() and (qi / "MSK_QUALIT_B8A.jp2").is_file()
        assert not list(qi.glob("*.gml"))
    else:
        assert (qi / "MSK_CLOUDS_B00.gml").is_file() and (qi / "MSK_TECQUA_B12.gml").is_file()
        assert not (qi / "MSK_CLASSI_B00.jp2").exists()
    assert list(qi.glob("T31UFU_*_PVI.jp2"))
    tl = DET.parse(_granule(safe) / "MTD_TL.xml").getroot()
    for e in _find_all(tl, "MASK_FILENAME") + _find_all(tl, "PVI_FILENAME"):
        assert (safe / e.text).is_file(), e.text
    assert not list(safe.rglob("*.aux.xml"))


def test_image_variables_table():
    assert "B01" not in image_variables("02.14", 20) and "B01" in image_variables("04.00", 20)
    assert "SCL" not in image_variables("05.09", 10)


def test_mtd_fields(product):
    root = DET.parse(product / "MTD_MSIL2A.xml").getroot()
    assert _text(root, "SENSING_ORBIT_NUMBER") == "51"
    assert _text(root, "PRODUCT_TYPE") == "S2MSI2A"
    ids = {e.get("bandId"): e.get("physicalBand") for e in _find_all(root, "Spectral_Information")}
    assert ids["0"] == "B1" and ids["8"] == "B8A" and ids["12"] == "B12"
    assert len(_find_all(root, "Scene_Classification_ID")) == 12
    # cloud cover computed from the SCL written
    scl = _read(next(product.rglob("*_SCL_20m.jp2")))
    valid = scl > 0
    cloudy = np.isin(scl, (8, 9, 10)).sum() / valid.sum() * 100
    assert float(_text(root, "Cloud_Coverage_Assessment")) == pytest.approx(cloudy, abs=1e-4)
    assert float(_text(root, "HIGH_PROBA_CLOUDS_PERCENTAGE")) == pytest.approx((scl == 9).sum() / valid.sum() * 100, abs=1e-4)
    ring = [float(v) for v in _text(root, "EXT_POS_LIST").split()]
    lats, lons = ring[0::2], ring[1::2]
    assert (lats[0], lons[0]) == (lats[-1], lons[-1])
    assert all(52 < la < 54 for la in lats) and all(4 < lo < 7 for lo in lons)
    tl = DET.parse(_granule(product) / "MTD_TL.xml").getroot()
    assert _text(tl, "HORIZONTAL_CS_CODE") == "EPSG:32631"
    zen = _find_all(_find_all(tl, "Sun_Angles_Grid")[0], "Zenith")[0]
    rows = [r.text.split() for r in _find_all(zen, "VALUES")]
    assert len(rows) == 23 and all(len(r) == 23 for r in rows)
    assert 25 < float(_text(tl, "ZENITH_ANGLE")) < 40  # July, 52 N, 11 UTC


# -- manifest ---------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline,algo", [("02.14", "MD5"), ("05.09", "SHA3-256")])
def test_manifest_checksums(tmp_path, baseline, algo):
    safe = make_product(tmp_path, datatake_start=START, baseline=baseline, window=SMALL)
    root = DET.parse(safe / "manifest.safe").getroot()
    assert root.get("version") == "esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product"
    listed = set()
    for bs in _find_all(root, "byteStream"):
        href = _find_all(bs, "fileLocation")[0].get("href")
        cs = _find_all(bs, "checksum")[0]
        path = safe / href.removeprefix("./")
        data = path.read_bytes()
        assert int(bs.get("size")) == len(data)
        assert cs.get("checksumName") == algo
        h = hashlib.sha3_256(data) if algo == "SHA3-256" else hashlib.md5(data)
        assert cs.text == h.hexdigest()
        listed.add(href.removeprefix("./"))
    on_disk = {p.relative_to(safe).as_posix() for p in safe.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.safe"} | {p for p in on_disk if p.startswith("rep_info/")}
    assert any(e.get("ID") == "IMG_DATA_Band_B02_10m_Tile1_Data" for e in _find_all(root, "dataObject"))
    assert _text(root, "relativeOrbitNumber") == "051"


# -- rasters ----------------------------------------------------------------------------------
def _read(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(band)


def test_jp2_lossless_and_georeferenced(product):
    p = SceneParams(get_tile("31UFU"), START, cloudiness=0.3)
    expected = render(p, 10, WIN, ["B02", "TCI"])
    b02 = next(product.rglob("*_B02_10m.jp2"))
    with rasterio.open(b02) as ds:
        assert ds.driver == "JP2OpenJPEG" and ds.dtypes[0] == "uint16"
        assert ds.crs.to_epsg() == 32631
        assert ds.transform.a == 10 and ds.transform.e == -10
        data = ds.read(1)
    np.testing.assert_array_equal(data, np.where(expected["B02"] > 0, expected["B02"] + 1000, 0))
    with rasterio.open(next(product.rglob("*_TCI_10m.jp2"))) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8"
        np.testing.assert_array_equal(ds.read(), expected["TCI"])


def test_windowed_geocoding_consistent(product):
    """MTD_TL Size/Geoposition describe the rasters written, at every resolution."""
    tl = DET.parse(_granule(product) / "MTD_TL.xml").getroot()
    tile = get_tile("31UFU")
    for res in (10, 20, 60):
        size = [e for e in _find_all(tl, "Size") if e.get("resolution") == str(res)][0]
        geo = [e for e in _find_all(tl, "Geoposition") if e.get("resolution") == str(res)][0]
        ulx, uly = float(_text(geo, "ULX")), float(_text(geo, "ULY"))
        assert (ulx, uly) == (tile.ulx + WIN[1] * 10, tile.uly - WIN[0] * 10)
        for f in product.rglob(f"*_B02_{res}m.jp2"):
            with rasterio.open(f) as ds:
                assert (ds.height, ds.width) == (int(_text(size, "NROWS")), int(_text(size, "NCOLS")))
                assert (ds.transform.c, ds.transform.f, ds.transform.a) == (ulx, uly, res)


def test_window_must_be_multiple_of_6(tmp_path):
    with pytest.raises(ConfigError):
        make_product(tmp_path, datatake_start=START, window=(3000, 3000, 100, 600))
    with pytest.raises(ConfigError):
        make_product(tmp_path, datatake_start=START, window=(10980, 0, 6, 6))


# -- GDAL's SENTINEL2 driver ------------------------------------------------------------------
def _gdal_check(mtd: str, b04_path: str) -> None:
    with rasterio.open(mtd) as ds:
        assert ds.driver == "SENTINEL2"
        sds = ds.subdatasets
    kinds = [s.split(":")[-2] for s in sds]
    assert {"10m", "20m", "60m"} <= set(kinds)
    with rasterio.open(sds[kinds.index("10m")]) as s10:
        assert s10.descriptions[0].startswith("B4")
        assert s10.crs.to_epsg() == 32631
        with rasterio.open(b04_path) as j:
            np.testing.assert_array_equal(s10.read(1), j.read(1))
            assert s10.transform == j.transform
    with rasterio.open(sds[kinds.index("20m")]) as s20:
        desc = [d.split(",")[0] for d in s20.descriptions]
        assert {"SCL", "CLD", "SNW"} <= set(desc)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gdal_sentinel2_driver_folder(product):
    _gdal_check(str(product / "MTD_MSIL2A.xml"), str(next(product.rglob("*_B04_10m.jp2"))))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gdal_sentinel2_driver_zip(tmp_path):
    z = make_product(tmp_path, datatake_start=START, baseline="02.14", window=SMALL, as_zip=True)
    assert z.suffix == ".zip" and [p.name for p in tmp_path.iterdir()] == [z.name]
    with zipfile.ZipFile(z) as zf:
        roots = {n.split("/")[0] for n in zf.namelist()}
        b04 = next(n for n in zf.namelist() if n.endswith("_B04_10m.jp2"))
    assert roots == {z.stem + ".SAFE"}
    _gdal_check(f"/vsizip/{z}/{z.stem}.SAFE/MTD_MSIL2A.xml", f"/vsizip/{z}/{b04}")


# -- content ----------------------------------------------------------------------------------
def test_deterministic(tmp_path):
    a = make_product(tmp_path / "a", datatake_start=START, window=SMALL)
    b = make_product(tmp_path / "b", datatake_start=START, window=SMALL)
    for fa in a.rglob("*.jp2"):
        np.testing.assert_array_equal(_read(fa), _read(b / fa.relative_to(a)))


def test_scene_is_plausible():
    p = SceneParams(get_tile("31UFU"), START, cloudiness=0.3)
    o = render(p, 60, (0, 0, 900, 900), ["SCL", "CLD", "B04", "B08"])
    scl, cld = o["SCL"], o["CLD"]
    for c in (3, 4, 5, 6, 8, 9):
        assert (scl == c).any(), c
    assert cld[scl == 9].min() >= 65 and cld[np.isin(scl, (4, 5, 6))].max() < 20
    veg = scl == 4
    ndvi = (o["B08"].astype(float) - o["B04"]) / (o["B08"].astype(float) + o["B04"])
    assert ndvi[veg].mean() > 0.5 and ndvi[scl == 6].mean() < 0
    assert 500 < np.median(o["B04"][veg]) < 1500  # reflectance*10000


def test_growing_season():
    """Crops green up in spring, peak in summer, are harvested in autumn (cloud-free NDVI)."""
    def ndvi(day: datetime) -> float:
        o = render(SceneParams(get_tile("31UFU"), day, cloudiness=0.0), 60, (600, 600, 300, 300), ["B04", "B08", "SCL"])
        m = np.isin(o["SCL"], (4, 5))
        return float(((o["B08"].astype(float) - o["B04"]) / (o["B08"].astype(float) + o["B04"]))[m].mean())
    mar, jul, nov = ndvi(datetime(2023, 3, 20, 11)), ndvi(datetime(2023, 7, 20, 11)), ndvi(datetime(2023, 11, 20, 11))
    assert jul > mar + 0.1 and jul > nov + 0.1


def test_snow_in_winter():
    o = render(SceneParams(get_tile("31UFU"), datetime(2023, 1, 20, 11), cloudiness=0.0, snow=True), 60,
               (900, 900, 900, 900), ["SCL", "SNW"])
    assert (o["SCL"] == 11).any() and o["SNW"][o["SCL"] == 11].min() >= 50


def test_overlapping_tiles_agree_same_zone():
    """31UFU and 31UGU overlap by 9.84 km: same pixels, same values (same UTM grid)."""
    a, b = get_tile("31UFU"), get_tile("31UGU")
    dc = round((b.ulx - a.ulx) / 60)  # 1666 columns at 60 m
    w = 1830 - dc
    va = render(SceneParams(a, START, cloudiness=0.3), 60, (0, dc, 1830, w), ["B04", "SCL", "CLD"])
    vb = render(SceneParams(b, START, cloudiness=0.3), 60, (0, 0, 1830, w), ["B04", "SCL", "CLD"])
    for k in ("B04", "SCL", "CLD"):
        np.testing.assert_array_equal(va[k], vb[k])


def test_overlapping_tiles_agree_across_zones():
    """31UGU and 32ULD (other UTM zone): the same landscape where they overlap (nearest pixels)."""
    from pyproj import Transformer

    a, b = get_tile("31UGU"), get_tile("32ULD")
    p = render(SceneParams(a, START, cloudiness=0.3), 60, (600, 1500, 300, 300), ["SCL"])["SCL"]
    xs = a.ulx + (1500 + np.arange(300) + 0.5) * 60
    ys = a.uly - (600 + np.arange(300) + 0.5) * 60
    xx, yy = np.meshgrid(xs, ys)
    bx, by = Transformer.from_crs(a.crs, b.crs, always_xy=True).transform(xx, yy)
    col = np.floor((bx - b.ulx) / 60).astype(int)
    row = np.floor((b.uly - by) / 60).astype(int)
    q = render(SceneParams(b, START, cloudiness=0.3), 60, (row.min(), col.min(), row.max() - row.min() + 1,
                                                          col.max() - col.min() + 1), ["SCL"])["SCL"]
    qs = q[row - row.min(), col - col.min()]
    assert (qs == p).mean() > 0.85  # nearest-pixel resampling of a 60 m class map


def test_swath_edge_nodata_and_footprint(tmp_path):
    edge = swath_edge_across("31UFU", 0.5, 0.5)  # through column 5490
    safe = make_product(tmp_path, datatake_start=START, window=(4800, 5190, 600, 600), swath_edge=edge)
    scl = _read(next(safe.rglob("*_SCL_20m.jp2")))
    b02 = _read(next(safe.rglob("*_B02_10m.jp2")))
    assert (scl == 0).any() and (scl > 0).any()
    assert b02[:, 0].min() > 0 and b02[:, -1].max() == 0  # data west of the edge, nodata east
    root = DET.parse(safe / "MTD_MSIL2A.xml").getroot()
    nodata = float(_text(root, "NODATA_PIXEL_PERCENTAGE"))
    assert nodata == pytest.approx((scl == 0).mean() * 100, abs=1e-4)
    ring = [float(v) for v in _text(root, "EXT_POS_LIST").split()]
    lons = ring[1::2]
    tile = get_tile("31UFU")
    from pyproj import Transformer
    east_lon, _ = Transformer.from_crs(tile.crs, "EPSG:4326", always_xy=True).transform(
        tile.ulx + 5790 * 10, tile.uly - 5100 * 10)
    assert max(lons) < east_lon  # the footprint stops at the swath edge, not at the window edge


def test_coords_mode_decodes(tmp_path):
    safe = make_product(tmp_path, datatake_start=START, window=SMALL, content="coords", baseline="05.09")
    tile = get_tile("31UFU")
    b02 = _read(next(safe.rglob("*_B02_10m.jp2")))  # x-encoded, raw DN (+1000)
    b03 = _read(next(safe.rglob("*_B03_10m.jp2")))  # y-encoded
    x = decode_coords("B02", b02, tile, 10, boa_add_offset=-1000)
    y = decode_coords("B03", b03, tile, 10, boa_add_offset=-1000)
    r0, c0, h, w = SMALL
    np.testing.assert_array_equal(x[0], tile.ulx + (c0 + np.arange(w) + 0.5) * 10)
    np.testing.assert_array_equal(y[:, 0], tile.uly - (r0 + np.arange(h) + 0.5) * 10)
    scl = _read(next(safe.rglob("*_SCL_60m.jp2")))
    rows, cols = np.mgrid[r0 // 6:(r0 + h) // 6, c0 // 6:(c0 + w) // 6]
    np.testing.assert_array_equal(scl, coords_value("SCL", rows, cols))
    cld = _read(next(safe.rglob("MSK_CLDPRB_20m.jp2")))
    rows, cols = np.mgrid[r0 // 2:(r0 + h) // 2, c0 // 2:(c0 + w) // 2]
    np.testing.assert_array_equal(cld, coords_value("CLD", rows, cols))
    b8a = _read(next(safe.rglob("*_B8A_20m.jp2")))
    np.testing.assert_array_equal(decode_coords("B8A", b8a[0], tile, 20, boa_add_offset=-1000),
                                  tile.ulx + (c0 // 2 + np.arange(w // 2) + 0.5) * 20)


def test_pb_twins_differ_by_1000(tmp_path):
    old, new = make_twins(tmp_path, datatake_start=START, window=SMALL, cloudiness=0.3)
    assert "_N0214_" in old.name and "_N0509_" in new.name
    for f_old in old.rglob("IMG_DATA/*/*.jp2"):
        band = f_old.name.split("_")[2]
        f_new = next(new.rglob(f"*_{band}_{f_old.name.split('_')[3]}"))
        a, b = _read(f_old).astype(int), _read(f_new).astype(int)
        assert ((a == 0) == (b == 0)).all()
        if band.startswith("B"):
            assert ((b - a)[a > 0] == 1000).all()
        else:
            np.testing.assert_array_equal(a, b)


def test_real_samples_agree_with_our_namespace():
    samples = Path(__file__).resolve().parents[2] / "shared" / "samples" / "metadata" / "stactools-sentinel2"
    if not samples.is_dir():
        pytest.skip("shared samples not available")
    mtd = next(samples.glob("*N0509*/MTD_MSIL2A.xml"))
    assert "psd-14" in DET.parse(mtd).getroot().tag


def test_strip_path_matches_in_memory_path(tmp_path, monkeypatch):
    """Full tiles go strip by strip through temporary GeoTIFFs: same pixels as in memory."""
    import ingest.synth.safe_writer as sw

    a = make_product(tmp_path / "a", datatake_start=START, window=SMALL, cloudiness=0.3)
    monkeypatch.setattr(sw, "STRIP_PIXELS", 2000)
    b = make_product(tmp_path / "b", datatake_start=START, window=SMALL, cloudiness=0.3)
    for fa in a.rglob("*.jp2"):
        with rasterio.open(fa) as da, rasterio.open(b / fa.relative_to(a)) as db:
            np.testing.assert_array_equal(da.read(), db.read())
            assert da.transform == db.transform
    assert (a / "MTD_MSIL2A.xml").read_bytes() == (b / "MTD_MSIL2A.xml").read_bytes()
