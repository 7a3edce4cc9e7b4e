"""Classic analyses and other clients run unchanged on the published cube (DESIGN.md §3).

Each analysis is checked against the same computation done with numpy on the raw Zarr arrays,
so the CF decoding (scale_factor, _FillValue -> NaN) is checked along the way.
"""
from __future__ import annotations

import functools
import http.server
import json
import subprocess
import textwrap
import threading
import venv
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

from conftest import GROUP, open_group, written_window
from ingest.grid import NL_GRID


@pytest.fixture(scope="module")
def ds(synced_cube) -> xr.Dataset:
    return xr.open_zarr(synced_cube, group="/S2/R051", consolidated=True)


@pytest.fixture(scope="module")
def area(synced_cube):
    """(rows, cols) slices of the written area and its x/y pixel-centre bounds."""
    rows, cols = written_window(synced_cube)
    x, y = NL_GRID.x[cols], NL_GRID.y[rows]
    return rows, cols, (x[0], x[-1]), (y[0], y[-1])  # y[0] is the top: y descends


def _raw(store, var, rows, cols) -> np.ndarray:
    return open_group(store)[var][:, rows, cols]


def _decoded(store, var, rows, cols) -> np.ndarray:
    g = open_group(store)
    raw = g[var][:, rows, cols].astype("f8")
    fill, scale = g[var].fill_value, g[var].attrs.get("scale_factor", 1.0)
    return np.where(raw == fill, np.nan, raw * scale)


def test_cf_attributes_and_decoding(ds, synced_cube, area):
    rows, cols, _, _ = area
    assert ds.B04.encoding["scale_factor"] == 1e-4 and ds.B04.encoding["_FillValue"] == 0
    assert ds.CLD.encoding["scale_factor"] == 0.01 and ds.CLD.encoding["_FillValue"] == 255
    assert ds.SCL.attrs["flag_values"] == list(range(12))
    assert ds.SCL.attrs["flag_meanings"].split()[0] == "no_data"
    assert ds.SCL.attrs["flag_meanings"].split()[9] == "cloud_high_probability"
    for var in ds.data_vars:
        assert "spatial_ref" in ds[var].coords or ds[var].attrs.get("grid_mapping") == "spatial_ref", var
    assert ds.B04.attrs["grid_mapping"] == "spatial_ref"
    assert "Amersfoort / RD New" in ds.spatial_ref.attrs["crs_wkt"]
    assert ds.spatial_ref.attrs["GeoTransform"].split()[:4] == ["0.0", "10.0", "0.0", "643750.0"]
    got = ds.B04.isel(y=rows, x=cols).values
    raw = _raw(synced_cube, "B04", rows, cols)
    assert np.isnan(got[raw == 0]).all() and (raw == 0).any()
    np.testing.assert_allclose(got[raw != 0], raw[raw != 0] * 1e-4, rtol=1e-6)
    assert np.isnan(ds.CLD.isel(y=rows, x=cols).values[_raw(synced_cube, "CLD", rows, cols) == 255]).all()
    assert ds.time.dtype.kind == "M" and ds.indexes["time"].is_monotonic_increasing
    assert list(ds.platform.values) == ["S2A", "S2B", "S2A"]


def test_ndvi(ds, synced_cube, area):
    rows, cols, (x0, x1), (ytop, ybot) = area
    cube = ds.sel(x=slice(x0, x1), y=slice(ytop, ybot))
    ndvi = ((cube.B08 - cube.B04) / (cube.B08 + cube.B04)).values
    b4, b8 = _decoded(synced_cube, "B04", rows, cols), _decoded(synced_cube, "B08", rows, cols)
    expected = (b8 - b4) / (b8 + b4)
    np.testing.assert_allclose(ndvi, expected, rtol=1e-5, equal_nan=True)
    assert np.isfinite(ndvi).sum() > 100_000 and np.nanmax(ndvi) > 0.3  # vegetation is there


def test_point_time_series_with_nearest(ds, synced_cube):
    from conftest import PROBES

    r, c = PROBES["OVERLAP"]
    x, y = NL_GRID.x[c] + 3.0, NL_GRID.y[r] - 4.0  # off-centre: nearest must find the pixel
    series = ds.B04.sel(x=x, y=y, method="nearest")
    assert series.dims == ("time",) and series.sizes["time"] == 3
    np.testing.assert_allclose(series.values, open_group(synced_cube)["B04"][:, r, c] * 1e-4, rtol=1e-6)


def test_slice_with_descending_y(ds, area):
    rows, cols, (x0, x1), (ytop, ybot) = area
    sub = ds.B04.sel(y=slice(ytop, ybot), x=slice(x0, x1))
    assert sub.sizes["y"] == rows.stop - rows.start and sub.sizes["x"] == cols.stop - cols.start
    assert ds.B04.sel(y=slice(ybot, ytop)).sizes["y"] == 0, "y descends: an ascending slice is empty"
    assert float(sub.y[0]) == ytop


def test_cloud_filter_on_mean_cld(ds, synced_cube, area):
    rows, cols, (x0, x1), (ytop, ybot) = area
    cube = ds.sel(x=slice(x0, x1), y=slice(ytop, ybot))
    # xarray cannot drop with a lazy (dask) condition: compute the per-step mean first
    clear = cube.where((cube.CLD.mean(("x", "y")) < 0.3).compute(), drop=True)
    mean_cld = np.nanmean(_decoded(synced_cube, "CLD", rows, cols), axis=(1, 2))
    keep = mean_cld < 0.3
    assert 0 < keep.sum() < 3, f"the test data must have cloudy and clear steps: {mean_cld}"
    assert list(clear.time.values) == list(ds.time.values[keep])
    np.testing.assert_allclose(clear.B04.values, _decoded(synced_cube, "B04", rows, cols)[keep], equal_nan=True)


def test_standard_deviation_over_time(ds, synced_cube, area):
    rows, cols, (x0, x1), (ytop, ybot) = area
    sd = ds.B04.sel(x=slice(x0, x1), y=slice(ytop, ybot)).std("time").values
    expected = np.nanstd(_decoded(synced_cube, "B04", rows, cols), axis=0)
    np.testing.assert_allclose(sd, expected, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert np.isfinite(sd).sum() > 100_000


def test_export_one_time_step_with_rioxarray(ds, synced_cube, area, tmp_path):
    import rioxarray  # noqa: F401  (registers .rio)

    rows, cols, (x0, x1), (ytop, ybot) = area
    da = ds.B04.isel(time=0).sel(x=slice(x0, x1), y=slice(ytop, ybot))
    assert da.rio.crs.to_epsg() == 28992
    out = tmp_path / "b04.tif"
    da.rio.to_raster(out)
    with rasterio.open(out) as tif:
        assert tif.crs.to_epsg() == 28992
        assert tif.transform == rasterio.Affine(10.0, 0.0, x0 - 5.0, 0.0, -10.0, ytop + 5.0)
        assert tif.shape == (rows.stop - rows.start, cols.stop - cols.start)
        # rioxarray re-applies the variable's encoding: uint16 DNs, scale 1e-4, nodata 0
        assert tif.dtypes[0] == "uint16" and tif.nodata == 0 and tif.scales[0] == pytest.approx(1e-4)
        data = tif.read(1)
    np.testing.assert_array_equal(data, _raw(synced_cube, "B04", rows, cols)[0])


@pytest.fixture(scope="module")
def http_url(synced_cube):
    handler = functools.partial(_QuietHandler, directory=str(synced_cube.parent))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{synced_cube.name}"
    server.shutdown()
    server.server_close()
    thread.join()


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # readers fetch chunks concurrently: the default backlog (5) drops SYNs


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_open_over_plain_http(http_url, ds, area):
    rows, cols, _, _ = area
    remote = xr.open_zarr(http_url, group="/S2/R051", consolidated=True)
    assert list(remote.time.values) == list(ds.time.values)
    np.testing.assert_array_equal(remote.B04.isel(y=rows, x=cols).values, ds.B04.isel(y=rows, x=cols).values)
    np.testing.assert_array_equal(remote.SCL.isel(y=rows, x=cols).values, ds.SCL.isel(y=rows, x=cols).values)
    assert remote.spatial_ref.attrs["crs_wkt"] == ds.spatial_ref.attrs["crs_wkt"]


def test_gdal_zarr_driver_opens_a_variable(synced_cube, area):
    """GDAL's Zarr driver: a (time, y, x) array opens as one band per time step, with the CRS
    (from the _CRS attribute) and the grid's transform."""
    rows, cols, _, _ = area
    raw = _raw(synced_cube, "B04", rows, cols)
    with rasterio.open(f'ZARR:"{synced_cube}":/{GROUP}/B04') as src:
        assert src.count == 3 and src.shape == NL_GRID.shape
        assert src.crs.to_epsg() == 28992
        assert src.transform == NL_GRID.transform
        assert src.nodata == 0
        win = rasterio.windows.Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        for t in range(3):
            np.testing.assert_array_equal(src.read(t + 1, window=win), raw[t])


ZARR2_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np, xarray as xr, zarr
    assert zarr.__version__.startswith("2.18"), zarr.__version__
    where, r0, r1, c0, c1 = sys.argv[1], *map(int, sys.argv[2:6])
    ds = xr.open_zarr(where, group="/S2/R051", consolidated=True, mask_and_scale=False)
    dec = xr.open_zarr(where, group="/S2/R051", consolidated=True)
    raw = zarr.open_consolidated(where, mode="r")["S2/R051/B04"]  # the root .zmetadata, no xarray
    print(json.dumps(summary(ds, dec, raw, r0, r1, c0, c1, zarr.__version__, xr.__version__)))
""")

# the summary both sides compute: the same function runs in the throwaway venv and here
SUMMARY = textwrap.dedent("""
    def summary(ds, dec, raw, r0, r1, c0, c1, zarr_version, xarray_version):
        import hashlib
        import numpy as np

        def sha(a):
            return hashlib.sha256(np.ascontiguousarray(np.asarray(a).astype("<u2")).tobytes()).hexdigest()

        area = dict(y=slice(r0, r1), x=slice(c0, c1))
        b04 = dec.B04.isel(**area).values
        return {
            "versions": [zarr_version, xarray_version],
            "time_steps": ds.sizes["time"],
            "time": [str(t) for t in ds.time.values.astype("datetime64[ms]")],
            "platform": [str(p) for p in ds.platform.values],
            "b04_sha256": sha(ds.B04.isel(**area).values),
            "b04_zarr_sha256": sha(raw[:, r0:r1, c0:c1]),
            "b04_zarr_shape": list(raw.shape),
            "b04_decoded": [int(np.isnan(b04).sum()), round(float(np.nansum(b04)), 3)],
            "spatial_ref": {k: dec.spatial_ref.attrs[k] for k in ("crs_wkt", "spatial_ref", "GeoTransform")},
            "grid_mapping": dec.B04.attrs.get("grid_mapping") or dec.B04.encoding.get("grid_mapping"),
            "b04_encoding": [float(dec.B04.encoding["scale_factor"]), int(dec.B04.encoding["_FillValue"])],
            "x0y0": [float(ds.x[c0]), float(ds.y[r0])],
        }
""")
ZARR2_SCRIPT = SUMMARY + ZARR2_SCRIPT
_ns: dict = {}
exec(SUMMARY, _ns)
summary = _ns["summary"]


@pytest.fixture(scope="session")
def zarr2_python(tmp_path_factory) -> Path:
    """A throwaway venv with zarr-python 2.18 and an xarray that still reads through it."""
    env = tmp_path_factory.mktemp("zarr2") / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "zarr>=2.18,<3", "numcodecs<0.16", "xarray>=2024.10,<2025.10", "fsspec",
                        "aiohttp", "requests"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot install zarr 2.18 (no network?): {r.stderr.strip()[-300:]}")
    return py


@pytest.fixture(scope="module")
def ours(synced_cube, area) -> dict:
    """What the project's own zarr 3 / xarray read."""
    rows, cols, _, _ = area
    ds = xr.open_zarr(synced_cube, group="/S2/R051", consolidated=True, mask_and_scale=False)
    dec = xr.open_zarr(synced_cube, group="/S2/R051", consolidated=True)
    raw = zarr.open_consolidated(str(synced_cube), mode="r")["S2/R051/B04"]
    return summary(ds, dec, raw, rows.start, rows.stop, cols.start, cols.stop, zarr.__version__, xr.__version__)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "http"])
def test_zarr_python_2_reads_the_same_values(zarr2_python, synced_cube, http_url, area, ours, tmp_path, where):
    rows, cols, _, _ = area
    script = tmp_path / "read.py"
    script.write_text(ZARR2_SCRIPT)
    location = str(synced_cube) if where == "local" else http_url
    r = subprocess.run([str(zarr2_python), str(script), location, str(rows.start), str(rows.stop),
                        str(cols.start), str(cols.stop)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout)
    assert theirs.pop("versions")[0].startswith("2.18.")
    assert ours["versions"][0].startswith("3.")
    expected = {k: v for k, v in ours.items() if k != "versions"}
    assert theirs == expected
    assert theirs["time_steps"] == 3 and theirs["b04_sha256"] == theirs["b04_zarr_sha256"]
    assert theirs["b04_decoded"][0] > 0 and theirs["b04_decoded"][1] > 0, "the area holds data and fill"
    assert "Amersfoort / RD New" in theirs["spatial_ref"]["crs_wkt"] and theirs["grid_mapping"] == "spatial_ref"
