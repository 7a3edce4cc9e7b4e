"""Multiscale overviews of an imagery group, inside the cube (GeoZarr / zarr-conventions
multiscales), built and updated through the store's ``Transaction``.

Layout (DESIGN.md "Overviews"): ``/S2/R051/overviews`` is the multiscale group; its levels are
the child groups ``2``, ``4``, ``8``, … (the factor against the native 10 m grid) down to the
first level whose larger side is at most ``SMALLEST`` pixels. Each level is a self-contained
dataset that xarray opens on its own: the same variables with dims (time, y, x), the same
time coordinate as the native group, ``x``/``y`` at the level's pixel centres and a
``spatial_ref`` grid mapping with the level's ``GeoTransform``.

DESIGN CHOICE: level chunks are ``(1, 2 * cy, 2 * cx)`` (one time step, twice the native chunk
on each side: 1250 x 1000 on the NL grid) at every level. One step per chunk: a publish
recomputes and re-encodes the level chunks of exactly the time steps it changes (an append
into a half-full time chunk does not redo the other steps), and a tile reads one step, not
five. Twice the native side: the levels hold fewer keys than a fifth of the native group
(a level chunk of level 2 covers 4 x 4 native chunks, of every higher level 2 x 2 chunks of
the level above), so per-step chunks do not multiply the keys a version lists.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterable

import numpy as np
from tqdm.auto import tqdm

from ingest.errors import StoreError
from ingest.grid import CubeGrid
from ingest.store import Transaction, join
from ingest.store.imagery import write_1d
from ingest.store.layout import COMPRESSOR, COORD_CHUNK, cf_grid_mapping, variable_attrs
from ingest.store.zarrdocs import ArrayMeta, read_array
from ingest.variables import VARIABLES
from ingest.overviews.aggregate import halve, reduction

if TYPE_CHECKING:
    from ingest.overviews.stream import OverviewStream

log = logging.getLogger(__name__)

OVERVIEWS = "overviews"
SMALLEST = 512  # the last level's larger side is at most this many pixels
MULTISCALES_UUID = "d35379db-88df-4056-af3a-620245f8e347"
GEO_PROJ_UUID = "f17cb550-5864-4468-aeb7-f3180cfb622f"

ChunkId = tuple[int, int, int]  # native: (time chunk, row, column); levels: (step, row, column)


def level_factors(shape: tuple[int, int]) -> list[int]:
    """2, 4, 8, … until the level's larger side is at most ``SMALLEST`` pixels."""
    factors, f = [], 2
    while True:
        factors.append(f)
        if max(math.ceil(n / f) for n in shape) <= SMALLEST:
            return factors
        f *= 2


def level_shape(shape: tuple[int, int], f: int) -> tuple[int, int]:
    return (math.ceil(shape[0] / f), math.ceil(shape[1] / f))


def level_transform(grid: CubeGrid, f: int) -> list[float]:
    """GDAL geotransform of level ``f`` (same upper-left corner, pixels ``f`` times larger)."""
    left, _, _, top = grid.bounds
    r = grid.resolution * f
    return [left, r, 0.0, top, 0.0, -r]


def level_chunks(grid: CubeGrid) -> tuple[int, int, int]:
    """The chunks of every level array: one time step, twice the native chunk on each side."""
    cy, cx = grid.chunk_shape
    return (1, 2 * cy, 2 * cx)


def overviews_path(group: str) -> str:
    return join(group, OVERVIEWS)


def level_path(group: str, f: int) -> str:
    return join(group, OVERVIEWS, str(f))


def has_overviews(tx_or_store, group: str) -> bool:
    """Whether ``group`` has overviews (a ``Transaction``: as it would publish them)."""
    return tx_or_store.is_group(overviews_path(group))


def multiscales_attrs(grid: CubeGrid) -> dict:
    """The multiscale group's attributes: zarr-conventions ``multiscales`` (v0.1.0) composed
    with ``geo-proj`` (``proj:*``) as the convention's README shows for geospatial data."""
    layout = []
    prev = None
    for f in level_factors(grid.shape):
        entry = {"asset": str(f),
                 "transform": {"scale": [2.0, 2.0] if prev else [float(f), float(f)],
                               "translation": [0.0, 0.0]},
                 "resampling_method": "average",
                 "proj:transform": _affine6(grid, f),
                 "proj:shape": list(level_shape(grid.shape, f)),
                 "s2ingest:factor": f}
        if prev is not None:
            entry["derived_from"] = str(prev)
        else:
            # Relative paths cannot point at the parent group: the first level says in words
            # (and with its absolute scale) that it derives from the native group "..".
            entry["s2ingest:derived_from_native"] = True
        layout.append(entry)
        prev = f
    left, bottom, right, top = grid.bounds
    return {
        "zarr_conventions_version": "0.1.0",
        "zarr_conventions": [
            {"uuid": MULTISCALES_UUID, "name": "multiscales",
             "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1.0/schema.json",
             "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1.0/README.md",
             "description": "Multiscale layout of zarr datasets"},
            {"uuid": GEO_PROJ_UUID, "name": "geo-proj",
             "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v0.1.0/schema.json",
             "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v0.1.0/README.md",
             "description": "Coordinate reference system information for geospatial data"},
        ],
        "multiscales": {"layout": layout, "resampling_method": "average",
                        "s2ingest:resampling": {v: reduction(s) for v, s in VARIABLES.items()}},
        "proj:code": grid.crs,
        "proj:spatial_dimensions": ["y", "x"],
        "proj:transform": _affine6(grid, 1),
        "proj:bbox": [left, bottom, right, top],
        "title": "overviews (multiscale levels) of the parent group",
    }


def _affine6(grid: CubeGrid, f: int) -> list[float]:
    left, _, _, top = grid.bounds
    r = grid.resolution * f
    return [r, 0.0, left, 0.0, -r, top]


# -- creating the levels ------------------------------------------------------------------------
def create_levels(tx: Transaction, grid: CubeGrid, group: str) -> None:
    """Stage the multiscale group and its (empty) levels, replacing any there."""
    length = tx.array(join(group, "B04")).shape[0]
    times = _native_times(tx, group)
    if not tx.is_group(overviews_path(group)):
        tx.create_group(overviews_path(group), multiscales_attrs(grid))
    else:
        tx.put_json(join(overviews_path(group), ".zattrs"), multiscales_attrs(grid))
    time_attrs = tx.attrs(join(group, "time"))
    for f in level_factors(grid.shape):
        path = level_path(group, f)
        ny, nx = level_shape(grid.shape, f)
        r = grid.resolution * f
        left, _, _, top = grid.bounds
        if not tx.is_group(path):
            tx.create_group(path, {"title": f"overview level {f} ({r:g} m)",
                                   "s2ingest_overview_factor": f})
        mapping = cf_grid_mapping(grid)
        mapping["GeoTransform"] = " ".join(str(v) for v in level_transform(grid, f))
        tx.create_array(join(path, "x"), shape=(nx,), chunks=(nx,), dtype="f8", fill_value=None,
                        compressor=COMPRESSOR, data=left + (np.arange(nx) + 0.5) * r,
                        attrs={**tx.attrs(join(group, "x"))})
        tx.create_array(join(path, "y"), shape=(ny,), chunks=(ny,), dtype="f8", fill_value=None,
                        compressor=COMPRESSOR, data=top - (np.arange(ny) + 0.5) * r,
                        attrs={**tx.attrs(join(group, "y"))})
        tx.create_array(join(path, "spatial_ref"), shape=(), chunks=(), dtype="i4",
                        fill_value=None, compressor=COMPRESSOR, data=np.array(0, dtype="i4"),
                        attrs={"_ARRAY_DIMENSIONS": [], **mapping})
        tx.create_array(join(path, "time"), shape=(length,), chunks=(COORD_CHUNK,), dtype="i8",
                        fill_value=-1, compressor=COMPRESSOR, attrs=time_attrs,
                        data=times if length else None)
        for spec in VARIABLES.values():
            attrs = variable_attrs(spec, grid)
            attrs["coordinates"] = "spatial_ref"
            attrs["s2ingest_resampling"] = reduction(spec)
            tx.create_array(join(path, spec.name), shape=(length, ny, nx), chunks=level_chunks(grid),
                            dtype=spec.dtype, fill_value=spec.fill_value, compressor=COMPRESSOR,
                            attrs=attrs)


def _native_times(tx: Transaction, group: str) -> np.ndarray:
    meta = tx.array(join(group, "time"))
    return read_array(meta, lambda c: tx.get(join(group, "time", c))).astype("i8")


# -- computing level chunks ------------------------------------------------------------------
def build_overviews(tx: Transaction, grid: CubeGrid, group: str, *, progress: bool = False,
                    threads: int = 2) -> int:
    """Create (or recreate) every level of ``group`` and compute it from all stored chunks.
    Returns the number of level chunks staged."""
    create_levels(tx, grid, group)
    touched: set[ChunkId] = set()
    for var in VARIABLES:
        for name in tx.chunk_keys(join(group, var)):
            touched.add(_parse(name))
    return _propagate(tx, grid, group, touched, progress=progress, threads=threads)


def add_overviews(tx: Transaction, grid: CubeGrid, group: str, *, progress: bool = False,
                  threads: int = 2) -> int:
    """``build_overviews`` as a change of ``group``: its version attribute names this commit
    (what ``s2ingest overviews`` and the demo commit). Returns the level chunks staged."""
    from ingest.store.layout import GROUP_VERSION_ATTR

    n = build_overviews(tx, grid, group, progress=progress, threads=threads)
    tx.update_attrs(group, {GROUP_VERSION_ATTR: tx.base_version + 1})
    return n


def update_overviews(tx: Transaction, grid: CubeGrid, group: str, *, threads: int = 2,
                     steps: Iterable[int] | None = None,
                     stream: "OverviewStream | None" = None) -> int:
    """THE publish hook: recompute the level chunks over every native chunk this transaction
    staged or deleted, at the time steps it changes, and follow the time axis (length, time
    coordinate). A group without overviews is left alone (``s2ingest overviews`` creates them
    once). Returns the chunks staged.

    DESIGN CHOICE: a level chunk is recomputed whole from what the transaction would publish,
    not patched: appends, insertions that shift published steps and supersedes all come down
    to "these native chunks changed at these steps" (``steps``: ``WritePlan.changed_steps``;
    None: every step of the touched time chunks), so one rule keeps the levels equal to a
    coarsening of the native data.

    ``stream``: the ``OverviewStream`` (``ingest.overviews.stream``) that computed level chunks
    from the writer's arrays while it was still warping; only what it did not see (chunks
    staged outside the writer's merges) and what lies above that is computed here.
    """
    group = group.strip("/")
    if not has_overviews(tx, group):
        return 0
    prefix = group + "/"
    touched: set[ChunkId] = set()
    for key in tx.staged_keys(prefix):
        rest = key[len(prefix):].split("/")
        if len(rest) == 2 and rest[0] in VARIABLES and not rest[1].startswith("."):
            touched.add(_parse(rest[1]))
    length = tx.array(join(group, "B04")).shape[0]
    times = _native_times(tx, group)
    for f in level_factors(grid.shape):
        path = level_path(group, f)
        if not tx.is_array(join(path, "B04")) or tx.array(join(path, "B04")).chunks != level_chunks(grid):
            # a level added since (another SMALLEST) or levels of an earlier layout: rebuild
            log.warning("overview levels of %s are rebuilt in this commit (new level layout)", group)
            return build_overviews(tx, grid, group, threads=threads)
        for var in VARIABLES:
            meta = tx.array(join(path, var))
            if meta.shape[0] != length:
                tx.resize(join(path, var), (length, *meta.shape[1:]))
        if tx.array(join(path, "time")).shape[0] != length or touched:
            write_1d(tx, join(path, "time"), times)
    if stream is not None:
        stream.finish()
    if not touched:
        return 0
    return _propagate(tx, grid, group, touched, progress=False, threads=threads, stream=stream,
                      steps=None if steps is None else set(steps))


def _parse(name: str) -> ChunkId:
    k, iy, ix = (int(v) for v in name.split("."))
    return k, iy, ix


def _parents(chunks: Iterable[ChunkId]) -> set[ChunkId]:
    """Level chunks (step, row, column) one level up of level chunks."""
    return {(t, jy // 2, jx // 2) for t, jy, jx in chunks}


def _propagate(tx: Transaction, grid: CubeGrid, group: str, touched: Iterable[ChunkId], *,
               progress: bool, threads: int, stream: "OverviewStream | None" = None,
               steps: set[int] | None = None) -> int:
    """Recompute, level by level, the level chunks above ``touched`` native chunks (time
    chunk, row, column) at ``steps`` (None: all); those a ``stream`` computed are kept."""
    length = tx.array(join(group, "B04")).shape[0]
    tc, ratio = grid.time_chunk, level_chunks(grid)[1] * 2 // grid.chunk_shape[0]

    def native_parents(chunks: Iterable[ChunkId]) -> set[ChunkId]:
        return {(t, iy // ratio, ix // ratio) for k, iy, ix in chunks
                for t in range(k * tc, min((k + 1) * tc, length)) if steps is None or t in steps}

    cur = set(touched)
    targets = native_parents(cur)
    # what changed below and the stream did not see: its parents are (re)done here
    redo = native_parents(cur - stream.seen_native) if stream is not None else set()
    n = 0
    src_path, src_shape = group, grid.shape
    levels = level_factors(grid.shape)
    bar = tqdm(total=len(levels), desc=f"overviews {group}", unit="level", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="overviews") as pool:
        for i, f in enumerate(levels):
            if i:
                targets, redo = _parents(targets), _parents(redo)
            done = stream.done(f) if stream is not None else set()
            redo = (targets - done) | redo
            dst_path, todo = level_path(group, f), sorted(redo)
            if threads <= 1:
                n += sum(_level_var(tx, grid, src_path, src_shape, dst_path, var, todo, length)
                         for var in VARIABLES)
            else:
                jobs = [pool.submit(_level_var, tx, grid, src_path, src_shape, dst_path, var, todo,
                                    length) for var in VARIABLES]
                n += sum(j.result() for j in jobs)
            log.info("overview level %d: %d chunks recomputed", f, len(todo))
            src_path, src_shape = dst_path, level_shape(grid.shape, f)
            bar.update(1)
    bar.close()
    return n + (stream.staged if stream is not None else 0)


def _level_var(tx: Transaction, grid: CubeGrid, src_path: str, src_shape: tuple[int, int],
               dst_path: str, var: str, chunks: list[ChunkId], length: int) -> int:
    """Compute and stage the level chunks ``chunks`` (step, row, column) of ``var`` from the
    level above (``src_path``, the native group for level 2); ``length``: the number of time
    steps the commit publishes. Each source chunk is decoded once for all its steps."""
    spec = VARIABLES[var]
    how, fill = reduction(spec), spec.fill_value
    src = tx.array(join(src_path, var))
    dst = tx.array(join(dst_path, var))
    stc, sy, sx = src.chunks
    _, dy, dx = dst.chunks
    ry, rx = 2 * dy // sy, 2 * dx // sx  # source chunks per level chunk, each way
    groups: dict[tuple[int, int, int], list[int]] = {}
    for t, jy, jx in chunks:
        if t < length:
            groups.setdefault((t // stc, jy, jx), []).append(t)
    for (k, jy, jx), steps in sorted(groups.items()):
        steps = sorted(steps)
        local = [t - k * stc for t in steps]
        block = np.full((len(steps), 2 * dy, 2 * dx), fill, dtype=src.dtype)
        found = False
        for a in range(ry):
            for b in range(rx):
                name = f"{join(src_path, var)}/{k}.{jy * ry + a}.{jx * rx + b}"
                raw = tx.get(name)
                if raw is None:
                    continue
                try:
                    chunk = src.decode(raw)
                except (RuntimeError, ValueError, TypeError) as exc:
                    raise StoreError(f"store chunk {name} is damaged ({exc})") from exc
                block[:, a * sy:(a + 1) * sy, b * sx:(b + 1) * sx] = chunk[local]
                found = True
        out = np.full((len(steps), dy, dx), fill, dtype=dst.dtype)
        if found:
            # what lies outside the source array (its ragged edge) is nodata
            block[:, max(src_shape[0] - 2 * jy * dy, 0):, :] = fill
            block[:, :, max(src_shape[1] - 2 * jx * dx, 0):] = fill
            # DESIGN CHOICE: only the box (2 x 2 aligned) that holds data is reduced; the rest
            # is nodata by construction (the coarse levels are mostly empty)
            has = (block != fill).any(axis=0)
            if has.any():
                rr = np.flatnonzero(has.any(axis=1))
                cc = np.flatnonzero(has.any(axis=0))
                r0, r1 = rr[0] // 2 * 2, (rr[-1] // 2 + 1) * 2
                c0, c1 = cc[0] // 2 * 2, (cc[-1] // 2 + 1) * 2
                out[:, r0 // 2:r1 // 2, c0 // 2:c1 // 2] = halve(block[:, r0:r1, c0:c1], how, fill)
        for i, t in enumerate(steps):
            stage_level_chunk(tx, dst, f"{join(dst_path, var)}/{t}.{jy}.{jx}", out[i:i + 1])
    return sum(len(s) for s in groups.values())


def stage_level_chunk(tx: Transaction, meta: ArrayMeta, key: str, chunk: np.ndarray) -> None:
    """Stage one level chunk; one holding only fill values is not stored (removed if it was)."""
    if (chunk != meta.fill_value).any():
        tx.put(key, meta.encode(chunk))
    elif tx.get(key) is not None:
        tx.delete(key)


def levels_of(consolidated: dict) -> list[int]:
    """The level factors a group's consolidated metadata (``.zmetadata`` documents) lists."""
    attrs = consolidated.get(f"{OVERVIEWS}/.zattrs") or {}
    return [int(e["asset"]) for e in attrs.get("multiscales", {}).get("layout", [])]

