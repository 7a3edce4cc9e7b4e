"""``make bench``: ingest speed and memory on full-size synthetic tiles (DESIGN.md §8).

    python -m ingest.benchmarks.ingest --out bench-results/ingest.json           # one full tile-date
    python -m ingest.benchmarks.ingest --tiles 31UET,31UFT --dates 2             # 4 products, 2 time steps
    python -m ingest.benchmarks.ingest --window 4800 4800 1200 1200 --repeat 1   # a quick run

What is measured, each step in a fresh ``spawn``-ed child process (so the parent's memory and
imports never count; peak RSS is the child's own ``ru_maxrss``, GDAL's threads included):

* decode floor: a full ``src.read(1)`` of exactly the JP2 files the ingest reads (for each
  variable of ``VARIABLES`` the file at its ``spec.resolution``), under ``GDAL_ENV``:
  - ``decode_1thread``: one file after the other, ``GDAL_NUM_THREADS=1`` (one core);
  - ``decode_serial_allcpus``: one file after the other, ``GDAL_NUM_THREADS=ALL_CPUS``
    (OpenJPEG's own threads; how the ingest decodes);
  - ``decode_pool``: a pool of ``nproc`` Python threads over the files (largest first),
    ``GDAL_NUM_THREADS=1`` each.
  The floor the ratio uses is the *faster* of the two all-core variants: the honest
  comparison for an ingest that has every core of the machine.
* ingest: ``ingest_products`` of the same products into (a) a fresh cube and (b) a cube that
  already holds ``--populate`` earlier datatakes of the same tiles (copied, by hard links,
  from a base cube built once per run), so that peak memory can be compared between a small
  and a larger cube. The cube lives in a temporary directory next to the product cache
  (same disk). Phase times come from wrappers installed in the child around functions of
  ``ingest.publish.write`` and ``zarr.Array`` (cumulative; they are reported as "n/a" if those names
  change).

Timings are medians of ``--repeat`` runs (runs are interleaved: decode, ingest, decode...).
Products are generated once into the cache (``bench-results/products``) and reused; writing
a full 10980² tile-date takes minutes. Nothing here is hard-coded: every figure is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.benchmarks.common import (  # noqa: F401  (datatakes, ensure_products: the bench kit's API)
    DEFAULT_CACHE, FIRST_DATATAKE, UTC, _fmt, datatakes, ensure_products, git_info, input_files,
    link_tree, machine_info, median,
)
from ingest.benchmarks.tasks import chunk_bytes, run_child, summarise

TARGET_RATIO = 1.2  # ingest time / decode floor, fresh cube (issue #22)
POPULATED_TARGET = 1.3  # the same into a time chunk that already holds data (issue #22)
OVERVIEWS_TARGET = 0.10  # keeping the overviews current: < 10 % of the ingest time (issue #12)
MEMORY_TOLERANCE = 1.10  # "independent of the cube size": populated peak within 10 % of fresh


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", default="31UFT", help="comma-separated tiles (default 31UFT)")
    ap.add_argument("--dates", type=int, default=1, help="datatakes per tile to ingest (default 1)")
    ap.add_argument("--window", type=int, nargs=4, metavar=("ROW", "COL", "H", "W"),
                    help="10 m window of each tile (multiples of 6) instead of the full 10980² tile")
    ap.add_argument("--resampling", action="append", default=[], metavar="VAR=METHOD",
                    help="override a variable's resampling (as `s2ingest sync`; '*=nearest' for all)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians reported")
    ap.add_argument("--populate", type=int, default=2,
                    help="earlier datatakes in the larger cube of the memory comparison (0: skip it)")
    ap.add_argument("--threads", type=int, default=None, help="ingest threads (default: nproc)")
    ap.add_argument("--no-single-thread", action="store_true", help="skip the 1-thread decode")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="product cache directory")
    ap.add_argument("--out", type=Path, default=Path("bench-results/ingest.json"), help="JSON report")
    args = ap.parse_args(argv)
    if args.dates < 1 or args.repeat < 1 or args.populate < 0:
        ap.error("--dates and --repeat must be >= 1, --populate >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))

    def echo(line: str) -> None:
        print(line, flush=True)

    from ingest.warping.warp import parse_resampling

    resampling = {}
    for item in args.resampling:
        var, sep, method = item.partition("=")
        if not sep:
            raise SystemExit(f"--resampling wants VAR=METHOD, not {item!r}")
        resampling[var.strip()] = method.strip()
    methods = {k: v.name for k, v in parse_resampling(resampling).items()}  # validates
    tiles = [t.strip() for t in args.tiles.split(",") if t.strip()]
    window = tuple(args.window) if args.window else None
    nproc = len(os.sched_getaffinity(0))
    threads = args.threads or nproc
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    code_before = git_info()

    echo(f"s2ingest bench: tiles {','.join(tiles)} x {args.dates} datatake(s), "
         f"{'full 10980² tiles' if window is None else f'window {window}'}, repeat {args.repeat}, "
         f"{nproc} cores")
    echo("products (cached; generated once):")
    measured = ensure_products(args.cache, tiles, datatakes(args.dates), window, echo)
    populate = (ensure_products(args.cache, tiles, datatakes(args.populate, before=True), window, echo)
                if args.populate else [])
    measured_s = [str(p) for p in measured]
    all_s = measured_s + [str(p) for p in populate]
    files = input_files(measured_s)
    files.sort(key=lambda f: -f["pixels"])  # largest first: better balance in the pool
    paths = [f["path"] for f in files]
    in_pixels = sum(f["pixels"] for f in files)
    echo(f"inputs: {len(files)} JP2 files, {in_pixels / 1e6:.1f} Mpix, "
         f"{sum(f['bytes'] for f in files) / 1e6:.0f} MB compressed")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-tmp-", dir=args.cache.parent if args.cache.parent.exists() else None))
    decode_modes = {
        "decode_serial_allcpus": {"workers": 1, "gdal_threads": "ALL_CPUS"},
        "decode_pool": {"workers": nproc, "gdal_threads": "1"},
    }
    if not args.no_single_thread:
        decode_modes = {"decode_1thread": {"workers": 1, "gdal_threads": "1"}, **decode_modes}
    runs: dict[str, list[dict]] = {k: [] for k in decode_modes}
    runs["ingest_fresh"] = []
    sizes: dict[str, int] = {}
    try:
        base = None
        if populate:
            base = work / "populated-base.zarr"
            echo(f"building the larger cube: {len(populate)} earlier product(s) ...")
            r = run_child("ingest", cube_path=str(base), product_paths=[str(p) for p in populate],
                          known_paths=all_s, resampling=resampling, threads=threads)
            echo(f"  {r['seconds']:.1f} s, {r['time_steps_total']} time steps, "
                 f"{chunk_bytes(base) / 1e6:.0f} MB")
            runs["ingest_populated"] = []
            sizes["populated_base_chunk_bytes"] = chunk_bytes(base)
            # the same cube with multiscale overviews: every publish keeps them current in the
            # same commit (DESIGN.md §12); their cost is the difference of interleaved runs
            base_ov = work / "populated-overviews-base.zarr"
            shutil.copytree(base, base_ov)
            r = run_child("overviews", cube_path=str(base_ov))
            echo(f"  overviews of the larger cube: {r['seconds']:.1f} s, {r['level_chunks']} level chunks")
            runs["ingest_populated_overviews"] = []
        for i in range(args.repeat):
            echo(f"run {i + 1}/{args.repeat}")
            for mode, kw in decode_modes.items():
                r = run_child("decode", paths=paths, **kw)
                runs[mode].append(r)
                echo(f"  {mode:<24} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
            cube = work / f"fresh-{i}.zarr"
            r = run_child("ingest", cube_path=str(cube), product_paths=measured_s, known_paths=all_s,
                          resampling=resampling, threads=threads)
            r["chunk_bytes"] = chunk_bytes(cube)
            runs["ingest_fresh"].append(r)
            shutil.rmtree(cube, ignore_errors=True)
            echo(f"  {'ingest (fresh cube)':<24} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
            if base is not None:  # the larger cube, then the same with overviews (interleaved)
                for key, src, label in (("ingest_populated", base, "ingest (larger cube)"),
                                        ("ingest_populated_overviews", base_ov, "ingest (same, overviews)")):
                    cube = work / f"{key}-{i}.zarr"
                    link_tree(src, cube)
                    r = run_child("ingest", cube_path=str(cube), product_paths=measured_s,
                                  known_paths=all_s, resampling=resampling, threads=threads)
                    runs[key].append(r)
                    shutil.rmtree(cube, ignore_errors=True)
                    echo(f"  {label:<24} {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {k: summarise(v, in_pixels) for k, v in runs.items() if v}
    fresh = results["ingest_fresh"]
    last = runs["ingest_fresh"][-1]
    out_pixels = last["output_pixels_per_variable"] * last["variables"]
    for k in [k for k in results if k.startswith("ingest")]:
        results[k]["output_mpix_per_s"] = out_pixels / results[k]["seconds_median"] / 1e6
        results[k]["input_mpix_per_s"] = results[k].pop("mpix_per_s")
        ph = [r["phases"] for r in runs[k]]
        results[k]["phases_median_s"] = {
            name: (median([p[name] for p in ph]) if all(p.get(name) is not None for p in ph) else None)
            for name in ph[0]
        }
    all_core = {k: results[k]["seconds_median"] for k in ("decode_serial_allcpus", "decode_pool")}
    floor_mode = min(all_core, key=all_core.get)
    floor = all_core[floor_mode]
    ratio = fresh["seconds_median"] / floor
    summary: dict[str, Any] = {
        "decode_floor_mode": floor_mode, "decode_floor_s": floor,
        "ingest_s": fresh["seconds_median"], "ratio_to_decode_floor": ratio,
        "target_ratio": TARGET_RATIO, "target_met": ratio <= TARGET_RATIO,
        "ratio_to_decode_1thread": (fresh["seconds_median"] / results["decode_1thread"]["seconds_median"]
                                    if "decode_1thread" in results else None),
        "output_pixels": out_pixels, "input_pixels": in_pixels,
        "output_mpix_per_s": fresh["output_mpix_per_s"], "input_mpix_per_s": fresh["input_mpix_per_s"],
        "peak_rss_mb_fresh": fresh["peak_rss_mb_max"],
        "store_chunk_bytes": last["chunk_bytes"], "logical_bytes": last["logical_bytes_written"],
        "compression_ratio": last["logical_bytes_written"] / last["chunk_bytes"] if last["chunk_bytes"] else None,
    }
    if "ingest_populated" in results:
        pop = results["ingest_populated"]
        summary.update(
            peak_rss_mb_populated=pop["peak_rss_mb_max"],
            peak_rss_ratio_populated_to_fresh=pop["peak_rss_mb_max"] / fresh["peak_rss_mb_max"],
            populated_time_steps_before=runs["ingest_populated"][-1]["time_steps_total"]
            - runs["ingest_populated"][-1]["time_steps_written"],
            memory_independent=pop["peak_rss_mb_max"] <= MEMORY_TOLERANCE * fresh["peak_rss_mb_max"],
            memory_tolerance=MEMORY_TOLERANCE,
            ingest_populated_s=pop["seconds_median"],
            ratio_populated_to_decode_floor=pop["seconds_median"] / floor,
            populated_target=POPULATED_TARGET,
            populated_target_met=pop["seconds_median"] / floor <= POPULATED_TARGET,
        )
    if runs.get("ingest_populated_overviews"):
        # DESIGN CHOICE: the overhead is the median of the ratios of interleaved pairs (the
        # same products into the same cube, without and with overviews), wall and CPU
        pairs = list(zip(runs["ingest_populated"], runs["ingest_populated_overviews"]))
        summary.update(
            overviews_publish_overhead=median([(w["seconds"] - p["seconds"]) / p["seconds"] for p, w in pairs]),
            overviews_publish_overhead_cpu=median([(w["cpu_s"] - p["cpu_s"]) / p["cpu_s"] for p, w in pairs]),
            overviews_target=OVERVIEWS_TARGET,
        )
        summary["overviews_target_met"] = summary["overviews_publish_overhead"] < OVERVIEWS_TARGET
    report = {
        "schema": 1, "date": started.isoformat(timespec="seconds"),
        "duration_s": (datetime.now(UTC) - started).total_seconds(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": machine_info(), "code": code_before,
        "code_changed_during_run": git_info() != code_before,
        "config": {"tiles": tiles, "dates": args.dates, "window": window, "repeat": args.repeat,
                   "populate": args.populate, "threads": threads, "resampling_overrides": resampling,
                   "resampling": methods, "gdal_env": _gdal_env(), "products": [Path(p).name for p in measured],
                   "populate_products": [p.name for p in populate]},
        "inputs": {"files": [{k: f[k] for k in ("variable", "resolution", "pixels", "bytes")} for f in files],
                   "pixels": in_pixels, "bytes": sum(f["bytes"] for f in files)},
        "results": results, "summary": summary, "notes": NOTES,
    }
    print_report(report)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    echo(f"\nwritten {args.out}")
    return report


def _gdal_env() -> dict:
    from ingest.warping.warp import GDAL_ENV

    return dict(GDAL_ENV)


NOTES = [
    ("decode floor = the faster of decode_serial_allcpus (files one at a time, OpenJPEG using all cores) "
    "and decode_pool (nproc Python threads over the files, 1 GDAL thread each): both use every core, "
    "as the ingest may; decode_1thread is one core and shown for reference only"),
    ("every step runs in a fresh spawned child; peak RSS = the child's VmHWM (its own address space, GDAL "
    "threads included; ru_maxrss is not used because Linux carries it over exec from the parent); it includes "
    "baseline_rss_mb of interpreter and libraries; the input files are in the OS page cache after the first run"),
    ("output Mpix/s = time steps x area of the chunks written (10 m px, nodata included) x variables / ingest s; "
    "input Mpix/s = pixels of the JP2 files decoded / ingest s"),
    ("phase times are cumulative times inside ingest.publish.write.apply_plan, slot_block (warp+mosaic), "
    "warp_product_part (decode+warp of one product) and _write_var_block (read, decode, merge, compress and store "
    "one variable of a block, in the writer threads); "
    "they overlap if called from several threads"),
    ("compression ratio = logical bytes of the chunks written (time steps x chunk area x itemsize, summed over "
    "variables; fill pixels outside the product footprint included) / bytes of the chunk files: it is higher "
    "than Blosc's ratio on valid data alone, the more so the smaller the window"),
    "the CPU may be shared with other work: compare loadavg_before/after; treat figures as indicative",
]


def print_report(rep: dict) -> None:
    res, s, m = rep["results"], rep["summary"], rep["machine"]
    print()
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, GDAL {m['gdal']}, OpenJPEG {m['openjpeg']}, "
          f"rasterio {m['rasterio']}; load {rep['loadavg_before'][0]:.2f} -> {rep['loadavg_after'][0]:.2f}")
    print(f"input: {len(rep['inputs']['files'])} JP2 files, {rep['inputs']['pixels'] / 1e6:.1f} Mpix; "
          f"output: {s['output_pixels'] / 1e6:.1f} Mpix (all variables); medians of {rep['config']['repeat']}")
    print()
    hdr = f"{'step':<26}{'seconds':>9}{'in Mpix/s':>11}{'out Mpix/s':>12}{'x floor':>9}{'CPU %':>7}{'peak RSS MB':>13}"
    print(hdr)
    print("-" * len(hdr))
    floor = s["decode_floor_s"]
    for k, label in [("decode_1thread", "decode, 1 thread"),
                     ("decode_serial_allcpus", "decode, serial ALL_CPUS"),
                     ("decode_pool", f"decode, {m['nproc']}-thread pool"),
                     ("ingest_fresh", "ingest, fresh cube"),
                     ("ingest_populated", "ingest, larger cube"),
                     ("ingest_populated_overviews", "ingest, same + overviews")]:
        if k not in res:
            continue
        r = res[k]
        mark = " *" if k == s["decode_floor_mode"] else ""
        inp = r.get("input_mpix_per_s", r.get("mpix_per_s"))
        print(f"{label + mark:<26}{r['seconds_median']:>9.1f}{_fmt(inp, '.1f'):>11}"
              f"{_fmt(r.get('output_mpix_per_s'), '.1f'):>12}{r['seconds_median'] / floor:>9.2f}"
              f"{100 * r['cpu_utilisation_median'] / m['nproc']:>7.0f}{r['peak_rss_mb_max']:>13.0f}")
    print("(* = the decode floor; CPU % of all cores; peak RSS includes "
          f"~{res['ingest_fresh']['baseline_rss_mb']:.0f} MB of interpreter and libraries)")
    ph = res["ingest_fresh"]["phases_median_s"]
    print("\ningest phases (fresh cube, cumulative s): " + ", ".join(
        f"{k} {_fmt(v, '.1f')}" for k, v in ph.items()))
    for k, label in (("ingest_fresh", "fresh cube"), ("ingest_populated", "larger cube")):
        q = res.get(k, {}).get("phases_median_s", {}).get("quality")
        if q is not None:
            print(f"quality atlas ({label}): {q:.2f} s = {100 * q / res[k]['seconds_median']:.1f} % of the ingest")
    print(f"store: {s['store_chunk_bytes'] / 1e6:.0f} MB of chunks, compression ratio "
          f"{_fmt(s['compression_ratio'], '.2f')} (logical {s['logical_bytes'] / 1e6:.0f} MB)")
    print(f"\nSPEED   ingest / decode floor ({s['decode_floor_mode']}) = {s['ratio_to_decode_floor']:.2f} "
          f"(target <= {s['target_ratio']}): {'MET' if s['target_met'] else 'NOT MET'}")
    if "ratio_populated_to_decode_floor" in s:
        print(f"        into a time chunk holding data = {s['ratio_populated_to_decode_floor']:.2f} "
              f"(target <= {s['populated_target']}): {'MET' if s['populated_target_met'] else 'NOT MET'}")
    if "peak_rss_ratio_populated_to_fresh" in s:
        print(f"MEMORY  peak RSS fresh {s['peak_rss_mb_fresh']:.0f} MB, larger cube "
              f"({s['populated_time_steps_before']} time steps already published) {s['peak_rss_mb_populated']:.0f} MB: "
              f"ratio {s['peak_rss_ratio_populated_to_fresh']:.2f} "
              f"({'independent' if s['memory_independent'] else 'GROWS'} at {s['memory_tolerance']:.2f} tolerance)")
    if "overviews_publish_overhead" in s:
        print(f"OVERVIEWS keeping them current costs {s['overviews_publish_overhead']:.1%} of the ingest "
              f"({s['overviews_publish_overhead_cpu']:.1%} in CPU time; target < {s['overviews_target']:.0%}): "
              f"{'MET' if s['overviews_target_met'] else 'NOT MET'}")


if __name__ == "__main__":
    main(sys.argv[1:])
