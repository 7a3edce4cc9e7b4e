"""``sync --workers``: one worker process against two, and the in-process writer.

    python -m ingest.benchmarks.workers --repeat 1 --out bench-results/workers.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ingest.benchmarks.common import (
    DEFAULT_CACHE, ORBIT, UTC, _fmt, datatakes, ensure_products, git_info, input_files, link_tree,
    machine_info, median,
)
from ingest.benchmarks.tasks import run_child, summarise

WORKER_TARGET = 1.8  # speed-up of 2 workers over 1 (the goal)
COMMITTER_TARGET = 1 / 30  # the committer's CPU per tile-date against a worker's: 30 workers busy


WORKER_POPULATE_WINDOW = (4800, 4800, 600, 600)  # small earlier datatakes: they only shift the axis


def bench_workers(args: argparse.Namespace, echo: Callable[[str], None]) -> dict:
    """``sync --workers``: one worker process against two, on two full-size products whose
    datatakes fall into different time chunks (so the two parts are independent and neither
    is cut), plus the in-process writer (threads) for reference.

    The cube already holds four small earlier datatakes (a 600² window each), so the two
    measured datatakes are time steps 4 and 5: time chunks 0 and 1. Every run starts from a
    hard-linked copy of that cube, in a fresh spawned child; the chunks written by all runs
    are compared byte for byte (the result must not depend on the workers).
    """
    tiles = [t.strip() for t in args.tiles.split(",") if t.strip()]
    window = tuple(args.window) if args.window else None
    nproc = len(os.sched_getaffinity(0))
    echo(f"s2ingest bench workers: tiles {','.join(tiles)} x 2 datatakes in different time "
         f"chunks, {'full 10980² tiles' if window is None else f'window {window}'}, repeat {args.repeat}, "
         f"{nproc} cores")
    measured = [str(p) for p in ensure_products(args.cache, tiles, datatakes(2), window, echo)]
    earlier = [str(p) for p in ensure_products(args.cache, tiles, datatakes(4, before=True),
                                               WORKER_POPULATE_WINDOW, echo)]
    in_pixels = sum(f["pixels"] for f in input_files(measured))
    resampling: dict[str, str] = {}
    modes = {"in_process": None, "workers_1": 1, "workers_2": 2}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    digests: dict[str, dict[str, str]] = {}
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-tmp-", dir=args.cache.parent if args.cache.parent.exists() else None))
    try:
        base = work / "base.zarr"
        r = run_child("ingest", cube_path=str(base), product_paths=earlier, known_paths=earlier,
                      resampling=resampling, threads=nproc)
        echo(f"base cube: {r['time_steps_total']} earlier time steps")
        for i in range(args.repeat):
            for mode, workers in modes.items():
                cube = work / f"{mode}-{i}.zarr"
                link_tree(base, cube)
                r = run_child("ingest", cube_path=str(cube), product_paths=measured,
                              known_paths=earlier + measured, resampling=resampling,
                              threads=nproc, workers=workers)
                assert r["time_steps_written"] == 2 and r["time_steps_total"] == 6, r
                runs[mode].append(r)
                digests[mode] = _chunk_digests(cube)
                shutil.rmtree(cube, ignore_errors=True)
                w = "" if r["worker_peak_rss_mb"] is None else f", workers' peak {r['worker_peak_rss_mb']:.0f} MB"
                echo(f"  run {i + 1} {mode:<11} {r['seconds']:8.1f} s  committer peak RSS "
                     f"{r['peak_rss_mb']:6.0f} MB{w}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {m: summarise(v, in_pixels) for m, v in runs.items()}
    for m in results:
        results[m]["worker_peak_rss_mb_max"] = max((r["worker_peak_rss_mb"] or 0) for r in runs[m]) or None
        results[m]["total_cpu_s_median"] = median([r["cpu_s"] + r.get("worker_cpu_s", 0.0) for r in runs[m]])
    t1, t2 = results["workers_1"]["seconds_median"], results["workers_2"]["seconds_median"]
    shares = {m: median([r["committer_cpu_s"] / r["worker_cpu_s"] for r in runs[m]])
              for m in ("workers_1", "workers_2")}
    for m, share in shares.items():
        results[m]["committer_share"] = share
    tile_dates = 2 * len(tiles)
    summary = {
        # the committer's CPU per tile-date against a worker's (all workers' CPU per tile-date)
        "committer_share": max(shares.values()), "committer_share_target": COMMITTER_TARGET,
        "committer_share_met": max(shares.values()) <= COMMITTER_TARGET,
        "worker_cpu_s_per_tile_date": median([r["worker_cpu_s"] for r in runs["workers_1"]]) / tile_dates,
        "committer_cpu_s_per_tile_date": median([r["committer_cpu_s"] for r in runs["workers_1"]]) / tile_dates,
        "speedup_2_over_1_worker": t1 / t2, "target": WORKER_TARGET, "target_met": t1 / t2 >= WORKER_TARGET,
        "workers_2_over_in_process": results["in_process"]["seconds_median"] / t2,
        "identical_chunks": len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1,
        "chunks_compared": len(next(iter(digests.values()))),
    }
    echo(f"(CPU s: committer + worker processes; load average {load_before[0]:.1f} before, "
         f"{os.getloadavg()[0]:.1f} after: other work on the machine makes the seconds indicative only)")
    report = {"schema": 1, "bench": "workers", "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "machine": machine_info(),
              "code": git_info(), "products": [Path(p).name for p in measured],
              "results": results, "summary": summary}
    echo("")
    echo(f"{'mode':<34}{'seconds':>9}{'in Mpix/s':>11}{'CPU s':>8}{'committer MB':>14}{'worker MB':>11}")
    for m, label in [("in_process", f"in process ({nproc} threads)"), ("workers_1", "--workers 1 (1 core each)"),
                     ("workers_2", "--workers 2 (1 core each)")]:
        r = results[m]
        echo(f"{label:<34}{r['seconds_median']:>9.1f}{r['mpix_per_s']:>11.1f}"
             f"{r['total_cpu_s_median']:>8.0f}{r['peak_rss_mb_max']:>14.0f}"
             f"{_fmt(r['worker_peak_rss_mb_max'], '.0f'):>11}")
    echo(f"\nCOMMITTER share: {summary['committer_cpu_s_per_tile_date']:.1f} s of committer CPU per "
         f"tile-date against {summary['worker_cpu_s_per_tile_date']:.1f} s in the workers = "
         f"1/{1 / summary['committer_share']:.0f} (goal <= 1/{1 / COMMITTER_TARGET:.0f}): "
         f"{'MET' if summary['committer_share_met'] else 'NOT MET'}")
    echo(f"WORKERS speed-up 2 over 1 worker = {summary['speedup_2_over_1_worker']:.2f} (goal >= {WORKER_TARGET}): "
         f"{'MET' if summary['target_met'] else 'NOT MET'}; 2 workers vs in-process threads: "
         f"{summary['workers_2_over_in_process']:.2f}x; chunks identical in every mode: {summary['identical_chunks']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    echo(f"written {args.out}")
    return report


def _chunk_digests(cube: Path) -> dict[str, str]:
    import hashlib

    from ingest.publish.engine import Cube
    from ingest.grid import NL_GRID
    from ingest.variables import VARIABLES

    group = cube / Cube(cube, NL_GRID, ORBIT).group
    return {f"{v}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for v in VARIABLES for p in sorted((group / v).glob("*.*.*"))}



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.workers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", default="31UFT", help="comma-separated tiles (default 31UFT)")
    ap.add_argument("--window", type=int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                    help="10 m window of each tile (multiples of 6) instead of the full 10980² tile")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode; medians reported")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="product cache directory")
    ap.add_argument("--out", type=Path, default=Path("bench-results/workers.json"), help="JSON report")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return bench_workers(args, lambda line: print(line, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
