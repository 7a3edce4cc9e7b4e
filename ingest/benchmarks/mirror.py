"""Mirror throughput against a plain parallel copy of the same files, in the same run.

    python -m ingest.benchmarks.mirror --out bench-results/mirror.json

The source is a cube of ``--vars`` arrays x ``--chunks`` chunks of the cube's chunk shape
(uint16 reflectance-like noise: about the compressed size of real chunks), written once
through the store owner and cached; or, with ``--source``, an existing cube (the demo cube:
thousands of small keys, where the per-key work and the start-up weigh most). Measured, interleaved, ``--repeat`` times (medians):

* local -> local: ``plain_copy`` (a pool of ``--jobs`` threads copying every file named by the
  manifest) and ``cp -r`` of the whole store against ``s2ingest mirror`` into a new folder
  (every key hashed while it is copied, staged, committed), both in this process and as the
  ``s2ingest mirror`` command (its start-up included);
* HTTP -> local: the same over a local threaded static HTTP server (``requests`` GETs in a
  pool of ``--jobs`` threads writing files) against ``s2ingest mirror URL``;
* an incremental rerun with nothing changed (a key whose file is the one the last run
  verified is trusted: a stat per key) and one with ``--quick`` (sizes only).

Ratios are mirror time / plain copy time of the same run (goal: <= 1.3); ``ratio_cp`` and
``ratio_cli_cp`` compare with ``cp -r``.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ingest.benchmarks.common import write_report

GOAL = 1.3


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request
        pass


def build_source(path: Path, n_vars: int, n_chunks: int) -> dict:
    """A cube at version 1 with ``n_vars`` (time, y, x) arrays of ``n_chunks`` chunks each."""
    from ingest.grid import NL_GRID
    from ingest.store import COMPRESSOR, CubeStore

    marker = path / ".bench-complete"
    if marker.exists() and json.loads(marker.read_text()) == [n_vars, n_chunks]:
        return CubeStore.open(path).manifest()
    shutil.rmtree(path, ignore_errors=True)
    store, _ = CubeStore.create(path, NL_GRID)
    rng = np.random.default_rng(0)
    cy, cx = NL_GRID.chunk_shape
    ny, nx = NL_GRID.shape
    base = rng.normal(1500, 300, size=(5, cy, cx)).clip(0, 10000).astype("uint16") & 0xFFF0
    with store.transaction() as tx:
        tx.create_group("S2")
        tx.create_group("S2/R051")
        for v in range(n_vars):
            path_v = f"S2/R051/V{v:02d}"
            meta = tx.create_array(path_v, shape=(5, ny, nx), chunks=(5, cy, cx), dtype="uint16",
                                   fill_value=0, compressor=COMPRESSOR,
                                   attrs={"_ARRAY_DIMENSIONS": ["time", "y", "x"]})
            for i in range(n_chunks):
                iy, ix = divmod(i, nx // cx)
                chunk = np.roll(base, shift=(v * 7 + i) % cx, axis=2)
                tx.put(f"{path_v}/0.{iy}.{ix}", meta.encode(chunk))
        tx.commit()
    marker.write_text(json.dumps([n_vars, n_chunks]))
    return CubeStore.open(path).manifest()


def plain_copy_local(src: Path, dst: Path, keys: list[str], jobs: int) -> None:
    def one(key: str) -> None:
        target = dst / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / key, target)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, keys))


def plain_copy_http(url: str, dst: Path, keys: list[str], jobs: int) -> None:
    import requests

    local = threading.local()

    def one(key: str) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        r = s.get(f"{url}/{key}", timeout=60)
        r.raise_for_status()
        target = dst / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(r.content)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, keys))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    from ingest.copies.mirror import mirror

    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.mirror", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vars", type=int, default=17)
    ap.add_argument("--chunks", type=int, default=100, help="chunks per array")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--source", type=Path, default=None,
                    help="mirror this cube (e.g. s2ingest-demo/cube.zarr) instead of the synthetic one")
    ap.add_argument("--demo", type=Path, default=None, metavar="DIR",
                    help="mirror the demo cube under DIR (built there when missing)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/mirror"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/mirror.json"))
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.demo is not None:
        from ingest.benchmarks.stats import demo_store

        args.source = demo_store(args.demo, print)
    if args.source is not None:
        from ingest.store import CubeStore

        src = args.source.resolve()
        manifest = CubeStore.open(src).manifest()
    else:
        src = args.work / "source.zarr"
        manifest = build_source(src, args.vars, args.chunks)
    keys = sorted(manifest["keys"])
    total = sum(e["size"] for e in manifest["keys"].values())
    handler = functools.partial(QuietHandler, directory=str(src.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{src.name}"
    runs: dict[str, list[float]] = {k: [] for k in (
        "cp_r", "plain_local", "mirror_local", "mirror_cli", "plain_http", "mirror_http",
        "rerun_unchanged", "rerun_quick")}
    cli = [str(Path(sys.executable).with_name("s2ingest")), "mirror", "--no-progress", "--jobs",
           str(args.jobs)]
    try:
        for _ in range(args.repeat):
            for name, fn in (
                ("cp_r", lambda d: subprocess.run(["cp", "-r", str(src), str(d)], check=True)),
                ("mirror_cli", lambda d: subprocess.run([*cli, str(src), str(d)], check=True,
                                                        stdout=subprocess.DEVNULL)),
                ("plain_local", lambda d: plain_copy_local(src, d, keys, args.jobs)),
                ("mirror_local", lambda d: mirror(str(src), str(d), jobs=args.jobs)),
                ("plain_http", lambda d: plain_copy_http(url, d, keys, args.jobs)),
                ("mirror_http", lambda d: mirror(url, str(d), jobs=args.jobs)),
            ):
                dst = args.work / f"copy-{name}"
                shutil.rmtree(dst, ignore_errors=True)
                runs[name].append(timed(functools.partial(fn, dst)))
            copy = args.work / "copy-mirror_local"
            runs["rerun_unchanged"].append(timed(lambda: mirror(str(src), str(copy), jobs=args.jobs)))
            runs["rerun_quick"].append(timed(lambda: mirror(str(src), str(copy), jobs=args.jobs, quick=True)))
    finally:
        server.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    summary = {
        "keys": len(keys), "bytes": total,
        "ratio_local": med["mirror_local"] / med["plain_local"],
        "ratio_cp": med["mirror_local"] / med["cp_r"],
        "ratio_cli_cp": med["mirror_cli"] / med["cp_r"],
        "ratio_http": med["mirror_http"] / med["plain_http"],
        "mirror_local_MBps": total / med["mirror_local"] / 1e6,
        "mirror_http_MBps": total / med["mirror_http"] / 1e6,
        "rerun_unchanged_vs_plain_local": med["rerun_unchanged"] / med["plain_local"],
        "rerun_quick_vs_plain_local": med["rerun_quick"] / med["plain_local"],
        "goal": GOAL,
    }
    summary["goal_met"] = all(summary[k] <= GOAL for k in ("ratio_local", "ratio_cp", "ratio_http"))
    report = {"schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config": vars(args) | {"work": str(args.work), "out": str(args.out),
                                     "source": str(src)},
              "loadavg": os.getloadavg(), "runs": runs, "median_s": med, "summary": summary}
    print(f"MIRROR  {len(keys)} keys, {total / 1e6:.0f} MB, {args.jobs} jobs, medians of {args.repeat}")
    for k, v in med.items():
        print(f"  {k:<16} {v:7.2f} s")
    print(f"  mirror / cp -r: {summary['ratio_cp']:.2f}x (the command, start-up included: "
          f"{summary['ratio_cli_cp']:.2f}x)")
    print(f"  mirror / plain copy: local {summary['ratio_local']:.2f}x, HTTP {summary['ratio_http']:.2f}x "
          f"(goal <= {GOAL}); rerun unchanged {summary['rerun_unchanged_vs_plain_local']:.2f}x, "
          f"--quick {summary['rerun_quick_vs_plain_local']:.2f}x of a plain local copy")
    return write_report(args.out, report, print)


if __name__ == "__main__":
    main()
