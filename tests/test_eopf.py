"""EOPF Zarr L2A products (issue #23): the reader, hostile products, SAFE vs EOPF cubes, sources.

The same synthetic scene is written as SAFE and as EOPF Zarr (``make_product(format=...)``):
the reader must give the same ``Product`` and the same digital numbers, the cubes the same
chunks byte for byte; bad EOPF products are rejected one line each beside good ones; a datatake
delivered in both formats is one time step (SAFE stands); a cube holds both formats.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio

from catalog_fixtures import memory_engine, product_name
from hub_fixtures import (
    GROUP, T1, T2, WINDOWS, assert_same_cube, catalog_rows, catalog_url, fast_retries, isolated_env, run,
    store_snapshot, sync_args,
)
from ingest.errors import CorruptProductError, MetadataError, UnsupportedProductError
from ingest.products.eopf import open_raster, parse_eopf_metadata
from ingest.products.formats import detect_format, read_product, verify_product
from ingest.products.names import ProductName
from ingest.synth import make_product
from ingest.variables import VARIABLES

__all__ = ["fast_retries", "isolated_env"]  # fixtures used by name

REPO = Path(__file__).resolve().parents[1]
EXIT_PARTIAL = 10
SMALL_CHUNKS = {10: 60, 20: 35, 60: 12}  # many chunks, partial edge chunks (180x360 -> 3x6, 3x6, 3x5)
FIELDS = ("platform", "datatake_id", "datatake_start", "product_start", "generation_time", "baseline",
          "relative_orbit", "absolute_orbit", "tile", "geocoding", "boa_quantification", "aot_quantification",
          "wvp_quantification", "cloud_cover")


def eopf(out: Path, tile: str = "31UFT", when=T1, **kw) -> Path:
    return make_product(out, format="eopf", tile=tile, datatake_start=when, window=WINDOWS[tile], **kw)


def safe(out: Path, tile: str = "31UFT", when=T1, **kw) -> Path:
    return make_product(out, tile=tile, datatake_start=when, window=WINDOWS[tile], **kw)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    """One scene (T1, 31UFT) as SAFE, as EOPF (layouts A and B, small chunks, two zip layouts, a native name)."""
    root = tmp_path_factory.mktemp("eopf-scene")
    return {
        "safe": safe(root / "safe"),
        "eopf": eopf(root / "eopf"),
        "small": eopf(root / "small", layout=SMALL_CHUNKS),
        "layout_b": eopf(root / "layout_b", layout="B"),
        "zip": eopf(root / "zip", as_zip=True, layout=SMALL_CHUNKS),
        "zip_folder": eopf(root / "zipf", as_zip=True, zip_root="folder"),
        "native": eopf(root / "native", name_style="native"),
    }


def copy(src: Path, tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dst = tmp_path / src.name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    return dst


# ------------------------------------------------------------------------------------------
# 1. the reader: the same Product and the same DNs as the SAFE of the scene


def test_eopf_reads_as_the_same_product_as_safe(scene):
    s = read_product(scene["safe"])
    for key in ("eopf", "small", "layout_b", "zip", "zip_folder", "native"):
        e = read_product(scene[key])
        assert (e.format, s.format) == ("EOPF", "SAFE")
        assert e.name == s.name + ".zarr", key
        assert {f: getattr(e, f) for f in FIELDS} == {f: getattr(s, f) for f in FIELDS}, key
        assert e.boa_add_offset == {b: s.boa_add_offset[b] for b in e.boa_add_offset} and \
            set(e.boa_add_offset) == {v for v, spec in VARIABLES.items() if spec.is_reflectance}
        assert np.allclose(e.footprint, s.footprint, atol=1e-9)
        for var, spec in VARIABLES.items():  # every variable at the resolution the cube reads
            assert spec.resolution in e.files[var]
    assert read_product(scene["small"]).arrays["measurements/reflectance/r10m/b02"].chunks == (60, 60)
    assert read_product(scene["zip_folder"]).safe_root == scene["zip_folder"].name.removesuffix(".zip")
    assert read_product(scene["zip"]).safe_root == ""


@pytest.mark.parametrize("key", ["eopf", "small", "layout_b", "zip", "zip_folder"])
def test_eopf_arrays_hold_the_dns_of_the_safe_jp2(scene, key):
    s, e = read_product(scene["safe"]), read_product(scene[key])
    for var, spec in VARIABLES.items():
        with rasterio.open(s.gdal_path(s.file_for(var, spec.resolution))) as src:
            expected = src.read(1)
        raster = open_raster(e, e.file_for(var, spec.resolution))
        try:
            assert raster.read(1).dtype == np.dtype(spec.dtype)
            np.testing.assert_array_equal(raster.read(1), expected, err_msg=f"{key} {var}")
            # any window, across chunk edges (the warp reads strips)
            win = rasterio.windows.Window(3, 7, raster.width - 5, raster.height - 20)
            np.testing.assert_array_equal(raster.read(1, window=win), expected[7:-13, 3:-2])
            assert (raster.crs, raster.transform, tuple(raster.bounds)) == (src.crs, src.transform, tuple(src.bounds))
        finally:
            raster.close()


def test_formats_are_recognised_by_their_content(scene, tmp_path):
    for key in ("eopf", "small", "zip", "zip_folder", "native"):
        assert detect_format(scene[key]) == "EOPF", key
    assert detect_format(scene["safe"]) == "SAFE"
    # a Sample Service style zip is named like a SAFE product: its content decides
    renamed = tmp_path / (read_product(scene["zip"]).name.removesuffix(".zarr") + ".zip")
    shutil.copy2(scene["zip"], renamed)
    assert detect_format(renamed) == "EOPF" and read_product(renamed).format == "EOPF"
    assert scene["native"].name.startswith("S02MSIL2A_")
    assert read_product(scene["native"]).name == read_product(scene["eopf"]).name


def _edit_root(store: Path, change) -> None:
    zm = json.loads((store / ".zmetadata").read_text())
    change(zm["metadata"][".zattrs"])
    (store / ".zmetadata").write_text(json.dumps(zm))


def test_cpm_version_differences_are_tolerated(scene, tmp_path):
    """datatake key, proj:epsg vs proj:code, lower-cased other_metadata, empty or present
    processing:version, datetime "null" (DESIGN.md §7, EOPF: CPM 2.5.x to 2.8)."""
    expected = read_product(scene["eopf"])

    def cpm28(attrs: dict) -> None:
        props = attrs["stac_discovery"]["properties"]
        props["eopf:datatake_id"] = props.pop("eopf:data_take_id")
        props["proj:code"] = f"EPSG:{props.pop('proj:epsg')}"
        props["processing:version"] = props.pop("eopf:baseline")
        props["datetime"] = "null"
        attrs["other_metadata"] = {k.lower(): v for k, v in attrs["other_metadata"].items()}

    store = copy(scene["eopf"], tmp_path)
    _edit_root(store, cpm28)
    got = read_product(store)
    assert {f: getattr(got, f) for f in FIELDS} == {f: getattr(expected, f) for f in FIELDS}
    assert got.name == expected.name

    def baseline_from_datatake(attrs: dict) -> None:  # processing:version "" and no eopf:baseline
        attrs["stac_discovery"]["properties"].pop("eopf:baseline")
        attrs["stac_discovery"]["properties"]["processing:version"] = ""
    store = copy(scene["eopf"], tmp_path / "b")
    _edit_root(store, baseline_from_datatake)
    assert read_product(store).baseline == expected.baseline


def test_stored_dtype_variants_are_read_exactly(scene, tmp_path):
    """CLD as float32 with NaN (CPM 2.7), a big-endian band: the same values as the SAFE."""
    import zarr

    store = copy(scene["small"], tmp_path)
    before = read_product(store)
    cld = open_raster(before, "quality/probability/r20m/cld").read(1)
    b04 = open_raster(before, "measurements/reflectance/r10m/b04").read(1)
    group = zarr.open_group(str(store), mode="r+", zarr_format=2, use_consolidated=False)
    for path, dtype, values in (("quality/probability/r20m/cld", "<f4", np.where(cld == 0, np.nan, cld)),
                                ("measurements/reflectance/r10m/b04", ">u2", b04)):
        old = group[path]
        attrs, chunks = dict(old.attrs), old.chunks
        parent, name = path.rsplit("/", 1)
        del group[path]
        new = group[parent].create_array(name, shape=values.shape, chunks=chunks, dtype=dtype, fill_value=None,
                                         compressors=old.compressors, attributes=attrs,
                                         chunk_key_encoding={"name": "v2", "separator": "."})
        new[:] = values.astype(dtype)
    zarr.consolidate_metadata(str(store), zarr_format=2)
    after = read_product(store)
    assert after.arrays["quality/probability/r20m/cld"].dtype == "<f4"
    np.testing.assert_array_equal(open_raster(after, "quality/probability/r20m/cld").read(1), cld)
    np.testing.assert_array_equal(open_raster(after, "measurements/reflectance/r10m/b04").read(1), b04)


def test_baselines_before_04_have_no_offset(tmp_path):
    old = read_product(eopf(tmp_path, baseline="02.14"))
    assert old.baseline == "02.14" and set(old.boa_add_offset.values()) == {0}
    s = read_product(safe(tmp_path, baseline="02.14"))
    e = open_raster(old, old.file_for("B04", 10)).read(1)
    with rasterio.open(s.gdal_path(s.file_for("B04", 10))) as src:
        np.testing.assert_array_equal(e, src.read(1))


def test_pb_05_without_add_offset_is_refused(scene, tmp_path):
    from ingest.synth.hostile import _edit_metadata

    store = copy(scene["eopf"], tmp_path)
    _edit_metadata(store, "measurements/reflectance/r10m/b03/.zattrs",
                   lambda d: (d.pop("add_offset"), d["_eopf_attrs"].pop("add_offset")))
    with pytest.raises(MetadataError, match=r"PB 05.09 but measurements/reflectance/r10m/b03 has no add_offset"):
        read_product(store)


def _reference() -> Path:
    """The real EOPF metadata dumps (shared/reference/eopf), or skip (absent on users' machines)."""
    for base in (os.environ.get("S2INGEST_SHARED", ""), str(REPO.parent / "shared"), str(REPO.parents[1] / "shared")):
        p = Path(base) / "reference" / "eopf" if base else None
        if p is not None and p.is_dir():
            return p
    pytest.skip("shared/reference/eopf not found (set S2INGEST_SHARED)")


def _groupspec_to_zmetadata(spec: dict) -> bytes:
    """A pydantic-zarr GroupSpec dump as the consolidated metadata it describes."""
    meta: dict = {}

    def walk(node: dict, path: str) -> None:
        prefix = f"{path}/" if path else ""
        meta[f"{prefix}.zattrs"] = node.get("attributes", {})
        if "members" in node:
            meta[f"{prefix}.zgroup"] = {"zarr_format": 2}
            for name, child in node["members"].items():
                walk(child, f"{prefix}{name}")
        else:
            meta[f"{prefix}.zarray"] = {k: v for k, v in node.items() if k != "attributes"}
    walk(spec, "")
    return json.dumps({"metadata": meta, "zarr_consolidated_format": 1}).encode()


@pytest.mark.parametrize("dump, expected", [
    ("S02MSIL2A_20250109T100401_0000_A122_T461.cpm259.zmetadata.json",
     ("S2A_MSIL2A_20250109T100401_N0511_R122_T34UCE_20250109T122750.zarr", "GS2A_20250109T100401_049883_N05.11",
      32634, (300000.0, 6000000.0), {10: (1830, 1830), 20: (915, 915), 60: (305, 305)})),
    ("S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613.cpm256.groupspec.json",
     ("S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613.zarr", "GS2A_20251008T100041_053773_N05.11",
      32632, (699960.0, 4700040.0), {10: (5490, 5490), 20: (5490, 5490), 60: (1830, 1830)})),
], ids=["cpm259", "cpm256"])
def test_real_product_metadata(dump, expected):
    data = (_reference() / dump).read_bytes()
    if "groupspec" in dump:
        data = _groupspec_to_zmetadata(json.loads(data))
    p = parse_eopf_metadata(data, name_hint=dump.split(".")[0])
    name, datatake, epsg, corner, chunks = expected
    assert (p.name, p.datatake_id, p.geocoding.epsg, (p.geocoding.ulx, p.geocoding.uly)) == (name, datatake, epsg, corner)
    assert p.geocoding.sizes == {10: (10980, 10980), 20: (5490, 5490), 60: (1830, 1830)}
    assert (p.baseline, p.relative_orbit, p.platform) == ("05.11", 122, "S2A")
    assert set(p.boa_add_offset.values()) == {-1000} and p.boa_quantification == 10000.0
    assert {r: p.arrays[p.file_for("B02" if r == 10 else "B05" if r == 20 else "B01", r)].chunks
            for r in (10, 20, 60)} == chunks
    assert p.arrays["quality/probability/r20m/cld"].dtype == "|u1" and p.files["CLD"] == {20: "quality/probability/r20m/cld"}
    assert len(p.footprint) == 5 and p.cloud_cover is not None


# ------------------------------------------------------------------------------------------
# 2. hostile EOPF products: refused with the cause, by the reader, the verification or the decoder


def _missing_band(store: Path) -> None:
    from ingest.synth.hostile import eopf_drop_array
    eopf_drop_array(store, "measurements/reflectance/r10m/b04")


def _narrow(store: Path) -> None:
    from ingest.synth.hostile import eopf_rewrite_array
    eopf_rewrite_array(store, "measurements/reflectance/r10m/b08", drop_columns=6)


def _shifted(store: Path) -> None:
    from ingest.synth.hostile import eopf_rewrite_array
    eopf_rewrite_array(store, "measurements/reflectance/r10m/b03", shift=(10.0, 0.0))


def _dtype(store: Path) -> None:
    from ingest.synth.hostile import eopf_rewrite_array
    eopf_rewrite_array(store, "measurements/reflectance/r20m/b11", dtype="<f8")


def _shifted_coordinates(store: Path) -> None:
    import zarr
    x = zarr.open_array(str(store / "measurements/reflectance/r20m/x"), mode="r+", zarr_format=2)
    x[:] = x[:] + 20


def _tiny_chunks(store: Path) -> None:
    from ingest.synth.hostile import _edit_metadata
    _edit_metadata(store, "measurements/reflectance/r10m/b04/.zarray", lambda d: d.update(chunks=[1, 1]))


def _hostile(how: str):
    def damage(store: Path) -> None:
        from ingest.synth.hostile import eopf_hostile_metadata
        eopf_hostile_metadata(store, how, size=9 << 20)
    return damage


def _not_l2a(store: Path) -> None:
    _edit_root(store, lambda a: a["stac_discovery"]["properties"].update({"product:type": "S02MSIL1C"}))


READER_CASES = {  # name -> (damage, error, message)
    "missing band": (_missing_band, CorruptProductError, r"missing array measurements/reflectance/r10m/b04 \(B04 at 10 m\)"),
    "narrow": (_narrow, MetadataError, r"r10m/b08 is 180x354, other 10 m arrays are 180x360"),
    "shifted": (_shifted, MetadataError, r"r10m/b03: origin \(600010.0, 5746020.0\) but other arrays start at"),
    "dtype": (_dtype, MetadataError, r"r20m/b11: dtype <f8 where uint16 is expected"),
    "coordinates": (_shifted_coordinates, MetadataError, r"r20m/x\[0\] = 600030, but proj:transform puts"),
    "huge attribute": (_hostile("huge"), CorruptProductError, r"\.zmetadata has 9,437,\d+ bytes, more than the 8,388,608"),
    "huge string": (_hostile("huge-string"), CorruptProductError, r"an attribute of 2,097,152 characters"),
    "deep nesting": (_hostile("deep"), CorruptProductError, r"nests deeper than 32 levels"),
    "tiny chunks": (_tiny_chunks, CorruptProductError, r"r10m/b04/\.zarray: 64,800 chunks, more than the 10,000"),
    "not L2A": (_not_l2a, UnsupportedProductError, r"product:type 'S02MSIL1C'"),
}


@pytest.mark.parametrize("case", list(READER_CASES))
def test_hostile_metadata_is_refused_by_the_reader(scene, tmp_path, case):
    damage, error, message = READER_CASES[case]
    store = copy(scene["eopf"], tmp_path)
    damage(store)
    with pytest.raises(error, match=message):
        read_product(store)
    with pytest.raises(error, match=message):  # and by the verification a source runs
        verify_product(store)


@pytest.mark.parametrize("how, message", [
    ("garbage", r"r10m/b04 chunk 1\.2: the Blosc header says"),
    ("truncate", r"r10m/b04 chunk 1\.2: the Blosc header says [\d,]+ bytes from [\d,]+, the chunk must decode to "
                 r"7,200 from the [\d,]+ stored"),
])
def test_corrupt_chunk_is_refused_when_decoded(scene, tmp_path, how, message):
    """No checksum can find it before: verification passes, the decoder names array and chunk."""
    from ingest.synth.hostile import eopf_corrupt_chunk

    store = copy(scene["small"], tmp_path)
    eopf_corrupt_chunk(store, "measurements/reflectance/r10m/b04", (1, 2), how)
    product = read_product(store)
    verify_product(store)
    raster = open_raster(product, "measurements/reflectance/r10m/b04")
    assert raster.read(1, window=rasterio.windows.Window(0, 0, 100, 60)).shape == (60, 100)  # other chunks fine
    with pytest.raises(CorruptProductError, match=message) as info:
        raster.read(1)
    assert info.value.product == product.name


def test_missing_chunk_is_refused_by_verification(scene, tmp_path):
    from ingest.synth.hostile import eopf_corrupt_chunk

    store = copy(scene["small"], tmp_path)
    eopf_corrupt_chunk(store, "quality/atmosphere/r20m/aot", (2, 1), "missing")
    with pytest.raises(CorruptProductError, match=r"quality/atmosphere/r20m/aot chunk 2\.1 is missing"):
        verify_product(store)
    raster = open_raster(read_product(store), "quality/atmosphere/r20m/aot")
    with pytest.raises(CorruptProductError, match=r"quality/atmosphere/r20m/aot chunk 2\.1 is missing"):
        raster.read(1)


@pytest.mark.parametrize("extra, symlinks, message", [
    ({"../../evil.txt": b"x"}, None, r"zip member '\.\./\.\./evil\.txt' walks out of its folder.*zip slip"),
    ({"/etc/evil": b"x"}, None, r"zip member '/etc/evil' is an absolute path"),
    (None, {"measurements/reflectance/r10m/b04/9.9": "/dev/zero"}, r"is a symbolic link"),
], ids=["dotdot", "absolute", "symlink"])
def test_hostile_zip_is_refused(scene, tmp_path, extra, symlinks, message):
    from ingest.synth.hostile import eopf_zip

    z = eopf_zip(scene["eopf"], tmp_path / (scene["eopf"].name + ".zip"), extra=extra, symlinks=symlinks)
    assert detect_format(z) == "EOPF"
    with pytest.raises(CorruptProductError, match=message):
        read_product(z)
    with pytest.raises(CorruptProductError, match=message):
        verify_product(z)


def test_symbolic_links_in_a_folder_are_refused(scene, tmp_path):
    store = copy(scene["eopf"], tmp_path)
    chunk = store / "measurements/reflectance/r10m/b02/0.0"
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    product = read_product(store)  # the metadata is fine
    with pytest.raises(CorruptProductError, match=r"r10m/b02/0\.0 is \(or lies under\) a symbolic link"):
        open_raster(product, "measurements/reflectance/r10m/b02").read(1)
    with pytest.raises(CorruptProductError, match=r"symbolic link"):
        verify_product(store)


def test_zarr_v3_store_is_unsupported(tmp_path):
    store = tmp_path / "x.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(UnsupportedProductError, match="Zarr v3"):
        read_product(store)


# ------------------------------------------------------------------------------------------
# 3. through `s2ingest sync`: a mixed batch, the same cube from either format, both formats


def _store_files(store: Path) -> dict[str, bytes]:
    """Every file outside ``.s2ingest/``; the root documents without the root hash they carry
    (it names the version's bookkeeping, whose root records when it was made)."""
    from ingest.store.bookkeeping.codec import POINTER_KEYS, strip_pointer

    files = {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
             if p.is_file() and ".s2ingest" not in p.relative_to(store).parts}
    files.update(strip_pointer({k: files[k] for k in POINTER_KEYS if k in files}))
    return files


def _chunks(store: Path) -> dict[str, bytes]:
    """Every data and coordinate chunk of the group (metadata documents carry the version)."""
    return {k: v for k, v in _store_files(store).items()
            if k.startswith(GROUP + "/") and not k.rsplit("/", 1)[-1].startswith(".")}


def _products_column(store: Path) -> list[str]:
    import xarray as xr

    return [str(v) for v in xr.open_zarr(store, group=GROUP, consolidated=True)["products"].values]


def _sync(store: Path, src: Path, *more) -> object:
    store.parent.mkdir(parents=True, exist_ok=True)
    r = run(*sync_args(store, "--source", src, "--settle", "0", *more))
    assert "Traceback" not in r.output + r.stderr
    return r


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict[str, Path]:
    """T1 (both tiles) and T2 (31UFT) in each format, in folders of their own."""
    root = tmp_path_factory.mktemp("eopf-both")
    out = {"safe": root / "safe", "eopf": root / "eopf"}
    for tile in WINDOWS:
        safe(out["safe"], tile, as_zip=True)
        eopf(out["eopf"], tile, as_zip=tile == "31UET", layout="A" if tile == "31UET" else SMALL_CHUNKS)
    out["safe_t2"] = safe(root / "safe_t2", "31UFT", T2)
    out["eopf_t2"] = eopf(root / "eopf_t2", "31UFT", T2)
    return out


@pytest.fixture(scope="module")
def safe_cube(both, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("safe-cube") / "cube.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(store.parent)
        r = _sync(store, both["safe"])
    assert r.exit_code == 0, r.output + r.stderr
    return store


def test_the_same_scene_as_safe_or_eopf_gives_byte_identical_chunks(both, safe_cube, tmp_path):
    store = tmp_path / "cube.zarr"
    r = _sync(store, both["eopf"])
    assert r.exit_code == 0, r.output + r.stderr
    a, b = _store_files(safe_cube), _store_files(store)
    assert sorted(a) == sorted(b)
    differ = sorted(k for k in a if a[k] != b[k])
    assert differ == [f"{GROUP}/products/0"]  # only the provenance: the names carry the format
    assert len([k for k in a if k.startswith(f"{GROUP}/B04/")]) > 0
    (safe_names,), (eopf_names,) = _products_column(safe_cube), _products_column(store)
    assert eopf_names == ",".join(n + ".zarr" for n in safe_names.split(","))
    assert {row["format"] for row in catalog_rows(catalog_url(store)).values()} == {"EOPF"}


def test_a_datatake_in_both_formats_is_one_time_step_and_safe_stands(both, safe_cube, tmp_path):
    """Whatever the order the two formats arrive in, the cube is the SAFE cube, byte for byte."""
    together = tmp_path / "together"
    together.mkdir()
    for folder in (both["safe"], both["eopf"]):
        for p in folder.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, together / p.name)
    store = tmp_path / "one-sync" / "cube.zarr"
    r = _sync(store, together)
    assert r.exit_code == 0, r.output + r.stderr
    assert _store_files(store) == _store_files(safe_cube)
    rows = catalog_rows(catalog_url(store))
    assert {n: row["state"] for n, row in rows.items()} == {
        n: ("superseded" if n.endswith(".zarr") else "published") for n in rows}
    assert all(rows[n]["reason"] == f"superseded by {n.removesuffix('.zarr')}" for n in rows if n.endswith(".zarr"))

    # EOPF first (published), SAFE later: the step is recomputed with SAFE, one step still
    store = tmp_path / "eopf-first" / "cube.zarr"
    assert _sync(store, both["eopf"]).exit_code == 0
    r = _sync(store, together)
    assert r.exit_code == 0, r.output + r.stderr
    assert _chunks(store) == _chunks(safe_cube)  # pixels, time axis and provenance
    assert {n: row["state"] for n, row in catalog_rows(catalog_url(store)).items()} == \
        {n: row["state"] for n, row in rows.items()}

    # SAFE first: the EOPF copies arrive and nothing is written
    store = tmp_path / "safe-first" / "cube.zarr"
    assert _sync(store, both["safe"]).exit_code == 0
    before = store_snapshot(store)
    r = _sync(store, together)
    assert r.exit_code == 0, r.output + r.stderr
    assert store_snapshot(store) == before


def test_a_cube_holds_datatakes_of_both_formats(both, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in [*both["safe"].iterdir(), both["eopf_t2"]]:
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / p.name)
    store = tmp_path / "cube.zarr"
    r = _sync(store, src)
    assert r.exit_code == 0, r.output + r.stderr
    steps = _products_column(store)
    assert len(steps) == 2
    assert not any(n.endswith(".zarr") for n in steps[0].split(",")) and steps[1].endswith(".zarr")
    # the EOPF step equals the step a SAFE of the same scene gives
    ref_src = tmp_path / "ref"
    ref_src.mkdir()
    for p in [*both["safe"].iterdir(), both["safe_t2"]]:
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, ref_src / p.name)
    ref = tmp_path / "ref-cube" / "cube.zarr"
    assert _sync(ref, ref_src).exit_code == 0
    a, b = _store_files(store), _store_files(ref)
    assert sorted(k for k in a if a[k] != b[k]) == [f"{GROUP}/products/0"]


def _truncated_chunk(store: Path) -> None:
    from ingest.synth.hostile import eopf_corrupt_chunk
    eopf_corrupt_chunk(store, "measurements/reflectance/r10m/b04", (0, 0), "truncate")


# the hostile products of the mixed batch: one defect each, one datatake each (T1 + days)
BATCH = {  # name -> (damage, zip it, reason text)
    "missing band": (_missing_band, False, "missing array measurements/reflectance/r10m/b04"),
    "narrow": (_narrow, True, "is 180x354, other 10 m arrays are 180x360"),
    "shifted": (_shifted, False, "r10m/b03: origin (598390.0, 5746020.0) but other arrays start at"),
    "corrupt chunk": (_truncated_chunk, False, "r10m/b04 chunk 0.0: the Blosc header"),
    "huge attribute": (_hostile("huge"), False, "more than the 8,388,608"),
    "deep nesting": (_hostile("deep"), True, "nests deeper than 32 levels"),
    "zip slip": (None, True, "walks out of its folder"),
}


def test_bad_eopf_products_are_rejected_beside_good_ones_of_both_formats(both, tmp_path):
    from ingest.synth.hostile import eopf_zip

    src = tmp_path / "src"
    src.mkdir()
    good = [next(both["safe"].glob("*T31UFT*")), next(both["eopf"].glob("*T31UET*")), both["eopf_t2"]]
    for p in good:
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / p.name)
    bad: dict[str, tuple[str, str]] = {}
    for i, (case, (damage, zipped, reason)) in enumerate(BATCH.items(), start=1):
        store = eopf(tmp_path / "work", "31UET", T1 + timedelta(days=i))
        name = store.name
        if damage is not None:
            damage(store)
        if zipped:
            eopf_zip(store, src / f"{name}.zip", extra={"../evil.txt": b"x"} if case == "zip slip" else None)
            shutil.rmtree(store)
        else:
            shutil.move(store, src / name)
        bad[name] = (case, reason)
    store = tmp_path / "cube.zarr"
    r = _sync(store, src)
    assert r.exit_code == EXIT_PARTIAL, r.output + r.stderr
    rows = catalog_rows(catalog_url(store))
    good_names = {read_product(p).name for p in good}
    assert {n for n, row in rows.items() if row["state"] == "published"} == good_names
    for name, (case, reason) in bad.items():
        assert rows[name]["state"] == "rejected", (case, rows[name])
        assert reason in rows[name]["reason"], (case, rows[name]["reason"])
        lines = [ln for ln in r.stderr.splitlines() if f"rejected {name}:" in ln]
        assert len(lines) == 1 and reason in lines[0], (case, r.stderr)
    # the rest of the batch is the cube the good products give alone
    alone = tmp_path / "alone"
    alone.mkdir()
    for p in good:
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, alone / p.name)
    expected = tmp_path / "expected" / "cube.zarr"
    assert _sync(expected, alone).exit_code == 0
    assert_same_cube(store, expected)
    # a rerun neither retries them nor fails
    again = _sync(store, src)
    assert again.exit_code == 0, again.output + again.stderr
    assert {n: row["state"] for n, row in catalog_rows(catalog_url(store)).items()} == \
        {n: row["state"] for n, row in rows.items()}


# ------------------------------------------------------------------------------------------
# 4. sources: a local folder (names, skips) and the (fake) Copernicus Data Space


def test_local_source_finds_eopf_folders_and_zips(scene, tmp_path):
    from ingest.sources import make_source

    src = tmp_path / "src"
    src.mkdir()
    for key in ("safe", "native", "zip"):
        copy(scene[key], src)
    other = src / "cube.zarr"  # a Zarr store that is not a product
    other.mkdir()
    (other / ".zmetadata").write_text('{"metadata": {".zgroup": {"zarr_format": 2}}, "zarr_consolidated_format": 1}')
    source = make_source("local", directory=src)
    records = source.search(51)
    name = read_product(scene["safe"]).name
    # the native-named folder and the zip are one product: the same name (a tie in the catalog)
    assert sorted(r.name for r in records) == [name, name + ".zarr", name + ".zarr"]
    assert {r.hub_id for r in records if r.name.endswith(".zarr")} == {
        str(src / scene["native"].name), str(src / scene["zip"].name)}
    assert [why for p, why in source.skipped] == [
        "not an EOPF Sentinel-2 L2A product (cube.zarr: the root attributes have no stac_discovery.properties)"]
    for r in records:
        assert source.fetch(r, tmp_path / "cache").exists()


def _cdse_config(hub, path: Path, **extra) -> Path:
    lines = ["[hub]", 'name = "cdse"', f'catalogue_url = "{hub.catalogue_url}"', f'token_url = "{hub.token_url}"',
             f'download_url = "{hub.download_url}"'] + [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sync_from_the_fake_cdse_hub_serving_eopf_products(both, tmp_path):
    """The hub serves T1 as EOPF zips and T2 as a SAFE zip (the form assumed in DESIGN.md §7)."""
    from ingest.sources.cdse import CdseSource
    from ingest.testing import FakeCDSE
    from ingest.synth.hostile import eopf_zip

    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    for p in both["eopf"].iterdir():
        if p.is_dir():
            eopf_zip(p, hub_dir / f"{p.name}.zip")
        else:
            shutil.copy2(p, hub_dir / p.name)
    shutil.copy2(make_product(tmp_path / "t2", tile="31UFT", datatake_start=T2, window=WINDOWS["31UFT"],
                              as_zip=True), hub_dir)
    env = {"S2INGEST_CDSE_USER": "user", "S2INGEST_CDSE_PASSWORD": "password"}
    with FakeCDSE(hub_dir) as hub:
        listed = {p.name: hub.item(p) for p in hub.store.all()}
        eopf_items = [i for n, i in listed.items() if n.endswith(".zarr")]
        assert len(eopf_items) == 2 and all(i["Name"].endswith(".zarr") and
                                            i["_attributes"]["productType"] == ("String", "S02MSIL2A")
                                            for i in eopf_items)
        assert len(CdseSource(**hub.source_options(), formats=["SAFE"]).search(51)) == 1
        store = tmp_path / "cube.zarr"
        config = _cdse_config(hub, tmp_path / "cdse.toml")
        r = run(*sync_args(store, "--config", config, "--settle", "0"), env=env)
        assert r.exit_code == 0, r.output + r.stderr
        from urllib.parse import unquote_plus

        sync_search = unquote_plus([q.path for q in hub.requests if "/odata/v1/Products?" in q.path][-1])
        assert "Value eq 'S2MSI2A') or Attributes" in sync_search and "Value eq 'S02MSIL2A')" in sync_search
    rows = catalog_rows(catalog_url(store))
    assert sorted((n.endswith(".zarr"), row["state"], row["hub"], row["format"]) for n, row in rows.items()) == [
        (False, "published", "cdse", "SAFE"), (True, "published", "cdse", "EOPF"), (True, "published", "cdse", "EOPF")]
    assert all(row["hub_checksum_algorithm"] == "MD5" for row in rows.values())
    cache = store.with_name(store.name + ".cache")
    assert sorted(p.name for p in cache.glob("*.zip")) == sorted(p.name for p in hub_dir.iterdir())
    # the same cube as the same products from a local folder
    local = tmp_path / "local" / "cube.zarr"
    assert _sync(local, hub_dir).exit_code == 0
    assert _chunks(store) == _chunks(local)


def test_a_corrupt_download_is_refused_by_the_hub_checksum(both, tmp_path, fast_retries):
    """An EOPF zip has no checksums inside: the hub's checksum of the whole file is the check."""
    from ingest.testing import FakeCDSE

    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    z = next(both["eopf"].glob("*.zip"))
    shutil.copy2(z, hub_dir)
    env = {"S2INGEST_CDSE_USER": "user", "S2INGEST_CDSE_PASSWORD": "password"}
    with FakeCDSE(hub_dir) as hub:
        hub.faults.wrong_checksum()
        store = tmp_path / "cube.zarr"
        r = run(*sync_args(store, "--config", _cdse_config(hub, tmp_path / "cdse.toml"), "--settle", "0"), env=env)
    assert r.exit_code == EXIT_PARTIAL, r.output + r.stderr
    (row,) = catalog_rows(catalog_url(store)).values()
    assert row["state"] == "rejected" and "MD5 of the downloaded file" in row["reason"], row["reason"]


# ------------------------------------------------------------------------------------------
# 5. the supersede rule: the same processing in two formats, any arrival order


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_catalog_keeps_the_safe_of_a_tie_whatever_the_order(order):
    import catalog as c
    from catalog import db
    from catalog_fixtures import at

    safe_name = product_name()
    newer_eopf = product_name(generated="20230901T000000") + ".zarr"
    names = [safe_name + ".zarr", safe_name, product_name(generated="20230801T000000")]  # EOPF, SAFE, older
    engine = memory_engine()
    for step, i in enumerate(order):
        with db.session_scope(engine) as s:
            c.record_discovered(s, [names[i]], now=at(step))
    with db.session_scope(engine) as s:
        got = {n: (c.get_product(s, n).state, c.get_product(s, n).format) for n in names}
    assert got == {names[0]: ("superseded", "EOPF"), names[1]: ("discovered", "SAFE"), names[2]: ("superseded", "SAFE")}
    with db.session_scope(engine) as s:  # a newer processing wins, whatever its format
        c.record_discovered(s, [newer_eopf], now=at(9))
        assert c.get_product(s, safe_name).state == "superseded"
        assert c.get_product(s, newer_eopf).state == "discovered"
    engine.dispose()


def test_plan_keeps_the_safe_of_a_tie():
    from datetime import datetime, timezone

    from ingest.publish.plan import PlannedProduct, select_current

    key = (datetime(2023, 6, 14, 10, 56, 21, tzinfo=timezone.utc), "S2A")
    gen = datetime(2023, 6, 14, 13, 48, 21, tzinfo=timezone.utc)
    name = product_name(platform="S2A")
    a = PlannedProduct(name, key, "31UFU", 32631, "05.09", gen)
    b = PlannedProduct(name + ".zarr", key, "31UFU", 32631, "05.09", gen.replace(microsecond=500))
    for products in ([a, b], [b, a]):
        current, superseded = select_current(products)
        assert [p.name for p in current] == [name] and [p.name for p in superseded] == [name + ".zarr"]
    assert ProductName.parse(name + ".zarr.zip").format == "EOPF" and ProductName.parse(name + ".SAFE").format == "SAFE"


def test_migration_0005_keeps_safe_products_and_allows_both_formats(sqlite_url_fresh):
    from sqlalchemy import text

    from catalog import db

    url = sqlite_url_fresh
    assert db.upgrade(url, "0004") == "0004"
    engine = db.make_engine(url)
    row = ("INSERT INTO products (name, platform, datatake_start, tile, relative_orbit, baseline, generation_time, "
           "hub, state, attempts, created_at, updated_at{fmt}) VALUES (:n, 'S2B', :t, '31UFU', 122, '05.09', :t, "
           "'local', 'published', 0, :t, :t{val})")
    t = "2023-08-23 09:55:59.000000"
    with engine.begin() as conn:
        conn.execute(text(row.format(fmt="", val="")), {"n": product_name(), "t": t})
    assert db.upgrade(url, "0005") == "0005"
    with engine.begin() as conn:
        assert conn.execute(text("SELECT format FROM products")).scalar_one() == "SAFE"
        conn.execute(text(row.format(fmt=", format", val=", 'EOPF'")), {"n": product_name() + ".zarr", "t": t})
    assert db.downgrade(url, "0004") == "0004"  # EOPF rows are forgotten, SAFE ones kept
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name FROM products")).scalars().all() == [product_name()]
    engine.dispose()


@pytest.fixture()
def sqlite_url_fresh(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.sqlite'}"


# ------------------------------------------------------------------------------------------
# 6. the kit: `s2ingest synth --format eopf`


def test_synth_command_writes_eopf_products(tmp_path):
    r = run("synth", tmp_path / "out", "--tile", "31UFT", "--time", "2023-06-14T10:56:21", "--window",
            *WINDOWS["31UFT"], "--format", "eopf", "--zip")
    assert r.exit_code == 0, r.output + r.stderr
    (path,) = (tmp_path / "out").iterdir()
    assert path.name.endswith(".zarr.zip") and Path(r.output.strip()) == path
    product = read_product(path)
    assert product.format == "EOPF" and product.tile == "31UFT"
    verify_product(path)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        zmeta = json.loads(zf.read(".zmetadata"))
        assert zmeta["zarr_consolidated_format"] == 1
        b02 = zmeta["metadata"]["measurements/reflectance/r10m/b02/.zarray"]
        assert (b02["dtype"], b02["fill_value"], b02["compressor"]) == (
            "<u2", 0, {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2, "blocksize": 0})
        assert zmeta["metadata"]["quality/probability/r20m/band/.zarray"]["compressor"] is None
        assert "quality/probability/r60m/cld/.zarray" not in zmeta["metadata"]  # CLD/SNW at 20 m only
        root = zmeta["metadata"][".zattrs"]
        assert root["stac_discovery"]["id"] == product.name.removesuffix(".zarr") + ".SAFE"
        assert root["stac_discovery"]["properties"]["product:type"] == "S02MSIL2A"
