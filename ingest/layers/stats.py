"""Per-region and per-parcel statistics of a cube variable over time.

The most common question asked of the cube with the reference layers: mean NDVI per
municipality per date, SCL class counts per parcel per date (as parcel "chip" services give).
The in-memory building blocks use xarray ``groupby`` on the published layer, which shares the
imagery's x/y exactly. The cube-level helper (``cube_stats``, what ``s2ingest stats`` runs)
works one spatial chunk (and a few time chunks) at a time: the zone labels of the chunk become
indices, and one ``np.bincount`` per block sums and counts every zone at every date (what
``groupby`` computed, at the cost of a numpy pass); spatial chunks where the imagery stores
nothing are not read (their zones get count 0). Partial sums are combined per zone and date,
so memory stays bounded however large the region. Class counts list only the counts that are
not zero (#20 item 15: most zone x date x class combinations are empty).
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
def open_layer(store: str | Path, group: str, variable: str, edition: int, chunks="auto") -> xr.DataArray:
    """One edition of a published layer, lazily (dask; ``chunks=None``: lazily indexed numpy),
    with its code table in attrs."""
    ds = xr.open_zarr(str(store), group="/" + group.strip("/"), consolidated=True, chunks=chunks)
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
    from ingest.copies.access import grid_bounds

    if kind not in ("mean", "classes"):
        raise ConfigError(f"unknown statistic {kind!r}; use mean or classes")
    if bounds is not None:
        bounds = grid_bounds(grid, bounds, bounds_crs)  # checked before anything is read
    zones = open_layer(store, layer_group, layer, edition, chunks=None)
    reader = _BlockReader(store, group, variable, valid_scl, start, end, grid)
    zone_cells = _stored_cells(store, f"{layer_group.strip('/')}/{layer}", zones, grid)
    bounds = bounds or layer_bounds(zones, edition)
    window = grid.window_for_bounds(bounds) if bounds else grid.full_window
    if window is None:
        raise ConfigError(f"bounds {bounds} do not overlap grid {grid.name}")
    parts = [p for p in _blocks(reader, zones, zone_cells, grid, window, kind, time_block, layer,
                                progress) if len(p)]
    if not parts:
        return pd.DataFrame()
    # Sum the blocks' partial sums and counts per zone (and date, class), by column names.
    df = pd.concat(parts, ignore_index=True)
    keys = [c for c in df.columns if c not in ("sum", "count")]
    df = df.groupby(keys, sort=True).sum().sort_index()
    if kind == "classes":
        return df.reset_index()
    names = {int(k): v for k, v in zones.attrs.get("code_names", {}).items()}
    return _finish_means(df, names)


def _stored_cells(store, array: str, ds_var: xr.DataArray, grid: CubeGrid) -> set | None:
    """The spatial chunks (iy, ix) of the grid where ``array`` has any chunk stored; None when
    that cannot be told (keys not listable, chunks not the grid's, no fill value to read)."""
    from ingest.store.backends import backend_for

    chunks = ds_var.encoding.get("chunks") or ds_var.encoding.get("preferred_chunks")
    if isinstance(chunks, dict):
        chunks = tuple(chunks.get(d) for d in ds_var.dims)
    if chunks is None or tuple(chunks[-2:]) != tuple(grid.chunk_shape):
        return None
    if ds_var.encoding.get("_FillValue") is None and ds_var.attrs.get("_FillValue") is None:
        return None
    try:
        keys, _ = backend_for(str(store)).list_dir(array)
    except Exception:  # a store that cannot list: read every chunk
        return None
    cells = set()
    for k in keys:
        parts = k.replace("/", ".").split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts[-2:]):
            cells.add((int(parts[-2]), int(parts[-1])))
    return cells


class _BlockReader:
    """The variable's values (float, NaN where masked) one block at a time, read through
    xarray without dask: the same decoding and arithmetic as ``open_variable`` on a whole
    array, applied to one block in memory. ``empty(index)``: the block is known to be all
    NaN without reading (a needed variable has no chunk stored in that spatial chunk)."""

    def __init__(self, store, group: str, variable: str, valid_scl, start, end, grid: CubeGrid):
        from ingest.copies.access import time_slice

        ds = xr.open_zarr(str(store), group="/" + group.strip("/"), consolidated=True, chunks=None)
        needed = list(DERIVED.get(variable, (variable,)))
        if any(v not in ds for v in needed):
            raise ConfigError(f"/{group.strip('/')} has no variable {variable!r}")
        if valid_scl:
            needed.append("SCL")
        self.cells = {}
        for v in needed:
            self.cells[v] = _stored_cells(store, f"{group.strip('/')}/{v}", ds[v], grid)
        ds = ds[needed]
        if "time" in ds.dims and (start is not None or end is not None):
            ds = ds.sel(time=time_slice((start, end)))
        self.ds, self.variable, self.valid_scl = ds, variable, valid_scl
        self.has_time = "time" in ds.dims
        self.n_t = ds.sizes.get("time", 1)

    def empty(self, index) -> bool:
        return any(c is not None and index not in c for c in self.cells.values())

    def times(self, t: slice) -> np.ndarray:
        return self.ds["time"].values[t]

    def read(self, t: slice, sel: dict) -> xr.DataArray:
        blk = self.ds.isel(sel)
        if self.has_time:
            blk = blk.isel(time=t)
        blk = blk.load()
        if self.variable in DERIVED:
            a, b = (blk[v] for v in DERIVED[self.variable])
            out = ((a - b) / (a + b)).rename(self.variable)
        else:
            out = blk[self.variable]
        if self.valid_scl:
            out = out.where(blk["SCL"].isin(list(self.valid_scl)))
        return out


def _zone_ids(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, pixel mask, bin of every pixel of the block) of a block of zone labels: bin i
    for the pixels of ``labels[i]``, ``len(labels)`` for pixels of no zone (0 or NaN); None
    where the block holds no zone."""
    zf = np.asarray(z, dtype="float64")
    mask = z > 0 if z.dtype.kind in "iu" else np.isfinite(zf) & (zf != 0)
    if not mask.any():
        return None
    labels, inv = np.unique(zf[mask], return_inverse=True)
    bins = np.full(zf.size, len(labels), dtype="intp")
    bins[mask.ravel()] = inv.ravel()
    return labels.astype("int64"), mask, bins


def _block_sums(values: np.ndarray, zid) -> tuple[np.ndarray, np.ndarray]:
    """Per (time, zone) sum of the valid values and their count: one ``np.bincount`` per
    time step over the block's pixels in order (the sums ``groupby`` gives, to the bit)."""
    labels, _, bins = zid
    k = len(labels)
    n_t = values.shape[0]
    v = values.reshape(n_t, -1)
    bad = np.isnan(v)
    w = np.where(bad, v.dtype.type(0), v)
    pixels = np.bincount(bins, minlength=k + 1)[:k]
    sums, counts = np.empty((n_t, k)), np.empty((n_t, k), dtype="int64")
    for t in range(n_t):
        sums[t] = np.bincount(bins, weights=w[t], minlength=k + 1)[:k]
        # valid = the zone's pixels less its NaN pixels (few: integer counts, no weights)
        counts[t] = pixels - np.bincount(bins[bad[t]], minlength=k + 1)[:k]
    return sums, counts


def _block_classes(values: np.ndarray, zid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(time index, zone index, class label, count) of every nonzero count in the block."""
    labels, mask, bins = zid
    k = len(labels)
    v = values[:, mask]
    inv = bins[mask.ravel()]
    ok = np.isfinite(v) & (v != 0)
    classes, cinv = np.unique(v[ok], return_inverse=True)
    n_c = len(classes)
    if not n_c:
        return (np.empty(0, "int64"),) * 3 + (np.empty(0, "int64"),)
    t_idx = np.broadcast_to(np.arange(v.shape[0])[:, None], v.shape)[ok]
    z_idx = np.broadcast_to(inv[None, :], v.shape)[ok]
    flat = (t_idx * k + z_idx) * n_c + cinv.ravel()
    counts = np.bincount(flat, minlength=v.shape[0] * k * n_c)
    nz = np.flatnonzero(counts)
    t_i, rest = np.divmod(nz, k * n_c)
    z_i, c_i = np.divmod(rest, n_c)
    return t_i, z_i, np.array([int(c) for c in classes], dtype="int64")[c_i], counts[nz].astype("int64")


def _blocks(reader: _BlockReader, zones: xr.DataArray, zone_cells: set | None, grid: CubeGrid,
            window, kind: str, time_block: int, zone_name: str,
            progress: bool = False) -> Iterable[pd.DataFrame]:
    """One table of partial sums and counts (or class counts) per spatial chunk of the grid
    that holds a zone, in row-major chunk order; one ``np.bincount`` per block (chunk x at
    most ``time_block`` dates), so memory holds one block at a time."""
    from tqdm.auto import tqdm

    from concurrent.futures import ThreadPoolExecutor

    chunks = [c for c in grid.chunks_in_window(window) if zone_cells is None or c in zone_cells]
    tasks = []  # (zone ids, selection, time slice, whether nothing is stored there)
    for index in chunks:
        w = grid.chunk_window(index)
        sel = {"y": slice(w.row_off, w.row_off + w.height), "x": slice(w.col_off, w.col_off + w.width)}
        zid = _zone_ids(zones.isel(sel).values)
        if zid is not None:
            tasks += [(zid, sel, slice(t0, t0 + time_block), reader.empty(index))
                      for t0 in range(0, reader.n_t, time_block)]
    # DESIGN CHOICE: the next block is read (Zarr decodes, mostly outside the GIL) while this
    # one is counted: at most two blocks in memory
    with ThreadPoolExecutor(1, thread_name_prefix="stats-read") as pool:
        def fetch(i):
            if i >= len(tasks) or tasks[i][3]:
                return None
            return pool.submit(reader.read, tasks[i][2], tasks[i][1])

        ahead = fetch(0)
        for i in tqdm(range(len(tasks)), desc=f"{kind} per {zone_name}", unit="block",
                      disable=not progress, leave=False):
            zid, sel, t, empty = tasks[i]
            current, ahead = ahead, fetch(i + 1)
            labels = zid[0]
            cols: dict = {}
            if empty:  # no data stored under this chunk: every value is NaN, nothing is read
                if kind != "mean":
                    continue
                t_vals = reader.times(t) if reader.has_time else None
                n_step = len(t_vals) if reader.has_time else 1
                sums, counts = np.zeros(n_step * len(labels)), np.zeros(n_step * len(labels), "int64")
            else:
                block = current.result()
                t_vals = block["time"].values if reader.has_time else None
                values = block.values if reader.has_time else block.values[None]
                n_step = values.shape[0]
                if kind == "mean":
                    sums, counts = _block_sums(values, zid)
                else:
                    t_i, z_i, cls, counts = _block_classes(values, zid)
            if kind == "mean":
                cols[zone_name] = np.tile(labels, n_step)
                if reader.has_time:
                    cols["time"] = np.repeat(t_vals, len(labels))
                cols["sum"] = sums.ravel()
                cols["count"] = counts.ravel().astype("int64")
            else:
                cols[zone_name] = labels[z_i]
                if reader.has_time:
                    cols["time"] = t_vals[t_i]
                cols["class"] = cls
                cols["count"] = counts
            yield pd.DataFrame(cols)


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
