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
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from ingest.errors import StoreError
from ingest.grid import CubeGrid
from ingest.store import Transaction, join
from ingest.store.geozarr import imagery_group_attrs
from ingest.store.imagery import write_1d
from ingest.store.layout import COMPRESSOR, COORD_CHUNK, cf_grid_mapping, variable_attrs
from ingest.store.zarrdocs import read_array
from ingest.variables import VARIABLES
from ingest.overviews.aggregate import halve, reduction
from ingest.overviews.levels import (
    ChunkId, LevelsComputed, has_overviews, level_attrs, level_chunks, level_factors, level_path,
    level_shape, level_transform, multiscales_attrs, overviews_path, stage_level_chunk,
)

log = logging.getLogger(__name__)






















# -- creating the levels ------------------------------------------------------------------------
def create_levels(tx: Transaction, grid: CubeGrid, group: str) -> None:
    """Stage the multiscale group and its (empty) levels, replacing any there."""
    length = tx.array(join(group, "B04")).shape[0]
    times = _native_times(tx, group)
    attrs = multiscales_attrs(grid)
    if not tx.is_group(overviews_path(group)):
        tx.create_group(overviews_path(group), attrs)
    elif tx.attrs(overviews_path(group)) != attrs:  # the same layout: left as it is, byte for byte
        tx.put_json(join(overviews_path(group), ".zattrs"), attrs)
    factors = level_factors(grid.shape)
    group_attrs = {**tx.attrs(group), **imagery_group_attrs(grid, factors)}
    if tx.attrs(group) != group_attrs:  # the imagery group's multiscales names the levels
        tx.put_json(join(group, ".zattrs"), group_attrs)
    time_attrs = tx.attrs(join(group, "time"))
    for f in factors:
        path = level_path(group, f)
        ny, nx = level_shape(grid.shape, f)
        r = grid.resolution * f
        left, _, _, top = grid.bounds
        if not tx.is_group(path):
            tx.create_group(path, level_attrs(grid, f))
        elif tx.attrs(path) != level_attrs(grid, f):
            tx.put_json(join(path, ".zattrs"), level_attrs(grid, f))
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
                  threads: int = 2) -> int | None:
    """``build_overviews`` as a change of ``group``: its version attribute names this commit
    (what ``s2ingest overviews`` and the demo commit, ``ingest.publish.commits``). Returns the
    level chunks staged, or None when the levels built are byte for byte the published ones:
    then nothing in ``tx`` changes the store, and there is nothing to commit."""
    from ingest.store.layout import GROUP_VERSION_ATTR

    n = build_overviews(tx, grid, group, progress=progress, threads=threads)
    if not tx.changes_anything():
        return None
    tx.update_attrs(group, {GROUP_VERSION_ATTR: tx.base_version + 1})
    return n


def update_overviews(tx: Transaction, grid: CubeGrid, group: str, *, threads: int = 2,
                     steps: Iterable[int] | None = None,
                     stream: "LevelsComputed | None" = None) -> int:
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
               progress: bool, threads: int, stream: "LevelsComputed | None" = None,
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





