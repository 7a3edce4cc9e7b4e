"""``make bench``: ingest speed and memory on full-size synthetic tiles (DESIGN.md §8).

    python -m ingest.benchmarks.ingest --out bench-results/bench.json            # one full tile-date
    python -m ingest.benchmarks.ingest --tiles 31UET,31UFT --dates 2             # 4 products, 2 time steps
    python -m ingest.benchmarks.ingest --window 4800 4800 1200 1200 --repeat 1   # a quick run
    python -m ingest.benchmarks.ingest --only copies    # rechunked/sharded copies (ingest/bench_copies.py)

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
import ctypes
import glob
import json
import multiprocessing
import os
import platform as _platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

UTC = timezone.utc
ORBIT = 51
BASELINE = "05.09"
FIRST_DATATAKE = datetime(2023, 7, 14, 10, 56, 19, tzinfo=UTC)  # measured datatakes: +5 d each
TARGET_RATIO = 1.5  # ingest time / decode floor (the issue's target)
OVERVIEWS_TARGET = 0.10  # keeping the overviews current: < 10 % of the ingest time (issue #12)
MEMORY_TOLERANCE = 1.10  # "independent of the cube size": populated peak within 10 % of fresh
DEFAULT_CACHE = Path("bench-results/products")
FULL = 10980


# -- inputs ----------------------------------------------------------------------------------
def datatakes(n: int, *, before: bool = False) -> list[tuple[datetime, str]]:
    """``n`` datatakes of relative orbit 51, 5 days apart, alternating S2A/S2B.

    ``before=True``: the ``n`` datatakes preceding ``FIRST_DATATAKE`` (latest first is not
    needed: they are returned in time order), used to populate the larger cube.
    """
    out = []
    for i in range(n):
        k = -(n - i) if before else i
        out.append((FIRST_DATATAKE + timedelta(days=5 * k), "S2A" if k % 2 == 0 else "S2B"))
    return out


def cache_dir_for(cache: Path, window: tuple[int, int, int, int] | None) -> Path:
    return cache / ("full" if window is None else "window-{}-{}-{}-{}".format(*window))


def ensure_products(cache: Path, tiles: list[str], dts: list[tuple[datetime, str]],
                    window: tuple[int, int, int, int] | None, echo: Callable[[str], None]) -> list[Path]:
    """The products (``.SAFE`` folders), generated into the cache when missing."""
    from ingest.synth import make_product, product_name

    directory = cache_dir_for(cache, window)
    paths = []
    for when, plat in dts:
        for tile in tiles:
            name = product_name(tile=tile, datatake_start=when, platform=plat, baseline=BASELINE,
                                 relative_orbit=ORBIT)
            path = directory / f"{name}.SAFE"
            if path.exists():
                echo(f"  reuse    {path}")
            else:
                size = "full 10980² tile: several minutes" if window is None else "window"
                echo(f"  generate {path.name} ({size}) ...")
                t0 = time.perf_counter()
                path = make_product(directory, tile=tile, datatake_start=when, platform=plat,
                                    baseline=BASELINE, relative_orbit=ORBIT, window=window)
                echo(f"           done in {time.perf_counter() - t0:.0f} s")
            paths.append(path)
    return paths


def input_files(product_paths: list[str]) -> list[dict]:
    """The JP2 files the ingest reads: per product, per variable the file at spec.resolution."""
    import rasterio

    from ingest.products.safe import read_product
    from ingest.variables import VARIABLES

    files = []
    for p in product_paths:
        product = read_product(p)
        for name, spec in VARIABLES.items():
            path = product.gdal_path(product.file_for(name, spec.resolution))
            with rasterio.open(path) as src:
                files.append({"variable": name, "resolution": spec.resolution, "path": path,
                              "pixels": src.width * src.height, "bytes": os.path.getsize(path)})
    return files


# -- child processes -------------------------------------------------------------------------
def _status_mb(field: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process, MB, from /proc/self/status.

    DESIGN CHOICE: not ``ru_maxrss``: Linux keeps ru_maxrss across execve, so a spawned child
    would report at least the RSS the parent had when it forked (measured: every child showed
    the parent's 347 MB). VmHWM belongs to the address space, which exec replaces; GDAL's
    threads share it, so their buffers count.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(task: str, kwargs: dict) -> dict:
    """Runs in a fresh spawned process: import, note the baseline, do the work, measure."""
    import numpy  # noqa: F401
    import rasterio  # noqa: F401
    import zarr  # noqa: F401

    from ingest.publish import engine, write  # noqa: F401  (imports are not part of the measurement)

    baseline = _status_mb("VmRSS") or _peak_mb()
    fn = {"decode": _decode, "ingest": _ingest, "overviews": _overviews}[task]
    cpu0, t0 = _cpu_s(), time.perf_counter()
    result = fn(**kwargs)
    wall = time.perf_counter() - t0
    result.update(wall_s=wall, cpu_s=_cpu_s() - cpu0, peak_rss_mb=_peak_mb(), baseline_rss_mb=baseline)
    if "seconds" not in result:
        result["seconds"] = wall
    return result


def run_child(task: str, **kwargs) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
        return ex.submit(_child, task, kwargs).result()


def _decode(paths: list[str], workers: int, gdal_threads: str) -> dict:
    import rasterio
    from rasterio._env import get_gdal_config

    from ingest.warping.warp import GDAL_ENV

    seen: set[str] = set()

    def one(path: str) -> int:
        # The Env is entered once in the calling thread; GDAL config options are global, so
        # worker threads see them too (recorded, so the report shows what GDAL really used).
        seen.add(str(get_gdal_config("GDAL_NUM_THREADS")))
        with rasterio.open(path) as src:
            return int(src.read(1).size)

    with rasterio.Env(**dict(GDAL_ENV, GDAL_NUM_THREADS=gdal_threads)):
        t0 = time.perf_counter()
        if workers == 1:
            pixels = sum(one(p) for p in paths)
        else:
            with ThreadPoolExecutor(workers) as ex:
                pixels = sum(ex.map(one, paths))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pixels": pixels, "gdal_num_threads_seen": sorted(seen)}


class _Timers:
    """Cumulative wall time spent inside wrapped callables (may overlap if called from threads)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float | None] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            self.seconds[label] = None
            return
        self.seconds[label] = 0.0
        self.calls[label] = 0

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, attr, timed)


def _ingest(cube_path: str, product_paths: list[str], known_paths: list[str],
            resampling: dict[str, str], threads: int, workers: int | None = None) -> dict:
    import numpy as np

    from ingest.compute import ComputeOptions, open_executor

    from ingest.publish import engine, write
    from ingest.publish.engine import Cube, ingest_products
    from ingest.grid import NL_GRID
    from ingest.products.safe import read_product
    from ingest.variables import VARIABLES
    from ingest.warping.warp import parse_resampling

    products = [read_product(p) for p in product_paths]
    known = {p.name: p for p in products}
    for p in known_paths:
        q = read_product(p)
        known.setdefault(q.name, q)
    cube = Cube(Path(cube_path), NL_GRID, ORBIT)
    cube.ensure()
    timers = _Timers()
    timers.wrap(engine, "apply_plan", "apply_plan")  # engine imported it by name
    timers.wrap(write, "_slot_block", "warp_mosaic")
    timers.wrap(write, "warp_product_part", "warp")
    timers.wrap(write, "_write_var_block", "write")  # read + decode + merge + compress + store
    timers.wrap(engine, "update_quality", "quality")  # the quality atlas, inside the commit
    t0 = time.perf_counter()
    # the pool's start (spawning and importing in the workers) is part of the measured time
    with open_executor(ComputeOptions(workers=workers)) as executor:
        plan, report = ingest_products(cube, products, known.__getitem__, parse_resampling(resampling),
                                       progress=False, threads=threads, executor=executor)
    seconds = time.perf_counter() - t0
    grid = cube.grid
    slot_pixels = []
    for slot in plan.slots:
        area = 0
        for c in slot.chunks:
            w = grid.chunk_window(c)
            area += int(w.width * w.height)
        slot_pixels.append(area)
    logical = sum(slot_pixels) * sum(np.dtype(s.dtype).itemsize for s in VARIABLES.values())
    return {
        "seconds": seconds, "phases": timers.seconds, "calls": timers.calls,
        "time_steps_written": len(plan.slots), "time_steps_total": len(plan.axis),
        "chunks_written": report.chunks_written if report else 0,
        "output_pixels_per_variable": sum(slot_pixels), "variables": len(VARIABLES),
        "logical_bytes_written": logical, "workers": workers,
        # the largest worker process (ru_maxrss of the children: the pool has ended here)
        "worker_peak_rss_mb": (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
                               if workers else None),
        # CPU seconds of the worker processes (ended here): with the committer's cpu_s, the
        # whole work, whatever else shares the machine
        "worker_cpu_s": (resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                         + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime) if workers else 0.0,
    }


def _overviews(cube_path: str) -> dict:
    """Build the multiscale levels of a cube (one commit), as ``s2ingest overviews`` does."""
    from ingest.overviews import build_overviews
    from ingest.store import CubeStore

    store = CubeStore.open(Path(cube_path))
    with store.transaction() as tx:
        n = build_overviews(tx, store.grid, f"S2/R{ORBIT:03d}")
        tx.commit()
    return {"level_chunks": n}


# -- helpers -----------------------------------------------------------------------------------
def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def chunk_bytes(cube: Path) -> int:
    """Bytes of the variables' chunk files (metadata, coordinates and journal left out)."""
    from ingest.publish.engine import Cube
    from ingest.grid import NL_GRID
    from ingest.variables import VARIABLES

    group = cube / Cube(cube, NL_GRID, ORBIT).group
    return sum(dir_bytes(group / v) for v in VARIABLES)


def link_tree(src: Path, dst: Path) -> None:
    """Copy a cube by hard links: zarr's DirectoryStore replaces chunk files by rename (and the
    commit journal relies on that), so the base cube's inodes are never modified."""
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def openjpeg_version() -> str | None:
    import rasterio

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libopenjp2*"))
    for lib in libs:
        try:
            f = ctypes.CDLL(lib).opj_version
            f.restype = ctypes.c_char_p
            return f().decode()
        except (OSError, AttributeError):
            return os.path.basename(lib)
    return None


def machine_info() -> dict:
    import numcodecs
    import numpy
    import rasterio
    import zarr

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu,
        "mem_total_gb": mem, "python": _platform.python_version(), "platform": _platform.platform(),
        "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__, "openjpeg": openjpeg_version(),
        "numpy": numpy.__version__, "zarr": zarr.__version__, "numcodecs": numcodecs.__version__,
    }


def git_info() -> dict:
    """Which code was measured: HEAD and the files of the ingest that differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ingest"], cwd=root,
                               capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        return {}
    return {"head": head, "uncommitted": [line[3:] for line in dirty]}


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(runs: list[dict], pixels: int) -> dict:
    secs = [r["seconds"] for r in runs]
    s = median(secs)
    cpu = median([r["cpu_s"] / r["wall_s"] for r in runs])
    return {"runs": runs, "seconds_median": s, "seconds_all": secs,
            "mpix_per_s": pixels / s / 1e6 if s else None,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
            "peak_rss_mb_median": median([r["peak_rss_mb"] for r in runs]),
            "baseline_rss_mb": median([r["baseline_rss_mb"] for r in runs]),
            "cpu_utilisation_median": cpu}


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
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default bench-results/bench.json; with --only workers "
                         "bench-results/workers.json)")
    ap.add_argument("--only", choices=["workers"], default=None,
                    help="workers: only `sync --workers` 1 vs 2 on two full-size products of "
                         "different time chunks (bench_workers)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path("bench-results/workers.json" if args.only == "workers" else "bench-results/bench.json")
    if args.dates < 1 or args.repeat < 1 or args.populate < 0:
        ap.error("--dates and --repeat must be >= 1, --populate >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--only", "copies"]:  # rechunked and sharded copies: ingest/bench_copies.py
        from ingest.benchmarks.copies import main as copies_main

        return copies_main(argv[2:])
    args = parse_args(argv)

    def echo(line: str) -> None:
        print(line, flush=True)

    if args.only == "workers":
        return bench_workers(args, echo)

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


WORKER_TARGET = 1.8  # speed-up of 2 workers over 1 (the issue's goal)
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
    echo(f"s2ingest bench --only workers: tiles {','.join(tiles)} x 2 datatakes in different time "
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
    summary = {
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
    echo(f"\nWORKERS speed-up 2 over 1 worker = {summary['speedup_2_over_1_worker']:.2f} (goal >= {WORKER_TARGET}): "
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
    ("phase times are cumulative times inside ingest.publish.write.apply_plan, _slot_block (warp+mosaic), "
    "warp_product_part (decode+warp of one product) and _write_var_block (read, decode, merge, compress and store "
    "one variable of a block, in the writer threads); "
    "they overlap if called from several threads"),
    ("compression ratio = logical bytes of the chunks written (time steps x chunk area x itemsize, summed over "
    "variables; fill pixels outside the product footprint included) / bytes of the chunk files: it is higher "
    "than Blosc's ratio on valid data alone, the more so the smaller the window"),
    "the CPU may be shared with other work: compare loadavg_before/after; treat figures as indicative",
]


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


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
