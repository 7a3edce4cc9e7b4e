"""`rechunk` of the whole demo cube (no bbox) against plain xarray/dask on the data's bounding box.

    python -m ingest.benchmarks.rechunk --out bench-results/rechunk.json

Both run in child processes (peak memory: the child's VmHWM), interleaved ``--repeat`` times:

* ``s2ingest rechunk CUBE DST --chunks time=-1,y=125,x=100`` on the whole grid (30 000 x
  34 375 pixels; the work follows the stored chunks), default ``--max-mem 2GB``;
* the reference: ``xr.open_zarr`` of the group (stored integers), cut to the bounding box of
  the stored chunks, ``.chunk(time=-1, y=125, x=100)`` and ``to_zarr`` on dask's threads.

The figure is the ratio of the medians (goal: <= 1.5); the copy is checked equal to the
reference over the bounding box (and fill outside it). The demo cube is built once into
``--dir`` (about 3 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

GOAL = 1.5
CHUNKS = {"time": -1, "y": 125, "x": 100}

_PEAK = """
def _peak_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
"""

OURS = _PEAK + """
import json, sys, time
from ingest.copies.plan import parse_size
from ingest.copies.rechunk import rechunk
src, dst, max_mem = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
rechunk(src, dst, chunks="time=-1,y=125,x=100", max_mem=parse_size(max_mem))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}))
"""

REFERENCE = _PEAK + """
import json, sys, time
import xarray as xr
src, dst, bbox = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
t0 = time.perf_counter()
ds = xr.open_zarr(src, group="S2/R051", consolidated=True, mask_and_scale=False)
ds = ds.isel(y=slice(bbox[0], bbox[1]), x=slice(bbox[2], bbox[3]))
ds = ds.chunk({"time": -1, "y": 125, "x": 100})
for v in ds.variables.values():
    v.encoding.pop("chunks", None); v.encoding.pop("preferred_chunks", None)
ds.to_zarr(dst, mode="w-", consolidated=True, zarr_format=2)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}))
"""


def data_box(store: Path) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the stored chunks of any imagery variable."""
    from ingest.grid import NL_GRID
    from ingest.variables import VARIABLES

    cy, cx = NL_GRID.chunk_shape
    rows, cols = [], []
    for v in VARIABLES:
        for name in os.listdir(store / "S2/R051" / v):
            parts = name.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                rows.append(int(parts[1]))
                cols.append(int(parts[2]))
    ny, nx = NL_GRID.shape
    return min(rows) * cy, min(ny, (max(rows) + 1) * cy), min(cols) * cx, min(nx, (max(cols) + 1) * cx)


def _child(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_values(ours: Path, ref: Path, box) -> bool:
    import numpy as np
    import xarray as xr

    a = xr.open_zarr(ours, group="S2/R051", consolidated=True, mask_and_scale=False)
    b = xr.open_zarr(ref, consolidated=True, mask_and_scale=False)  # written at its root
    inner = a.isel(y=slice(box[0], box[1]), x=slice(box[2], box[3]))
    for name in b.data_vars:
        if not np.array_equal(inner[name].values, b[name].values):
            return False
    # outside the box: nothing written but the fill value
    for name in b.data_vars:
        folder = ours / "S2/R051" / name
        cy, cx = a[name].encoding["chunks"][1:]
        for key in os.listdir(folder):
            parts = key.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                r, c = int(parts[1]) * cy, int(parts[2]) * cx
                if not (box[0] <= r < box[1] and box[2] <= c < box[3]):
                    return False
    return True


def main(argv: list[str] | None = None) -> dict:
    from ingest.benchmarks.common import write_report, git_info, machine_info
    from ingest.benchmarks.stats import demo_store

    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.rechunk", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-results/demo"), help="the demo cube's folder (kept)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/rechunk"), help="where the copies go")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-mem", default="2GB")
    ap.add_argument("--out", type=Path, default=Path("bench-results/rechunk.json"))
    args = ap.parse_args(argv)
    echo = print
    store = demo_store(args.dir, echo)
    box = data_box(store)
    load_before = os.getloadavg()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    ours, ref = [], []
    for i in range(args.repeat):
        dst_o, dst_r = args.work / f"ours-{i}.zarr", args.work / f"ref-{i}.zarr"
        ref.append(_child(REFERENCE, str(store), str(dst_r), json.dumps(box)))
        ours.append(_child(OURS, str(store), str(dst_o), args.max_mem))
        echo(f"  run {i + 1}: rechunk {ours[-1]['seconds']:.1f} s ({ours[-1]['peak_mb']:.0f} MB peak), "
             f"xarray/dask on the data's box {ref[-1]['seconds']:.1f} s ({ref[-1]['peak_mb']:.0f} MB)")
    equal = same_values(args.work / "ours-0.zarr", args.work / "ref-0.zarr", box)
    t_o = statistics.median(r["seconds"] for r in ours)
    t_r = statistics.median(r["seconds"] for r in ref)
    report = {
        "what": "rechunk of the whole demo cube (time=-1,y=125,x=100) vs xarray/dask on the data's bbox",
        "rechunk_s": round(t_o, 2), "reference_s": round(t_r, 2), "ratio": round(t_o / t_r, 3),
        "goal": GOAL, "meets_goal": t_o / t_r <= GOAL, "same_values": equal,
        "max_mem": args.max_mem, "rechunk_peak_mb": round(max(r["peak_mb"] for r in ours)),
        "reference_peak_mb": round(max(r["peak_mb"] for r in ref)),
        "data_box_rows_cols": list(box),
        "runs": {"rechunk": ours, "reference": ref},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": machine_info(), "code": git_info(),
    }
    echo(f"rechunk {t_o:.1f} s against xarray/dask {t_r:.1f} s: {t_o / t_r:.2f}x (goal <= {GOAL}); "
         f"peak {report['rechunk_peak_mb']} MB (--max-mem {args.max_mem}); same values: {equal}; "
         f"load {load_before[0]:.2f} -> {report['loadavg_after'][0]:.2f}")
    shutil.rmtree(args.work, ignore_errors=True)
    return write_report(args.out, report, echo)


if __name__ == "__main__":
    main()
