"""Read-only access to a published cube for the server: levels, tiles, series, chips.

Everything here reads through xarray/zarr with the published consolidated metadata; nothing
writes. Every request is bounded: a tile reads at most ``MAX_TILE_PIXELS`` source pixels (the
right overview level keeps it small), a polygon at most ``MAX_AREA_PIXELS``, a chip request at
most ``MAX_CHIP_DATES`` dates.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from ingest.errors import S2IngestError, StoreError
from ingest.overviews import level_factors, levels_of
from ingest.store import CubeStore
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import SCL_CLASSES, VARIABLES

MAX_TILE_PIXELS = 1024 * 1024  # source pixels one tile may read (per band)
MAX_AREA_PIXELS = 1_000_000  # pixels of one polygon / parcel series or chip (100 km² at 10 m)
MAX_CHIP_DATES = 60
CHUNK_CACHE_BYTES = 256 * 2**20  # decoded chunks kept per server process (least recently used go)
REFRESH_SECONDS = 1.0  # how often a request checks for a newly published version
CLEAR_SCL = (4, 5, 6, 7, 11)  # vegetation, not vegetated, water, unclassified, snow
MERCATOR_RES0 = 2 * math.pi * 6378137 / 256  # m per pixel at zoom 0 (equator)

COMPOSITES = {  # name -> (bands, default range in reflectance / index units)
    "true_color": (("B04", "B03", "B02"), (0.0, 0.3)),
    "false_color": (("B08", "B04", "B03"), (0.0, 0.5)),
    "ndvi": (("B08", "B04"), (-0.2, 0.9)),
}


class RequestError(S2IngestError):
    """A bad request parameter (the server answers 4xx with this message)."""

    status = 400


class NotFound(RequestError):
    status = 404


def check_lon_lat(lon: float, lat: float) -> None:
    """Finite WGS 84 degrees (lon -180..180, lat -90..90), else a 400 naming both."""
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise RequestError(f"lon {lon}, lat {lat}: give finite degrees, lon -180..180 and "
                           "lat -90..90")


@dataclass(frozen=True)
class Level:
    factor: int  # 1: the native group
    path: str  # zarr group path


class CubeReader:
    """One published cube, opened once per server process (thread-safe reads)."""

    def __init__(self, location: str) -> None:
        self.store = CubeStore.open(location)
        self.location = location
        self.grid = self.store.grid
        self._lock = threading.Lock()
        self._datasets: dict[str, xr.Dataset] = {}
        self._version = None
        self._parcels: dict | None = None
        self._checked = -math.inf
        self._levels: dict[str, list[Level]] = {}
        self._times: dict[str, list[datetime]] = {}
        self._arrays: dict[str, object] = {}
        self._coords: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._chunks = ChunkCache(CHUNK_CACHE_BYTES)
        self._thread = threading.local()  # per thread: a key reader on connections of its own

    # -- what is published ---------------------------------------------------------------
    def refresh(self) -> None:
        """Forget opened datasets, levels, times and decoded chunks when the store published
        a new version. DESIGN CHOICE: checked at most every ``REFRESH_SECONDS`` (the check
        reads the root's consolidated metadata, more than a cached tile costs), so a new
        version is served within that time."""
        now = time.monotonic()
        if now - self._checked < REFRESH_SECONDS:
            return
        v = self.store.version()
        with self._lock:
            self._checked = now
            if v != self._version:
                self._datasets.clear()
                self._levels.clear()
                self._times.clear()
                self._arrays.clear()
                self._coords.clear()
                self._chunks.clear()
                self._parcels = None
                self._version = v
                self.__dict__.pop("groups", None)

    @cached_property
    def groups(self) -> list[str]:
        root = self.store.consolidated("") or {}
        out = sorted({k.rsplit("/", 2)[0] for k in root
                      if k.startswith("S2/") and k.endswith("/B04/.zarray") and k.count("/") == 3})
        return out

    def group(self, orbit: int | None) -> str:
        groups = self.groups
        if not groups:
            raise NotFound(f"{self.location} holds no imagery yet")
        if orbit is None:
            return groups[0]
        g = f"S2/R{orbit:03d}"
        if g not in groups:
            raise NotFound(f"no group /{g}; the cube has {', '.join('/' + x for x in groups)}")
        return g

    def dataset(self, path: str) -> xr.Dataset:
        with self._lock:
            ds = self._datasets.get(path)
        if ds is None:
            ds = xr.open_zarr(self.location, group=path, consolidated=True, chunks=None,
                              mask_and_scale=False, decode_times=True)
            with self._lock:
                self._datasets[path] = ds
        return ds

    def levels(self, group: str) -> list[Level]:
        out = self._levels.get(group)
        if out is None:
            meta = self.store.consolidated(group) or {}
            out = [Level(1, group)] + [Level(f, f"{group}/overviews/{f}") for f in levels_of(meta)]
            with self._lock:
                self._levels[group] = out
        return out

    def times(self, group: str) -> list[datetime]:
        out = self._times.get(group)
        if out is None:
            out = [pd.Timestamp(t).to_pydatetime().replace(tzinfo=timezone.utc)
                   for t in self.dataset(group)["time"].values]
            with self._lock:
                self._times[group] = out
        return out

    def coords(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """The x and y centre coordinates of the array group at ``path`` (kept per version)."""
        out = self._coords.get(path)
        if out is None:
            ds = self.dataset(path)
            out = (ds["x"].values, ds["y"].values)
            with self._lock:
                self._coords[path] = out
        return out

    def window(self, path: str, var: str, t: int, rows: slice, cols: slice) -> np.ndarray:
        """The stored integers of ``var`` at time step ``t`` over a window of the array at
        ``path``, assembled from decoded chunks kept in an LRU cache (a tile and its
        neighbours, and the bands of a composite at the next time steps, read the same chunks).

        DESIGN CHOICE: cached chunks are keyed by the version this reader serves as well as
        by array and chunk, so a chunk a request read while a new version was being picked up
        is never served for the new one. A plain array (one compressor, no filters, C order,
        as the cube writes them) is decoded with its own codec straight from the store's key,
        as zarr-python does for format 2 (its read machinery cost more than the decoding);
        anything else is read through zarr-python."""
        key = f"{path}/{var}"
        arr = self._array(key)
        ct, cy, cx = arr.chunks
        version = self._version
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype=arr.dtype)
        for iy in range(rows.start // cy, (rows.stop - 1) // cy + 1):
            for ix in range(cols.start // cx, (cols.stop - 1) // cx + 1):
                ck = (version, key, t // ct, iy, ix)
                chunk = self._chunks.get(ck)
                if chunk is None:
                    chunk = self._read_chunk(key, arr, (t // ct, iy, ix))
                    self._chunks.put(ck, chunk)
                r0, r1 = max(rows.start, iy * cy), min(rows.stop, (iy + 1) * cy)
                c0, c1 = max(cols.start, ix * cx), min(cols.stop, (ix + 1) * cx)
                out[r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start] = \
                    chunk[t % ct, r0 - iy * cy:r1 - iy * cy, c0 - ix * cx:c1 - ix * cx]
        return out

    def _array(self, key: str):
        """An ``ArrayMeta`` of the published array ``key`` when it is plain, else the array
        opened by zarr-python (both have ``chunks`` and ``dtype``)."""
        arr = self._arrays.get(key)
        if arr is None:
            group, name = key.rsplit("/", 1)
            doc = (self.store.consolidated(group) or {}).get(f"{name}/.zarray")
            meta = ArrayMeta(doc) if doc is not None else None
            if meta is not None and len(meta.chunks) == 3 and not meta.doc.get("filters") \
                    and meta.doc.get("order", "C") == "C" and meta.codec is not None:
                arr = meta
            else:
                import zarr

                arr = zarr.open_array(self.location, path=key, mode="r")
            with self._lock:
                self._arrays[key] = arr
        return arr

    def _read_chunk(self, key: str, arr, index: tuple[int, int, int]) -> np.ndarray:
        """One whole chunk (time, y, x) of the array ``key``, decoded."""
        ct, cy, cx = arr.chunks
        if not isinstance(arr, ArrayMeta):
            it, iy, ix = index
            return arr[it * ct:(it + 1) * ct, iy * cy:(iy + 1) * cy, ix * cx:(ix + 1) * cx]
        name = arr.doc.get("dimension_separator", ".").join(str(i) for i in index)
        read = getattr(self._thread, "read", None)
        if read is None:  # an HTTP session is not shared between threads
            read = self._thread.read = self.store.key_reader()
        raw = read(f"{key}/{name}")
        if raw is None:  # never written: the fill value, as zarr reads it
            fill = arr.fill_value if arr.fill_value is not None else 0
            return np.broadcast_to(np.array(fill, dtype=arr.dtype), arr.chunks)
        try:
            return arr.decode(raw)
        except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs' errors for damaged bytes
            raise StoreError(f"{self.location}/{key}/{name} is damaged: {exc}") from exc

    def time_index(self, group: str, time: str | None) -> int:
        times = self.times(group)
        if not times:
            raise NotFound(f"/{group} has no time steps yet")
        if time is None or time == "":
            return len(times) - 1
        if time.lstrip("-").isdigit():
            i = int(time)
            if not -len(times) <= i < len(times):
                raise RequestError(f"time index {i} out of range (0..{len(times) - 1})")
            return i % len(times)
        try:
            t = pd.Timestamp(time)
        except ValueError:
            raise RequestError(f"time {time!r} is neither an index nor an ISO date") from None
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
        for i, s in enumerate(times):
            if s.date() == t.date() if len(time) <= 10 else abs((s - t.to_pydatetime()).total_seconds()) < 1:
                return i
        raise NotFound(f"no time step at {time}")

    def metadata(self) -> dict:
        out = {"store": self.location, "version": self.store.version(),
               "versions_kept": self.store.manifest_versions(),
               "crs": self.grid.crs, "resolution": self.grid.resolution,
               "bounds": list(self.grid.bounds), "bounds_wgs84": list(self.bounds_wgs84()),
               "variables": {n: {"long_name": s.long_name, "units": s.units,
                                 "scale_factor": s.scale_factor, "fill_value": s.fill_value,
                                 "kind": s.kind} for n, s in VARIABLES.items()},
               "composites": {k: {"bands": list(b), "range": list(r)} for k, (b, r) in COMPOSITES.items()},
               "scl_classes": {str(k): v for k, v in SCL_CLASSES.items()},
               "groups": {}, "layers": self.layers()}
        for g in self.groups:
            ds = self.dataset(g)
            out["groups"][g] = {
                "times": [t.isoformat().replace("+00:00", "Z") for t in self.times(g)],
                "platforms": [str(v) for v in ds["platform"].values] if "platform" in ds else [],
                "levels": [lv.factor for lv in self.levels(g)],
                "data_bounds_wgs84": self.data_bounds_wgs84(g),
            }
        return out

    def layers(self) -> list[str]:
        root = self.store.consolidated("") or {}
        return sorted(k.rsplit("/", 1)[0] for k in root
                      if k.startswith("NL") and k.endswith("/.zarray") and k.count("/") >= 1
                      and k.rsplit("/", 2)[-2] not in ("x", "y", "spatial_ref", "edition"))

    # -- coordinates ---------------------------------------------------------------------------
    @cached_property
    def to_grid(self) -> Transformer:
        return Transformer.from_crs("EPSG:4326", self.grid.crs, always_xy=True)

    @cached_property
    def to_grid_from_mercator(self) -> Transformer:
        return Transformer.from_crs("EPSG:3857", self.grid.crs, always_xy=True)

    @cached_property
    def to_wgs84(self) -> Transformer:
        return Transformer.from_crs(self.grid.crs, "EPSG:4326", always_xy=True)

    def bounds_wgs84(self, bounds=None) -> tuple[float, float, float, float]:
        left, bottom, right, top = bounds or self.grid.bounds
        return self.to_wgs84.transform_bounds(left, bottom, right, top)

    def data_bounds_wgs84(self, group: str) -> list[float] | None:
        """Bounds of the stored chunks of B04 (from the chunk keys of the native group)."""
        keys = self.store.chunk_names(f"{group}/B04") if self.store.supports_listing else []
        cells = [tuple(int(v) for v in k.split(".")[1:]) for k in keys]
        if not cells:
            return None
        cy, cx = self.grid.chunk_shape
        left, _, _, top = self.grid.bounds
        r = self.grid.resolution
        rows = [c[0] for c in cells]
        cols = [c[1] for c in cells]
        b = (left + min(cols) * cx * r, top - (max(rows) + 1) * cy * r,
             left + (max(cols) + 1) * cx * r, top - min(rows) * cy * r)
        return list(self.bounds_wgs84(b))

    def cell(self, lon: float, lat: float) -> tuple[int, int]:
        check_lon_lat(lon, lat)
        x, y = self.to_grid.transform(lon, lat)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise RequestError(f"point {lon}, {lat} lies outside the grid {self.grid.name}")
        left, _, _, top = self.grid.bounds
        row = int((top - y) // self.grid.resolution)
        col = int((x - left) // self.grid.resolution)
        ny, nx = self.grid.shape
        if not (0 <= row < ny and 0 <= col < nx):
            raise RequestError(f"point {lon}, {lat} lies outside the grid {self.grid.name}")
        return row, col

    # -- tiles: which level --------------------------------------------------------------------
    def level_for_zoom(self, group: str, z: int, lat: float, use_overviews: bool = True) -> Level:
        """The coarsest level whose pixels are no larger than the tile's pixels on the ground."""
        ground = MERCATOR_RES0 / 2 ** z * math.cos(math.radians(lat))
        best = Level(1, group)
        if use_overviews:
            for lv in self.levels(group):
                if self.grid.resolution * lv.factor <= ground:
                    best = lv
        return best

    # -- series --------------------------------------------------------------------------------
    def values(self, group: str, var: str, rows: slice, cols: slice,
               times: slice | list[int] = slice(None)) -> np.ndarray:
        """Physical values (float, NaN for nodata) of a variable or NDVI over a window."""
        ds = self.dataset(group)
        if var.upper() == "NDVI":
            nir = self.values(group, "B08", rows, cols, times)
            red = self.values(group, "B04", rows, cols, times)
            with np.errstate(invalid="ignore", divide="ignore"):
                return (nir - red) / (nir + red)
        spec = check_variable(var)
        raw = ds[spec.name].isel(time=times, y=rows, x=cols).values
        out = raw.astype("f8")
        out[raw == spec.fill_value] = np.nan
        if spec.scale_factor:
            out *= spec.scale_factor
        return out

    def point_series(self, group: str, var: str, lon: float, lat: float, clear: bool) -> pd.DataFrame:
        row, col = self.cell(lon, lat)
        v = self.values(group, var, slice(row, row + 1), slice(col, col + 1))[:, 0, 0]
        scl = self.dataset(group)["SCL"].isel(y=row, x=col).values
        df = pd.DataFrame({"time": [t.isoformat().replace("+00:00", "Z") for t in self.times(group)],
                           "value": v, "scl": scl.astype(int)})
        if clear:
            df = df[df["scl"].isin(CLEAR_SCL)]
        return df

    def area_series(self, group: str, var: str, rows: slice, cols: slice, mask: np.ndarray,
                    clear: bool) -> pd.DataFrame:
        v = self.values(group, var, rows, cols)
        scl = self.dataset(group)["SCL"].isel(y=rows, x=cols).values
        ok = np.broadcast_to(mask, v.shape) & ~np.isnan(v)
        if clear:
            ok &= np.isin(scl, CLEAR_SCL)
        n = ok.sum(axis=(1, 2))
        with np.errstate(invalid="ignore"):
            mean = np.where(n > 0, np.where(ok, v, 0).sum(axis=(1, 2)) / np.maximum(n, 1), np.nan)
        df = pd.DataFrame({"time": [t.isoformat().replace("+00:00", "Z") for t in self.times(group)],
                           "value": mean, "count": n.astype(int), "pixels": int(mask.sum())})
        if clear:
            df = df[df["count"] > 0]
        return df

    def no_data_reason(self, group: str, rows: slice, cols: slice, mask: np.ndarray, what: str,
                       times: list[int] | None = None) -> str | None:
        """Why the answer for an area is empty: none of its pixels holds imagery at any of the
        time steps asked for (SCL is its fill value everywhere); None when some pixel does."""
        scl = self.dataset(group)["SCL"]
        if times is not None:
            scl = scl.isel(time=times)
        values = scl.isel(y=rows, x=cols).values
        if values.size and (values[:, mask] != VARIABLES["SCL"].fill_value).any():
            return None
        n = values.shape[0]
        bounds = self.data_bounds_wgs84(group)
        extent = (f"; the imagery lies within lon {bounds[0]:.3f}..{bounds[2]:.3f}, lat "
                  f"{bounds[1]:.3f}..{bounds[3]:.3f}") if bounds else ""
        return (f"{what} lies outside the imagery of /{group}: none of its pixels holds data at "
                f"any of the {n} time steps asked for{extent}")

    # -- areas: polygons and parcels ----------------------------------------------------------
    def window_of_bounds(self, bounds) -> tuple[slice, slice]:
        w = self.grid.window_for_bounds(bounds)
        if w is None:
            raise RequestError(f"area {bounds} lies outside the grid")
        rows = slice(int(w.row_off), int(w.row_off + w.height))
        cols = slice(int(w.col_off), int(w.col_off + w.width))
        if (rows.stop - rows.start) * (cols.stop - cols.start) > MAX_AREA_PIXELS:
            raise RequestError(f"area too large: more than {MAX_AREA_PIXELS} pixels")
        return rows, cols

    def polygon_area(self, geometry) -> tuple[slice, slice, np.ndarray]:
        """Window and mask of a GeoJSON geometry in lon/lat (WGS 84)."""
        import shapely
        from shapely.geometry import mapping, shape

        try:  # pyproj transforms the coordinate arrays (x, y) in one call
            geom = shapely.transform(shape(geometry), lambda xy: np.column_stack(
                self.to_grid.transform(xy[:, 0], xy[:, 1])))
        except Exception as exc:  # shapely raises many kinds for bad GeoJSON
            raise RequestError(f"bad polygon: {exc}") from None
        if not all(math.isfinite(v) for v in (geom.bounds or (math.nan,))):
            raise RequestError("the polygon has coordinates that are not finite lon/lat degrees "
                               "or lie outside the grid's projection")
        if geom.is_empty or not geom.area > 0:
            raise RequestError("the polygon is empty")
        rows, cols = self.window_of_bounds(geom.bounds)
        left, _, _, top = self.grid.bounds
        r = self.grid.resolution
        tr = Affine(r, 0, left + cols.start * r, 0, -r, top - rows.start * r)
        mask = geometry_mask([mapping(geom)], out_shape=(rows.stop - rows.start, cols.stop - cols.start),
                             transform=tr, invert=True, all_touched=False)
        return rows, cols, mask

    def parcel_area(self, parcel: int) -> tuple[slice, slice, np.ndarray]:
        """Window and mask of a BRP parcel (``/NL/BRP/parcel``, newest edition)."""
        index = self.parcel_index()
        if parcel not in index:
            raise NotFound(f"no parcel {parcel} in /NL/BRP/parcel")
        r0, r1, c0, c1 = index[parcel]
        if (r1 - r0) * (c1 - c0) > MAX_AREA_PIXELS:
            raise RequestError(f"parcel {parcel} is larger than {MAX_AREA_PIXELS} pixels")
        rows, cols = slice(r0, r1), slice(c0, c1)
        layer = self.dataset("NL/BRP")["parcel"].isel(edition=-1, y=rows, x=cols).values
        return rows, cols, layer == parcel

    def parcel_index(self) -> dict[int, tuple[int, int, int, int]]:
        """Pixel bounds (row0, row1, col0, col1) of every parcel, built once per version from
        the layer's stored chunks (DESIGN CHOICE: one scan per published version instead of a
        scan per request; a national BRP takes a while once, then lookups are instant)."""
        with self._lock:
            if self._parcels is not None:
                return self._parcels
        if "NL/BRP/parcel" not in self.layers():
            raise NotFound(f"{self.location} has no parcel layer /NL/BRP/parcel")
        da = self.dataset("NL/BRP")["parcel"].isel(edition=-1)
        keys = self.store.chunk_names("NL/BRP/parcel")
        n_ed = self.dataset("NL/BRP").sizes["edition"]
        cy, cx = da.encoding.get("preferred_chunks", {}).get("y", 625), da.encoding.get("preferred_chunks", {}).get("x", 500)
        index: dict[int, list[int]] = {}
        for k in keys:
            e, iy, ix = (int(v) for v in k.split("."))
            if e != n_ed - 1:
                continue
            block = da.isel(y=slice(iy * cy, (iy + 1) * cy), x=slice(ix * cx, (ix + 1) * cx)).values
            rr, cc = np.nonzero(block > 0)
            if not len(rr):
                continue
            df = pd.DataFrame({"id": block[rr, cc], "r": rr + iy * cy, "c": cc + ix * cx})
            g = df.groupby("id").agg(r0=("r", "min"), r1=("r", "max"), c0=("c", "min"), c1=("c", "max"))
            for pid, (a, b, c, d) in zip(g.index, g.to_numpy()):
                new = [int(a), int(b) + 1, int(c), int(d) + 1]
                old = index.get(int(pid))
                index[int(pid)] = new if old is None else [min(old[0], new[0]), max(old[1], new[1]),
                                                           min(old[2], new[2]), max(old[3], new[3])]
        result = {k: tuple(v) for k, v in index.items()}
        with self._lock:
            self._parcels = result
        return result


class ChunkCache:
    """Decoded chunks, least recently used dropped first beyond ``limit`` bytes (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.nbytes = limit, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray) -> None:
        value.setflags(write=False)
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.nbytes += _held(value)
            while self.nbytes > self.limit and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.nbytes -= _held(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def _held(value: np.ndarray) -> int:
    """Bytes a cached array holds (a chunk never written is one fill value, broadcast)."""
    return value.itemsize if value.strides == (0,) * value.ndim else value.nbytes


def check_variable(var: str):
    spec = VARIABLES.get(var)
    if spec is None:
        raise RequestError(f"unknown variable {var!r}; known: {', '.join(VARIABLES)}, NDVI")
    return spec


__all__ = ["CubeReader", "RequestError", "NotFound", "COMPOSITES", "CLEAR_SCL", "level_factors"]
