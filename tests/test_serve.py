"""``s2ingest serve``: tiles from the right overview level, series, chips, metadata, 4xx errors,
read only (FastAPI TestClient); the viewer in a real headless Chromium against a real server."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer

from conftest import D2, D3, GROUP, PROBES, cli_env, ingest, new_cube, snapshot_files
from ingest.grid import NL_GRID
from ingest.layers import add_layer, synth
from ingest.overviews import build_overviews
from ingest.store import CubeStore
from ingest.variables import SCL_CLASSES

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ingest.serve import create_app  # noqa: E402

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
LAYER_AREA = (100_000.0, 431_250.0, 105_000.0, 437_500.0)  # the map sheet of the FT-only probe
TO_LL = Transformer.from_crs("EPSG:28992", "EPSG:4326", always_xy=True)


def lonlat(row: int, col: int) -> tuple[float, float]:
    return TO_LL.transform(float(NL_GRID.x[col]), float(NL_GRID.y[row]))


@pytest.fixture(scope="module")
def cube(tmp_path_factory, products) -> Path:
    """Two datatakes of 31UFT, a BRP parcel layer over part of them, overviews."""
    d = tmp_path_factory.mktemp("serve")
    c = new_cube(d / "cube.zarr")
    ingest(c, [products.scene[(D2, "31UFT")]], products)
    ingest(c, [products.scene[(D3, "31UFT")]], products)
    lg, lf = synth.landuse(LAYER_AREA, seed=3, cell_km2=0.3)
    pg, pf = synth.parcels(lg, lf["BG2015"], 2023, seed=3)
    add_layer(c.path, "NL/BRP", synth.write_vector(d / "brp.gpkg", pg, pf), edition=2023,
              attribute="gewascode")
    store = CubeStore.open(c.path)
    with store.transaction() as tx:
        build_overviews(tx, store.grid, GROUP)
        tx.commit()
    return c.path


@pytest.fixture(scope="module")
def client(cube):
    return TestClient(create_app(str(cube)))


@pytest.fixture(scope="module")
def ds(cube):
    return xr.open_zarr(cube, group=GROUP, consolidated=True)


@pytest.fixture(scope="module")
def parcel(cube, ds):
    """The largest parcel lying where there is imagery: (id, mask window, mask)."""
    brp = xr.open_zarr(cube, group="NL/BRP", consolidated=True, mask_and_scale=False)["parcel"]
    win = NL_GRID.window_for_bounds(LAYER_AREA)
    rows = slice(int(win.row_off), int(win.row_off + win.height))
    cols = slice(int(win.col_off), int(win.col_off + win.width))
    z = brp.isel(edition=-1, y=rows, x=cols).values
    b04 = ds["B04"].isel(time=0, y=rows, x=cols).values
    ids, counts = np.unique(z[(z > 0) & ~np.isnan(b04)], return_counts=True)
    pid = int(ids[np.argmax(counts)])
    return pid, rows, cols, z == pid


def _png_rgba(content: bytes) -> np.ndarray:
    with rasterio.MemoryFile(content) as mf, mf.open() as src:
        return src.read()


def test_metadata(client, ds):
    m = client.get("/api/meta").json()
    g = m["groups"][GROUP]
    assert len(g["times"]) == 2 and g["times"][0].startswith("2023-05-15")
    assert g["levels"][:3] == [1, 2, 4] and g["levels"][-1] == 128
    assert "NL/BRP/parcel" in m["layers"]
    assert m["version"] == max(m["versions_kept"])
    assert set(m["composites"]) == {"true_color", "false_color", "ndvi"} and "B8A" in m["variables"]


def test_tiles_come_from_the_right_level_and_show_imagery(client):
    lon, lat = lonlat(*PROBES["FT_ONLY"])
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    seen = {}
    for z in (7, 11, 15):
        t = tms.tile(lon, lat, z)
        r = client.get(f"/tiles/{z}/{t.x}/{t.y}.png?composite=true_color&time=1")  # D3: few clouds
        assert r.status_code == 200, r.text
        seen[z] = int(r.headers["x-overview-level"])
        rgba = _png_rgba(r.content)
        assert (rgba[3] > 0).sum() > 0 and rgba[:3][:, rgba[3] > 0].std() > 0, f"blank tile at z{z}"
    assert seen[7] >= 64 and 2 <= seen[11] <= 16 and seen[15] == 1
    for q in ("variable=SCL", "variable=B08&colormap=greys&vmin=0&vmax=0.5", "composite=ndvi",
              "composite=false_color&time=2023-05-20"):
        t = tms.tile(lon, lat, 12)
        r = client.get(f"/tiles/12/{t.x}/{t.y}.png?{q}")
        assert r.status_code == 200, (q, r.text)
        assert (_png_rgba(r.content)[3] > 0).any(), q
    t = tms.tile(lon, lat, 7)  # without overviews a low zoom would read millions of pixels
    r = client.get(f"/tiles/7/{t.x}/{t.y}.png?overviews=false")
    assert r.status_code == 400 and "zoom in" in r.json()["error"]


@pytest.mark.parametrize("query, status, message", [
    ("/tiles/12/1/1.png?variable=B99", 400, "unknown variable"),
    ("/tiles/12/1/1.png?composite=sepia", 400, "unknown composite"),
    ("/tiles/12/1/1.png?time=7", 400, "out of range"),
    ("/tiles/12/1/1.png?time=1999-01-01", 404, "no time step"),
    ("/tiles/12/1/1.png?vmin=1&vmax=0", 400, "empty range"),
    ("/tiles/3/9/1.png", 400, "no tile"),
    ("/api/series?lon=4.5", 400, "give lon and lat"),
    ("/api/series?lon=-40&lat=10", 400, "outside the grid"),
    ("/api/series?lon=4.5&lat=52&variable=XX", 400, "unknown variable"),
    ("/api/series?parcel=99999999", 404, "no parcel"),
    ("/api/series?lon=4.5&lat=52&format=xml", 422, ""),
    ("/api/chips?lon=4.5&lat=52&size=5000", 400, "size must be"),
    ("/api/chips?parcel=1&start=1990-01-01&end=1990-02-01", 400, "no time step"),
    ("/api/series?orbit=8&lon=4.5&lat=52", 404, "no group"),
    # absurd numbers: a 4xx naming them, never a 500
    *[(f"{path}?lon={v}&lat=52", 400, "finite degrees")
      for path in ("/api/series", "/api/parcel", "/api/chips") for v in ("nan", "inf", "-inf", "1e308")],
    *[(f"{path}?lon=4.5&lat={v}", 400, "finite degrees")
      for path in ("/api/series", "/api/parcel", "/api/chips") for v in ("nan", "1e308")],
    ("/api/series?polygon=" + quote(json.dumps({"type": "Polygon", "coordinates": [
        [[4.5, 52], [1e308, 52], [4.5, 53], [4.5, 52]]]})), 400, "not finite"),
    ("/api/series?polygon=" + quote(json.dumps({"type": "Polygon", "coordinates": [
        [[4.5, 52], [float("nan"), 52], [4.5, 53], [4.5, 52]]]})), 400, "polygon"),
    ("/tiles/layer/-1/0/0.png", 400, "zoom must be"),
    ("/tiles/layer/99/0/0.png", 400, "zoom must be"),
    ("/tiles/layer/3/9/1.png", 400, "no tile"),
    ("/tiles/-1/0/0.png", 400, "zoom must be"),
    ("/tiles/12/2098/1348.png?vmin=nan", 400, "not a finite number"),
    ("/tiles/12/2098/1348.png?vmax=inf", 400, "not a finite number"),
])
def test_bad_parameters_get_a_clear_4xx(client, query, status, message):
    r = client.get(query)
    assert r.status_code == status, r.text
    assert message in r.text
    if status != 422:  # FastAPI's own validation answers {"detail": ...}
        assert r.json()["error"]


def test_point_series_equal_xarray_json_and_csv(client, ds):
    row, col = PROBES["FT_ONLY"]
    lon, lat = lonlat(row, col)
    px = ds[["B04", "B08", "SCL"]].isel(y=row, x=col).load()
    r = client.get(f"/api/series?lon={lon}&lat={lat}&variable=NDVI")
    body = r.json()
    assert body["row_col"] == [row, col]
    ndvi = ((px.B08 - px.B04) / (px.B08 + px.B04)).values
    assert np.allclose([s["value"] for s in body["series"]], ndvi)
    b04 = client.get(f"/api/series?lon={lon}&lat={lat}&variable=B04&format=csv").text.splitlines()
    assert b04[0] == "time,value,scl" and len(b04) == 3
    assert np.allclose([float(x.split(",")[1]) for x in b04[1:]], px.B04.values)
    clear = client.get(f"/api/series?lon={lon}&lat={lat}&variable=B04&clear=true").json()["series"]
    keep = [int(v) in (4, 5, 6, 7, 11) for v in px.SCL.values]
    assert len(clear) == sum(keep)


def test_parcel_series_chips_and_histograms_match_a_direct_computation(client, cube, ds, parcel):
    pid, rows, cols, mask = parcel
    r = client.get(f"/api/series?parcel={pid}&variable=NDVI")
    assert r.status_code == 200, r.text
    sub = ds[["B04", "B08"]].isel(y=rows, x=cols).load()
    ndvi = ((sub.B08 - sub.B04) / (sub.B08 + sub.B04)).values
    expect = [np.nanmean(ndvi[t][mask]) for t in range(ndvi.shape[0])]
    assert np.allclose([s["value"] for s in r.json()["series"]], expect)

    # a GeoJSON polygon (lon/lat): 6 x 4 pixels whose edges lie on pixel edges
    r0, c0 = PROBES["FT_ONLY"]
    left, top = NL_GRID.bounds[0] + c0 * 10, NL_GRID.bounds[3] - r0 * 10
    ring = [TO_LL.transform(x, y) for x, y in ((left, top), (left + 60, top), (left + 60, top - 40),
                                               (left, top - 40), (left, top))]
    r = client.get("/api/series", params={"polygon": json.dumps({"type": "Polygon", "coordinates": [ring]}),
                                          "variable": "B04"})
    assert r.status_code == 200, r.text
    box_b04 = ds["B04"].isel(y=slice(r0, r0 + 4), x=slice(c0, c0 + 6)).values
    assert [s["count"] for s in r.json()["series"]] == [24, 24]
    assert np.allclose([s["value"] for s in r.json()["series"]], box_b04.mean(axis=(1, 2)))

    r = client.get(f"/api/chips?parcel={pid}&start=2023-05-01&end=2023-05-31")
    assert r.status_code == 200, r.text
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    tifs = sorted(n for n in zf.namelist() if n.endswith(".tif"))
    assert len(tifs) == 2
    hist = json.loads(zf.read("histograms.json"))
    raw = xr.open_zarr(cube, group=GROUP, consolidated=True, mask_and_scale=False)
    scl_raw, raw_b04 = raw["SCL"], raw["B04"]
    rr, cc = np.nonzero(mask)  # the chip is the parcel's bounding box
    box = (slice(rows.start + rr.min(), rows.start + rr.max() + 1),
           slice(cols.start + cc.min(), cols.start + cc.max() + 1))
    for k, name in enumerate(tifs):
        with rasterio.MemoryFile(zf.read(name)) as mf, mf.open() as src:
            assert src.crs.to_epsg() == 28992
            assert src.descriptions == ("B02", "B03", "B04", "B08", "SCL")
            assert src.transform.a == 10.0
            top_row = int(round((NL_GRID.bounds[3] - src.bounds.top) / 10))
            left_col = int(round((src.bounds.left - NL_GRID.bounds[0]) / 10))
            assert (top_row, left_col) == (box[0].start, box[1].start)
            assert np.array_equal(src.read(5), scl_raw.isel(time=k, y=box[0], x=box[1]).values)
            assert np.array_equal(src.read(3), raw_b04.isel(time=k, y=box[0], x=box[1]).values)
        counts = np.bincount(scl_raw.isel(time=k, y=rows, x=cols).values[mask], minlength=256)
        assert hist[k]["scl"] == {SCL_CLASSES[c]: int(counts[c]) for c in sorted(SCL_CLASSES)}
    as_json = client.get(f"/api/chips?parcel={pid}&format=json").json()["histograms"]
    assert as_json == hist
    png = client.get(f"/api/chips?parcel={pid}&format=png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    outline = client.get("/tiles/layer/14/8380/5390.png")
    assert outline.status_code == 200


def test_the_server_never_writes(cube, client):
    before = snapshot_files(cube)
    lon, lat = lonlat(*PROBES["FT_ONLY"])
    for q in ("/api/meta", f"/api/series?lon={lon}&lat={lat}", "/tiles/12/2098/1348.png",
              f"/api/chips?lon={lon}&lat={lat}&size=16"):
        client.get(q)
    assert snapshot_files(cube) == before


# -- the viewer in a real browser ------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed here when missing (skips with the reason if impossible)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed and cannot be installed here "
                    "(needs root and apt-get: apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(cube):
    proc = subprocess.Popen([S2INGEST, "serve", str(cube), "--port", "0"], env=cli_env(),
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://[\d.]+:(\d+)/", line)
    assert m, line
    url = f"http://127.0.0.1:{m.group(1)}/"
    # keep reading its stderr: a full pipe would block the server
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    yield url
    proc.terminate()
    proc.wait(timeout=120)


def _poll(read, ok, *, limit: float = 120.0, every: float = 0.5):
    """``read()`` again until ``ok(value)`` or ``limit`` seconds passed; the last value."""
    import time

    end = time.monotonic() + limit
    value = read()
    while not ok(value) and time.monotonic() < end:
        time.sleep(every)
        value = read()
    return value


@pytest.mark.slow
def test_viewer_in_chromium_shows_imagery_moves_in_time_and_draws_a_series(chromium, server, ds, parcel,
                                                                            tmp_path):
    from playwright.sync_api import sync_playwright

    row, col = PROBES["FT_ONLY"]
    lon, lat = lonlat(row, col)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server)
        page.wait_for_function("window.viewer && window.viewer.ready && window.viewer.tilesLoaded > 2",
                               timeout=60_000)
        background = np.array([0xdd, 0xdd, 0xee]).reshape(3, 1, 1)

        def imagery_share() -> float:
            map_part = _png_rgba(page.screenshot(path=str(tmp_path / "viewer.png")))[:3, :, 330:]
            return float((np.abs(map_part.astype(int) - background).sum(axis=0) > 30).mean())

        # no fixed waits: poll (a loaded machine draws late, never wrongly)
        imagery = _poll(imagery_share, lambda v: v > 0.05)
        assert imagery > 0.05, f"only {imagery:.1%} of the map shows imagery"
        # parcel outlines (a reference layer) drawn over the imagery
        def yellow() -> int:
            img = _png_rgba(page.screenshot())[:3, :, 330:].astype(int)
            return int(((img[0] > 230) & (img[1] > 230) & (img[2] < 40)).sum())

        before = yellow()
        page.select_option("#outlines", "NL/BRP/parcel")
        assert _poll(yellow, lambda v: v > before + 200) > before + 200, "no parcel outlines drawn"
        # the slider changes the date (and the tiles asked for)
        first = page.inner_text("#date")
        page.eval_on_selector("#time", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
        assert page.inner_text("#date") != first and page.inner_text("#date").startswith("2023-05-15")
        assert "time=0" in page.evaluate("window.viewer.tileUrl")
        # a click draws the series of that pixel, equal to xarray's
        page.select_option("#seriesvar", "B04")
        xy = page.evaluate(f"window.viewerMap.latLngToContainerPoint([{lat}, {lon}])")
        page.mouse.click(320 + xy["x"], xy["y"])
        page.wait_for_function("window.viewer.lastSeries !== null", timeout=30_000)
        body = page.evaluate("window.viewer.lastSeries")
        r, c = body["row_col"]
        expect = ds["B04"].isel(y=r, x=c).values
        assert abs(r - row) <= 2 and abs(c - col) <= 2
        assert np.allclose([s["value"] for s in body["series"]], expect)
        chart = _png_rgba(page.locator("#chart").screenshot())
        assert (chart[1] > chart[0] + 40).sum() > 20  # the green series line is drawn
        # Click: parcel -> the mean over the BRP parcel under the click, equal to xarray's
        pid, prow, pcol, mask = parcel
        rr, cc = np.nonzero(mask)
        k = len(rr) // 2
        plon, plat = lonlat(prow.start + int(rr[k]), pcol.start + int(cc[k]))
        page.evaluate(f"window.viewerMap.setView([{plat}, {plon}], 15)")
        page.wait_for_timeout(1000)
        page.select_option("#clickmode", "parcel")
        page.evaluate("window.viewer.lastSeries = null")
        xy = page.evaluate(f"window.viewerMap.latLngToContainerPoint([{plat}, {plon}])")
        page.mouse.click(320 + xy["x"], xy["y"])
        page.wait_for_function("window.viewer.lastSeries !== null", timeout=30_000)
        body = page.evaluate("window.viewer.lastSeries")
        assert body.get("parcel") == pid, body
        sub = ds["B04"].isel(y=prow, x=pcol).values
        assert np.allclose([s["value"] for s in body["series"]],
                           [np.nanmean(sub[t][mask]) for t in range(sub.shape[0])])
        assert f"parcel {pid}" in page.inner_text("#status")
        browser.close()


@pytest.mark.parametrize("length", [300_000, 2_000_000])
def test_a_very_long_url_gets_a_414_with_a_message_not_a_reset(server, length):
    """Longer than the app reads (256 KiB: the app answers) and than the protocol buffers
    (1 MiB: the protocol answers, then drains what the client still sends)."""
    import http.client
    from urllib.parse import quote, urlsplit

    u = urlsplit(server)
    ring = ",".join(["[4.5,52.0]"] * (length // 10))
    path = "/api/series?polygon=" + quote('{"type":"Polygon","coordinates":[[' + ring + ']]}')
    assert len(path) > length
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 414, body
    assert "longer than" in body["error"] and "polygon" in body["error"]


def test_an_empty_answer_says_why(client, cube, ds, parcel):
    """A parcel or point outside the imagery answers nulls and empty chips, with a reason."""
    brp = xr.open_zarr(cube, group="NL/BRP", consolidated=True, mask_and_scale=False)["parcel"]
    win = NL_GRID.window_for_bounds(LAYER_AREA)
    rows = slice(int(win.row_off), int(win.row_off + win.height))
    cols = slice(int(win.col_off), int(win.col_off + win.width))
    z = brp.isel(edition=-1, y=rows, x=cols).values
    scl = ds["SCL"].isel(y=rows, x=cols).values
    covered = set(np.unique(z[(np.isfinite(scl) & (scl != 0)).any(axis=0)]).tolist())
    outside = sorted(set(np.unique(z[z > 0]).tolist()) - covered)
    assert outside, "the layer has no parcel outside the imagery"
    pid = outside[0]
    body = client.get(f"/api/series?parcel={pid}").json()
    assert all(r["count"] == 0 for r in body["series"])
    assert body["reason"].startswith(f"parcel {pid} lies outside the imagery of /{GROUP}")
    body = client.get(f"/api/chips?parcel={pid}&format=json").json()
    assert body["reason"].startswith(f"parcel {pid} lies outside the imagery")
    r = client.get(f"/api/chips?parcel={pid}")
    assert r.status_code == 200 and "outside the imagery" in r.headers["x-reason"]
    lon, lat = lonlat(100, 100)  # inside the grid, far from the imagery
    body = client.get(f"/api/series?lon={lon}&lat={lat}").json()
    assert all(r["value"] is None for r in body["series"]) and "outside the imagery" in body["reason"]
    # an answer with data has no reason
    assert "reason" not in client.get(f"/api/series?parcel={parcel[0]}").json()
    assert "reason" not in client.get(f"/api/chips?parcel={parcel[0]}&format=json").json()


def test_serve_with_several_worker_processes(cube):
    """`serve --workers 2`: processes sharing the port answer tiles like one process does."""
    import time

    import requests

    proc = subprocess.Popen([S2INGEST, "serve", str(cube), "--port", "0", "--workers", "2"],
                            env=cli_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r":(\d+)/", proc.stderr.readline()).group(1))
        meta = None
        for _ in range(1200):
            try:
                meta = requests.get(f"http://127.0.0.1:{port}/api/meta", timeout=30).json()
                break
            except requests.RequestException:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert meta and GROUP in meta["groups"]
        png = requests.get(f"http://127.0.0.1:{port}/tiles/0/0/0.png?composite=true_color", timeout=60)
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_connections_to_the_server_socket_send_without_delay():
    """Connections accepted from the socket ``s2ingest serve`` listens on have TCP_NODELAY
    (asyncio sets it only on sockets that say they are TCP), so a response written in two
    parts (headers, body) is not held back until the client's delayed ACK."""
    import asyncio
    import socket

    from ingest.cli.serve import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    seen = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            s = transport.get_extra_info("socket")
            seen.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        await reader.read()  # the server closes the connection
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen and seen[0] != 0
