"""Per-region and per-parcel statistics of a cube variable over time.

The most common question asked of the cube with the reference layers: mean NDVI per
municipality per date, SCL class counts per parcel per date (as parcel "chip" services give).
Computed with xarray ``groupby`` on the published layer, which shares the imagery's x/y exactly.
The cube-level helper works one spatial chunk (and a few time chunks) at a time and combines
sums and counts, so memory stays bounded however large the region.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ingest.errors import ConfigError, LayerError
from ingest.grid import NL_GRID, CubeGrid

DERIVED = {"NDVI": ("B08", "B04")}  # normalised difference (a - b) / (a + b)


# -- in-memory building blocks --------------------------------------------------------------------
def _zones(zones: xr.DataArray, name: str | None) -> xr.DataArray:
    """Zone labels as float with NaN where no zone (0 = fill, raw or already masked)."""
    z = zones.where(zones > 0) if zones.dtype.kind in "iu" else zones.where(zones != 0)
    return z.astype("float64").rename(name or zones.name or "zone")


def _aligned(data: xr.DataArray, zones: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    try:
        return xr.align(data, zones, join="exact", exclude=set(data.dims) - {"x", "y"})
    except ValueError as exc:
        raise LayerError(f"variable and zones are not on the same x/y grid: {exc}") from None


def zonal_sums(data: xr.DataArray, zones: xr.DataArray, zone_name: str | None = None) -> pd.DataFrame:
    """Sum and count of valid (non-NaN) values per zone and per other dim (e.g. time)."""
    z = _zones(zones, zone_name)
    data, z = _aligned(data, z)
    valid = data.notnull()
    g_sum = data.fillna(0).groupby(z).sum()
    g_cnt = valid.groupby(z).sum()
    df = xr.Dataset({"sum": g_sum, "count": g_cnt.astype("int64")}).to_dataframe()
    df = df[["sum", "count"]]
    return _zone_first(df, str(z.name))


def _zone_first(df: pd.DataFrame, zone: str) -> pd.DataFrame:
    """Index levels ordered zone, then the rest (time, class); zone labels as integers."""
    names = [zone] + [n for n in df.index.names if n != zone]
    df = df.reorder_levels(names) if df.index.nlevels > 1 else df
    return df.rename(index=int, level=zone).sort_index()


def zonal_stats(data: xr.DataArray, zones: xr.DataArray, zone_name: str | None = None,
                names: dict[int, str] | None = None) -> pd.DataFrame:
    """Mean, sum and valid-pixel count per zone (and per date); one row each."""
    return _finish_means(zonal_sums(data, zones, zone_name), names)


def class_counts(classes: xr.DataArray, zones: xr.DataArray, values: Sequence[int] | None = None,
                 zone_name: str | None = None) -> pd.DataFrame:
    """Pixel count of each class per zone (and per date), e.g. SCL classes per parcel."""
    z = _zones(zones, zone_name)
    classes, z = _aligned(classes, z)
    if values is None:
        values = [int(v) for v in np.unique(classes.values[np.isfinite(classes.values)]) if v != 0]
    parts = [(classes == v).groupby(z).sum().astype("int64").expand_dims({"class": [int(v)]})
             for v in values]
    if not parts:
        index = pd.MultiIndex.from_arrays([[], [], []], names=[str(z.name), "time", "class"]) \
            if "time" in classes.dims else pd.MultiIndex.from_arrays([[], []], names=[str(z.name), "class"])
        return pd.DataFrame({"count": pd.Series([], dtype="int64")}, index=index)
    df = xr.concat(parts, dim="class").rename("count").to_dataframe()[["count"]]
    df = _zone_first(df, str(z.name))
    if "time" in df.index.names:
        df = df.reorder_levels([str(z.name), "time", "class"]).sort_index()
    return df


def _finish_means(sums: pd.DataFrame, names: dict[int, str] | None) -> pd.DataFrame:
    out = sums.copy()
    out["mean"] = out["sum"] / out["count"].where(out["count"] > 0)
    out = out.reset_index()
    if names:
        out.insert(1, "name", out[out.columns[0]].map(names))
    return out


# -- the cube -------------------------------------------------------------------------------------
def open_layer(store: str | Path, group: str, variable: str, edition: int) -> xr.DataArray:
    """One edition of a published layer, lazily (dask), with its code table in attrs."""
    ds = xr.open_zarr(str(store), group="/" + group.strip("/"), consolidated=True)
    if variable not in ds:
        raise LayerError(f"/{group.strip('/')} has no layer {variable!r} (has {', '.join(map(str, ds.data_vars))})")
    if int(edition) not in ds["edition"].values.tolist():
        raise LayerError(f"/{group.strip('/')}/{variable}: no edition {edition} "
                         f"(has {ds['edition'].values.tolist()})")
    return ds[variable].sel(edition=int(edition))


def open_variable(store: str | Path, group: str, variable: str,
                  valid_scl: Sequence[int] | None = None) -> xr.DataArray:
    """An imagery variable (or NDVI), optionally masked to pixels whose SCL is in ``valid_scl``."""
    ds = xr.open_zarr(str(store), group="/" + group.strip("/"), consolidated=True)
    if variable in DERIVED:
        a, b = (ds[v] for v in DERIVED[variable])
        out = ((a - b) / (a + b)).rename(variable)
    elif variable in ds:
        out = ds[variable]
    else:
        raise ConfigError(f"/{group.strip('/')} has no variable {variable!r}")
    if valid_scl:
        out = out.where(ds["SCL"].isin(list(valid_scl)))
    return out


def layer_bounds(zones: xr.DataArray, edition: int) -> tuple[float, float, float, float] | None:
    """Pixel-edge bounds that hold the layer's edition (from its provenance)."""
    prov = zones.attrs.get("provenance", {}).get(str(int(edition)), {})
    b = prov.get("bounds")
    return tuple(b) if b else None


def cube_stats(store: str | Path, *, group: str, variable: str, layer_group: str, layer: str,
               edition: int, kind: str = "mean", bounds=None, bounds_crs: str | None = None,
               start=None, end=None, valid_scl: Sequence[int] | None = None, grid: CubeGrid = NL_GRID,
               time_block: int = 20, progress: bool = False) -> pd.DataFrame:
    """Statistics of ``variable`` per ``layer`` zone and date, one chunk at a time.

    ``kind`` is "mean" (columns zone, [name], time, sum, count, mean) or "classes" (class
    counts; zone, time, class, count). ``bounds`` (left, bottom, right, top) are in the
    grid's CRS unless ``bounds_crs`` names another; ``start``/``end`` (inclusive) are dates
    or times, UTC unless they say otherwise.
    """
    from ingest.copies.access import grid_bounds, time_slice

    if kind not in ("mean", "classes"):
        raise ConfigError(f"unknown statistic {kind!r}; use mean or classes")
    if bounds is not None:
        bounds = grid_bounds(grid, bounds, bounds_crs)  # checked before anything is read
    zones = open_layer(store, layer_group, layer, edition)
    data = open_variable(store, group, variable, valid_scl)
    if "time" in data.dims and (start is not None or end is not None):
        data = data.sel(time=time_slice((start, end)))
    bounds = bounds or layer_bounds(zones, edition)
    window = grid.window_for_bounds(bounds) if bounds else grid.full_window
    if window is None:
        raise ConfigError(f"bounds {bounds} do not overlap grid {grid.name}")
    parts = [p for p in _blocks(data, zones, grid, window, kind, time_block, layer, progress) if len(p)]
    if not parts:
        return pd.DataFrame()
    # Sum the blocks' partial sums and counts per zone (and date, class), by column names.
    df = pd.concat([p.reset_index() for p in parts], ignore_index=True)
    keys = [c for c in df.columns if c not in ("sum", "count")]
    df = df.groupby(keys, sort=True).sum().sort_index()
    if kind == "classes":
        return df.reset_index()
    names = {int(k): v for k, v in zones.attrs.get("code_names", {}).items()}
    return _finish_means(df, names)


def _blocks(data: xr.DataArray, zones: xr.DataArray, grid: CubeGrid, window, kind: str,
            time_block: int, zone_name: str, progress: bool = False) -> Iterable[pd.DataFrame]:
    from tqdm.auto import tqdm

    chunks = list(grid.chunks_in_window(window))
    for index in tqdm(chunks, desc=f"{kind} per {zone_name}", unit="chunk", disable=not progress, leave=False):
        w = grid.chunk_window(index)
        sel = {"y": slice(w.row_off, w.row_off + w.height), "x": slice(w.col_off, w.col_off + w.width)}
        z = zones.isel(sel).load()
        if not (z.fillna(0) > 0).any():
            continue
        n_t = data.sizes.get("time", 1)
        for t0 in range(0, n_t, time_block):
            block = data.isel(sel)
            if "time" in data.dims:
                block = block.isel(time=slice(t0, t0 + time_block))
            block = block.load()
            if kind == "mean":
                yield zonal_sums(block, z, zone_name)
            else:
                yield class_counts(block, z, zone_name=zone_name)


# -- output -------------------------------------------------------------------------------------
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def check_table_path(path: str | Path) -> Path:
    """Refuse, before any work, a table path ``write_table`` cannot write: another suffix
    than .csv or .parquet, or a folder that does not exist."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"{path}: write a .csv or .parquet table")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: no folder {path.parent}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder")
    return path


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet, by the file suffix."""
    path = check_table_path(path)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path
