"""Warp one product's rasters onto a window of the cube grid.

Here: which rasters a window needs, decoding them once (``StripReader``), the pinned
coordinate operation (``grid.pinned_operation``) put to use, the nodata rules and the
harmonisation of reflectance across processing baselines. The resampling itself: nearest
and bilinear (the defaults) through ``remap`` (exact lattice geometry + OpenCV), every other
method through GDAL's warper.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.windows import Window

from ingest.warping import remap
from ingest.errors import ConfigError, CorruptProductError
from ingest.grid import CubeGrid, pinned_operation
from ingest.products.eopf import open_raster
from ingest.products.model import Product
from ingest.products.names import EOPF
from ingest.variables import VARIABLES, VariableSpec, get_variable

log = logging.getLogger(__name__)

# GDAL settings for the warp. Decoded JP2 tiles are kept by our StripReader, not by GDAL's
# block cache (its JP2 driver bypasses the cache for multi-tile reads), so the cache is small.
GDAL_ENV = {
    "GDAL_CACHEMAX": 64,  # MB
    "GDAL_NUM_THREADS": "ALL_CPUS",  # OpenJPEG multi-threaded decoding
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".jp2,.tif,.zip",
}


def parse_resampling(overrides: dict[str, str] | None) -> dict[str, Resampling]:
    """Per-variable resampling: each variable's default, with ``{"B04": "cubic"}`` overrides."""
    result = {name: Resampling[spec.default_resampling] for name, spec in VARIABLES.items()}
    for name, method in (overrides or {}).items():
        names = list(VARIABLES) if name in ("*", "all") else [get_variable(name).name]
        try:
            value = Resampling[method]
        except KeyError:
            raise ConfigError(
                f"unknown resampling {method!r} for {name}; use one of "
                + ", ".join(r.name for r in Resampling if r.value <= 14)
            ) from None
        for n in names:
            result[n] = value
    return result


@dataclass(frozen=True)
class WarpTarget:
    """A window of the cube grid that rasters are warped into."""

    grid: CubeGrid
    window: Window

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.window.height), int(self.window.width))


def gdal_reason(exc: BaseException) -> str:
    """GDAL's own message for a failed read: rasterio's "Read failed. See previous exception
    for details." chains the driver error (e.g. "opj_get_decoded_tile() failed") as its cause."""
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)


def harmonise(data: np.ndarray, offset: int) -> np.ndarray:
    """Apply BOA_ADD_OFFSET (PB >= 04.00) in place so every baseline encodes rho = value / 10000.

    DESIGN CHOICE: applied to the decoded source, before resampling, so that a PB >= 04.00
    product and its PB < 04.00 twin are warped from identical numbers (identical cubes, bit
    for bit, whatever the resampling's rounding). A valid pixel that would drop below 1 is
    clamped to 1 so it never turns into the fill value 0; 0 stays 0 (nodata).
    """
    if offset == 0:
        return data
    valid = data != 0
    if offset < 0:
        np.maximum(data, data.dtype.type(1 - offset), out=data, where=valid)
        np.subtract(data, data.dtype.type(-offset), out=data, where=valid)
    else:
        np.minimum(data, data.dtype.type(np.iinfo(data.dtype).max - offset), out=data, where=valid)
        np.add(data, data.dtype.type(offset), out=data, where=valid)
    return data


class StripReader:
    """Decodes a raster once, in full-width strips of JP2 tile rows, kept while needed.

    ``ds`` is a rasterio dataset (SAFE: a JP2) or an ``eopf.ZarrRaster`` (EOPF: the array's
    Zarr chunks), which offers the same few attributes and ``read``.

    DESIGN CHOICE: GDAL's JP2 driver decodes a multi-tile request directly and does not keep
    the tiles in its block cache, so warping window after window through GDAL decodes every
    JP2 tile several times (decode is the floor of the whole ingest, DESIGN.md §8). We decode
    each tile row exactly once, walking output windows north to south, and warp from memory.
    """

    def __init__(self, product: Product, relpath: str, ds: rasterio.DatasetReader,
                 offset: int = 0) -> None:
        self.product, self.relpath, self.ds, self.offset = product, relpath, ds, offset
        self.strip = int(ds.block_shapes[0][0]) if ds.block_shapes else 1024
        self.strip = max(256, min(self.strip, 2048))
        self._strips: dict[int, np.ndarray] = {}

    def _decode(self, index: int) -> np.ndarray:
        if index not in self._strips:
            r0 = index * self.strip
            h = min(self.strip, self.ds.height - r0)
            try:
                data = self.ds.read(1, window=Window(0, r0, self.ds.width, h))
            except RasterioError as exc:
                raise CorruptProductError(
                    self.product.name, f"cannot decode {self.relpath}: {gdal_reason(exc)}") from exc
            self._strips[index] = harmonise(data, self.offset)
        return self._strips[index]

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of the raster; strips above r0 are released (we only walk south)."""
        r0, r1 = max(0, r0), min(self.ds.height, r1)
        first, last = r0 // self.strip, (r1 - 1) // self.strip
        for i in [i for i in self._strips if i < first]:
            del self._strips[i]
        parts = [self._decode(i) for i in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        offset = r0 - first * self.strip
        return block[offset:offset + (r1 - r0)]

    def release(self) -> None:
        self._strips.clear()


class OpenRasters:
    """The open rasters (and their decoded strips) of one write, closed together."""

    def __init__(self) -> None:
        self._open: dict[str, StripReader] = {}
        self._lock = threading.Lock()

    def get(self, product: Product, relpath: str, offset: int = 0) -> StripReader:
        """The reader of one raster; ``offset``: the BOA_ADD_OFFSET its strips get."""
        path = product.gdal_path(relpath)
        with self._lock:
            reader = self._open.get(path)
            if reader is None:
                try:
                    # EOPF: the array's Zarr chunks, behind the same dataset interface (no JP2)
                    ds = open_raster(product, relpath) if product.format == EOPF else rasterio.open(path)
                except RasterioError as exc:
                    raise CorruptProductError(product.name, f"cannot open {relpath}: {gdal_reason(exc)}") from exc
                reader = self._open[path] = StripReader(product, relpath, ds, offset)
            return reader

    def release(self, product_name: str) -> None:
        """Free the decoded strips of a product that no later window needs."""
        with self._lock:
            for reader in self._open.values():
                if reader.product.name == product_name:
                    reader.release()

    def close(self) -> None:
        with self._lock:
            for reader in self._open.values():
                reader.release()
                reader.ds.close()
            self._open.clear()

    def __enter__(self) -> "OpenRasters":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def variable_reader(rasters: OpenRasters, product: Product, name: str, resolution: int) -> StripReader:
    """The reader of a variable's raster; reflectance strips come harmonised (``harmonise``)."""
    spec = VARIABLES[name]
    offset = int(product.boa_add_offset.get(name, 0)) if spec.is_reflectance else 0
    return rasters.get(product, product.file_for(name, resolution), offset)


# Source pixels a resampling kernel reaches beyond the mapped footprint.
_KERNEL_MARGIN = {Resampling.nearest: 1, Resampling.bilinear: 2, Resampling.cubic: 3,
                  Resampling.cubic_spline: 3, Resampling.lanczos: 4}


def _ring(bounds: tuple[float, float, float, float], n: int) -> tuple[list[float], list[float]]:
    """The outline of a box with ``n`` segments per edge (edges bend when reprojected)."""
    left, bottom, right, top = bounds
    xs = [left + (right - left) * i / n for i in range(n + 1)]
    ys = [bottom + (top - bottom) * i / n for i in range(n + 1)]
    return xs + [right] * (n + 1) + xs + [left] * (n + 1), [top] * (n + 1) + ys + [bottom] * (n + 1) + ys


def source_window(reader: StripReader, target: WarpTarget,
                  resampling: Resampling) -> tuple[int, int, int, int] | None:
    """The raster rows and columns (r0, r1, c0, c1) the target window needs (None: none)."""
    ring_x, ring_y = _ring(target.grid.window_bounds(target.window), 8)
    t = _inverse_transformer(str(reader.ds.crs), target.grid.crs)
    sx, sy = t.transform(ring_x, ring_y)
    a, b, c, d, e, f = (~reader.ds.transform)[:6]
    sx, sy = np.asarray(sx), np.asarray(sy)
    cols, rows = a * sx + b * sy + c, d * sx + e * sy + f
    margin = _KERNEL_MARGIN.get(resampling, 4) + 1
    r0, r1 = int(np.floor(rows.min())) - margin, int(np.ceil(rows.max())) + margin
    c0, c1 = int(np.floor(cols.min())) - margin, int(np.ceil(cols.max())) + margin
    if r1 <= 0 or r0 >= reader.ds.height or c1 <= 0 or c0 >= reader.ds.width:
        return None
    return max(0, r0), min(reader.ds.height, r1), max(0, c0), min(reader.ds.width, c1)


def source_rows(reader: StripReader, target: WarpTarget, resampling: Resampling) -> tuple[int, int] | None:
    """The raster rows the target window needs (None: no overlap)."""
    win = source_window(reader, target, resampling)
    return None if win is None else (win[0], win[1])


@functools.lru_cache(maxsize=32)
def _inverse_transformer(src_crs: str, dst_crs: str):
    """Grid CRS -> product CRS with the same pinned operation, reversed."""
    from pyproj import Transformer

    return Transformer.from_pipeline(pinned_operation(dst_crs, src_crs))


def footprint_window(product: Product, reader: StripReader, target: WarpTarget) -> Window | None:
    """The part of ``target`` the product's rasters can reach (None: none of it)."""
    ring_x, ring_y = _ring(tuple(reader.ds.bounds), 16)
    t = _forward_transformer(str(reader.ds.crs), target.grid.crs)
    gx, gy = t.transform(ring_x, ring_y)
    pad = 2 * target.grid.resolution
    win = target.grid.window_for_bounds((min(gx) - pad, min(gy) - pad, max(gx) + pad, max(gy) + pad))
    if win is None:
        return None
    tw = target.window
    cx = target.grid.chunk_shape[1]
    r0 = max(win.row_off, tw.row_off)
    # columns snap outward to chunk edges (see _column_windows); rows may be clipped
    c0 = max((win.col_off // cx) * cx, tw.col_off)
    c1 = min(-(-(win.col_off + win.width) // cx) * cx, tw.col_off + tw.width)
    r1 = min(win.row_off + win.height, tw.row_off + tw.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


@functools.lru_cache(maxsize=32)
def _forward_transformer(src_crs: str, dst_crs: str):
    from pyproj import Transformer

    return Transformer.from_pipeline(pinned_operation(src_crs, dst_crs))


@dataclass(frozen=True)
class _Group:
    """Variables warped together: same source resolution, resampling, nodata rule and dtype."""

    resolution: int
    resampling: Resampling
    nodata: int | None
    dtype: str
    variables: tuple[str, ...]


MAX_GROUP = 4


def warp_groups(resampling: dict[str, Resampling], names: Collection[str] | None = None) -> list[_Group]:
    """Group the variables (all, or ``names``) so that one GDAL warp call serves several bands.

    DESIGN CHOICE: the warp geometry (coordinate transformation, source window) is computed
    once per call, so stacking the bands of one resolution into one call costs about half of
    warping them one by one (DESIGN.md §8).
    """
    groups: dict[tuple, list[str]] = {}
    for name, spec in VARIABLES.items():
        if names is not None and name not in names:
            continue
        nodata = None if spec.kind == "probability" else 0
        key = (spec.resolution, resampling[name], nodata, spec.dtype)
        groups.setdefault(key, []).append(name)
    # at most MAX_GROUP bands a call, so the thread pool gets pieces of similar size
    out = []
    for k, names in groups.items():
        for i in range(0, len(names), MAX_GROUP):
            out.append(_Group(k[0], k[1], k[2], k[3], tuple(names[i:i + MAX_GROUP])))
    return sorted(out, key=lambda g: -len(g.variables) / g.resolution ** 2)


def _column_windows(grid: CubeGrid, sub: Window) -> list[Window]:
    """Split ``sub`` at chunk-column edges.

    DESIGN CHOICE: GDAL's approximate transformer (rasterio fixes its tolerance at 0.125 px)
    interpolates coordinates along each destination row between points that depend on the
    row's first and last column. Warping every chunk column on its own makes each output
    pixel depend only on its chunk, never on how the work was cut or which other products
    share the window, so the cube does not depend on arrival order. Row splits are harmless.
    """
    cx = grid.chunk_shape[1]
    c0, c1 = int(sub.col_off), int(sub.col_off + sub.width)
    edges = sorted({c0, c1, *range((c0 // cx + 1) * cx, c1, cx)})
    return [Window(a, sub.row_off, b - a, sub.height) for a, b in zip(edges, edges[1:])]


def _warp_group(product: Product, group: _Group, target: WarpTarget, sub: Window,
                rasters: OpenRasters) -> dict[str, np.ndarray]:
    readers = [variable_reader(rasters, product, v, group.resolution) for v in group.variables]
    out = np.empty((len(readers), int(sub.height), int(sub.width)), dtype=group.dtype)
    for i, v in enumerate(group.variables):
        out[i].fill(VARIABLES[v].fill_value if group.nodata is not None else 0)
    rows = source_rows(readers[0], WarpTarget(target.grid, sub), group.resampling)
    if rows is None:
        return {v: out[i] for i, v in enumerate(group.variables)}
    src = np.stack([r.rows(*rows) for r in readers])
    operation = pinned_operation(str(readers[0].ds.crs), target.grid.crs)
    for win in _column_windows(target.grid, sub):
        # DESIGN CHOICE: hand GDAL only the source pixels this window needs; the cost of a
        # warp call grows with the size of the source array it is given.
        need = source_window(readers[0], WarpTarget(target.grid, win), group.resampling)
        if need is None:
            continue
        r0, r1 = max(need[0], rows[0]), min(need[1], rows[1])
        if r1 <= r0:
            continue
        piece = np.ascontiguousarray(src[:, r0 - rows[0]:r1 - rows[0], need[2]:need[3]])
        part = np.empty((len(readers), int(win.height), int(win.width)), dtype=group.dtype)
        c = int(win.col_off - sub.col_off)
        part[:] = out[:, :, c:c + int(win.width)]
        try:
            reproject(
                source=piece, destination=part,
                src_transform=readers[0].ds.transform @ Affine.translation(need[2], r0),
                src_crs=readers[0].ds.crs, dst_transform=target.grid.window_transform(win),
                dst_crs=target.grid.crs, src_nodata=group.nodata, dst_nodata=group.nodata,
                resampling=group.resampling, num_threads=1, warp_mem_limit=256,
                init_dest_nodata=True, COORDINATE_OPERATION=operation,
            )
        except RasterioError as exc:
            raise CorruptProductError(
                product.name, f"cannot warp {', '.join(group.variables)}: {gdal_reason(exc)}") from exc
        out[:, :, c:c + int(win.width)] = part
    return {v: out[i] for i, v in enumerate(group.variables)}


def warp_product(
    product: Product, target: WarpTarget, resampling: dict[str, Resampling],
    rasters: OpenRasters, pool=None,
) -> dict[str, np.ndarray] | None:
    """Every variable of one product on ``target``, encoded as the store expects.

    Returns None when the product has no pixel in the window. Reflectance is harmonised
    (BOA_ADD_OFFSET); CLD and SNW, which have no nodata value of their own (0 means
    "clear"), take their footprint from the product's SCL.
    """
    part = warp_product_part(product, target, resampling, rasters, pool)
    if part is None:
        return None
    inner, warped = part
    result: dict[str, np.ndarray] = {}
    for name, spec in VARIABLES.items():
        full = np.full(target.shape, spec.fill_value, dtype=spec.dtype)
        full[inner] = warped[name]
        result[name] = full
    return result


def warp_product_part(
    product: Product, target: WarpTarget, resampling: dict[str, Resampling],
    rasters: OpenRasters, pool=None,
) -> tuple[tuple[slice, slice], dict[str, np.ndarray]] | None:
    """Like ``warp_product``, but only over the part of ``target`` the product can reach:
    returns that part (slices of the target window) and the arrays on it (no full-window
    copies: the mosaic merges them in place)."""
    some = rasters.get(product, product.file_for("SCL", VARIABLES["SCL"].resolution))
    sub = footprint_window(product, some, target)
    if sub is None:
        return None
    mapper = pool.map if pool is not None else map
    fast = [n for n in VARIABLES if resampling[n] in remap.FAST_METHODS]
    groups = warp_groups(resampling, [n for n in VARIABLES if n not in fast])
    warped: dict[str, np.ndarray] = {}

    def work(group: _Group) -> dict[str, np.ndarray]:
        # rasterio's Env (GDAL config options) is thread-local: enter it in every worker
        with rasterio.Env(**GDAL_ENV):
            return _warp_group(product, group, target, sub, rasters)

    if fast:
        warped.update(_remap_variables(product, fast, resampling, target.grid, sub, rasters, mapper))
    for part in mapper(work, groups):
        warped.update(part)
    for name, spec in VARIABLES.items():
        if spec.kind == "probability":
            warped[name][warped["SCL"] == 0] = spec.fill_value
    r0, c0 = int(sub.row_off - target.window.row_off), int(sub.col_off - target.window.col_off)
    return (slice(r0, r0 + int(sub.height)), slice(c0, c0 + int(sub.width))), warped


def _remap_variables(product: Product, names: list[str], resampling: dict[str, Resampling],
                     grid: CubeGrid, sub: Window, rasters: OpenRasters, mapper) -> dict[str, np.ndarray]:
    """The variables whose method has a fast path (``remap``), all on window ``sub``.

    The geometry (lattice and pixel maps) is computed once per source resolution; decoding
    and sampling run per variable, the biggest rasters first.
    """
    readers = {n: variable_reader(rasters, product, n, VARIABLES[n].resolution) for n in names}
    crs = str(next(iter(readers.values())).ds.crs)
    sx, sy = remap.lattice_coordinates(grid, sub, _inverse_transformer(crs, grid.crs))
    maps: dict[tuple, remap.PixelMaps] = {}
    first: remap.PixelMaps | None = None
    for r in sorted(readers.values(), key=lambda r: r.ds.transform.a):  # finest first
        key = (tuple(r.ds.transform), r.ds.height, r.ds.width)
        if key not in maps:
            maps[key] = remap.pixel_maps(sx, sy, sub, r.ds.transform, (r.ds.height, r.ds.width),
                                         like=first)
            if first is None and maps[key].rows is not None:
                first = maps[key]

    def one(name: str) -> tuple[str, np.ndarray]:
        spec, reader = VARIABLES[name], readers[name]
        m = maps[(tuple(reader.ds.transform), reader.ds.height, reader.ds.width)]
        nodata = None if spec.kind == "probability" else 0
        fill = spec.fill_value if nodata is not None else 0
        if m.rows is None:
            return name, np.full((int(sub.height), int(sub.width)), fill, dtype=spec.dtype)
        with rasterio.Env(**GDAL_ENV):
            strip = reader.rows(*m.rows)
        try:
            return name, remap.remap(strip, m.rows[0], m, resampling[name], nodata, fill)
        except cv2.error as exc:
            raise CorruptProductError(product.name, f"cannot warp {name}: {exc}") from exc

    order = sorted(names, key=lambda n: VARIABLES[n].resolution)
    return dict(mapper(one, order))


def warp_variable(
    product: Product, spec: VariableSpec, target: WarpTarget,
    resampling: Resampling | None = None, *, rasters: OpenRasters | None = None,
) -> np.ndarray:
    """One variable of one product on the target window (convenience for tests and tools)."""
    method = {n: Resampling[VARIABLES[n].default_resampling] for n in VARIABLES}
    if resampling is not None:
        method[spec.name] = resampling
    own = rasters is None
    rasters = rasters or OpenRasters()
    try:
        result = warp_product(product, target, method, rasters)
    finally:
        if own:
            rasters.close()
    if result is None:
        return np.full(target.shape, spec.fill_value, dtype=spec.dtype)
    return result[spec.name]
