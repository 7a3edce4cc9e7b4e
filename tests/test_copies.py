"""``s2ingest rechunk`` and ``s2ingest export`` run as a user runs them (subprocesses), read
back with real clients: xarray/zarr 3 (locally and over HTTP range requests), GDAL (rasterio)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

import s2ingest
from conftest import D1, GROUP, cli_env
from ingest.testing.httpserve import serve

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
BBOX = "88000,431250,98000,437500"  # 1000 x 625 px inside the written chunks
BBOX_T = (88_000.0, 431_250.0, 98_000.0, 437_500.0)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([S2INGEST, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def run_here(*args: str):
    """In-process (refusals: quick, and the exit code mapping is the same code)."""
    from click.testing import CliRunner

    from ingest.cli.main import cli

    r = CliRunner().invoke(cli, list(args))
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def copies(synced_cube, tmp_path_factory):
    root = tmp_path_factory.mktemp("copies")
    ts = run("rechunk", str(synced_cube), str(root / "series.zarr"), "--chunks", "time=-1,y=25,x=25",
             "--bbox", BBOX, "--variables", "B04,SCL,CLD", "--max-mem", "64MB", "--no-progress")
    assert ts.returncode == 0, ts.stderr
    sh = run("rechunk", str(synced_cube), str(root / "dates.zarr"), "--zarr-format", "3",
             "--chunks", "time=1", "--shards", "time=5", "--bbox", BBOX,
             "--variables", "B02,B03,B04,B08", "--no-progress")
    assert sh.returncode == 0, sh.stderr
    return root, ts.stdout, sh.stdout


def _source(cube, variables):
    return s2ingest.open_cube(cube, bbox=BBOX_T, variables=variables, mask_and_scale=False)


def test_rechunked_copy_keeps_values_encodings_and_grid_mapping(copies, synced_cube):
    root, out, _ = copies
    src = _source(synced_cube, ["B04", "SCL", "CLD"])
    assert f"rechunked version {src.attrs['s2ingest_store_version']} of {synced_cube}" in out
    raw = xr.open_zarr(root / "series.zarr", group=GROUP, consolidated=True, mask_and_scale=False)
    for name in ("B04", "SCL", "CLD", "time", "platform", "products", "x", "y"):
        np.testing.assert_array_equal(raw[name].values, src[name].values, err_msg=name)
    assert raw.B04.encoding["chunks"] == (3, 25, 25) and raw.B04.dtype == np.uint16
    codec = raw.B04.encoding["compressors"][0].get_config()
    assert (codec["id"], codec["cname"], codec["clevel"]) == ("blosc", "zstd", 1)
    dec = xr.open_zarr(root / "series.zarr", group=GROUP, consolidated=True)
    assert dec.B04.encoding["scale_factor"] == 1e-4 and dec.CLD.encoding["_FillValue"] == 255
    assert dec.SCL.attrs["flag_meanings"].split()[4] == "vegetation"
    assert dec.B04.attrs["grid_mapping"] == "spatial_ref"
    assert "Amersfoort / RD New" in dec.spatial_ref.attrs["crs_wkt"]
    assert dec.spatial_ref.attrs["GeoTransform"].split() == ["88000.0", "10.0", "0.0", "437500.0",
                                                             "0.0", "-10.0"]
    assert dec.attrs["s2ingest_source"] == str(synced_cube)
    assert dec.attrs["s2ingest_store_version"] == src.attrs["s2ingest_store_version"]
    # consolidated at the root too (zarr-python 2 readers), and GDAL sees the subset's grid
    assert "S2/R051/B04" in dict(zarr.open_consolidated(str(root / "series.zarr"), mode="r").members(max_depth=None))
    with rasterio.open(f'ZARR:"{root / "series.zarr"}":/{GROUP}/B04') as gdal:
        assert gdal.crs.to_epsg() == 28992 and gdal.transform.c == 88_000 and gdal.transform.f == 437_500
    assert not [p for p in root.iterdir() if ".partial" in p.name]


def _bytes_read(server, read) -> int:
    server.reset()
    read()
    return server.served_bytes


def test_a_pixel_series_costs_far_fewer_bytes_from_the_rechunked_copy(copies, synced_cube):
    root, _, _ = copies
    with serve(synced_cube.parent) as src_server, serve(root) as copy_server:
        src = xr.open_zarr(f"{src_server.url}/{synced_cube.name}", group=GROUP, consolidated=True)
        cpy = xr.open_zarr(f"{copy_server.url}/series.zarr", group=GROUP, consolidated=True)
        px = dict(x=93_005.0, y=434_005.0)
        a = _bytes_read(src_server, lambda: src.B04.sel(**px).values)
        b = _bytes_read(copy_server, lambda: cpy.B04.sel(**px).values)
        np.testing.assert_array_equal(src.B04.sel(**px).values, cpy.B04.sel(**px).values)
    assert b * 20 < a, (a, b)


def test_sharded_copy_opens_in_xarray_and_one_date_costs_a_fraction(copies, synced_cube):
    root, _, out = copies
    assert "Zarr format 3, chunks time=1,y=625,x=500 in shards time=3,y=625,x=500" in out
    meta = zarr.open_group(str(root / "dates.zarr"), mode="r", path=GROUP)
    assert meta["B04"].metadata.zarr_format == 3 and meta["B04"].shards == (3, 625, 500)
    bands = ["B02", "B03", "B04", "B08"]
    with serve(synced_cube.parent) as src_server, serve(root) as copy_server:
        src = xr.open_zarr(f"{src_server.url}/{synced_cube.name}", group=GROUP, consolidated=True)
        cpy = xr.open_zarr(f"{copy_server.url}/dates.zarr", group=GROUP, consolidated=True)
        area = dict(x=slice(BBOX_T[0], BBOX_T[2]), y=slice(BBOX_T[3], BBOX_T[1]))
        a = _bytes_read(src_server, lambda: src[bands].isel(time=1).sel(**area).load())
        b = _bytes_read(copy_server, lambda: cpy[bands].isel(time=1).load())
        np.testing.assert_array_equal(cpy.B04.values, src.B04.sel(**area).values)
    # the source's (5, 625, 500) chunks hold all 3 dates; a shard's inner chunk holds one
    assert 0.2 < b / a < 0.45, (a, b)


def test_rechunk_refusals_create_nothing(copies, synced_cube, tmp_path):
    root, _, _ = copies
    r = run_here("rechunk", str(synced_cube), str(root / "series.zarr"), "--chunks", "time=-1")
    assert r.returncode == 3 and "already exists" in r.stderr
    r = run_here("rechunk", str(synced_cube), str(tmp_path / "x.zarr"), "--chunks", "time=-1",
            "--max-mem", "1MB", "--variables", "B04")
    assert r.returncode == 3 and "B04: one source chunk (3, 625, 500) holds 1.79 MiB, more than " \
                                  "--max-mem 0.95 MiB" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_rechunk_that_fails_midway_leaves_no_copy(synced_cube, tmp_path):
    """A damaged chunk stops the copy while it is being written: exit 6 naming the key, and
    neither DST nor the temporary copy is left behind."""
    import shutil

    cube = tmp_path / "src" / "cube.zarr"
    shutil.copytree(synced_cube, cube)
    victim = sorted((cube / GROUP / "B04").glob("0.33.*"))[-1]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    out = tmp_path / "out"
    out.mkdir()
    r = run_here("rechunk", str(cube), str(out / "c.zarr"), "--chunks", "time=-1,y=25,x=25",
                 "--variables", "B02,B04", "--bbox", "85000,431250,105000,437500")
    assert r.returncode == 6, r.stderr
    assert f"{GROUP}/B04/{victim.name} does not match the version's manifest" in r.stderr
    assert list(out.iterdir()) == []


def test_export_one_date_to_a_valid_cog(synced_cube, tmp_path):
    out = tmp_path / "d1.tif"
    r = run("export", str(synced_cube), str(out), "--time", D1.date().isoformat(), "--bbox", BBOX,
            "--variables", "B02,B03,B04,B08", "--no-progress")
    assert r.returncode == 0, r.stderr
    src = _source(synced_cube, ["B02", "B03", "B04", "B08"]).isel(time=0)
    with rasterio.open(out) as tif:
        assert tif.driver == "GTiff" and tif.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert tif.profile["tiled"] and tif.overviews(1) == [2]
        assert tif.crs.to_epsg() == 28992
        assert tif.transform == rasterio.Affine(10.0, 0.0, 88_000.0, 0.0, -10.0, 437_500.0)
        assert tif.descriptions == ("B02", "B03", "B04", "B08") and tif.scales == (1e-4,) * 4
        assert tif.dtypes[0] == "uint16" and tif.nodata == 0
        for i, band in enumerate(["B02", "B03", "B04", "B08"], start=1):
            np.testing.assert_array_equal(tif.read(i), src[band].values)


def test_export_a_clear_sky_median(synced_cube, tmp_path):
    out = tmp_path / "median.tif"
    r = run("export", str(synced_cube), str(out), "--time", "2023-05-01/2023-05-31", "--reduce",
            "median", "--max-cld", "20", "--bbox", BBOX, "--variables", "B04,B08", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "median of 3 time steps" in r.stdout
    src = _source(synced_cube, ["B04", "B08", "SCL", "CLD"])
    clear = np.isin(src.SCL.values, [4, 5, 6, 11]) & (src.CLD.values <= 20)
    with rasterio.open(out) as tif:
        assert tif.descriptions == ("B04", "B08")
        got = tif.read(1)
    b04 = np.where(clear & (src.B04.values != 0), src.B04.values, np.nan)
    some = np.isfinite(b04).any(axis=0)
    expected = np.where(some, np.round(np.nanmedian(np.where(some, b04, 0), axis=0)), 0)
    assert some.sum() > 1000 and (~some).sum() > 0, "the area has clear and never-clear pixels"
    np.testing.assert_array_equal(got, expected.astype("uint16"))


def test_export_to_netcdf_with_its_crs(synced_cube, tmp_path):
    import rioxarray  # noqa: F401

    out = tmp_path / "d1.nc"
    r = run("export", str(synced_cube), str(out), "--time", D1.date().isoformat(), "--bbox", BBOX,
            "--variables", "B04,SCL,CLD", "--no-progress")
    assert r.returncode == 0, r.stderr
    nc = xr.open_dataset(out)
    src = s2ingest.open_cube(synced_cube, bbox=BBOX_T, variables=["B04", "SCL", "CLD"]).isel(time=0)
    assert nc.rio.crs.to_epsg() == 28992 and nc.B04.attrs["grid_mapping"] == "spatial_ref"
    assert nc.rio.transform() == rasterio.Affine(10.0, 0.0, 88_000.0, 0.0, -10.0, 437_500.0)
    for name in ("B04", "SCL", "CLD"):
        np.testing.assert_array_equal(nc[name].values, src[name].values.astype(nc[name].dtype))
    assert str(nc.time.values)[:19] == D1.strftime("%Y-%m-%dT%H:%M:%S")
    r = run_here("export", str(synced_cube), str(tmp_path / "x.tif"), "--time", "2023-05-01/2023-05-31")
    assert r.returncode == 3 and "3 time steps in the range" in r.stderr


@pytest.mark.slow
def test_rechunk_on_a_dask_distributed_cluster(copies, synced_cube, tmp_path):
    """--scheduler: the copy runs on the cluster's worker processes (the pinned-version store
    travels to them by pickle and reopens the same version there) and equals the local one."""
    from distributed import LocalCluster

    root, _, _ = copies
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster:
        r = run("rechunk", str(synced_cube), str(tmp_path / "d.zarr"), "--chunks",
                "time=-1,y=25,x=25", "--bbox", BBOX, "--variables", "B04", "--no-progress",
                "--scheduler", cluster.scheduler_address)
        assert r.returncode == 0, r.stderr
        assert cluster.scheduler.transition_counter > 0, "the cluster ran the tasks"
    here = xr.open_zarr(root / "series.zarr", group=GROUP, consolidated=True, mask_and_scale=False)
    there = xr.open_zarr(tmp_path / "d.zarr", group=GROUP, consolidated=True, mask_and_scale=False)
    np.testing.assert_array_equal(there.B04.values, here.B04.values)
