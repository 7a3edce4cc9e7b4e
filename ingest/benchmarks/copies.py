"""``python -m ingest.benchmarks.copies``: what rechunked and sharded copies save readers.

Measured in one run, on one synthetic cube (``--dates`` datatakes of one tile window, built
once into the cache and reused), every copy made by the real ``s2ingest rechunk`` in a child
process and every read done by xarray over HTTP from a local static server that counts the
body bytes it sends (``ingest.testing.httpserve``, range requests like an object store):

* one pixel's full time series (B04): bytes and time (median of ``--repeat``) from the source
  (5-date chunks), from the source through ``s2ingest.open_cube`` (pinned version, every chunk
  hash-checked) and from a ``--chunks time=-1,y=125,x=100`` copy;
* one date of four bands (B02 B03 B04 B08) over the whole area: bytes from the source and from a
  Zarr format 3 copy with inner chunks of one date in shards of five;
* peak RSS of ``s2ingest rechunk`` (the child's own VmHWM) at two ``--max-mem`` values.

Figures are ratios within the run; nothing is asserted (a bench, not a test).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from ingest.benchmarks.common import BASELINE, FIRST_DATATAKE, ORBIT, machine_info

BANDS = ["B02", "B03", "B04", "B08"]
DEFAULT_WINDOW = (4800, 4800, 1200, 1200)


def build_cube(root: Path, n_dates: int, window, echo) -> Path:
    """A cube of ``n_dates`` datatakes of a 31UFT window (reused when it exists)."""
    from ingest.publish.engine import Cube, ingest_products
    from ingest.grid import NL_GRID
    from ingest.products.safe import read_product
    from ingest.store import CubeStore
    from ingest.synth import make_product
    from ingest.warping.warp import parse_resampling

    cube_path = root / f"cube-{n_dates}-{'-'.join(map(str, window))}.zarr"
    if cube_path.exists():
        echo(f"  reuse    {cube_path}")
        return cube_path
    products = root / "products"
    paths = []
    for i in range(n_dates):
        when = FIRST_DATATAKE + timedelta(days=5 * i)
        echo(f"  generate product {i + 1}/{n_dates} ...")
        paths.append(make_product(products, tile="31UFT", datatake_start=when,
                                  platform="S2A" if i % 2 == 0 else "S2B", baseline=BASELINE,
                                  relative_orbit=ORBIT, window=window))
    tmp = cube_path.with_name(cube_path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    models = [read_product(p) for p in paths]
    by_name = {m.name: m for m in models}
    echo(f"  ingest {n_dates} products ...")
    ingest_products(Cube(tmp, NL_GRID, ORBIT), models, lambda name: by_name[name],
                    parse_resampling(None), progress=False)
    assert CubeStore.open(tmp).version() > 0
    tmp.rename(cube_path)
    return cube_path


def written_bounds(cube: Path) -> tuple[float, float, float, float]:
    """Pixel-edge bounds of the spatial chunks holding B04 data."""
    from ingest.grid import NL_GRID
    from ingest.store import CubeStore

    keys = CubeStore.open(cube).manifest()["keys"]
    idx = [tuple(int(v) for v in k.rsplit("/", 1)[1].split("."))[1:]
           for k in keys if k.startswith("S2/R051/B04/") and not k.rsplit("/", 1)[1].startswith(".")]
    rows, cols = [i[0] for i in idx], [i[1] for i in idx]
    cy, cx = NL_GRID.chunk_shape
    left, _, _, top = NL_GRID.bounds
    r = NL_GRID.resolution
    return (left + min(cols) * cx * r, top - (max(rows) + 1) * cy * r,
            left + (max(cols) + 1) * cx * r, top - min(rows) * cy * r)


# DESIGN CHOICE: the child reports its own VmHWM at exit. Not ``ru_maxrss``: Linux carries the
# spawning process's peak over the exec, so a child of a large bench process would report it.
_MEASURED = """
import sys
out, argv = sys.argv[1], sys.argv[2:]
code = 0
try:
    if argv == ["--imports-only"]:
        import ingest.cli.main, ingest.copies.rechunk, xarray, dask.array, zarr, numcodecs
    else:
        from ingest.cli.main import cli
        cli.main(argv, prog_name="s2ingest")
except SystemExit as exc:
    code = exc.code or 0
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(out, "w") as f:
    f.write(str(hwm))
sys.exit(code)
"""


def _measured(argv: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(process, seconds, own peak RSS in MB) of ``s2ingest ARGV`` in a child."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as hwm:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _MEASURED, hwm.name, *argv],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak = int(hwm.read() or 0) / 1024
    return proc, seconds, peak


def run_rechunk(args: list[str]) -> dict:
    """``s2ingest rechunk ARGS`` in a child; its wall time and own peak RSS."""
    proc, seconds, peak = _measured(["rechunk", *args, "--no-progress"])
    if proc.returncode != 0:
        raise SystemExit(f"rechunk failed: {proc.stderr.strip()[-500:]}")
    return {"seconds": seconds, "peak_rss_mb": peak, "stdout": proc.stdout.strip()}


def baseline_rss_mb() -> float:
    """Peak RSS of a child that only imports what ``s2ingest rechunk`` imports (the floor
    under the rechunk figures: interpreter, numpy, xarray, dask, zarr, GDAL)."""
    return _measured(["--imports-only"])[2]


def timed_bytes(server, read, repeat: int) -> dict:
    times, sizes = [], []
    for _ in range(repeat):
        server.reset()
        t0 = time.perf_counter()
        read()
        times.append(time.perf_counter() - t0)
        sizes.append(server.served_bytes)
    return {"bytes": int(statistics.median(sizes)), "seconds": statistics.median(times),
            "requests": server.requests}


def main(argv: list[str] | None = None) -> dict:
    import argparse

    import numpy as np
    import xarray as xr

    import s2ingest

    from ingest.testing.httpserve import serve

    ap = argparse.ArgumentParser(prog="python -m ingest.benchmarks.copies")
    ap.add_argument("--dates", type=int, default=10, help="datatakes in the cube (default 10)")
    ap.add_argument("--window", type=int, nargs=4, default=list(DEFAULT_WINDOW),
                    metavar=("ROW", "COL", "H", "W"), help="10 m window of tile 31UFT")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-mem", nargs=2, default=["64MB", "512MB"], metavar=("SMALL", "LARGE"))
    ap.add_argument("--cache", type=Path, default=Path("bench-results/copies"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/copies.json"))
    args = ap.parse_args(argv)

    def echo(line: str) -> None:
        print(line, flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    cube = build_cube(args.cache, args.dates, tuple(args.window), echo)
    bbox = written_bounds(cube)
    bbox_text = ",".join(str(v) for v in bbox)
    work = args.cache / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    results: dict = {"cube": str(cube), "time_steps": args.dates, "bbox": bbox}

    echo("rechunk (time series layout) at two --max-mem values ...")
    mem = {}
    for limit in args.max_mem:
        dst = work / f"series-{limit}.zarr"
        mem[limit] = run_rechunk([str(cube), str(dst), "--chunks", "time=-1,y=125,x=100",
                                  "--bbox", bbox_text, "--max-mem", limit])
    results["rechunk_memory"] = mem
    results["baseline_rss_mb"] = baseline_rss_mb()
    series = work / f"series-{args.max_mem[1]}.zarr"
    echo("rechunk (sharded Zarr 3: one date per inner chunk, shards of five) ...")
    results["sharded_copy"] = run_rechunk([str(cube), str(work / "dates.zarr"), "--zarr-format",
                                           "3", "--chunks", "time=1", "--shards", "time=5",
                                           "--bbox", bbox_text, "--variables", ",".join(BANDS)])

    left, bottom, right, top = bbox
    px = {"x": (left + right) / 2 + 5, "y": (bottom + top) / 2 + 5}
    with serve(cube.parent) as src_srv, serve(work) as copy_srv:
        src_url = f"{src_srv.url}/{cube.name}"
        src = xr.open_zarr(src_url, group="S2/R051", consolidated=True)
        pinned = s2ingest.open_cube(src_url)
        ts = xr.open_zarr(f"{copy_srv.url}/{series.name}", group="S2/R051", consolidated=True)
        dates = xr.open_zarr(f"{copy_srv.url}/dates.zarr", group="S2/R051", consolidated=True)
        np.testing.assert_array_equal(ts.B04.sel(**px, method="nearest").values,
                                      src.B04.sel(**px, method="nearest").values)
        echo("reading one pixel's time series ...")
        results["pixel_series"] = {
            "source": timed_bytes(src_srv, lambda: src.B04.sel(**px, method="nearest").values, args.repeat),
            "source_open_cube": timed_bytes(src_srv, lambda: pinned.B04.sel(**px, method="nearest").values,
                                            args.repeat),
            "rechunked": timed_bytes(copy_srv, lambda: ts.B04.sel(**px, method="nearest").values, args.repeat),
        }
        echo("reading one date of four bands over the area ...")
        area = {"x": slice(left, right), "y": slice(top, bottom)}
        t = args.dates // 2
        results["one_date_four_bands"] = {
            "source": timed_bytes(src_srv, lambda: src[BANDS].isel(time=t).sel(**area).load(), args.repeat),
            "sharded": timed_bytes(copy_srv, lambda: dates[BANDS].isel(time=t).load(), args.repeat),
        }
    p, d = results["pixel_series"], results["one_date_four_bands"]
    results["summary"] = {
        "pixel_series_bytes_ratio_rechunked_to_source": p["rechunked"]["bytes"] / p["source"]["bytes"],
        "pixel_series_time_ratio_rechunked_to_source": p["rechunked"]["seconds"] / p["source"]["seconds"],
        "pixel_series_time_ratio_open_cube_to_plain": p["source_open_cube"]["seconds"] / p["source"]["seconds"],
        "one_date_bytes_ratio_sharded_to_source": d["sharded"]["bytes"] / d["source"]["bytes"],
        "rechunk_peak_rss_mb": {k: v["peak_rss_mb"] for k, v in mem.items()},
        "rechunk_peak_rss_above_imports_mb": {k: v["peak_rss_mb"] - results["baseline_rss_mb"]
                                              for k, v in mem.items()},
    }
    results["machine"] = machine_info()
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    echo(f"\nwritten {args.out}")
    return results


def print_report(r: dict) -> None:
    p, d, s = r["pixel_series"], r["one_date_four_bands"], r["summary"]
    print(f"\ncube: {r['time_steps']} time steps, area {r['bbox']}")
    print("one pixel's B04 time series over HTTP:")
    for k, v in p.items():
        print(f"  {k:<18} {v['bytes'] / 1e3:>10.1f} kB {v['seconds'] * 1e3:>8.1f} ms")
    print(f"  rechunked / source: {s['pixel_series_bytes_ratio_rechunked_to_source']:.4f} of the bytes, "
          f"{s['pixel_series_time_ratio_rechunked_to_source']:.2f} of the time; pinned open_cube / "
          f"plain xarray: {s['pixel_series_time_ratio_open_cube_to_plain']:.2f} of the time")
    print("one date of B02 B03 B04 B08 over the area:")
    for k, v in d.items():
        print(f"  {k:<18} {v['bytes'] / 1e6:>10.2f} MB {v['seconds'] * 1e3:>8.1f} ms")
    print(f"  sharded / source: {s['one_date_bytes_ratio_sharded_to_source']:.3f} of the bytes")
    print("rechunk peak RSS (child process): " + ", ".join(
        f"--max-mem {k}: {v:.0f} MB" for k, v in s["rechunk_peak_rss_mb"].items())
        + f" (imports alone: {r['baseline_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
