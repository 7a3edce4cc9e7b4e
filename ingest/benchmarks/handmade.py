"""The ingest against the hand-made pipeline a user would write instead, on one full tile-date:

    python -m ingest.benchmarks.handmade --out bench-results/handmade.json

Measured, interleaved ``--repeat`` times, each in a fresh ``spawn``-ed child (``tasks.run_child``):

* ``decode_pool``: the decode floor of ``ingest.benchmarks.ingest`` (the JP2 files the ingest
  reads, a pool of one thread per core);
* ``ingest``: ``ingest_products`` of the product into a fresh cube (every variable warped onto
  the national grid, masks, quality atlas, the transaction's bookkeeping);
* ``handmade``: the rioxarray pipeline, variable by variable: ``open_rasterio`` of the same
  file the ingest reads, ``rio.reproject`` to EPSG:28992 at 10 m (the first 10 m band;
  every other variable ``rio.reproject_match``-ed onto it) with the same resampling per
  variable and the variable's fill value as nodata, then ``to_zarr`` (Zarr format 2, one time
  step, chunks of (1, 625, 500) with the cube's Blosc codec), under the same GDAL settings.
  It does less than the ingest (no national grid, no mosaic, no masks or atlas, no versions).
* ``odc_stac``: the same product through odc-stac (when the ``bench`` extra is installed):
  a STAC Item of the product (an asset per variable with its projection and raster fields, as
  Earth Search items carry), ``odc.stac.load`` onto EPSG:28992 at 10 m with the same
  resampling per variable, in dask chunks holding whole Zarr chunks, then ``to_zarr`` (Zarr
  format 2, the same chunks and codec) on one dask thread per core.

The figures are ``handmade / ingest`` and ``odc_stac / ingest`` of the medians (goal: >= 2, the
ingest at least twice as fast as the hand-made pipeline), wall and CPU seconds, with the load
average before and after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from ingest.benchmarks.common import (
    DEFAULT_CACHE, UTC, datatakes, ensure_products, git_info, input_files, machine_info, median,
    write_report,
)
from ingest.benchmarks.tasks import run_child

try:
    import odc.stac  # noqa: F401  (the bench extra: pip install '.[bench]')
    HAVE_ODC_STAC = True
except ImportError:
    HAVE_ODC_STAC = False

GOAL = 2.0  # the hand-made pipeline's time / the ingest's time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.handmade",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", default="31UFT")
    ap.add_argument("--window", type=int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                    help="10 m window of the tile (multiples of 6) instead of the full 10980² tile")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="product cache directory")
    ap.add_argument("--out", type=Path, default=Path("bench-results/handmade.json"))
    ap.add_argument("--no-odc-stac", action="store_true", help="leave out the odc-stac run")
    args = ap.parse_args(argv)
    window = tuple(args.window) if args.window else None
    started, load_before, code = datetime.now(UTC), os.getloadavg(), git_info()
    products = [str(p) for p in ensure_products(args.cache, [args.tile], datatakes(1), window, print)]
    files = sorted(input_files(products), key=lambda f: -f["pixels"])
    paths = [f["path"] for f in files]
    nproc = len(os.sched_getaffinity(0))
    runs: dict[str, list[dict]] = {"decode_pool": [], "ingest": [], "handmade": []}
    if HAVE_ODC_STAC and not args.no_odc_stac:
        runs["odc_stac"] = []
    elif not args.no_odc_stac:
        print("odc-stac is not installed: its run is left out (pip install '.[bench]')")
    work = Path(tempfile.mkdtemp(prefix="bench-handmade-",
                                 dir=args.cache.parent if args.cache.parent.exists() else None))
    try:
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}", flush=True)
            r = run_child("decode", paths=paths, workers=nproc, gdal_threads="1")
            runs["decode_pool"].append(r)
            cube = work / "cube.zarr"
            r = run_child("ingest", cube_path=str(cube), product_paths=products, known_paths=products,
                          resampling={}, threads=nproc)
            runs["ingest"].append(r)
            shutil.rmtree(cube, ignore_errors=True)
            out = work / "handmade.zarr"
            r = run_child("handmade", product_path=products[0], out_path=str(out))
            runs["handmade"].append(r)
            shutil.rmtree(out, ignore_errors=True)
            if "odc_stac" in runs:
                out = work / "odc-stac.zarr"
                runs["odc_stac"].append(run_child("odc_stac", product_path=products[0], out_path=str(out),
                                                  threads=nproc))
                shutil.rmtree(out, ignore_errors=True)
            for name in runs:
                print(f"  {name:<12} {runs[name][-1]['seconds']:7.1f} s  CPU {runs[name][-1]['cpu_s']:7.1f} s  "
                      f"peak RSS {runs[name][-1]['peak_rss_mb']:6.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: {"seconds": median([r["seconds"] for r in v]), "cpu_s": median([r["cpu_s"] for r in v]),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in v)} for k, v in runs.items()}
    summary = {
        "handmade_over_ingest": med["handmade"]["seconds"] / med["ingest"]["seconds"],
        "handmade_over_ingest_cpu": med["handmade"]["cpu_s"] / med["ingest"]["cpu_s"],
        "ingest_over_decode_floor": med["ingest"]["seconds"] / med["decode_pool"]["seconds"],
        "handmade_over_decode_floor": med["handmade"]["seconds"] / med["decode_pool"]["seconds"],
        "goal": GOAL,
    }
    if "odc_stac" in med:
        summary["odc_stac_over_ingest"] = med["odc_stac"]["seconds"] / med["ingest"]["seconds"]
        summary["odc_stac_over_ingest_cpu"] = med["odc_stac"]["cpu_s"] / med["ingest"]["cpu_s"]
    summary["goal_met"] = summary["handmade_over_ingest"] >= GOAL
    report = {"schema": 1, "date": started.isoformat(timespec="seconds"), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(), "machine": machine_info(), "code": code,
              "config": {"tile": args.tile, "window": window, "repeat": args.repeat,
                         "products": [Path(p).name for p in products]},
              "inputs": {"files": len(files), "pixels": sum(f["pixels"] for f in files)},
              "runs": runs, "median": med, "summary": summary}
    print(f"HANDMADE  {args.tile} {'full tile' if window is None else f'window {window}'}, "
          f"medians of {args.repeat}, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    for k, v in med.items():
        print(f"  {k:<12} {v['seconds']:7.1f} s  CPU {v['cpu_s']:7.1f} s  peak RSS {v['peak_rss_mb']:6.0f} MB")
    print(f"  the hand-made rioxarray pipeline / the ingest: {summary['handmade_over_ingest']:.2f}x wall, "
          f"{summary['handmade_over_ingest_cpu']:.2f}x CPU (goal >= {GOAL}); the ingest is "
          f"{summary['ingest_over_decode_floor']:.2f}x the decode floor")
    if "odc_stac_over_ingest" in summary:
        print(f"  odc-stac load -> to_zarr / the ingest: {summary['odc_stac_over_ingest']:.2f}x wall, "
              f"{summary['odc_stac_over_ingest_cpu']:.2f}x CPU")
    return write_report(args.out, report, print)


if __name__ == "__main__":
    main()
