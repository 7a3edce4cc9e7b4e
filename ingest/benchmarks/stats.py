"""`stats --by NL/municipality --variable NDVI` on the demo cube against plain numpy, in one run.

    python -m ingest.benchmarks.stats --out bench-results/stats.json

The reference reads the same pixels with zarr alone (the zone layer's chunks, and B08/B04 of
every date where the imagery stores a chunk under a zone chunk), computes NDVI and sums it per
zone and date with one ``np.bincount`` per block. ``cube_stats`` (what the command runs) and
the reference are timed interleaved, ``--repeat`` times; the figure is the ratio of the medians
(goal: <= 1.5). The demo cube is built once into ``--dir`` (about 3 minutes).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

GOAL = 1.5
EDITION = 2023


def demo_store(root: Path, echo) -> Path:
    """The demo cube under ``root``, built when missing."""
    from ingest.demo.build import DemoPaths, run_demo

    paths = DemoPaths(root)
    if not (paths.store / ".s2ingest").exists() or not paths.quicklook.exists():
        echo(f"building the demo cube under {root} (about 3 minutes)")
        run_demo(root, progress=False, echo=lambda *_: None)
    return paths.store


def _cells(root: Path, array: str) -> set[tuple[int, int]]:
    out = set()
    folder = root / array
    for name in os.listdir(folder):
        parts = name.split(".")
        if all(p.isdigit() for p in parts) and len(parts) >= 2:
            out.add((int(parts[-2]), int(parts[-1])))
    return out


def numpy_reference(store: Path) -> dict:
    """Sum and count of valid NDVI per (date, zone), zarr and numpy only."""
    import zarr

    from ingest.grid import NL_GRID
    from ingest.variables import VARIABLES

    root = zarr.open_group(str(store), mode="r")
    nl = root["NL"]
    editions = list(nl["edition"][:])
    zones = nl["municipality"]
    e = editions.index(EDITION)
    b08, b04 = root["S2/R051/B08"], root["S2/R051/B04"]
    f08, f04 = VARIABLES["B08"].fill_value, VARIABLES["B04"].fill_value
    # decoded as xarray decodes them (CF scale and offset, in float64), so the answer is the same
    s08, o08 = float(b08.attrs.get("scale_factor", 1.0)), float(b08.attrs.get("add_offset", 0.0))
    s04, o04 = float(b04.attrs.get("scale_factor", 1.0)), float(b04.attrs.get("add_offset", 0.0))
    n_t = b08.shape[0]
    zone_cells = _cells(store, "NL/municipality")
    data_cells = _cells(store, "S2/R051/B08") & _cells(store, "S2/R051/B04")
    max_zone = 1 << 16
    sums = np.zeros(n_t * max_zone)
    counts = np.zeros(n_t * max_zone, dtype="int64")
    pixels = 0
    for iy, ix in sorted(zone_cells):
        w = NL_GRID.chunk_window((iy, ix))
        ys, xs = slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width)
        z = np.asarray(zones[e, ys, xs]).astype("int64").ravel()
        inside = z > 0
        if not inside.any() or (iy, ix) not in data_cells:
            continue
        a = np.asarray(b08[:, ys, xs]).reshape(n_t, -1)[:, inside]
        b = np.asarray(b04[:, ys, xs]).reshape(n_t, -1)[:, inside]
        ok = (a != f08) & (b != f04)
        av = a * s08 + o08
        bv = b * s04 + o04
        with np.errstate(invalid="ignore", divide="ignore"):
            ndvi = (av - bv) / (av + bv)
        ok &= ~np.isnan(ndvi)
        idx = (z[inside][None, :] + max_zone * np.arange(n_t)[:, None])
        sums += np.bincount(idx[ok], weights=ndvi[ok], minlength=len(sums))
        counts += np.bincount(idx[ok], minlength=len(counts))
        pixels += ok.size
    return {"sums": sums, "counts": counts, "pixels": pixels}


def run_stats(store: Path):
    from ingest.layers.stats import cube_stats

    return cube_stats(store, group="S2/R051", variable="NDVI", layer_group="NL", layer="municipality",
                      edition=EDITION)


def main(argv: list[str] | None = None) -> dict:
    from ingest.benchmarks.common import write_report, git_info, machine_info

    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.stats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-results/demo"), help="the demo cube's folder (kept)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench-results/stats.json"))
    args = ap.parse_args(argv)
    echo = print
    store = demo_store(args.dir, echo)
    load_before = os.getloadavg()
    ref_t, ours_t = [], []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        ref = numpy_reference(store)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        df = run_stats(store)
        ours_t.append(time.perf_counter() - t0)
        echo(f"  run {i + 1}: numpy {ref_t[-1]:.2f} s, stats {ours_t[-1]:.2f} s")
    # the same answer: every zone and date with valid pixels, same count, same sum (to rounding)
    n_t = len(df["time"].unique())
    got = df[df["count"] > 0]
    codes = got["municipality"].to_numpy()
    t_index = {t: k for k, t in enumerate(sorted(df["time"].unique()))}
    ti = np.array([t_index[t] for t in got["time"]])
    idx = codes + (1 << 16) * ti
    agree = bool(np.array_equal(ref["counts"][idx], got["count"].to_numpy())
                 and int(ref["counts"].sum()) == int(got["count"].sum())
                 and np.allclose(ref["sums"][idx], got["sum"].to_numpy(), rtol=1e-6, atol=1e-6))
    ratio = statistics.median(ours_t) / statistics.median(ref_t)
    report = {
        "what": "stats --by NL/municipality --variable NDVI on the demo cube vs numpy bincount",
        "numpy_reference_s": round(statistics.median(ref_t), 3),
        "stats_s": round(statistics.median(ours_t), 3),
        "ratio": round(ratio, 3), "goal": GOAL, "meets_goal": ratio <= GOAL,
        "same_answer": agree, "rows": len(df), "zones": int(df["municipality"].nunique()),
        "dates": n_t, "pixels_read_per_date_by_reference": ref["pixels"] // max(n_t, 1),
        "runs": {"numpy_s": [round(t, 3) for t in ref_t], "stats_s": [round(t, 3) for t in ours_t]},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": machine_info(), "code": git_info(),
    }
    echo(f"stats {report['stats_s']} s against numpy {report['numpy_reference_s']} s: "
         f"{ratio:.2f}x (goal <= {GOAL}); same answer: {agree}; load {load_before[0]:.2f} -> "
         f"{report['loadavg_after'][0]:.2f}")
    return write_report(args.out, report, echo)


if __name__ == "__main__":
    main()
