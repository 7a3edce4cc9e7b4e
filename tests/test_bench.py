"""Smoke test of the benchmark harness (``make bench``) on a small window.

This checks that the harness runs end to end and reports consistent figures; it asserts
nothing about speed (speed is measured by ``make bench``, not by a timed test).
"""
from __future__ import annotations

import json

import pytest

from ingest.benchmarks import ingest as bench


@pytest.mark.slow
def test_bench_smoke_small_window(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main([
        "--window", "4800", "4800", "300", "300", "--repeat", "1", "--populate", "1",
        "--no-single-thread", "--cache", str(tmp_path / "products"), "--out", str(out),
    ])
    printed = capsys.readouterr().out
    assert "SPEED" in printed and "MEMORY" in printed and "OVERVIEWS" in printed and "decode" in printed

    on_disk = json.loads(out.read_text())
    assert on_disk["summary"] == json.loads(json.dumps(report["summary"], default=str))
    s = on_disk["summary"]
    assert s["decode_floor_mode"] in ("decode_serial_allcpus", "decode_pool")
    assert s["decode_floor_s"] > 0 and s["ingest_s"] > 0
    assert s["ratio_to_decode_floor"] == pytest.approx(s["ingest_s"] / s["decode_floor_s"])
    assert s["target_met"] == (s["ratio_to_decode_floor"] <= bench.TARGET_RATIO)
    assert s["populated_target_met"] == (s["ratio_populated_to_decode_floor"] <= bench.POPULATED_TARGET)
    # 17 files: 4 at 10 m (300²), 11 at 20 m (150²), 2 at 60 m (50²)
    assert len(on_disk["inputs"]["files"]) == 17
    assert s["input_pixels"] == 4 * 300**2 + 11 * 150**2 + 2 * 50**2
    assert s["output_pixels"] > 0 and s["store_chunk_bytes"] > 0 and s["compression_ratio"] > 1
    assert s["populated_time_steps_before"] == 1
    assert s["peak_rss_mb_fresh"] > 0 and s["peak_rss_mb_populated"] > 0
    res = on_disk["results"]
    assert set(res) == {"decode_serial_allcpus", "decode_pool", "ingest_fresh", "ingest_populated",
                        "ingest_populated_overviews"}
    # the overviews' cost: the same products into the same cube, with its levels kept current
    pop, ov = res["ingest_populated"]["runs"][0], res["ingest_populated_overviews"]["runs"][0]
    assert s["overviews_publish_overhead"] == pytest.approx((ov["seconds"] - pop["seconds"]) / pop["seconds"])
    assert s["overviews_target_met"] == (s["overviews_publish_overhead"] < bench.OVERVIEWS_TARGET)
    assert ov["chunks_written"] == pop["chunks_written"]
    assert res["decode_pool"]["runs"][0]["gdal_num_threads_seen"] == ["1"]
    assert res["decode_serial_allcpus"]["runs"][0]["gdal_num_threads_seen"] == ["ALL_CPUS"]
    m = on_disk["machine"]
    assert m["nproc"] >= 1 and m["gdal"] and m["rasterio"]
    # the product cache is reused: a second listing finds the products already there
    again = bench.ensure_products(tmp_path / "products", ["31UFT"], bench.datatakes(1),
                                  (4800, 4800, 300, 300), lambda s: None)
    assert len(again) == 1 and again[0].exists()


def test_datatakes_alternate_platforms_and_precede_first():
    after = bench.datatakes(3)
    before = bench.datatakes(2, before=True)
    assert [p for _, p in after] == ["S2A", "S2B", "S2A"]
    assert after[0][0] == bench.FIRST_DATATAKE
    assert all(t < bench.FIRST_DATATAKE for t, _ in before)
    assert before == sorted(before)
    assert len({t for t, _ in after + before}) == 5


@pytest.mark.slow
def test_eopf_bench_smoke_small_window(tmp_path, capsys):
    """``python -m ingest.benchmarks.eopf``: the same scene as SAFE and EOPF, both reported."""
    from ingest.benchmarks import eopf

    out = tmp_path / "eopf.json"
    report = eopf.main(["--window", "4800", "4800", "300", "300", "--repeat", "1",
                        "--cache", str(tmp_path / "products"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "EOPF / SAFE ingest time" in printed and "SAFE decode" in printed and "EOPF decode" in printed
    s = json.loads(out.read_text())["summary"]
    assert s == json.loads(json.dumps(report["summary"], default=str))
    assert s["cubes_identical_but_provenance"] is True
    assert min(s["safe_ingest_s"], s["eopf_ingest_s"], s["safe_decode_floor_s"], s["eopf_decode_floor_s"]) > 0
    assert s["eopf_to_safe_ingest"] == pytest.approx(s["eopf_ingest_s"] / s["safe_ingest_s"])
    assert s["input_pixels"] == 4 * 300**2 + 11 * 150**2 + 2 * 50**2
    assert report["config"]["products"][1] == report["config"]["products"][0].removesuffix(".SAFE") + ".zarr"


def test_synth_bench_smoke(tmp_path):
    """``python -m ingest.benchmarks.synth``: the product-generation speed figures that were
    timed assertions in test_synth (a loaded machine is no defect) are reported, not judged."""
    from ingest.benchmarks import synth

    out = tmp_path / "synth.json"
    report = synth.main(["--repeat", "1", "--no-full-tile", "--out", str(out)])
    assert report["small_product_s"] > 0 and report["small_product_runs"] == 1
    assert json.loads(out.read_text()) == report


@pytest.mark.slow
def test_workers_bench_smoke_reports_the_committer_share(tmp_path, capsys):
    """``python -m ingest.benchmarks.workers``: every mode the same chunks; the committer's CPU
    per tile-date is measured beside the workers' (the share one committer can keep busy)."""
    from ingest.benchmarks import workers

    out = tmp_path / "workers.json"
    report = workers.main(["--window", "4800", "4800", "300", "300", "--repeat", "1",
                           "--cache", str(tmp_path / "products"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "COMMITTER share" in printed and "WORKERS speed-up" in printed
    s = json.loads(out.read_text())["summary"]
    assert s == json.loads(json.dumps(report["summary"], default=str))
    assert s["identical_chunks"] and s["chunks_compared"] > 0
    assert 0 < s["committer_cpu_s_per_tile_date"] and 0 < s["worker_cpu_s_per_tile_date"]
    assert s["committer_share"] == pytest.approx(
        max(report["results"][m]["committer_share"] for m in ("workers_1", "workers_2")))
    assert s["committer_share_met"] == (s["committer_share"] <= workers.COMMITTER_TARGET)
    for m in ("workers_1", "workers_2"):
        run = report["results"][m]["runs"][0]
        assert run["switched_keys"] > 0 and run["worker_cpu_s"] > 0


@pytest.mark.slow
def test_handmade_bench_smoke_compares_with_rioxarray(tmp_path, capsys):
    """``python -m ingest.benchmarks.handmade``: the ingest and the hand-made rioxarray
    pipeline on the same product, beside the decode floor, in one run."""
    from ingest.benchmarks import handmade

    out = tmp_path / "handmade.json"
    report = handmade.main(["--window", "4800", "4800", "300", "300", "--repeat", "1",
                            "--cache", str(tmp_path / "products"), "--out", str(out)])
    assert "hand-made rioxarray pipeline / the ingest" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert s["handmade_over_ingest"] == pytest.approx(
        doc["median"]["handmade"]["seconds"] / doc["median"]["ingest"]["seconds"])
    assert s["goal_met"] == (s["handmade_over_ingest"] >= handmade.GOAL)
    run = report["runs"]["handmade"][0]
    assert run["variables"] == 17 and run["output_pixels"] > 17 * 300 * 300
    # odc-stac (the bench extra, installed with the test extra): the same product through its Item
    assert s["odc_stac_over_ingest"] == pytest.approx(
        doc["median"]["odc_stac"]["seconds"] / doc["median"]["ingest"]["seconds"])
    run = report["runs"]["odc_stac"][0]
    assert run["variables"] == 17 and run["output_pixels"] > 17 * 300 * 300


def test_the_odc_stac_item_of_a_product_names_each_variables_file_and_grid(tmp_path):
    """The STAC Item the odc-stac run loads: one asset per variable, the JP2 file the ingest
    reads at the variable's resolution, with its projection; odc-stac parses it as such."""
    import odc.stac
    import rasterio

    from ingest.benchmarks.common import datatakes, ensure_products, input_files
    from ingest.benchmarks.tasks import product_item

    product = str(ensure_products(tmp_path, ["31UFT"], datatakes(1), (4800, 4800, 120, 120), print)[0])
    item = product_item(product)
    files = {f["variable"]: f["path"] for f in input_files([product])}
    assert {k: a.href for k, a in item.assets.items()} == files
    parsed = odc.stac.parse_item(item)
    for name, path in files.items():
        with rasterio.open(path) as src:
            geobox = parsed[name].geobox
            assert geobox.crs.epsg == src.crs.to_epsg() and geobox.shape == (src.height, src.width)
            assert tuple(geobox.affine)[:6] == tuple(src.transform)[:6]


def test_mirror_bench_smoke_on_an_existing_cube(tmp_path, capsys):
    """``python -m ingest.benchmarks.mirror --source CUBE``: an existing cube (the demo cube
    with ``--demo``) mirrored beside ``cp -r`` and a plain copy; the report is JSON."""
    from ingest.benchmarks import mirror

    cube = tmp_path / "cube.zarr"
    mirror.build_source(cube, 2, 3)
    out = tmp_path / "mirror.json"
    report = mirror.main(["--source", str(cube), "--work", str(tmp_path / "work"), "--repeat", "1",
                          "--jobs", "2", "--out", str(out)])
    assert "mirror / cp -r" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["summary"]["keys"] == report["summary"]["keys"] > 6
    assert doc["config"]["source"] == str(cube.resolve())
