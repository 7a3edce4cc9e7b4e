"""verify.py: manifest.safe checksums (MD5 / SHA3-256) of zips and folders, hub checksums."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from ingest.errors import ChecksumError, CorruptProductError
from ingest.testing import make_tiny_product
from ingest.products.checksums import hash_file, parse_manifest, verify_file_checksum, verify_product

OLD = "S2A_MSIL2A_20190212T105251_N0211_R051_T31UFU_20190212T120345"  # PB 02.11 -> MD5
NEW = "S2B_MSIL2A_20230823T105619_N0509_R051_T31UFU_20230823T124759"  # PB 05.09 -> SHA3-256
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "metadata"


@pytest.mark.parametrize("name, algorithm", [(OLD, "MD5"), (NEW, "SHA3-256")])
def test_good_zip_verifies_with_baseline_algorithm(tmp_path, name, algorithm):
    path = make_tiny_product(tmp_path, name)
    report = verify_product(path)
    assert report.files_checked == 2
    assert report.algorithms == {algorithm}


def test_good_folder_verifies(tmp_path):
    path = make_tiny_product(tmp_path, NEW)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "x")
    assert verify_product(tmp_path / "x" / f"{NEW}.SAFE").files_checked == 2


def test_flipped_byte_in_jp2_is_a_checksum_error(tmp_path):
    path = make_tiny_product(tmp_path, NEW, corrupt_member=True)
    with pytest.raises(ChecksumError, match=r"B02_10m\.jp2"):
        verify_product(path)


def test_flipped_byte_in_folder_is_a_checksum_error(tmp_path):
    path = make_tiny_product(tmp_path, OLD)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "x")
    jp2 = next((tmp_path / "x").rglob("*.jp2"))
    data = bytearray(jp2.read_bytes())
    data[10] ^= 1
    jp2.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        verify_product(tmp_path / "x" / f"{OLD}.SAFE")


def test_truncated_zip_is_corrupt(tmp_path):
    path = make_tiny_product(tmp_path, NEW)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptProductError):
        verify_product(path)


def test_zip_without_manifest_is_corrupt(tmp_path):
    path = make_tiny_product(tmp_path, NEW, with_manifest=False)
    with pytest.raises(CorruptProductError, match="no manifest.safe"):
        verify_product(path)


def test_not_a_zip_is_corrupt(tmp_path):
    path = tmp_path / f"{NEW}.zip"
    path.write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(CorruptProductError, match="not a readable zip"):
        verify_product(path)


def test_hub_checksum_checked_first(tmp_path):
    path = make_tiny_product(tmp_path, NEW)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert verify_product(path, ("MD5", md5.upper())).hub_checksum == ("MD5", md5.upper())
    with pytest.raises(ChecksumError, match="the hub says"):
        verify_product(path, ("MD5", "0" * 32))
    assert hash_file(path, "SHA3-256") == hashlib.sha3_256(path.read_bytes()).hexdigest()
    verify_file_checksum(path, "sha3-256", hashlib.sha3_256(path.read_bytes()).hexdigest())


@pytest.mark.skipif(not SAMPLES.exists(), reason="shared samples not available")
def test_parse_real_manifests():
    manifests = sorted(SAMPLES.rglob("manifest.safe"))
    assert manifests
    for m in manifests:
        entries = parse_manifest(m.read_bytes())
        assert entries, m
        assert {e.algorithm for e in entries} <= {"MD5", "SHA3-256"}
        assert all(not e.path.startswith("./") and e.value == e.value.lower() for e in entries)
        baseline = m.parent.name.split("_")[3]
        expected = "SHA3-256" if baseline >= "N0500" else "MD5"
        assert {e.algorithm for e in entries} == {expected}, m


# -- real-format synthetic products (ingest.synth), when available --------------------------------

def _synth(tmp_path, baseline):
    synth = pytest.importorskip("ingest.synth")
    from datetime import datetime, timezone
    return synth.make_product(tmp_path, tile="31UFU", datatake_start=datetime(2023, 8, 23, 10, 56, 19,
                              tzinfo=timezone.utc), baseline=baseline, window=(0, 0, 60, 60), as_zip=True)


def _rezip_with_flipped_jp2(path: Path) -> str:
    """Rewrite the zip with one byte of one JP2 member flipped (valid zip, wrong content)."""
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    target = next(i.filename for i, _ in members if i.filename.endswith(".jp2"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            if info.filename == target:
                data = bytearray(data)
                data[len(data) // 2] ^= 0x01
                data = bytes(data)
            zf.writestr(info.filename, data)
    return target


@pytest.mark.parametrize("baseline, algorithm", [("02.11", "MD5"), ("05.09", "SHA3-256")])
def test_synthetic_products(tmp_path, baseline, algorithm):
    path = _synth(tmp_path, baseline)
    report = verify_product(path)
    assert report.algorithms == {algorithm} and report.files_checked > 20
    member = _rezip_with_flipped_jp2(path)
    with pytest.raises(ChecksumError, match=Path(member).name):
        verify_product(path)
