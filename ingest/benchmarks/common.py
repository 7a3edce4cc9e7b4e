"""What every benchmark shares: the measured products, the machine, memory and CPU readings.

Products are synthetic (``ingest.synth``), generated once into a cache and reused; every
figure carries the machine it was measured on, the code (git HEAD) and the load average.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import platform as _platform
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

UTC = timezone.utc


ORBIT = 51


BASELINE = "05.09"


FIRST_DATATAKE = datetime(2023, 7, 14, 10, 56, 19, tzinfo=UTC)  # measured datatakes: +5 d each


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

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ingest"], cwd=root,
                               capture_output=True, text=True, check=False).stdout.splitlines()
    except OSError:
        return {}
    return {"head": head, "uncommitted": [line[3:] for line in dirty]}


def median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def write_report(out: Path, report: dict, echo) -> dict:
    """Write a bench's report as JSON at ``out`` (folders made) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    echo(f"written {out}")
    return report
