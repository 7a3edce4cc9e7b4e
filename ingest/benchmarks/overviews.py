"""`s2ingest overviews` on the demo cube: what each level costs, per level chunk.

    python -m ingest.benchmarks.overviews --out bench-results/overviews.json

Rebuilds every level of ``/S2/R051`` on a hard-linked copy of the demo cube (one transaction,
committed, 2 threads as ``s2ingest overviews``), timing each level (seconds inside its tasks,
summed over the threads, and their CPU seconds) and counting the level
chunks it computes (a chunk: one time step, 1250 x 1000 level pixels, 17 variables counted
separately); the commit (staging and switching the keys in) is timed apart. ``--repeat`` runs,
medians. The demo cube is built once into ``--dir``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path


def build_timed(store: Path, threads: int = 2) -> dict:
    from ingest.overviews import pyramid
    from ingest.store import CubeStore

    import threading

    per: dict[str, dict] = {}
    lock = threading.Lock()
    original = pyramid._level_var

    def timed(tx, grid, src_path, src_shape, dst_path, var, chunks, length):
        t0, c0 = time.perf_counter(), time.thread_time()
        n = original(tx, grid, src_path, src_shape, dst_path, var, chunks, length)
        with lock:
            rec = per.setdefault(dst_path.rsplit("/", 1)[-1], {"chunks": 0, "task_s": 0.0, "cpu_s": 0.0})
            rec["chunks"] += n
            rec["task_s"] += time.perf_counter() - t0
            rec["cpu_s"] += time.thread_time() - c0
        return n

    s = CubeStore.open(store)
    pyramid._level_var = timed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with s.transaction() as tx:
            n = pyramid.build_overviews(tx, s.grid, "S2/R051", threads=threads)
            t1 = time.perf_counter()
            tx.commit()
        t2, c2 = time.perf_counter(), time.process_time()
    finally:
        pyramid._level_var = original
    levels = {}
    for f, rec in sorted(per.items(), key=lambda kv: int(kv[0])):
        levels[f] = {"level_chunks": rec["chunks"], "task_s": round(rec["task_s"], 3),
                     "cpu_s": round(rec["cpu_s"], 3),
                     "ms_per_level_chunk": round(1000 * rec["task_s"] / max(1, rec["chunks"]), 2),
                     "cpu_ms_per_level_chunk": round(1000 * rec["cpu_s"] / max(1, rec["chunks"]), 2)}
    return {"level_chunks": n, "compute_s": round(t1 - t0, 2), "commit_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2), "cpu_s": round(c2 - c0, 2), "levels": levels}


def main(argv: list[str] | None = None) -> dict:
    from ingest.benchmarks.common import write_report, git_info, link_tree, machine_info
    from ingest.benchmarks.stats import demo_store

    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.overviews", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-results/demo"), help="the demo cube's folder (kept)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/overviews"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench-results/overviews.json"))
    args = ap.parse_args(argv)
    echo = print
    store = demo_store(args.dir, echo)
    load_before = os.getloadavg()
    runs = []
    for i in range(args.repeat):
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        copy = args.work / "cube.zarr"
        link_tree(store, copy)
        runs.append(build_timed(copy))
        r = runs[-1]
        echo(f"  run {i + 1}: {r['level_chunks']} level chunks in {r['total_s']} s "
             f"(compute {r['compute_s']} s, commit {r['commit_s']} s, CPU {r['cpu_s']} s)")
    shutil.rmtree(args.work, ignore_errors=True)
    best = min(runs, key=lambda r: r["total_s"])
    report = {
        "what": "s2ingest overviews: every level of /S2/R051 of the demo cube rebuilt",
        "total_s": statistics.median(r["total_s"] for r in runs),
        "compute_s": statistics.median(r["compute_s"] for r in runs),
        "commit_s": statistics.median(r["commit_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs), "threads": 2,
        "level_chunks": best["level_chunks"],
        "ms_per_level_chunk": round(1000 * statistics.median(r["compute_s"] for r in runs)
                                    / max(1, best["level_chunks"]), 2),
        "levels_fastest_run": best["levels"], "runs": runs,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": machine_info(), "code": git_info(),
    }
    for f, rec in best["levels"].items():
        echo(f"  level {f:>3}: {rec['level_chunks']:5d} chunks, {rec['task_s']:6.2f} s in tasks "
             f"({rec['ms_per_level_chunk']:6.2f} ms per chunk, {rec['cpu_ms_per_level_chunk']:6.2f} ms CPU)")
    echo(f"overviews: {report['level_chunks']} level chunks, {report['total_s']} s "
         f"({report['ms_per_level_chunk']} ms per chunk); load {load_before[0]:.2f} -> "
         f"{report['loadavg_after'][0]:.2f}")
    return write_report(args.out, report, echo)


if __name__ == "__main__":
    main()
