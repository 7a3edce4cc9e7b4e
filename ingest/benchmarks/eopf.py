"""The same scene ingested as SAFE and as EOPF Zarr, in one run: time, decode floor, memory.

    python -m ingest.benchmarks.eopf --out bench-results/eopf.json         # one full 10980² tile
    python -m ingest.benchmarks.eopf --window 3000 3000 3000 3000 --repeat 1   # a quick run

One synthetic scene (31UFT, PB 05.09, the ingest benchmark's first datatake) is written once as
SAFE (JPEG 2000) and once as EOPF Zarr (``make_product(format="eopf")``, chunk layout A:
1830/915/305) into the product cache, so both hold the same digital numbers. Each step runs in a
fresh ``spawn``-ed child (``tasks.run_child``), interleaved per repeat:

* decode floor, per format: every pixel of the 17 rasters the ingest reads (each variable at
  its ``spec.resolution``), one after the other (GDAL / Blosc using all cores) and in a pool of
  ``nproc`` threads; the faster is the floor (as in ``ingest.benchmarks.ingest``);
* ingest, per format: ``ingest_products`` of the one product into a fresh cube.

The report states both ingests, both floors, ingest / floor per format and EOPF / SAFE, and
whether the two cubes hold the same chunks (they must, byte for byte, but for the provenance
column that names the products).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.benchmarks.common import (
    BASELINE, DEFAULT_CACHE, ORBIT, UTC, _fmt, cache_dir_for, datatakes, ensure_products, git_info, input_files,
    machine_info,
)
from ingest.benchmarks.tasks import chunk_bytes, run_child, summarise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.eopf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", default="31UFT", help="the tile (default 31UFT)")
    ap.add_argument("--window", type=int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                    help="10 m window of the tile (multiples of 6) instead of the full 10980² tile")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians reported")
    ap.add_argument("--threads", type=int, default=None, help="ingest threads (default: nproc)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="product cache directory")
    ap.add_argument("--out", type=Path, default=Path("bench-results/eopf.json"), help="JSON report")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def ensure_eopf(cache: Path, tile: str, window, echo) -> Path:
    """The EOPF product of the benchmark's scene, generated into the cache when missing."""
    from ingest.synth import make_product

    (when, platform), = datatakes(1)
    directory = cache_dir_for(cache, window)
    t0 = time.perf_counter()
    path = make_product(directory, format="eopf", tile=tile, datatake_start=when, platform=platform,
                        baseline=BASELINE, relative_orbit=ORBIT, window=window, exist_ok=True)
    echo(f"  eopf     {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def _chunks(cube: Path) -> dict[str, str]:
    group = cube / f"S2/R{ORBIT:03d}"
    return {str(p.relative_to(group)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(group.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def echo(line: str) -> None:
        print(line, flush=True)

    window = tuple(args.window) if args.window else None
    nproc = len(os.sched_getaffinity(0))
    threads = args.threads or nproc
    started, load_before, code = datetime.now(UTC), os.getloadavg(), git_info()
    echo(f"s2ingest bench eopf: tile {args.tile}, {'full 10980² tile' if window is None else f'window {window}'}, "
         f"repeat {args.repeat}, {nproc} cores")
    echo("products (cached; generated once):")
    safe = str(ensure_products(args.cache, [args.tile], datatakes(1), window, echo)[0])
    eopf = str(ensure_eopf(args.cache, args.tile, window, echo))
    files = input_files([safe])
    paths = [f["path"] for f in sorted(files, key=lambda f: -f["pixels"])]
    pixels = sum(f["pixels"] for f in files)
    sizes = {"safe_jp2_bytes": sum(f["bytes"] for f in files)}
    echo(f"inputs: 17 rasters, {pixels / 1e6:.1f} Mpix ({sizes['safe_jp2_bytes'] / 1e6:.0f} MB of JP2)")

    runs: dict[str, list[dict]] = {k: [] for k in ("safe_decode_serial", "safe_decode_pool", "eopf_decode_serial",
                                                   "eopf_decode_pool", "safe_ingest", "eopf_ingest")}
    work = Path(tempfile.mkdtemp(prefix="bench-eopf-", dir=args.cache.parent if args.cache.parent.exists() else None))
    identical = None
    try:
        for i in range(args.repeat):
            echo(f"run {i + 1}/{args.repeat}")
            steps = [
                ("safe_decode_serial", "decode", dict(paths=paths, workers=1, gdal_threads="ALL_CPUS")),
                ("safe_decode_pool", "decode", dict(paths=paths, workers=nproc, gdal_threads="1")),
                ("eopf_decode_serial", "decode_eopf", dict(product_paths=[eopf], workers=1)),
                ("eopf_decode_pool", "decode_eopf", dict(product_paths=[eopf], workers=nproc)),
            ]
            for key, task, kw in steps:
                r = run_child(task, **kw)
                runs[key].append(r)
                echo(f"  {key:<20} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
            cubes = {}
            for key, product in (("safe_ingest", safe), ("eopf_ingest", eopf)):
                cube = work / f"{key}-{i}.zarr"
                r = run_child("ingest", cube_path=str(cube), product_paths=[product], known_paths=[product],
                              resampling={}, threads=threads)
                r["chunk_bytes"] = chunk_bytes(cube)
                runs[key].append(r)
                cubes[key] = cube
                echo(f"  {key:<20} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
            a, b = _chunks(cubes["safe_ingest"]), _chunks(cubes["eopf_ingest"])
            same = sorted(a) == sorted(b) and all(a[k] == b[k] for k in a if not k.startswith("products/"))
            identical = same if identical is None else identical and same
            for cube in cubes.values():
                shutil.rmtree(cube, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {k: summarise(v, pixels) for k, v in runs.items()}
    floor = {f: min(results[f"{f}_decode_serial"]["seconds_median"], results[f"{f}_decode_pool"]["seconds_median"])
             for f in ("safe", "eopf")}
    ingest = {f: results[f"{f}_ingest"]["seconds_median"] for f in ("safe", "eopf")}
    summary: dict[str, Any] = {
        "safe_ingest_s": ingest["safe"], "eopf_ingest_s": ingest["eopf"],
        "eopf_to_safe_ingest": ingest["eopf"] / ingest["safe"],
        "safe_decode_floor_s": floor["safe"], "eopf_decode_floor_s": floor["eopf"],
        "safe_ingest_to_floor": ingest["safe"] / floor["safe"], "eopf_ingest_to_floor": ingest["eopf"] / floor["eopf"],
        "peak_rss_mb_safe": results["safe_ingest"]["peak_rss_mb_max"],
        "peak_rss_mb_eopf": results["eopf_ingest"]["peak_rss_mb_max"],
        "cubes_identical_but_provenance": identical, "input_pixels": pixels,
    }
    report = {
        "schema": 1, "date": started.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(UTC) - started).total_seconds(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "machine": machine_info(), "code": code,
        "config": {"tile": args.tile, "window": window, "repeat": args.repeat, "threads": threads,
                   "products": [Path(safe).name, Path(eopf).name]},
        "results": results, "summary": summary,
    }
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    echo(f"\nwritten {args.out}")
    return report


def print_report(rep: dict) -> None:
    res, s, m = rep["results"], rep["summary"], rep["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu_model']}; load {rep['loadavg_before'][0]:.2f} -> "
          f"{rep['loadavg_after'][0]:.2f}; medians of {rep['config']['repeat']}")
    hdr = f"{'step':<26}{'seconds':>9}{'Mpix/s':>9}{'CPU %':>7}{'peak RSS MB':>13}"
    print(hdr)
    print("-" * len(hdr))
    for key, label in (("safe_decode_serial", "SAFE decode, serial"), ("safe_decode_pool", "SAFE decode, pool"),
                       ("safe_ingest", "SAFE ingest"), ("eopf_decode_serial", "EOPF decode, serial"),
                       ("eopf_decode_pool", "EOPF decode, pool"), ("eopf_ingest", "EOPF ingest")):
        r = res[key]
        print(f"{label:<26}{r['seconds_median']:>9.1f}{_fmt(r['mpix_per_s'], '.1f'):>9}"
              f"{100 * r['cpu_utilisation_median'] / m['nproc']:>7.0f}{r['peak_rss_mb_max']:>13.0f}")
    print(f"\nSAFE: ingest {s['safe_ingest_s']:.1f} s = {s['safe_ingest_to_floor']:.2f} x its decode floor "
          f"({s['safe_decode_floor_s']:.1f} s)")
    print(f"EOPF: ingest {s['eopf_ingest_s']:.1f} s = {s['eopf_ingest_to_floor']:.2f} x its decode floor "
          f"({s['eopf_decode_floor_s']:.1f} s)")
    print(f"EOPF / SAFE ingest time: {s['eopf_to_safe_ingest']:.2f}; cubes identical (but the provenance): "
          f"{s['cubes_identical_but_provenance']}")


if __name__ == "__main__":
    main(sys.argv[1:])
