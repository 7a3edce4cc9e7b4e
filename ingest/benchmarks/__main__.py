"""``make bench``: every benchmark, one after the other, each writing its JSON report.

    python -m ingest.benchmarks                       # all of them (about an hour on 2 cores)
    python -m ingest.benchmarks --only ingest,mirror  # some of them
    python -m ingest.benchmarks --list

Each benchmark is also a module of its own with more options (``python -m
ingest.benchmarks.ingest --help``). Figures are stated as ratios measured in the same run
(against a floor or a reference measured beside them), with the load average recorded, so a
shared machine distorts them as little as possible.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

# name -> (module, extra arguments); each module has ``main(argv) -> dict`` and writes ``--out``
BENCHES: dict[str, tuple[str, list[str]]] = {
    "ingest": ("ingest.benchmarks.ingest", []),
    "workers": ("ingest.benchmarks.workers", ["--repeat", "1"]),
    "handmade": ("ingest.benchmarks.handmade", []),
    "copies": ("ingest.benchmarks.copies", []),
    "mirror": ("ingest.benchmarks.mirror", []),
    "mirror-demo": ("ingest.benchmarks.mirror", ["--demo", "bench-results/demo",
                                                 "--work", "bench-results/mirror-demo"]),
    "serve": ("ingest.benchmarks.serve", []),
    "stats": ("ingest.benchmarks.stats", []),
    "rechunk": ("ingest.benchmarks.rechunk", []),
    "overviews": ("ingest.benchmarks.overviews", []),
    "eopf": ("ingest.benchmarks.eopf", []),
    "synth": ("ingest.benchmarks.synth", []),
    "startup": ("ingest.benchmarks.startup", []),
    "scale": ("ingest.benchmarks.scale", []),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, metavar="A,B", help=f"some of: {', '.join(BENCHES)}")
    ap.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where the JSON reports go")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (module, _) in BENCHES.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<10} {doc}")
        return {}
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in names:
        module, extra = BENCHES[name]
        out = args.out_dir / f"{name}.json"
        print(f"\n=== {name} ({module}) -> {out}", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(module).main([*extra, "--out", str(out)])
        done[name] = {"report": str(out), "seconds": round(time.perf_counter() - t0, 1)}
    (args.out_dir / "index.json").write_text(json.dumps(done, indent=1))
    return done


if __name__ == "__main__":
    main(sys.argv[1:])
