"""The quality atlas (ingest/quality): per (time step, H3 cell) statistics written inside the
imagery commit, selection of dates over an area, the report.

References are independent of the implementation: every pixel's cell comes from
``h3.latlng_to_cell`` of its centre (pyproj to WGS 84), the statistics from numpy on the SCL/CLD
arrays as zarr reads them.
"""
from __future__ import annotations

import subprocess
import sys
from datetime import timezone
from pathlib import Path

import h3
import numpy as np
import pytest
import shapely
import xarray as xr
import zarr

from conftest import D1, D2, D3, D_COORDS, GROUP, ORBIT, cli_env, ingest, new_cube
from ingest.grid import NL_GRID
from ingest.quality.cells import grid_lonlat
from ingest.store import CubeStore
from ingest.store.verify import verify_store

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
Q = f"{GROUP}/quality"
ROWS = slice(33 * 625, 34 * 625)  # the one chunk row every test product touches
COLS = slice(16 * 500, 22 * 500)


@pytest.fixture(scope="module")
def pixel_cells() -> np.ndarray:
    """H3 id (resolution 7) of every pixel centre of the test window, by h3 itself."""
    left, _, _, top = NL_GRID.bounds
    rows, cols = np.mgrid[ROWS, COLS]
    lon, lat = grid_lonlat(NL_GRID, left + (cols + 0.5) * 10, top - (rows + 0.5) * 10)
    ids = [h3.str_to_int(h3.latlng_to_cell(a, o, 7)) for a, o in zip(lat.ravel(), lon.ravel())]
    return np.array(ids, dtype=np.uint64).reshape(rows.shape)


def direct_stats(path: Path, pixel_cells: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Per time step: cell id -> (valid, cloud, clear, shadow, mean CLD) straight from the pixels."""
    g = zarr.open_consolidated(str(path), path=GROUP, mode="r")
    scl = g["SCL"][:, ROWS, COLS]
    cld = g["CLD"][:, ROWS, COLS]
    assert not (scl[:, :, [0, -1]] != 0).any() and not (scl[:, [0, -1], :] != 0).any(), \
        "data reaches the window's edge: widen ROWS/COLS"
    out = []
    for t in range(scl.shape[0]):
        s, c = scl[t], cld[t]
        valid = s != 0
        ids = pixel_cells[valid]
        uniq, inv = np.unique(ids, return_inverse=True)
        n = np.bincount(inv)
        sv = s[valid]
        stats = {}
        for i, cell in enumerate(uniq):
            m = inv == i
            cls = sv[m]
            stats[int(cell)] = np.array([n[i], np.isin(cls, (8, 9, 10)).sum(), np.isin(cls, (4, 5, 6)).sum(),
                                         (cls == 3).sum(), c[valid][m].mean() / 100.0])
        out.append(stats)
    return out


def assert_quality_matches(path: Path, pixel_cells: np.ndarray) -> None:
    """The stored quality group equals the direct computation, for every step and cell."""
    assert verify_store(CubeStore.open(path)) == []
    q = zarr.open_consolidated(str(path), path=Q, mode="r")
    g = zarr.open_consolidated(str(path), path=GROUP, mode="r")
    assert np.array_equal(q["time"][:], g["time"][:])
    cells = q["cell"][:]
    assert (np.diff(cells.astype(np.float64)) > 0).all()
    valid, cloud, clear = q["valid"][:], q["cloud"][:], q["clear"][:]
    shadow, cld = q["cloud_shadow"][:], q["cld_mean"][:]
    expected = direct_stats(path, pixel_cells)
    assert valid.shape == (len(expected), len(cells))
    for t, stats in enumerate(expected):
        assert int(valid[t].sum()) == sum(int(v[0]) for v in stats.values())
        pos = np.searchsorted(cells, np.array(list(stats), dtype=np.uint64))
        want = np.array(list(stats.values()))
        assert np.array_equal(valid[t, pos], want[:, 0]), f"step {t}: valid counts differ"
        for got, col in ((cloud, 1), (clear, 2), (shadow, 3)):
            assert np.array_equal(np.rint(got[t, pos].astype(np.float64) * want[:, 0]), want[:, col])
        assert np.allclose(cld[t, pos], want[:, 4], atol=1e-6)
        others = np.setdiff1d(np.arange(len(cells)), pos)
        assert (valid[t, others] == 0).all() and np.isnan(cloud[t, others]).all()


@pytest.fixture(scope="module")
def quality_cube(tmp_path_factory, products, pixel_cells):
    """D1 and D3, then D2 inserted between them: checked after each step; returns the path."""
    cube = new_cube(tmp_path_factory.mktemp("quality") / "cube.zarr")
    ingest(cube, [products.scene[(D1, t)] for t in ("31UET", "31UFT")]
           + [products.scene[(D3, t)] for t in ("31UET", "31UFT")], products)
    assert_quality_matches(cube.path, pixel_cells)
    ingest(cube, [products.scene[(D2, t)] for t in ("31UET", "31UFT")], products)  # insertion
    assert zarr.open_consolidated(str(cube.path), path=Q, mode="r")["time"].shape == (3,)
    assert_quality_matches(cube.path, pixel_cells)
    return cube.path


def test_statistics_after_append_insertion_and_supersede(quality_cube, tmp_path, products, pixel_cells):
    import shutil

    path = tmp_path / "cube.zarr"
    shutil.copytree(quality_cube, path)
    before = zarr.open_consolidated(str(path), path=Q, mode="r")["valid"][:]
    ingest(new_cube(path), [products.twins[1]], products)  # PB 05.09 replaces D1/31UFT 02.14
    assert_quality_matches(path, pixel_cells)
    after = zarr.open_consolidated(str(path), path=Q, mode="r")
    assert np.array_equal(after["valid"][1:], before[1:])  # untouched steps kept
    manifest = CubeStore.open(path).manifest()
    assert any(k.startswith(Q + "/cloud/") for k in manifest["changes"])  # versioned with the imagery
    assert any(k.startswith(Q + "/") for k in manifest["keys"])


def _direct_fractions(path: Path, mask: np.ndarray) -> list[tuple[float, float, int]]:
    """(cloud fraction, clear fraction, valid pixels) per step over ``mask`` by xarray."""
    ds = xr.open_zarr(str(path), group=GROUP, consolidated=True, mask_and_scale=False)
    scl = ds.SCL.isel(y=ROWS, x=COLS).values
    out = []
    for s in scl:
        valid = (s != 0) & mask
        out.append(((np.isin(s, (8, 9, 10)) & valid).sum() / valid.sum(),
                    (np.isin(s, (4, 5, 6)) & valid).sum() / valid.sum(), int(valid.sum())))
    return out


class CountingBackend:
    """Wraps a backend and records every key read."""

    def __init__(self, inner):
        self.inner, self.keys = inner, []

    def get(self, key):
        self.keys.append(key)
        return self.inner.get(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_commit_reads_and_writes_only_the_quality_time_chunks_it_changes(tmp_path, products, monkeypatch):
    """On a cube of one step per time chunk, an append, an insertion and a late tile each read
    the quality chunks of only the time chunks they write (compared before staging) and of
    those their moved rows come from, never the rest of the archive; after each, the group is
    byte for byte what a rebuild from the pixels makes (``rebuild_quality`` commits nothing)."""
    from dataclasses import replace

    from ingest.publish.engine import Cube
    from ingest.quality.group import ARRAYS, rebuild_quality
    from ingest.store.transaction import Transaction

    reads: list[str] = []
    get = Transaction.get

    def spy(tx, key):
        reads.append(key)
        return get(tx, key)

    monkeypatch.setattr(Transaction, "get", spy)
    cube = Cube(tmp_path / "cube.zarr", replace(NL_GRID, time_chunk=1), ORBIT)
    ingest(cube, [products.scene[(D1, "31UET")], products.scene[(D3, "31UET")]], products)

    def commit(product, times, chunks):
        """Ingest ``product``: the new time axis is ``times``; ``chunks``: the time chunks
        whose quality keys may be read (the changed ones and the sources of moved rows)."""
        reads.clear()
        ingest(cube, [product], products)
        read = [k for k in reads if k.startswith(Q + "/") and k.split("/")[-2] in ARRAYS
                and not k.split("/")[-1].startswith(".")]
        for name in ARRAYS:
            assert {k for k in read if k.split("/")[-2] == name} == \
                {f"{Q}/{name}/{k}.0" for k in chunks}, (name, sorted(read))
        q = zarr.open_consolidated(str(cube.path), path=Q, mode="r")
        assert q["valid"].shape[0] == len(times) and q["valid"].chunks[0] == 1
        reads.clear()
        assert rebuild_quality(cube.path, GROUP) is None  # nothing differs from a rebuild
        assert list(CubeStore.open(cube.path).published(GROUP).times) == times

    commit(products.coords["31UET"], [D1, D3, D_COORDS], {2})  # append: the new chunk only
    commit(products.scene[(D2, "31UET")], [D1, D2, D3, D_COORDS], {1, 2, 3})  # insertion: steps 1.. move
    commit(products.scene[(D1, "31UFT")], [D1, D2, D3, D_COORDS], {0})  # a late tile of the first date
    assert verify_store(CubeStore.open(cube.path)) == []


def test_selection_over_a_union_of_cells_is_exact_and_reads_only_the_quality_group(quality_cube, pixel_cells):
    from ingest.quality.select import select_dates

    border = np.unique(np.r_[pixel_cells[0], pixel_cells[-1], pixel_cells[:, 0], pixel_cells[:, -1]])
    q = zarr.open_consolidated(str(quality_cube), path=Q, mode="r")
    with_data = q["cell"][:][(q["valid"][:] > 0).any(axis=0)]
    chosen = np.setdiff1d(with_data, border)[::2]  # cells wholly inside the window, not contiguous
    assert len(chosen) >= 4
    aoi = shapely.union_all([shapely.Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(h3.int_to_str(int(c)))])
                             for c in chosen])
    mask = np.isin(pixel_cells, chosen)
    direct = _direct_fractions(quality_cube, mask)

    store = CubeStore.open(quality_cube)
    store.backend = CountingBackend(store.backend)
    rows = select_dates(store, group=GROUP, aoi=aoi, aoi_crs="EPSG:4326")
    assert store.backend.keys and all(k.startswith(Q + "/") for k in store.backend.keys), store.backend.keys
    assert [r.time for r in rows] == list(CubeStore.open(quality_cube).published(GROUP).times)
    for r, (cloud, clear, nvalid) in zip(rows, direct):
        assert r.uncertainty == 0.0
        assert r.cloud == pytest.approx(cloud, abs=1e-12) and r.clear == pytest.approx(clear, abs=1e-12)
        assert r.valid == pytest.approx(min(1.0, nvalid / mask.sum()), abs=2e-3)
    clouds = sorted(r.cloud for r in rows)
    assert clouds[-1] > clouds[-2]
    threshold = (clouds[-2] + clouds[-1]) / 2 * 100  # leaves out the cloudiest date
    picked = [r.time for r in select_dates(quality_cube, group=GROUP, aoi=aoi, aoi_crs="EPSG:4326",
                                           max_cloud=threshold) if r.selected]
    want = [r.time for r, (cloud, _, n) in zip(rows, direct) if n and cloud * 100 < threshold]
    assert picked == want and len(picked) == 2


def test_selection_over_any_area_is_within_the_stated_uncertainty(quality_cube, pixel_cells):
    from ingest.quality.select import select_dates

    left, _, _, top = NL_GRID.bounds
    r0, r1 = ROWS.start + 250, ROWS.start + 420  # inside the data strip of every product
    c0, c1 = COLS.start + 900, COLS.start + 2300
    bbox = (left + c0 * 10, top - r1 * 10, left + c1 * 10, top - r0 * 10)
    mask = np.zeros(pixel_cells.shape, bool)
    mask[r0 - ROWS.start:r1 - ROWS.start, c0 - COLS.start:c1 - COLS.start] = True
    direct = _direct_fractions(quality_cube, mask)
    from ingest.quality.select import aoi_from_bbox

    rows = select_dates(quality_cube, group=GROUP, aoi=aoi_from_bbox(bbox, NL_GRID))
    for r, (cloud, _, nvalid) in zip(rows, direct):
        assert 0 < r.uncertainty <= 1
        assert abs(r.cloud - cloud) <= r.uncertainty, (r, cloud)


@pytest.mark.slow
def test_cli_quality_rebuild_select_and_report(quality_cube, tmp_path):
    """Through the CLI as a user runs it: rebuild (another resolution, then back), the selection
    table, the report with its maps; verify accepts the cube after the rebuilds."""
    import shutil

    path = tmp_path / "cube.zarr"
    shutil.copytree(quality_cube, path)
    before = {k: v for k, v in CubeStore.open(path).manifest()["keys"].items() if k.startswith(Q + "/")}

    def run(*args, ok=True):
        r = subprocess.run([S2INGEST, *args], capture_output=True, text=True, env=cli_env(), timeout=300)
        assert (r.returncode == 0) == ok, r.stderr
        return r

    from click.testing import CliRunner

    from ingest.cli.main import cli
    from ingest.quality.group import rebuild_quality
    from ingest.quality.select import aoi_from_bbox, select_dates

    rebuild_quality(path, GROUP, resolution=8)
    q = zarr.open_consolidated(str(path), path=Q, mode="r")
    assert q.attrs["h3_resolution"] == 8 and h3.get_resolution(h3.int_to_str(int(q["cell"][0]))) == 8
    run("quality", "rebuild", "--store", str(path), "--h3-resolution", "7", "--no-progress")
    after = {k: v for k, v in CubeStore.open(path).manifest()["keys"].items() if k.startswith(Q + "/")}
    assert after == before  # recomputed from the pixels: byte for byte what the ingests wrote
    assert verify_store(CubeStore.open(path)) == []

    bbox = (4.30, 51.90, 4.60, 52.00)
    rows = select_dates(path, group=GROUP, aoi=aoi_from_bbox(bbox, NL_GRID, "EPSG:4326"))
    clouds = sorted(r.cloud for r in rows)
    limit = (clouds[1] + clouds[2]) / 2 * 100
    r = run("quality", "--store", str(path), "--bbox", ",".join(map(str, bbox)), "--bbox-crs", "EPSG:4326",
            "--max-cloud", f"{limit:.4f}")
    assert len(r.stdout.strip().splitlines()) == 3 and "2 of 3 dates selected" in r.stderr
    bad = CliRunner().invoke(cli, ["quality", "--store", str(path), "--bbox", "1,2,3,4", "--bbox-crs",
                                   "EPSG:4326", "--json"])
    assert bad.exit_code == 3 and "does not overlap" in bad.output

    html_path, png = tmp_path / "report.html", tmp_path / "clear.png"
    r = run("report", "--store", str(path), "--html", str(html_path), "--map", str(png))
    assert "31UET,31UFT" in r.stdout and len(r.stdout.strip().splitlines()) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html_path.read_text().count("data:image/png") == 4  # clear-sky map + one per step


def test_open_cube_keeps_only_the_dates_the_atlas_selects(quality_cube):
    """open_cube(max_cloud=…, bbox=…) returns exactly the dates select_dates chooses over that
    bbox: a threshold between the dates' cloud fractions keeps some and drops others."""
    import s2ingest
    from ingest.quality.select import aoi_from_bbox, select_dates

    left, _, _, top = NL_GRID.bounds
    r0, r1, c0, c1 = ROWS.start + 250, ROWS.start + 420, COLS.start + 900, COLS.start + 2300
    bbox = (left + c0 * 10, top - r1 * 10, left + c1 * 10, top - r0 * 10)
    clouds = sorted(r.cloud for r in select_dates(quality_cube, group=GROUP, aoi=aoi_from_bbox(bbox, NL_GRID)))
    assert clouds[0] < clouds[-1], "the test needs dates of different cloudiness"
    threshold = 100 * (clouds[0] + clouds[-1]) / 2
    want = [r.time for r in select_dates(quality_cube, group=GROUP, aoi=aoi_from_bbox(bbox, NL_GRID),
                                         max_cloud=threshold) if r.selected]
    ds = s2ingest.open_cube(quality_cube, bbox=bbox, max_cloud=threshold, variables=["SCL"])
    got = [t.replace(tzinfo=timezone.utc) for t in ds.time.to_index().to_pydatetime()]
    assert 0 < len(got) < 3 and got == want
    # export's clear-sky reduction skips the same dates before reading any imagery
    from ingest.copies.export import extract

    out, _ = extract(str(quality_cube), time_range=(None, None), reduce="median", bbox=bbox,
                     variables=["B04"], max_cloud=threshold)
    assert out.attrs["s2ingest_time_steps"] == len(want)


def test_sums_made_while_writing_equal_those_read_back_from_the_chunks():
    """``StepSums`` (fed by the writer or a worker, per array, in any order, through a
    worker's sparse copy) gives the rows ``compute_rows`` makes from the stored chunks
    (``add_chunk``), bit for bit; CLD/SNW count only where the SCL chunk is stored."""
    import random

    from ingest.quality.cells import cell_index
    from ingest.quality.stats import Rows, StepSums, add_chunk

    index = cell_index(NL_GRID, 7)
    tc, k, steps = NL_GRID.time_chunk, 2, [10, 12, 14]
    rng = np.random.default_rng(5)
    places = [(33, 17), (33, 18), (34, 18)]
    data = {}
    for c in places:
        scl = rng.integers(0, 12, (tc, *NL_GRID.chunk_shape), dtype=np.uint8)
        if c == (34, 18):
            scl[:] = 0  # no class anywhere: the SCL chunk is not stored
        data[c] = {"SCL": scl, "CLD": rng.integers(0, 256, scl.shape, dtype=np.uint8),
                   "SNW": rng.integers(0, 256, scl.shape, dtype=np.uint8)}
    reference = Rows.zeros(len(steps), len(index))
    row_of = {t: r for r, t in enumerate(steps)}
    for c in places:
        if (data[c]["SCL"] != 0).any():  # as compute_rows: chunks without SCL are skipped
            add_chunk(reference, row_of, index, c, k, tc, data[c]["SCL"],
                      {"CLD": data[c]["CLD"], "SNW": data[c]["SNW"]})
    arrivals = [(v, c) for c in places for v in ("SCL", "CLD", "SNW", "B04")]
    random.Random(3).shuffle(arrivals)
    worker = StepSums(index, steps, tc)
    for var, c in arrivals:
        worker.add(var, k, c, data[c].get(var, data[c]["SCL"]))
    assert worker.complete()
    committer = StepSums(index, steps, tc)
    committer.add_sparse(worker.sparse())
    for sums in (worker, committer):
        np.testing.assert_array_equal(sums.rows.counts, reference.counts)
        for v in ("CLD", "SNW"):
            np.testing.assert_array_equal(sums.rows.prob_sum[v], reference.prob_sum[v])
            np.testing.assert_array_equal(sums.rows.prob_n[v], reference.prob_n[v])
    waiting = StepSums(index, steps, tc)
    waiting.add("CLD", k, places[0], data[places[0]]["CLD"])
    assert not waiting.complete()  # its SCL chunk never came: the sums must not be used
    committer.give_up()
    assert not committer.complete()
