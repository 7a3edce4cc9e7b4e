"""Extracts of one version of a cube: a Cloud-Optimized GeoTIFF or a CF netCDF file
(``s2ingest export``; DESIGN.md §10).

One time step, or a time range reduced per pixel (median, mean, max, min) over the **clear**
observations only: SCL in ``clear_classes`` and, optionally, cloud probability at most
``max_cld`` percent. Values stay the cube's stored integers with their scale factor and
offset (a reduced value is rounded back to that encoding), so an extract is as compact and as
exact as the cube; where the variables do not share one data type family and fill value
(e.g. reflectance with fill 0 beside CLD with fill 255) the GeoTIFF holds decoded float32
values with NaN as nodata instead.
"""
from __future__ import annotations

import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ingest.errors import ConfigError, StoreError
from ingest.copies.access import describe_time_range, fix_grid_mapping, open_cube, select
from ingest.copies.progress import compute_with_progress

log = logging.getLogger(__name__)
REDUCERS = ("median", "mean", "max", "min")
DEFAULT_CLEAR = (4, 5, 6, 11)  # SCL: vegetation, not vegetated, water, snow/ice
CATEGORICAL = {"SCL"}  # nearest-neighbour overviews


@dataclass
class ExportReport:
    path: str
    format: str
    source: str
    version: int
    variables: list[str]
    shape: tuple[int, int]
    times: list[str]
    reduce: str | None


def _fill(var: xr.DataArray):
    return var.attrs.get("_FillValue", var.encoding.get("_FillValue"))


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("cog", "netcdf"):
            raise ConfigError(f"--format {fmt}: cog or netcdf")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "cog"
    if suffix in (".nc", ".nc4"):
        return "netcdf"
    raise ConfigError(f"{path.name}: give a .tif (Cloud-Optimized GeoTIFF) or .nc (netCDF) file, "
                      "or --format")


def extract(source: str, *, time_range, reduce: str | None = None,
            clear_classes: Sequence[int] = DEFAULT_CLEAR, max_cld: float | None = None,
            variables: Sequence[str] | None = None, bbox=None, crs=None, version=None,
            group=None, orbit=None, max_cloud: float | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """(result, source selection): the 2-D variables of one time step or a reduction, lazy,
    as stored integers with their CF attributes."""
    if reduce is not None and reduce not in REDUCERS:
        raise ConfigError(f"--reduce {reduce}: one of {', '.join(REDUCERS)}")
    if time_range is None:
        raise ConfigError("give --time: a date, or a range START/END with --reduce")
    # DESIGN CHOICE: with --max-cloud the quality atlas drops the cloudy dates before any
    # imagery chunk is read (a reduction over a season skips most Dutch dates)
    full = open_cube(source, bbox=bbox, crs=crs, time_range=time_range, version=version,
                     group=group, orbit=orbit, mask_and_scale=False, max_cloud=max_cloud)
    where = f"version {full.attrs['s2ingest_store_version']} of {full.attrs['s2ingest_source']}"
    names = list(variables) if variables else [str(v) for v in full.data_vars]
    sel = select(full, None, variables=names, where=where)
    sel.attrs = dict(full.attrs)
    n = sel.sizes["time"]
    if n == 0:
        cloudy = f" with less than {max_cloud:g} % cloud" if max_cloud is not None else ""
        raise ConfigError(f"{where}: no time step{cloudy} in {describe_time_range(time_range)}")
    if reduce is None:
        if n > 1:
            days = ", ".join(str(t)[:19] for t in sel.time.values)
            raise ConfigError(f"{where}: {n} time steps in the range ({days}); give --reduce "
                              f"({'|'.join(REDUCERS)}) or a narrower --time")
        out = sel.isel(time=0)
        out.attrs["s2ingest_time"] = str(out.time.values)[:23]
        return out, sel
    clear = full["SCL"].isin(list(clear_classes))
    if max_cld is not None:
        if "CLD" not in full:
            raise ConfigError(f"{where}: no CLD variable for --max-cld")
        # raw CLD is percent (scale 0.01 to a fraction), fill 255
        clear = clear & (full["CLD"] <= float(max_cld)) & (full["CLD"] != _fill(full["CLD"]))
    reduced = {}
    for name in names:
        var = sel[name]
        fill = _fill(var)
        valid = clear if fill is None else clear & (var != fill)
        data = var.where(valid).chunk(time=-1)
        r = getattr(data, reduce)("time", skipna=True)
        if var.dtype.kind in "iu":
            info = np.iinfo(var.dtype)
            r = r.round().clip(info.min, info.max)
        enc = r.fillna(fill if fill is not None else 0).astype(var.dtype)
        enc.attrs = dict(var.attrs)
        enc.attrs["cell_methods"] = f"time: {reduce} (clear observations)"
        reduced[name] = enc
    out = xr.Dataset(reduced, coords={k: v for k, v in sel.coords.items()
                                      if "time" not in v.dims and k != "time"})
    out.attrs = dict(sel.attrs)
    out.attrs.update({"s2ingest_time_range": f"{str(sel.time.values[0])[:19]}/{str(sel.time.values[-1])[:19]}",
                      "s2ingest_reduce": reduce, "s2ingest_time_steps": n,
                      "s2ingest_clear_scl": ",".join(map(str, clear_classes)),
                      "s2ingest_max_cld": "" if max_cld is None else float(max_cld)})
    return out, sel


def export(source: str, path: str | os.PathLike[str], *, time_range, reduce: str | None = None,
           clear_classes: Sequence[int] = DEFAULT_CLEAR, max_cld: float | None = None,
           variables: Sequence[str] | None = None, fmt: str | None = None, bbox=None, crs=None,
           version=None, group=None, orbit=None, progress: bool = False,
           max_cloud: float | None = None) -> ExportReport:
    out_path = Path(path)
    kind = _format_for(out_path, fmt)
    if "://" in str(path):
        raise ConfigError(f"{path}: export writes a local file")
    result, sel = extract(source, time_range=time_range, reduce=reduce, clear_classes=clear_classes,
                          max_cld=max_cld, variables=variables, bbox=bbox, crs=crs,
                          version=version, group=group, orbit=orbit, max_cloud=max_cloud)
    result = fix_grid_mapping(result)
    names = [str(v) for v in result.data_vars]
    with warnings.catch_warnings():  # a pixel with no clear observation is nodata, not news
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        (values,) = compute_with_progress(result, progress=progress, desc="export")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        if kind == "cog":
            write_cog(values, names, tmp)
        else:
            write_netcdf(values, tmp)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    times = [str(t)[:19] for t in sel.time.values]
    return ExportReport(str(out_path), kind, result.attrs["s2ingest_source"],
                        int(result.attrs["s2ingest_store_version"]), names,
                        (result.sizes["y"], result.sizes["x"]), times, reduce)


def _bands(ds: xr.Dataset, names: list[str]) -> tuple[np.ndarray, object, list, list]:
    """(stack, nodata, scales, offsets): stored integers when every variable shares a data
    type family and fill value, else decoded float32 with NaN."""
    fills = {_fill(ds[n]) for n in names}
    kinds = {ds[n].dtype.kind for n in names}
    if len(fills) == 1 and None not in fills and len(kinds) == 1 and kinds <= {"u", "i"}:
        dtype = np.result_type(*[ds[n].dtype for n in names])
        stack = np.stack([ds[n].values.astype(dtype) for n in names])
        scales = [float(ds[n].attrs.get("scale_factor", 1.0)) for n in names]
        offsets = [float(ds[n].attrs.get("add_offset", 0.0)) for n in names]
        return stack, fills.pop(), scales, offsets
    # DESIGN CHOICE: one GeoTIFF has one nodata value for all bands; variables that disagree
    # on it (fill 0 beside 255) are written decoded, NaN as nodata, rather than risk a valid
    # 0 % cloud value reading as nodata.
    decoded = []
    for n in names:
        v = ds[n].values.astype("float32")
        fill = _fill(ds[n])
        if fill is not None:
            v[ds[n].values == fill] = np.nan
        decoded.append(v * float(ds[n].attrs.get("scale_factor", 1.0))
                       + float(ds[n].attrs.get("add_offset", 0.0)))
    return np.stack(decoded).astype("float32"), float("nan"), [1.0] * len(names), [0.0] * len(names)


def write_cog(ds: xr.Dataset, names: list[str], path: Path) -> None:
    """A Cloud-Optimized GeoTIFF (GDAL's COG driver): one band per variable, described by its
    name, with scale/offset, EPSG from the grid mapping, internal overviews, DEFLATE."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy
    from rasterio.transform import from_origin

    stack, nodata, scales, offsets = _bands(ds, names)
    x, y = ds.x.values, ds.y.values
    res = float(x[1] - x[0]) if x.size > 1 else float(y[0] - y[1])
    transform = from_origin(float(x[0]) - res / 2, float(y[0]) + res / 2, res, res)
    crs = CRS.from_wkt(ds.spatial_ref.attrs["crs_wkt"])
    epsg = crs.to_epsg()
    crs = CRS.from_epsg(epsg) if epsg else crs
    profile = {"driver": "GTiff", "count": len(names), "height": stack.shape[1],
               "width": stack.shape[2], "dtype": stack.dtype.name, "crs": crs,
               "transform": transform, "nodata": nodata}
    categorical = any(n in CATEGORICAL for n in names)
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as tmp:
                tmp.write(stack)
                for i, n in enumerate(names, start=1):
                    tmp.set_band_description(i, n)
                    tmp.update_tags(i, **{k: str(v) for k, v in ds[n].attrs.items()
                                          if k in ("long_name", "units", "standard_name",
                                                   "flag_values", "flag_meanings", "cell_methods")})
                tmp.scales = scales
                tmp.offsets = offsets
                tmp.update_tags(**{k: str(v) for k, v in ds.attrs.items()
                                   if k.startswith("s2ingest_")})
            with mem.open() as src:
                # DESIGN CHOICE: GDAL's own COG driver (tiles, overviews, header layout) rather
                # than rio-cogeo, which wraps the same driver; nearest-neighbour overviews as
                # soon as a class band (SCL) is present, averages otherwise.
                rio_copy(src, str(path), driver="COG", COMPRESS="DEFLATE", PREDICTOR="2"
                         if stack.dtype.kind in "iu" else "3", BLOCKSIZE="512",
                         OVERVIEWS="IGNORE_EXISTING",
                         OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE")
    except rasterio.errors.RasterioError as exc:
        raise StoreError(f"cannot write {path}: {exc}") from exc


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """CF netCDF-4: the stored integers with scale_factor/add_offset/_FillValue, the
    ``spatial_ref`` grid mapping (crs_wkt, GeoTransform) and x/y in metres; zlib."""
    out = ds.copy()
    encoding = {}
    for name in out.variables:
        var = out[name]
        enc = {}
        if name in out.data_vars:
            enc = {"zlib": True, "complevel": 4}
            for key in ("_FillValue",):
                if key in var.attrs:
                    enc[key] = var.attrs.pop(key)
        if var.dtype.kind == "U":
            out[name] = var.astype(object)
        elif name == "time" or var.dtype.kind == "M":
            enc.update({"units": "milliseconds since 1970-01-01T00:00:00", "dtype": "int64"})
        encoding[name] = enc
    for name in out.data_vars:
        out[name].attrs.pop("_CRS", None)  # GDAL-Zarr's attribute; netCDF has grid_mapping
        out[name].attrs["grid_mapping"] = "spatial_ref"
    # the GeoZarr conventions describe the Zarr nodes (nested objects netCDF attributes cannot
    # hold); the netCDF file has CF's grid mapping instead
    out.attrs = {k: v for k, v in out.attrs.items()
                 if k not in ("zarr_conventions", "multiscales", "dggs") and not k.startswith(("proj:", "spatial:"))}
    out.attrs["Conventions"] = "CF-1.8"
    try:
        out.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=encoding)
    except (OSError, ValueError, RuntimeError) as exc:
        raise StoreError(f"cannot write {path}: {exc}") from exc
