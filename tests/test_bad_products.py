"""Bad products are rejected, never block (the integrity issue, part 5).

Each test puts one hostile product (a synthetic product with one file damaged or wrong, its
manifest.safe updated so that verification passes, see ``ingest.synth.hostile``) beside a good
one and runs ``s2ingest sync``: exit 10, the good product published and readable with xarray
(the cube identical to one holding the good product alone), the bad one ``rejected`` with a
reason that names the file, and a rerun that neither retries it nor fails.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub_fixtures import GROUP, T1, WINDOWS, assert_same_cube, catalog_rows, isolated_env, name_of, run, sync_args

__all__ = ["isolated_env"]  # autouse fixture

EXIT_PARTIAL = 10
HOSTILE_TILE, GOOD_TILE = "31UET", "31UFT"


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """A pristine 31UET product (SAFE folder, to be damaged per test), a good 31UFT product
    of the same datatake, and a cube that holds the good product alone (the expected result)."""
    from ingest.synth import make_product

    root = tmp_path_factory.mktemp("bad-products")
    pristine = make_product(root / "pristine", tile=HOSTILE_TILE, datatake_start=T1, window=WINDOWS[HOSTILE_TILE])
    good = make_product(root / "good", tile=GOOD_TILE, datatake_start=T1, window=WINDOWS[GOOD_TILE], as_zip=True)
    (root / "expected").mkdir()
    expected = root / "expected" / "cube.zarr"
    r = run(*sync_args(expected, "--source", good.parent))
    assert r.exit_code == 0, r.output + r.stderr
    return {"pristine": pristine, "good": good, "expected": expected}


def hostile_copy(kit: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the pristine product in a source folder beside the good product."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(kit["good"], src / kit["good"].name)
    safe = src / kit["pristine"].name
    shutil.copytree(kit["pristine"], safe)
    return src, safe


def assert_rejected_beside_good(kit: dict[str, Path], tmp_path: Path, src: Path, bad_name: str,
                                *reason_has: str) -> str:
    """The whole contract of one hostile product; returns the rejection reason."""
    import xarray as xr

    from ingest.store import read_published

    store = tmp_path / "cube.zarr"
    r = run(*sync_args(store, "--source", src))
    assert r.exit_code == EXIT_PARTIAL, r.output + r.stderr
    assert "Traceback" not in r.output + r.stderr
    assert f"rejected {bad_name}" in r.stderr, r.stderr

    # the good product is published and readable; the cube is the one without the bad product
    good_name = name_of(kit["good"])
    published = {n for names in read_published(store, GROUP).products for n in names}
    assert published == {good_name}
    ds = xr.open_zarr(store, group=GROUP, consolidated=True)
    assert ds.sizes["time"] == 1 and bool(ds.B04.isel(time=0).notnull().any())
    assert_same_cube(store, kit["expected"])

    # the bad one is rejected, and the reason names the file and the cause
    rows = catalog_rows(_catalog_url(store))
    row = rows[bad_name]
    assert row["state"] == "rejected", (row["state"], row["reason"])
    for text in reason_has:
        assert text in row["reason"], row["reason"]
    status = run("status", "--store", store)
    assert status.exit_code == 0, status.output + status.stderr
    assert f"rejected  {bad_name}: {row['reason']}" in status.output, status.output

    # a rerun neither retries it nor fails
    again = run(*sync_args(store, "--source", src))
    assert again.exit_code == 0, again.output + again.stderr
    after = catalog_rows(_catalog_url(store))[bad_name]
    assert (after["state"], after["reason"], after["attempts"]) == ("rejected", row["reason"], row["attempts"])
    assert {n for names in read_published(store, GROUP).products for n in names} == {good_name}
    return row["reason"]


def _catalog_url(store: Path) -> str:
    from catalog import default_url_for_store

    return default_url_for_store(store)


# ------------------------------------------------------------------------------------------
# 6. a band JP2 that is garbage or truncated (manifest.safe matching it)


@pytest.mark.parametrize("how, cause", [("garbage", "cannot open"), ("truncate", "cannot decode")])
def test_corrupt_band_is_rejected(kit, tmp_path, how, cause):
    """Garbage does not open (found by the raster check before warping); a JP2 cut off half
    way opens and fails only when decoded (found by the warp, inside the write)."""
    from ingest.synth.hostile import corrupt_raster

    src, safe = hostile_copy(kit, tmp_path)
    rel = corrupt_raster(safe, "B04", how)
    assert_rejected_beside_good(kit, tmp_path, src, name_of(safe), rel, cause)


def test_corrupt_band_does_not_block_later_syncs_from_another_source(kit, tmp_path):
    """The run that meets a truncated band ends with the product rejected, so a later sync
    with another --source is not blocked by it."""
    from ingest.store import read_published
    from ingest.synth import make_product
    from ingest.synth.hostile import corrupt_raster

    src, safe = hostile_copy(kit, tmp_path)
    corrupt_raster(safe, "B08", "truncate")
    store = tmp_path / "cube.zarr"
    assert run(*sync_args(store, "--source", src)).exit_code == EXIT_PARTIAL
    other = make_product(tmp_path / "other", tile=GOOD_TILE, datatake_start=T1.replace(day=19),
                         window=WINDOWS[GOOD_TILE], as_zip=True)
    r = run(*sync_args(store, "--source", other.parent))
    assert r.exit_code == 0, r.output + r.stderr
    assert read_published(store, GROUP).length == 2


# ------------------------------------------------------------------------------------------
# 7. rasters that disagree with the metadata, found before warping


@pytest.mark.parametrize("variable, change, cause", [
    ("B03", {"shift": (10.0, 0.0)}, "origin"),                   # shifted 10 m east
    ("B08", {"drop_columns": 6}, "size 180x354"),                # 6 columns missing
    ("B02", {"from_resolution": 20}, "pixel size 20.0"),         # the 20 m file in the 10 m slot
    ("B04", {"crs": "EPSG:32632"}, "CRS EPSG:32632"),            # the wrong UTM zone
    ("B11", {"dtype": "uint8"}, "uint8, expected one uint16"),   # 8-bit reflectance
], ids=["shifted", "narrow", "resolution", "crs", "dtype"])
def test_raster_disagreeing_with_metadata_is_rejected(kit, tmp_path, variable, change, cause):
    from ingest.synth.hostile import rewrite_raster

    src, safe = hostile_copy(kit, tmp_path)
    rel = rewrite_raster(safe, variable, **change)
    assert_rejected_beside_good(kit, tmp_path, src, name_of(safe), rel, cause)


# ------------------------------------------------------------------------------------------
# 8. metadata too big to be real: refused from the zip entry's size, before it is read


OVERSIZE = 9 << 20  # 15x the largest real MTD_TL.xml (630 KB), 160x the largest MTD_MSIL2A.xml


@pytest.mark.parametrize("rel_of", [
    lambda safe: "MTD_MSIL2A.xml",
    lambda safe: next(safe.glob("GRANULE/*/MTD_TL.xml")).relative_to(safe).as_posix(),
], ids=["MTD_MSIL2A", "MTD_TL"])
def test_oversize_metadata_is_rejected(kit, tmp_path, rel_of):
    from ingest.synth.hostile import zip_with_padded_member

    src, safe = hostile_copy(kit, tmp_path)
    rel = rel_of(safe)
    size = OVERSIZE
    zip_with_padded_member(safe, src / (safe.stem + ".zip"), rel, size)
    shutil.rmtree(safe)
    reason = assert_rejected_beside_good(kit, tmp_path, src, name_of(safe), rel, f"{size:,} bytes")
    assert "more than" in reason


def test_oversize_member_is_refused_by_the_reader(kit, tmp_path):
    """read_product itself refuses an oversize XML (zip or folder), whatever the manifest says."""
    from ingest.errors import CorruptProductError
    from ingest.products.safe import read_product
    from ingest.synth.hostile import zip_with_padded_member

    _, safe = hostile_copy(kit, tmp_path)
    size = OVERSIZE
    z = zip_with_padded_member(safe, tmp_path / (safe.stem + ".zip"), "MTD_MSIL2A.xml", size)
    with pytest.raises(CorruptProductError, match=rf"{name_of(safe)}: MTD_MSIL2A.xml has {size:,} bytes"):
        read_product(z)
    with (safe / "MTD_MSIL2A.xml").open("ab") as f:
        f.write(b" " * (size - f.tell()))
    with pytest.raises(CorruptProductError, match=rf"MTD_MSIL2A.xml has {size:,} bytes"):
        read_product(safe)


_MEASURED_SYNC = """
import resource, sys
GIB = 1 << 30
resource.setrlimit(resource.RLIMIT_AS, (3 * GIB, 3 * GIB))
from ingest.cli.main import cli
try:
    cli.main(sys.argv[2:], prog_name="s2ingest")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
# VmHWM: this process's own peak (ru_maxrss would start from the peak of the process that
# spawned it: Linux carries the parent's high-water mark over an exec after vfork)
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as f:
    f.write(str(hwm * 1024))
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("match_manifest", [True, False], ids=["checksum-right", "checksum-wrong"])
def test_2gib_metadata_is_rejected_with_little_memory(kit, tmp_path, match_manifest):
    """MTD_MSIL2A.xml padded to 2 GiB (a zip of a few MB): the sync, under a 3 GiB address
    space limit, rejects it naming the file and publishes the good product beside it, with a
    peak RSS far below the member's size."""
    from ingest.store import read_published
    from ingest.synth.hostile import zip_with_padded_member

    src, safe = hostile_copy(kit, tmp_path)
    zipped = zip_with_padded_member(safe, src / (safe.stem + ".zip"), "MTD_MSIL2A.xml", 2 << 30,
                                    match_manifest=match_manifest)
    shutil.rmtree(safe)
    assert zipped.stat().st_size < 50 << 20
    store, rss = tmp_path / "cube.zarr", tmp_path / "maxrss"
    args = [str(a) for a in sync_args(store, "--source", src)]
    r = subprocess.run([sys.executable, "-c", _MEASURED_SYNC, str(rss), *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == EXIT_PARTIAL, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert f"rejected {name_of(safe)}: MTD_MSIL2A.xml" in r.stderr, r.stderr
    peak = int(rss.read_text())
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MiB"
    published = {n for names in read_published(store, GROUP).products for n in names}
    assert published == {name_of(kit["good"])}
    row = catalog_rows(_catalog_url(store))[name_of(safe)]
    assert row["state"] == "rejected" and "2,147,483,648 bytes" in row["reason"], row["reason"]
