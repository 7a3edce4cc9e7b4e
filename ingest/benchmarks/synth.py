"""Synthetic product generation speed (what ``s2ingest synth`` and the test fixtures cost):

    python -m ingest.benchmarks.synth --out bench-results/synth.json

* **small product**: ``make_product`` of a 600 x 600 px window (the size the tests make), the
  median of ``--repeat`` runs (about 0.7 s on an idle 2-core machine);
* **full-tile rendering**: a tenth of a full 10980 x 10980 tile, every 10 m variable in one
  pass (as ``make_product`` renders them), extrapolated to seconds per band of a full tile
  (the goal: under 60 s).

These were timed assertions in the test suite; a loaded machine made them fail without any
defect, so they are measured here, where a slow figure is a number to look at, not a failure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

START = datetime(2023, 7, 14, 10, 56, 19)
SMALL_WINDOW = (3000, 3000, 600, 600)


def small_product_seconds(repeat: int) -> list[float]:
    from ingest.synth import make_product

    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            make_product(Path(d), datatake_start=START, window=SMALL_WINDOW)
            times.append(time.perf_counter() - t)
    return times


def full_tile_seconds_per_band() -> float:
    from ingest.synth import get_tile, image_variables, render
    from ingest.synth.scene import SceneParams

    variables = image_variables("05.09", 10)
    t = time.perf_counter()
    render(SceneParams(get_tile("31UFU"), START), 10, (0, 0, 1098, 10980), variables)
    return (time.perf_counter() - t) * 10 / len(variables)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="small products to time (the median is reported)")
    ap.add_argument("--no-full-tile", action="store_true", help="skip the full-tile rendering figure")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    small = small_product_seconds(args.repeat)
    report = {"small_product_s": round(statistics.median(small), 3), "small_product_runs": len(small)}
    if not args.no_full_tile:
        report["full_tile_s_per_band"] = round(full_tile_seconds_per_band(), 1)
    print(json.dumps(report, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
