"""The measured steps, each run in a fresh ``spawn``-ed child (``run_child``): decoding the
JP2 files alone (the floor), an ingest, building overviews; and the summaries of their runs.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ingest.benchmarks.common import ORBIT, _cpu_s, _peak_mb, _status_mb, dir_bytes, median

def _child(task: str, kwargs: dict) -> dict:
    """Runs in a fresh spawned process: import, note the baseline, do the work, measure."""
    import numpy  # noqa: F401
    import rasterio  # noqa: F401
    import zarr  # noqa: F401

    from ingest.publish import chunks, engine, write  # noqa: F401  (imports are not part of the measurement)

    baseline = _status_mb("VmRSS") or _peak_mb()
    fn = {"decode": _decode, "decode_eopf": _decode_eopf, "ingest": _ingest, "overviews": _overviews,
          "handmade": _handmade, "odc_stac": _odc_stac}[task]
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


def _decode_eopf(product_paths: list[str], workers: int) -> dict:
    """The EOPF floor: every chunk of the arrays the ingest reads (each variable's array at its
    ``spec.resolution``), decoded as the warp decodes them (``eopf.ZarrRaster``), whole."""
    from ingest.products.eopf import open_raster, read_eopf
    from ingest.variables import VARIABLES

    jobs = []
    for path in product_paths:
        product = read_eopf(path)
        jobs += [(product, product.file_for(name, spec.resolution)) for name, spec in VARIABLES.items()]
    jobs.sort(key=lambda j: -j[0].arrays[j[1]].shape[0] * j[0].arrays[j[1]].shape[1])  # largest first

    def one(job) -> int:
        raster = open_raster(*job)
        try:
            return int(raster.read(1).size)
        finally:
            raster.close()

    t0 = time.perf_counter()
    if workers == 1:
        pixels = sum(one(j) for j in jobs)
    else:
        with ThreadPoolExecutor(workers) as ex:
            pixels = sum(ex.map(one, jobs))
    return {"seconds": time.perf_counter() - t0, "pixels": pixels}


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

    from ingest.publish import chunks, engine, write
    from ingest.publish.engine import Cube, ingest_products
    from ingest.grid import NL_GRID
    from ingest.products.formats import read_product
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
    timers.wrap(write, "slot_block", "warp_mosaic")  # write imported it by name
    timers.wrap(chunks, "warp_product_part", "warp")
    timers.wrap(write, "_write_var_block", "write")  # read + decode + merge + compress + store
    timers.wrap(engine, "update_quality", "quality")  # the quality atlas, inside the commit
    t0, cpu0 = time.perf_counter(), time.process_time()
    # the pool's start (spawning and importing in the workers) is part of the measured time
    with open_executor(ComputeOptions(workers=workers)) as executor:
        plan, report = ingest_products(cube, products, known.__getitem__, parse_resampling(resampling),
                                       progress=False, threads=threads, executor=executor)
    seconds = time.perf_counter() - t0
    # the committer's CPU seconds (every thread of this process) for the whole ingest: with
    # workers, what the process holding the transaction spends per tile-date
    committer_cpu_s = time.process_time() - cpu0
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
        "logical_bytes_written": logical, "workers": workers, "committer_cpu_s": committer_cpu_s,
        # the commit's switch (renames of the staged keys; readers may see a mix meanwhile)
        "switched_keys": report.commit.switched if report and report.commit else 0,
        "switch_s": report.commit.switch_seconds if report and report.commit else 0.0,
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


def _handmade(product_path: str, out_path: str) -> dict:
    """The pipeline a user writes by hand with rioxarray (``ingest.benchmarks.handmade``):
    each variable's file opened, reprojected to EPSG:28992 at 10 m (onto the first 10 m band's
    grid), written to Zarr format 2 with the cube's codec, one variable after the other."""
    import rasterio
    import rioxarray
    import xarray as xr
    from rasterio.enums import Resampling

    from ingest.products.formats import read_product
    from ingest.store.layout import compressor
    from ingest.variables import VARIABLES
    from ingest.warping.warp import GDAL_ENV

    product = read_product(product_path)
    order = sorted(VARIABLES.values(), key=lambda s: s.resolution)  # a 10 m band sets the grid
    ref = None
    pixels = 0
    with rasterio.Env(**GDAL_ENV):
        for i, spec in enumerate(order):
            da = rioxarray.open_rasterio(product.gdal_path(product.file_for(spec.name, spec.resolution))).squeeze("band", drop=True)
            da = da.rio.write_nodata(spec.fill_value)
            how = Resampling[spec.default_resampling]
            out = (da.rio.reproject("EPSG:28992", resolution=10, resampling=how) if ref is None
                   else da.rio.reproject_match(ref, resampling=how))
            if ref is None:
                ref = out
            ds = xr.Dataset({spec.name: out.expand_dims(time=[product.datatake_start.replace(tzinfo=None)])})
            ds.to_zarr(out_path, mode="w" if i == 0 else "a", zarr_format=2, consolidated=i == len(order) - 1,
                       encoding={spec.name: {"chunks": (1, 625, 500), "compressors": (compressor(),)}})
            pixels += int(out.size)
    return {"output_pixels": pixels, "variables": len(order)}


def product_item(product_path: str):
    """A STAC Item of one SAFE product as a careful user writes it for odc-stac: an asset per
    variable (the JP2 file the ingest reads, at the variable's resolution) with the projection
    (``proj:code``, ``proj:shape``, ``proj:transform``) and raster (data type, nodata) fields
    that Earth Search and Planetary Computer items carry."""
    import pystac
    import rasterio
    import rasterio.warp
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterBand, RasterExtension
    from shapely.geometry import box, mapping

    from ingest.products.formats import read_product
    from ingest.variables import VARIABLES

    product = read_product(os.path.abspath(product_path))  # an Item's hrefs are absolute
    item = None
    for name, spec in VARIABLES.items():
        path = product.gdal_path(product.file_for(name, spec.resolution))
        with rasterio.open(path) as src:
            if item is None:
                bounds = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
                item = pystac.Item(Path(product_path).stem, mapping(box(*bounds)), list(bounds),
                                   product.datatake_start.replace(tzinfo=None), {})
                ProjectionExtension.ext(item, add_if_missing=True).code = f"EPSG:{src.crs.to_epsg()}"
                RasterExtension.add_to(item)
            asset = pystac.Asset(path, media_type="image/jp2", roles=["data"])
            item.add_asset(name, asset)
            proj = ProjectionExtension.ext(asset)
            proj.shape, proj.transform = [src.height, src.width], list(src.transform)[:6]
            RasterExtension.ext(asset).bands = [RasterBand.create(data_type=src.dtypes[0],
                                                                  nodata=spec.fill_value)]
    return item


def _odc_stac(product_path: str, out_path: str, threads: int) -> dict:
    """The same product through odc-stac (``ingest.benchmarks.handmade``): ``odc.stac.load`` of
    its Item onto EPSG:28992 at 10 m (the same resampling per variable, the fill value as
    nodata), lazily in dask chunks that hold whole Zarr chunks, then ``to_zarr`` (Zarr format
    2, chunks (1, 625, 500), the cube's codec) on ``threads`` dask threads."""
    import dask
    import odc.stac

    from ingest.store.layout import compressor
    from ingest.variables import VARIABLES
    from ingest.warping.warp import GDAL_ENV

    odc.stac.configure_rio(**GDAL_ENV)
    item = product_item(product_path)
    ds = odc.stac.load([item], bands=list(VARIABLES), crs="EPSG:28992", resolution=10,
                       resampling={n: s.default_resampling for n, s in VARIABLES.items()},
                       chunks={"y": 2500, "x": 2500})
    encoding = {n: {"chunks": (1, 625, 500), "compressors": (compressor(),)} for n in ds.data_vars}
    with dask.config.set(scheduler="threads", num_workers=threads):
        ds.to_zarr(out_path, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
    return {"output_pixels": int(sum(v.size for v in ds.data_vars.values())), "variables": len(ds.data_vars)}


def chunk_bytes(cube: Path) -> int:
    """Bytes of the variables' chunk files (metadata, coordinates and journal left out)."""
    from ingest.publish.engine import Cube
    from ingest.grid import NL_GRID
    from ingest.variables import VARIABLES

    group = cube / Cube(cube, NL_GRID, ORBIT).group
    return sum(dir_bytes(group / v) for v in VARIABLES)


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

