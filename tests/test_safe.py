"""Tests of the SAFE reader (ingest.products.safe) on real metadata samples and hand-made products.

The samples in ../shared/samples/metadata carry no rasters; tests that need rasters build
small ones here (tiny JP2s with the real names) or use ingest.synth when it is available.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from pyproj.transformer import TransformerGroup

from ingest.errors import (
    CorruptProductError,
    MetadataError,
    OutsideGridError,
    ProductError,
    UnsupportedProductError,
    WrongOrbitError,
)
from ingest.grid import NL_GRID, CubeGrid, pinned_operation
from ingest.products.model import Product, TileGeocoding
from ingest.products.safe import (
    check_orbit,
    check_overlaps,
    check_rasters,
    parse_product_metadata,
    product_bounds_in,
    read_product,
)
from ingest.products.names import strip_product_suffix
from ingest.variables import VARIABLES

REPO = Path(__file__).resolve().parents[1]
GDAL = "gdal-autotest"
STAC = "stactools-sentinel2"
PB0509 = f"{GDAL}/fake_l2a_processing_baseline_5_09/S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.SAFE"
PB0208 = f"{GDAL}/fake_l2a_MSIL2A/S2A_MSIL2A_20180818T094031_N0208_R036_T34VFJ_20180818T120345.SAFE"
PB0205 = f"{GDAL}/fake_l2a_MSIL2Ap/S2A_MSIL2A_20170823T094031_N0205_R036_T34VFJ_20170823T094252.SAFE"
PB_OLD = f"{GDAL}/fake_l2a/S2A_USER_PRD_MSIL2A.SAFE"
PB0212 = f"{STAC}/S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE"
PB0212_NO_TILE = f"{STAC}/S2A_MSIL2A_20180721T053721_N0212_R062_T43MDV_20201011T181419.SAFE"
PB0214 = f"{STAC}/esa_S2B_MSIL2A_20210122T133229_N0214_R081_T22HBD_20210122T155500.SAFE"
PB0400 = f"{STAC}/S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
PB0509_KAB = f"{STAC}/S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE"


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def samples() -> Path:
    """../shared/samples/metadata, or skip (it is absent on users' machines)."""
    candidates = [os.environ.get("S2INGEST_SHARED", ""), "/work/shared", str(REPO.parent / "shared")]
    for c in candidates:
        p = Path(c) / "samples" / "metadata" if c else None
        if p is not None and p.is_dir():
            return p
    pytest.skip("shared/samples/metadata not found (set S2INGEST_SHARED)")


def _tile_xml(safe: Path) -> Path:
    return next(safe.glob("GRANULE/*/MTD_TL.xml"))


def _docs(safe: Path) -> tuple[bytes, bytes, bytes | None]:
    man = safe / "manifest.safe"
    return (safe / "MTD_MSIL2A.xml").read_bytes(), _tile_xml(safe).read_bytes(), man.read_bytes() if man.exists() else None


def _copy_sample(samples: Path, rel: str, dest: Path, name: str | None = None) -> Path:
    """Copy a sample SAFE (XML only) to dest/<name>."""
    src = samples / rel
    out = dest / (name or src.name)
    shutil.copytree(src, out)
    return out


def _touch_rasters(safe: Path) -> None:
    """Create empty placeholder files for every raster the metadata lists."""
    p = read_product(safe, require_files=False)
    for res_map in p.files.values():
        for rel in res_map.values():
            (safe / rel).parent.mkdir(parents=True, exist_ok=True)
            (safe / rel).touch()


def _zip_safe(safe: Path, out: Path, root: str | None = None, skip: tuple[str, ...] = ()) -> Path:
    """Zip a SAFE folder as hubs do: every member under '<name>.SAFE/'."""
    root = safe.name if root is None else root
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(safe.rglob("*")):
            rel = f.relative_to(safe).as_posix()
            if f.is_file() and not any(s in rel for s in skip):
                zf.write(f, f"{root}/{rel}" if root else rel)
    return out


def _edit(safe: Path, member: str, old: str, new: str, count: int = 0) -> None:
    path = _tile_xml(safe) if member == "MTD_TL.xml" else safe / member
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {member}"
    path.write_text(text.replace(old, new, count or -1), encoding="utf-8")


# --------------------------------------------------------------------------------------
# every baseline in the samples
# --------------------------------------------------------------------------------------
SAMPLE_EXPECT = [
    # rel, platform, baseline, rel orbit, abs orbit, tile, epsg, ulx, uly, ext, checksum algo, offsets?
    (PB0208, "S2A", "02.08", 36, 16478, "34VFJ", 32634, 600000, 6400020, ".jp2", None, False),
    (PB0212, "S2A", "02.12", 13, 19029, "07HFE", 32707, 600000, 6500020, ".tif", "MD5", False),
    (PB0214, "S2B", "02.14", 81, 20270, "22HBD", 32722, 199980, 5900020, ".jp2", "MD5", False),
    (PB0400, "S2B", "04.00", 25, 26649, "33XWJ", 32633, 499980, 8900040, ".tif", "MD5", True),
    (PB0509, "S2B", "05.09", 122, 33753, "34UCF", 32634, 300000, 6100020, ".jp2", "SHA3-256", True),
    (PB0509_KAB, "S2A", "05.09", 29, 42640, "01KAB", 32701, 99960, 8200000, ".jp2", "SHA3-256", True),
]


@pytest.mark.parametrize("rel,platform,baseline,rorbit,aorbit,tile,epsg,ulx,uly,ext,algo,has_offsets", SAMPLE_EXPECT)
def test_samples_parse(samples, rel, platform, baseline, rorbit, aorbit, tile, epsg, ulx, uly, ext, algo, has_offsets):
    p = read_product(samples / rel, require_files=False)
    assert (p.platform, p.baseline, p.relative_orbit, p.absolute_orbit, p.tile) == (platform, baseline, rorbit, aorbit, tile)
    assert (p.geocoding.epsg, p.geocoding.ulx, p.geocoding.uly) == (epsg, ulx, uly)
    assert p.geocoding.sizes == {10: (10980, 10980), 20: (5490, 5490), 60: (1830, 1830)}
    assert p.name == re.sub(r"^esa_", "", Path(rel).name[: -len(".SAFE")])
    for var, spec in VARIABLES.items():
        path = p.file_for(var, spec.resolution)
        assert path.endswith(ext) and path.startswith("GRANULE/L2A_T" + tile), path
        assert not path.startswith("./")
    for t in (p.datatake_start, p.product_start, p.generation_time):
        assert t.tzinfo is not None and t.utcoffset().total_seconds() == 0
    assert p.datatake_id.startswith(f"G{platform}_")
    assert bool(p.boa_add_offset) == has_offsets
    if algo is None:
        assert p.checksums == {}
    else:
        assert {a for a, _ in p.checksums.values()} == {algo}
        assert all(not k.startswith("./") for k in p.checksums)
    assert p.cloud_cover is not None and 0 <= p.cloud_cover <= 100
    assert len(p.footprint) >= 4 and p.footprint[0] == p.footprint[-1]
    assert p.safe_root == ""


def test_pb0509_details(samples):
    p = read_product(samples / PB0509, require_files=False)
    assert p.datatake_id == "GS2B_20230823T095559_033753_N05.09"
    assert p.datatake_start == datetime(2023, 8, 23, 9, 55, 59, 24000, tzinfo=timezone.utc)
    assert p.product_start == p.datatake_start
    assert p.generation_time == datetime(2023, 8, 23, 12, 47, 59, tzinfo=timezone.utc)
    assert p.datatake_key == ("S2B", p.datatake_start)
    g = "GRANULE/L2A_T34UCF_A033753_20230823T095553"
    assert p.files["B02"] == {
        10: f"{g}/IMG_DATA/R10m/T34UCF_20230823T095559_B02_10m.jp2",
        20: f"{g}/IMG_DATA/R20m/T34UCF_20230823T095559_B02_20m.jp2",
        60: f"{g}/IMG_DATA/R60m/T34UCF_20230823T095559_B02_60m.jp2",
    }
    assert set(p.files["B01"]) == {20, 60}  # B01_20m exists from PB 04.00 on
    assert set(p.files["SCL"]) == {20, 60}
    assert p.files["CLD"] == {20: f"{g}/QI_DATA/MSK_CLDPRB_20m.jp2", 60: f"{g}/QI_DATA/MSK_CLDPRB_60m.jp2"}
    assert p.files["SNW"] == {20: f"{g}/QI_DATA/MSK_SNWPRB_20m.jp2", 60: f"{g}/QI_DATA/MSK_SNWPRB_60m.jp2"}
    assert "TCI" not in p.files
    assert set(p.files) == set(VARIABLES)
    expected = {b: -1000 for b in ("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split())}
    assert p.boa_add_offset == expected
    assert (p.boa_quantification, p.aot_quantification, p.wvp_quantification) == (10000.0, 1000.0, 1000.0)
    assert p.cloud_cover == pytest.approx(6.859297)
    assert p.footprint[0] == (17.87240396241576, 55.00678356187177)  # (lon, lat)
    assert p.checksums[p.files["B02"][10]] == (
        "SHA3-256", "81db41101ac283d1dc7c38a9c307738a19f2d18f8e8c27c4ab9cba191ddfc8ea"
    )
    assert p.checksums["MTD_MSIL2A.xml"][0] == "SHA3-256"
    assert p.crs == "EPSG:32634"


def test_pb0208_conventional_mask_names(samples):
    """PB 02.08's MTD_TL has no Pixel_Level_QI: CLD/SNW fall back to the QI_DATA names."""
    p = read_product(samples / PB0208, require_files=False)
    g = "GRANULE/L2A_T34VFJ_A016478_20180818T094030"
    assert p.files["CLD"][20] == f"{g}/QI_DATA/MSK_CLDPRB_20m.jp2"
    assert p.files["SNW"][60] == f"{g}/QI_DATA/MSK_SNWPRB_60m.jp2"
    assert set(p.files["B01"]) == {60}
    assert p.boa_add_offset == {}


def test_esri_geotiff_variant(samples):
    """ESRI-reprocessed PB 02.12: imageFormat GeoTIFF -> .tif; manifest hrefs lack './'."""
    p = read_product(samples / PB0212, require_files=False)
    assert p.files["B04"][10].endswith("_B04_10m.tif")
    assert p.files["CLD"][20].endswith("QI_DATA/MSK_CLDPRB_20m.tif")
    assert p.checksums[p.files["B04"][10]][0] == "MD5"
    assert p.generation_time == datetime(2020, 10, 7, 16, 8, 57, 135000, tzinfo=timezone.utc)


def test_l2ap_rejected(samples):
    with pytest.raises(UnsupportedProductError, match="L2Ap") as exc:
        read_product(samples / PB0205, require_files=False)
    assert "S2A_MSIL2A_20170823T094031_N0205_R036_T34VFJ_20170823T094252" in str(exc.value)


def test_l2ap_rejected_by_parser(samples):
    mtd, tl, man = _docs(samples / PB0205)
    with pytest.raises(UnsupportedProductError, match="L2Ap"):
        parse_product_metadata(mtd, tl, man)


def test_pre_compact_format_rejected(samples):
    with pytest.raises(UnsupportedProductError, match="non-compact"):
        read_product(samples / PB_OLD, require_files=False)


def test_l1c_rejected(samples, tmp_path):
    mtd, tl, man = _docs(samples / PB0509)
    l1c = mtd.replace(b"<PRODUCT_TYPE>S2MSI2A<", b"<PRODUCT_TYPE>S2MSI1C<").replace(b"Level-2A<", b"Level-1C<")
    with pytest.raises(UnsupportedProductError, match="not a Level-2A product"):
        parse_product_metadata(l1c, tl, man)
    # an L1C folder (MTD_MSIL1C.xml, no MTD_MSIL2A.xml)
    safe = tmp_path / "S2B_MSIL1C_20230823T095559_N0509_R122_T34UCF_20230823T120234.SAFE"
    safe.mkdir()
    (safe / "MTD_MSIL1C.xml").write_bytes(l1c)
    with pytest.raises(UnsupportedProductError, match="not a Level-2A product"):
        read_product(safe)
    z = _zip_safe(safe, tmp_path / "l1c.zip")
    with pytest.raises(UnsupportedProductError, match="not a Level-2A product"):
        read_product(z)


def test_sample_without_granule_is_corrupt(samples):
    """The stactools 43MDV sample has 'MTD_MSIL2a.xml' (lower-case a) and no GRANULE folder."""
    with pytest.raises(CorruptProductError, match="MTD_TL.xml"):
        read_product(samples / PB0212_NO_TILE, require_files=False)


def test_parse_product_metadata_directly(samples):
    mtd, tl, man = _docs(samples / PB0509)
    p = parse_product_metadata(mtd, tl, man)
    q = read_product(samples / PB0509, require_files=False)
    assert p.name == q.name and p.files == q.files and p.checksums == q.checksums
    assert p.source == Path("")
    p2 = parse_product_metadata(mtd, tl, None, source="/x/y.SAFE")
    assert p2.checksums == {} and p2.source == Path("/x/y.SAFE")


def test_namespace_agnostic_psd15(samples):
    """PB 05.11 uses psd-15 namespaces; other prefixes must not matter either."""
    mtd, tl, man = _docs(samples / PB0509)

    def psd15(b: bytes) -> bytes:
        return b.replace(b"psd-14", b"psd-15").replace(b"n1:", b"ns2:").replace(b"xmlns:n1", b"xmlns:ns2")

    p = parse_product_metadata(psd15(mtd), psd15(tl), man)
    assert p.tile == "34UCF" and p.boa_add_offset["B8A"] == -1000 and p.geocoding.uly == 6100020


# --------------------------------------------------------------------------------------
# metadata errors and inconsistencies
# --------------------------------------------------------------------------------------
def test_malformed_xml_names_member(samples):
    mtd, tl, man = _docs(samples / PB0509)
    with pytest.raises(MetadataError, match="MTD_MSIL2A.xml"):
        parse_product_metadata(mtd[: len(mtd) // 2], tl, man)
    with pytest.raises(MetadataError, match="MTD_TL.xml"):
        parse_product_metadata(mtd, tl.replace(b"</NROWS>", b"</NROW>", 1), man)
    with pytest.raises(MetadataError, match="manifest.safe"):
        parse_product_metadata(mtd, tl, b"<xfdu:XFDU>")


def test_entities_rejected(samples):
    """defusedxml: entity expansion (billion laughs, XXE) is a metadata error, not a hang."""
    mtd, tl, man = _docs(samples / PB0509)
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>'
    with pytest.raises(MetadataError, match="MTD_TL.xml"):
        parse_product_metadata(mtd, evil, man)


def test_name_orbit_inconsistent(samples):
    mtd, tl, man = _docs(samples / PB0509)
    bad = mtd.replace(b"_R122_", b"_R051_")
    with pytest.raises(MetadataError, match=r"R051 but SENSING_ORBIT_NUMBER says 122"):
        parse_product_metadata(bad, tl, None)


def test_folder_name_vs_product_uri(samples, tmp_path):
    wrong = "S2B_MSIL2A_20230823T095559_N0509_R051_T34UCF_20230823T124759.SAFE"
    safe = _copy_sample(samples, PB0509, tmp_path, name=wrong)
    with pytest.raises(MetadataError, match="PRODUCT_URI"):
        read_product(safe, require_files=False)
    # a folder name that is not a product name is fine
    other = _copy_sample(samples, PB0509, tmp_path, name="download_123.SAFE")
    assert read_product(other, require_files=False).name.endswith("_20230823T124759")


@pytest.mark.parametrize(
    "member,old,new,match",
    [
        ("MTD_MSIL2A.xml", "<SPACECRAFT_NAME>Sentinel-2B", "<SPACECRAFT_NAME>Sentinel-2A", "platform S2B"),
        ("MTD_MSIL2A.xml", "<PROCESSING_BASELINE>05.09", "<PROCESSING_BASELINE>05.10", "PROCESSING_BASELINE"),
        ("MTD_MSIL2A.xml", "<DATATAKE_SENSING_START>2023-08-23T09:55:59", "<DATATAKE_SENSING_START>2023-08-23T09:56:59", "start"),
        ("MTD_TL.xml", "_A033753_T34UCF_N05.09</TILE_ID>", "_A033753_T34UCE_N05.09</TILE_ID>", "TILE_ID"),
        ("manifest.safe", 'type="start">122<', 'type="start">51<', "relativeOrbitNumber"),
        ("manifest.safe", ">033753<", ">033754<", "orbitNumber"),
        ("MTD_TL.xml", "<ULX>300000</ULX>", "<ULX>300060</ULX>", "upper-left corner"),
        ("MTD_TL.xml", "<XDIM>20</XDIM>", "<XDIM>10</XDIM>", "pixel size"),
        ("MTD_TL.xml", "EPSG:32634", "UTM34", "HORIZONTAL_CS_CODE"),
        ("MTD_TL.xml", "<NROWS>5490</NROWS>", "<NROWS>5491</NROWS>", "Size"),
        ("MTD_MSIL2A.xml", "<GENERATION_TIME>2023-08-23T12:47:59.000000Z", "<GENERATION_TIME>yesterday", "GENERATION_TIME"),
        ("MTD_MSIL2A.xml", '<BOA_ADD_OFFSET band_id="8">-1000</BOA_ADD_OFFSET>', "", "BOA_ADD_OFFSET for B8A"),
        ("MTD_MSIL2A.xml", "<BOA_QUANTIFICATION_VALUE unit=\"none\">10000", "<BOA_QUANTIFICATION_VALUE unit=\"none\">0", "BOA_QUANTIFICATION"),
        ("MTD_MSIL2A.xml", "T34UCF_20230823T095559_B09_60m<", "T34UCF_20230823T095559_B10_60m<", "B09 at 60 m"),
    ],
)
def test_inconsistent_metadata(samples, tmp_path, member, old, new, match):
    safe = _copy_sample(samples, PB0509, tmp_path)
    _edit(safe, member, old, new, count=1)
    with pytest.raises(MetadataError, match=match) as exc:
        read_product(safe, require_files=False)
    assert "S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759" in str(exc.value)


# --------------------------------------------------------------------------------------
# folders and zips, with files
# --------------------------------------------------------------------------------------
def test_folder_require_files(samples, tmp_path):
    safe = _copy_sample(samples, PB0509, tmp_path)
    with pytest.raises(CorruptProductError, match=r"_B02_10m\.jp2 .*missing"):
        read_product(safe)
    _touch_rasters(safe)
    p = read_product(safe)
    assert p.gdal_path(p.files["B02"][10]) == str(safe / p.files["B02"][10])
    (safe / p.files["SNW"][20]).unlink()
    with pytest.raises(CorruptProductError, match="MSK_SNWPRB_20m.jp2"):
        read_product(safe)


def test_extension_fallback(samples, tmp_path):
    """A repackaged product whose files are .tif although @imageFormat says JPEG2000."""
    safe = _copy_sample(samples, PB0509, tmp_path)
    _touch_rasters(safe)
    jp2 = next(safe.rglob("*_B03_10m.jp2"))
    jp2.rename(jp2.with_suffix(".tif"))
    assert read_product(safe).files["B03"][10].endswith("_B03_10m.tif")


@pytest.fixture()
def sample_zip(samples, tmp_path) -> Path:
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    return _zip_safe(safe, tmp_path / (safe.name[: -len(".SAFE")] + ".zip"))


def test_zip_reads_only_xml(sample_zip, monkeypatch):
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *a, **k):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    p = read_product(sample_zip)
    assert opened and all(n.endswith((".xml", ".safe")) for n in opened), opened
    assert len(opened) == 3
    assert p.safe_root == "S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.SAFE"
    path = p.gdal_path(p.files["B02"][10])
    assert path.startswith(f"/vsizip/{sample_zip.resolve()}/{p.safe_root}/GRANULE/")


def test_zip_hub_name_variants(sample_zip, tmp_path):
    renamed = tmp_path / (sample_zip.stem + ".SAFE.zip")
    shutil.copy(sample_zip, renamed)
    assert read_product(renamed).name == sample_zip.stem
    mislabelled = tmp_path / "S2B_MSIL2A_20230823T095559_N0509_R051_T34UCF_20230823T124759.zip"
    shutil.copy(sample_zip, mislabelled)
    with pytest.raises(MetadataError, match="differs"):
        read_product(mislabelled)


def test_zip_without_root_folder(samples, tmp_path):
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    z = _zip_safe(safe, tmp_path / "flat.zip", root="")
    p = read_product(z)
    assert p.safe_root == "" and p.gdal_path("a/b.jp2") == f"/vsizip/{z.resolve()}/a/b.jp2"


def test_zip_missing_raster(samples, tmp_path):
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    z = _zip_safe(safe, tmp_path / "x.zip", skip=("_SCL_20m",))
    with pytest.raises(CorruptProductError, match="SCL_20m"):
        read_product(z)
    assert read_product(z, require_files=False).files["SCL"][20].endswith("_SCL_20m.jp2")


def test_not_a_zip(tmp_path):
    f = tmp_path / "S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.zip"
    f.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(CorruptProductError, match="not a readable zip") as exc:
        read_product(f)
    assert exc.value.product == "S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759"


def test_truncated_zip(sample_zip):
    data = sample_zip.read_bytes()
    sample_zip.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptProductError):
        read_product(sample_zip)


def test_zip_corrupt_xml_member(samples, tmp_path):
    """A flipped byte inside the compressed MTD_TL.xml: CRC/zlib error -> corrupt product."""
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    z = _zip_safe(safe, tmp_path / "c.zip")
    with zipfile.ZipFile(z) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("MTD_TL.xml"))
    data = bytearray(z.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 100, start + 140):
        data[i] ^= 0xFF
    z.write_bytes(bytes(data))
    with pytest.raises(ProductError) as exc:
        read_product(z)
    assert isinstance(exc.value, (CorruptProductError, MetadataError))


def test_zip_missing_members(samples, tmp_path):
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    no_mtd = _zip_safe(safe, tmp_path / "a.zip", skip=("MTD_MSIL2A.xml",))
    with pytest.raises(CorruptProductError, match="MTD_MSIL2A.xml"):
        read_product(no_mtd)
    no_tl = _zip_safe(safe, tmp_path / "b.zip", skip=("MTD_TL.xml",))
    with pytest.raises(CorruptProductError, match="MTD_TL.xml"):
        read_product(no_tl)
    no_manifest = _zip_safe(safe, tmp_path / "c.zip", skip=("manifest.safe",))
    assert read_product(no_manifest).checksums == {}


def test_zip_malformed_xml(samples, tmp_path):
    safe = _copy_sample(samples, PB0509, tmp_path / "src")
    _touch_rasters(safe)
    _edit(safe, "MTD_MSIL2A.xml", "</PRODUCT_TYPE>", "</PRODUCT_TYP>", count=1)
    z = _zip_safe(safe, tmp_path / "m.zip")
    with pytest.raises(MetadataError, match="malformed XML in MTD_MSIL2A.xml"):
        read_product(z)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_product(tmp_path / "nope.zip")


def test_path_to_mtd_file(samples):
    p = read_product(samples / PB0509 / "MTD_MSIL2A.xml", require_files=False)
    assert p.source == samples / PB0509


# --------------------------------------------------------------------------------------
# orbit and grid checks
# --------------------------------------------------------------------------------------
def _retiled(samples: Path, tmp_path: Path, tile: str, epsg: int, ulx: int, uly: int, footprint: str | None = None) -> Path:
    """The PB 05.09 sample moved onto another tile (for grid tests over NL)."""
    name = f"S2B_MSIL2A_20230823T095559_N0509_R122_T{tile}_20230823T124759.SAFE"
    safe = _copy_sample(samples, PB0509, tmp_path, name=name)
    for member in ("MTD_MSIL2A.xml", "MTD_TL.xml", "manifest.safe"):
        _edit(safe, member, "34UCF", tile)
    _edit(safe, "MTD_TL.xml", "EPSG:32634", f"EPSG:{epsg}")
    _edit(safe, "MTD_TL.xml", "<ULX>300000</ULX>", f"<ULX>{ulx}</ULX>")
    _edit(safe, "MTD_TL.xml", "<ULY>6100020</ULY>", f"<ULY>{uly}</ULY>")
    text = (safe / "MTD_MSIL2A.xml").read_text()
    text = re.sub(r"<EXT_POS_LIST>[^<]*</EXT_POS_LIST>", f"<EXT_POS_LIST>{footprint or ''}</EXT_POS_LIST>", text)
    (safe / "MTD_MSIL2A.xml").write_text(text)
    return safe


def test_check_orbit(samples):
    p = read_product(samples / PB0509, require_files=False)
    check_orbit(p, 122)
    with pytest.raises(WrongOrbitError, match=r"R122, but the cube holds R051") as exc:
        check_orbit(p, 51)
    assert exc.value.product == p.name


def test_check_overlaps_nl_tile(samples, tmp_path):
    safe = _retiled(samples, tmp_path, "31UFU", 32631, 600000, 5900040)
    p = read_product(safe, require_files=False)
    assert p.footprint == ()
    b = product_bounds_in(p, "EPSG:28992")
    # reference RD bbox of 31UFU from shared/reference/nl-tiles.txt
    assert b == pytest.approx((92029, 470719, 205414, 584102), abs=2)
    assert product_bounds_in(p, p.crs) == pytest.approx(p.geocoding.bounds(10))
    overlap = check_overlaps(p, NL_GRID)
    assert overlap == pytest.approx(b)  # fully inside the NL grid
    small = CubeGrid("t", "EPSG:28992", 10.0, (0.0, 300_000.0, 100_000.0, 500_000.0))
    assert check_overlaps(p, small) == pytest.approx((b[0], b[1], 100_000.0, 500_000.0))


def test_check_overlaps_uses_footprint(samples, tmp_path):
    """Data over the western half of 31UFU only (a swath edge): bounds shrink to it."""
    ring = "53.24 4.465 53.24 5.3 52.223 5.3 52.223 4.465 53.24 4.465"
    safe = _retiled(samples, tmp_path, "31UFU", 32631, 600000, 5900040, footprint=ring)
    p = read_product(safe, require_files=False)
    assert p.footprint[0] == (4.465, 53.24)
    full = (92029, 470719, 205414, 584102)
    left, bottom, right, top = check_overlaps(p, NL_GRID)
    assert left == pytest.approx(full[0], abs=200) and right < 160_000 and right > 140_000
    # a footprint that spills over the tile edge is clipped to the tile
    wide = "54.0 3.0 54.0 8.0 51.0 8.0 51.0 3.0 54.0 3.0"
    safe2 = _retiled(samples, tmp_path / "w", "31UFU", 32631, 600000, 5900040, footprint=wide)
    assert product_bounds_in(read_product(safe2, require_files=False), "EPSG:28992") == pytest.approx(full, abs=2)


def _nl_tiles(samples: Path) -> list[tuple[str, int, int, int, tuple[float, ...]]]:
    text = (samples.parent.parent / "reference" / "nl-tiles.txt").read_text()
    rows = []
    for m in re.finditer(r"^(\d{2}[A-Z]{3}) (\d{5}) +(\d+) +(\d+) .*\) \(([-\d]+), ([-\d]+), ([-\d]+), ([-\d]+)\)$", text, re.M):
        rows.append((m[1], int(m[2]), int(m[3]), int(m[4]), tuple(float(m[i]) for i in range(5, 9))))
    return rows


def test_nl_tiles_rd_bounds(samples, tmp_path):
    """Every tile over NL: our RD bounds match the reference table, and they overlap NL_GRID."""
    tiles = _nl_tiles(samples)
    assert len(tiles) == 16
    for tile, epsg, ulx, uly, rd in tiles:
        safe = _retiled(samples, tmp_path / tile, tile, epsg, ulx, uly)
        p = read_product(safe, require_files=False)
        assert product_bounds_in(p, NL_GRID.crs) == pytest.approx(rd, abs=2), tile
        left, bottom, right, top = check_overlaps(p, NL_GRID)
        assert NL_GRID.window_for_bounds((left, bottom, right, top)) is not None


def test_tile_xml_swapped(samples):
    mtd, tl, man = _docs(samples / PB0509)
    with pytest.raises(MetadataError, match="not a tile metadata"):
        parse_product_metadata(mtd, mtd, man)


def test_check_overlaps_outside(samples):
    p = read_product(samples / PB0509, require_files=False)  # 34UCF, Poland/Baltic
    with pytest.raises(OutsideGridError, match="34UCF") as exc:
        check_overlaps(p, NL_GRID)
    assert exc.value.product == p.name


def test_bounds_across_antimeridian(samples):
    """T01KAB's footprint has lon 179.2..180 and -179.7 in one ring; in UTM it is one piece."""
    p = read_product(samples / PB0509_KAB, require_files=False)
    assert {lon > 0 for lon, _ in p.footprint} == {True, False}
    left, bottom, right, top = product_bounds_in(p, p.crs)
    tl, tb, tr, tt = p.geocoding.bounds(10)
    assert tl <= left < right <= tr and tb <= bottom < top <= tt
    assert (right - left) * (top - bottom) > 0.9 * (tr - tl) * (tt - tb)  # not a 360-degree smear


def _tile_product(epsg: int = 32631, ulx: float = 600000.0, uly: float = 5900040.0) -> Product:
    """A metadata-only Product of a full tile (31UFU by default) without footprint."""
    t = datetime(2023, 8, 23, 9, 55, 59, tzinfo=timezone.utc)
    return Product(
        name="S2B_MSIL2A_20230823T095559_N0509_R122_T31UFU_20230823T124759", source=Path("p.SAFE"),
        platform="S2B", datatake_id="GS2B_20230823T095559_033753_N05.09", datatake_start=t,
        product_start=t, generation_time=t, baseline="05.09", relative_orbit=122, absolute_orbit=33753,
        tile="31UFU", geocoding=TileGeocoding(epsg, ulx, uly, {10: (10980, 10980), 20: (5490, 5490), 60: (1830, 1830)}),
        files={},
    )


def _corner_bounds(product: Product, pipeline: str) -> tuple[float, float, float, float]:
    """Bounds of the tile's corners through one PROJ pipeline (the extremes of these tiles lie at
    their corners: densifying the edges to 10 m changes nothing)."""
    left, bottom, right, top = product.geocoding.bounds(10)
    xs, ys = Transformer.from_pipeline(pipeline).transform([left, right, right, left], [top, top, bottom, bottom])
    return (min(xs), min(ys), max(xs), max(ys))


# EPSG:23031 (ED50 / UTM 31N): PROJ's own choice (``Transformer.from_crs``) differs from the
# pinned operation by 0.7-2 m on this tile even without any grid file; for RD New the other
# grid-free Helmert differs by about 5 mm.
@pytest.mark.parametrize("crs", ["EPSG:28992", "EPSG:23031"])
def test_product_bounds_in_uses_the_pinned_operation(crs):
    """The overlap check transforms exactly as the warp does: with grid.pinned_operation."""
    p = _tile_product()
    pinned = pinned_operation(p.crs, crs)
    assert product_bounds_in(p, crs) == pytest.approx(_corner_bounds(p, pinned), abs=1e-3)
    # the tolerance tells operations apart: every other grid-free operation PROJ offers misses it
    others = [t.to_proj4() for t in TransformerGroup(p.crs, crs, always_xy=True).transformers]
    others = [o for o in others if o and "grids=" not in o and o != pinned]
    assert others
    for other in others:
        assert _corner_bounds(p, other) != pytest.approx(_corner_bounds(p, pinned), abs=1e-3)


# --------------------------------------------------------------------------------------
# rasters: tiny real JP2 files with the product's names
# --------------------------------------------------------------------------------------
MINI = {10: 60, 20: 30, 60: 10}  # pixels per side at each resolution (600 m tile)


def _mini_product(samples: Path, dest: Path, *, origin_shift: float = 0.0, break_file: str | None = None) -> Path:
    """The PB 05.09 sample shrunk to 600 m, with a small georeferenced JP2 per raster."""
    import rasterio
    from affine import Affine

    safe = _copy_sample(samples, PB0509, dest)
    for full, small in ((10980, MINI[10]), (5490, MINI[20]), (1830, MINI[60])):
        _edit(safe, "MTD_TL.xml", f"<NROWS>{full}</NROWS>", f"<NROWS>{small}</NROWS>")
        _edit(safe, "MTD_TL.xml", f"<NCOLS>{full}</NCOLS>", f"<NCOLS>{small}</NCOLS>")
    p = read_product(safe, require_files=False)
    for var, res_map in p.files.items():
        for res, rel in res_map.items():
            out = safe / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if break_file and break_file in rel:
                out.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n truncated")
                continue
            n = MINI[res]
            dtype = VARIABLES[var].dtype
            with rasterio.open(
                out, "w", driver="JP2OpenJPEG", width=n, height=n, count=1, dtype=dtype,
                crs="EPSG:32634", transform=Affine(res, 0, 300000 + origin_shift, 0, -res, 6100020),
                QUALITY=100, REVERSIBLE="YES",
            ) as dst:
                dst.write(np.full((1, n, n), 7, dtype=dtype))
    return safe


def test_check_rasters_folder_and_zip(samples, tmp_path):
    safe = _mini_product(samples, tmp_path / "a")
    p = read_product(safe)
    assert p.geocoding.sizes == {10: (60, 60), 20: (30, 30), 60: (10, 10)}
    check_rasters(p)
    z = _zip_safe(safe, tmp_path / (safe.stem + ".zip"))
    pz = read_product(z)
    check_rasters(pz)


def test_check_rasters_wrong_origin(samples, tmp_path):
    p = read_product(_mini_product(samples, tmp_path, origin_shift=60.0))
    with pytest.raises(MetadataError, match=r"_B01_60m\.jp2: origin \(300060\.0, 6100020\.0\) but MTD_TL"):
        check_rasters(p)


def test_check_rasters_wrong_size(samples, tmp_path):
    safe = _mini_product(samples, tmp_path)
    _edit(safe, "MTD_TL.xml", f"<NROWS>{MINI[60]}</NROWS>", "<NROWS>11</NROWS>")
    _edit(safe, "MTD_TL.xml", f"<NROWS>{MINI[20]}</NROWS>", "<NROWS>33</NROWS>")
    _edit(safe, "MTD_TL.xml", f"<NROWS>{MINI[10]}</NROWS>", "<NROWS>66</NROWS>")
    with pytest.raises(MetadataError, match=r"_B01_60m\.jp2: size 10x10 but MTD_TL says 11x10 at 60 m"):
        check_rasters(read_product(safe))


def test_check_rasters_wrong_crs(samples, tmp_path):
    safe = _mini_product(samples, tmp_path)
    _edit(safe, "MTD_TL.xml", "EPSG:32634", "EPSG:32633")
    with pytest.raises(MetadataError, match="EPSG:32633"):
        check_rasters(read_product(safe))


def test_check_rasters_broken_file(samples, tmp_path):
    p = read_product(_mini_product(samples, tmp_path, break_file="_SCL_20m"))
    with pytest.raises(CorruptProductError, match="SCL_20m.jp2"):
        check_rasters(p)
    check_rasters(p, variables=["B02", "CLD"])  # the others are fine


# --------------------------------------------------------------------------------------
# synthetic products from ingest.synth (written concurrently by another engineer)
# --------------------------------------------------------------------------------------
def _make_product():
    try:
        from ingest.synth import make_product
    except ImportError:
        pytest.skip("ingest.synth.make_product not available yet")
    return make_product


@pytest.mark.parametrize("baseline", ["02.14", "04.00", "05.09"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_synthetic_round_trip(tmp_path, baseline, as_zip):
    make_product = _make_product()
    start = datetime(2023, 6, 1, 10, 56, 19, 24000, tzinfo=timezone.utc)
    path = Path(make_product(
        tmp_path, tile="31UFU", datatake_start=start, platform="S2A", baseline=baseline,
        window=(600, 1200, 60, 120), as_zip=as_zip,
    ))
    p = read_product(path)
    assert p.name == strip_product_suffix(path.name)
    assert (p.platform, p.baseline, p.tile, p.relative_orbit, p.geocoding.epsg) == ("S2A", baseline, "31UFU", 51, 32631)
    assert p.datatake_start.replace(microsecond=0) == start.replace(microsecond=0)
    assert p.datatake_start.tzinfo is not None and p.absolute_orbit
    # a windowed product's MTD_TL describes the written rasters
    assert (p.geocoding.ulx, p.geocoding.uly) == (600000 + 1200 * 10, 5900040 - 600 * 10)
    assert p.geocoding.sizes == {10: (60, 120), 20: (30, 60), 60: (10, 20)}
    assert bool(p.boa_add_offset) == (baseline >= "04.00")
    assert set(p.files) == set(VARIABLES)
    assert (p.safe_root != "") == as_zip
    algo = "MD5" if baseline < "05.00" else "SHA3-256"
    assert p.checksums and {a for a, _ in p.checksums.values()} == {algo}
    check_rasters(p)
    overlap = check_overlaps(p, NL_GRID)
    assert NL_GRID.window_for_bounds(overlap) is not None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the MTD container itself
@pytest.mark.parametrize("as_zip", [False, True])
def test_synthetic_agrees_with_gdal_sentinel2_driver(tmp_path, as_zip):
    """GDAL's SENTINEL2 driver (an independent reader) sees the same grid at 10/20/60 m."""
    import rasterio

    make_product = _make_product()
    path = make_product(tmp_path, tile="32ULD", datatake_start=datetime(2020, 8, 3, 10, 56, 19, tzinfo=timezone.utc),
                        baseline="02.14", window=(6, 12, 36, 48), as_zip=as_zip)
    p = read_product(path)
    with rasterio.open(p.gdal_path("MTD_MSIL2A.xml")) as ds:
        subs = {s.split(":")[-2]: s for s in ds.subdatasets}
    for res in (10, 20, 60):
        with rasterio.open(subs[f"{res}m"]) as sd:
            assert sd.crs.to_epsg() == p.geocoding.epsg
            assert (sd.transform.c, sd.transform.f, sd.transform.a) == (p.geocoding.ulx, p.geocoding.uly, res)
            assert sd.shape == p.geocoding.sizes[res]


def _member_bytes(p, rel: str) -> bytes:
    if p.safe_root:
        with zipfile.ZipFile(p.source) as zf:
            return zf.read(f"{p.safe_root}/{rel}")
    return (p.source / rel).read_bytes()


@pytest.mark.parametrize("as_zip", [False, True])
def test_synthetic_checksums_match_files(tmp_path, as_zip):
    """The manifest checksums we read are those of the files (writer and reader agree)."""
    import hashlib

    make_product = _make_product()
    path = make_product(tmp_path, tile="31UFU", datatake_start=datetime(2022, 3, 1, 10, 56, 19, tzinfo=timezone.utc),
                        baseline="05.09", window=(0, 0, 60, 60), as_zip=as_zip)
    p = read_product(path)
    for var in ("B02", "SCL", "CLD"):
        rel = p.file_for(var, VARIABLES[var].resolution)
        algo, digest = p.checksums[rel]
        h = hashlib.new({"MD5": "md5", "SHA3-256": "sha3_256"}[algo], _member_bytes(p, rel))
        assert h.hexdigest() == digest, rel


def test_synthetic_zip_reads_only_xml(tmp_path, monkeypatch):
    make_product = _make_product()
    z = make_product(tmp_path, tile="31UFT", datatake_start=datetime(2021, 5, 2, 10, 56, 21, tzinfo=timezone.utc),
                     baseline="04.00", window=(0, 0, 60, 60), as_zip=True)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *a, **k):
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    p = read_product(z)
    assert p.tile == "31UFT" and all(n.endswith((".xml", ".safe")) for n in opened), opened


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(
    t=st.datetimes(min_value=datetime(2015, 1, 1), max_value=datetime(2099, 12, 31)),
    digits=st.sampled_from([0, 3, 6]),
)
def test_times_parse_to_utc(samples, t, digits):
    """Any fraction length the samples use ('', '.024', '.000000') reads back as aware UTC."""
    mtd, tl, man = _docs(samples / PB0509)
    frac = "" if digits == 0 else "." + f"{t.microsecond:06d}"[:digits]
    text = t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"
    mtd = re.sub(rb"<GENERATION_TIME>[^<]*<", b"<GENERATION_TIME>" + text.encode() + b"<", mtd)
    p = parse_product_metadata(mtd, tl, None)
    expected = t.replace(microsecond=int(f"{t.microsecond:06d}"[:digits].ljust(6, "0")) if digits else 0)
    assert p.generation_time == expected.replace(tzinfo=timezone.utc)
