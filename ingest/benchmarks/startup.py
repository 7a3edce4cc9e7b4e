"""Start-up of the command line: wall time and peak RSS of ``s2ingest --help``, in one run:

    python -m ingest.benchmarks.startup --out bench-results/startup.json

Each command is started ``--repeat`` times as a fresh process, interleaved with a bare
interpreter (``python -c pass``) as the floor measured beside it, so a loaded machine moves
both. Peak RSS is the child's own maximum resident set (``wait4``). Goals (issue 21): ``--help``
in at most 0.5 s and 80 MB on a quiet machine, ``status`` and ``verify`` of a small cube (one
synthetic product, with its catalog; or ``--store``) well under a second; the figures held
against them are the medians, with the ratios to the bare interpreter beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_SECONDS = 0.5
GOAL_MB = 80.0
GOAL_READ_SECONDS = 1.0  # status, verify of a small cube: "well under a second"


def small_cube(where: Path) -> Path:
    """A cube holding one small synthetic product (one time step) and its SQLite catalog."""
    from datetime import datetime, timezone

    from ingest.synth import make_product

    products = where / "products"
    products.mkdir(parents=True, exist_ok=True)
    make_product(products, tile="31UET", datatake_start=datetime(2023, 6, 14, 10, 56, 21, tzinfo=timezone.utc),
                 window=(5400, 9840, 180, 360), as_zip=True)
    store = where / "cube.zarr"
    r = subprocess.run([sys.executable, "-m", "ingest.cli", "sync", "--store", str(store), "--orbit", "51",
                        "--no-progress", "--source", str(products)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"could not build the small cube: {r.stderr.strip()}")
    return store


# DESIGN CHOICE: a child's peak RSS counts the memory of the process that forked it, up to its
# exec (Linux keeps the high-water mark across exec); so each command is started by a small
# bare interpreter that reports the child's ``wait4`` figures, not by this (larger) process.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, file_actions=quiet)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_once(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one fresh process."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL)
    wall, rss_kib, code = out.stdout.split()
    return float(wall), int(rss_kib) / 1024, int(code)  # ru_maxrss: KiB on Linux


def measure(commands: dict[str, list[str]], repeat: int) -> dict:
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
    for _ in range(repeat):  # interleaved: the same load for each
        for name, argv in commands.items():
            runs[name].append(run_once(argv))
    out = {}
    for name, rs in runs.items():
        out[name] = {"argv": commands[name][1:], "median_s": round(statistics.median(r[0] for r in rs), 3),
                     "min_s": round(min(r[0] for r in rs), 3),
                     "peak_rss_mb": round(max(r[1] for r in rs), 1), "exit_codes": sorted({r[2] for r in rs})}
    floor = out["python -c pass"]
    for name, r in out.items():
        r["time_ratio_to_bare_python"] = round(r["median_s"] / floor["median_s"], 2)
        r["rss_ratio_to_bare_python"] = round(r["peak_rss_mb"] / floor["peak_rss_mb"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.startup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--store", default=None,
                    help="time `status` and `verify` of this store (default: a small cube built for the run)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/startup.json"))
    args = ap.parse_args(argv)
    py = sys.executable
    commands = {"python -c pass": [py, "-c", "pass"],
                "s2ingest --help": [py, "-m", "ingest.cli", "--help"]}
    with tempfile.TemporaryDirectory(prefix="s2ingest-startup-") as tmp:
        store = args.store or str(small_cube(Path(tmp)))
        commands["s2ingest status"] = [py, "-m", "ingest.cli", "status", "--store", store]
        commands["s2ingest verify"] = [py, "-m", "ingest.cli", "verify", "--store", store]
        return _report(args, commands)


def _report(args, commands: dict[str, list[str]]) -> dict:
    from ingest.benchmarks.common import git_info, machine_info

    report = {"benchmark": "startup", "machine": machine_info(), "code": git_info(), "repeat": args.repeat,
              "load_avg_before": os.getloadavg(), "results": measure(commands, args.repeat),
              "goal": {"help_seconds": GOAL_SECONDS, "help_peak_rss_mb": GOAL_MB}}
    report["load_avg_after"] = os.getloadavg()
    results = report["results"]
    h = results["s2ingest --help"]
    report["goal"]["status_verify_seconds"] = GOAL_READ_SECONDS
    report["goal_met"] = (h["median_s"] <= GOAL_SECONDS and h["peak_rss_mb"] <= GOAL_MB
                          and all(results[c]["median_s"] <= GOAL_READ_SECONDS
                                  for c in ("s2ingest status", "s2ingest verify")))
    bad = [n for n, r in results.items() if r["exit_codes"] != [0]]
    if bad:
        raise SystemExit(f"startup bench: {', '.join(bad)} did not exit 0")
    for name, r in report["results"].items():
        print(f"{name:<18} median {r['median_s']:.3f} s ({r['time_ratio_to_bare_python']}x bare python), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_ratio_to_bare_python']}x)")
    print(f"goal (--help <= {GOAL_SECONDS} s, <= {GOAL_MB:.0f} MB; status, verify <= {GOAL_READ_SECONDS} s): "
          f"{'met' if report['goal_met'] else 'NOT met'}; "
          f"load average {report['load_avg_before'][0]:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
