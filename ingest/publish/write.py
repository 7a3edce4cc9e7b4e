"""Apply a ``WritePlan`` inside a store ``Transaction``: resize, move, warp + mosaic, stage.

The caller (``ingest.publish.engine``) made the plan under the same transaction's lock and commits it;
either the whole plan is published or nothing is (``ingest.store.transaction``).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from ingest.errors import ProductError, StoreError
from ingest.grid import ChunkIndex, CubeGrid
from ingest.publish.chunks import (
    AtlasSink, ChunkSink, Sinks, blocks_of, decode_chunk, merge_into, release_finished, slot_block,
)
from ingest.publish.parts import stage_parts
from ingest.publish.plan import SlotWrite, WritePlan
from ingest.products.model import Product
from ingest.quality.stats import StepSums
from ingest.store import PROVENANCE, CommitReport, PublishedState, Transaction, chunk_key, join
from ingest.store.imagery import write_time_axis
from ingest.store.zarrdocs import ArrayMeta
from ingest.compute import Executor
from ingest.variables import VARIABLES
from ingest.warping.warp import GDAL_ENV, OpenRasters, WarpTarget

log = logging.getLogger(__name__)


@dataclass
class WriteReport:
    time_steps: int
    slots_written: int
    chunks_written: int
    superseded: tuple[str, ...] = ()
    version: int | None = None  # set when committed
    commit: CommitReport | None = None  # what the commit changed (keys, sizes, hashes)


def _write_var_block(tx: Transaction, meta: ArrayMeta, path: str, grid: CubeGrid, var: str,
                     k: int, block_chunks: set[ChunkIndex], slots: list[SlotWrite],
                     computed: dict[int, dict[str, np.ndarray]], window: Window,
                     sink: ChunkSink | None = None) -> int:
    """Merge the computed time steps of one variable into time chunk ``k`` over one block;
    returns the number of chunks staged (written or deleted).

    DESIGN CHOICE: chunk by chunk through the array's own codec, not through a zarr array:
    each chunk is read and decoded once (only where it holds published steps), merged in
    place, encoded once, and staged in the transaction; an all-fill result deletes the key
    (chunks holding only fill values are never stored).
    """
    n = 0
    arrays: dict[ChunkIndex, np.ndarray] = {}
    for c in block_chunks:
        key = chunk_key(path, "", k, *c)
        try:
            arrays[c] = merge_into(tx, meta, grid, var, k, c, key, slots, computed, window)
        except OSError as exc:  # full disk, lost mount, permissions: name the key and the cause
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write chunk {key}: {exc.strerror or exc}; "
                             "nothing was published") from exc
        n += 1
    if sink is not None:
        sink.merged(var, k, arrays)
    return n


def _provenance(plan: WritePlan, old: PublishedState,
                products: dict[str, Product]) -> dict[str, list[str]]:
    n = len(plan.axis)
    cols: dict[str, list[str]] = {k: [""] * n for k in PROVENANCE}
    for i, key in enumerate(plan.axis):
        cols["platform"][i] = key[1]
    for old_i, new_i in plan.old_to_new.items():
        cols["datatake_id"][new_i] = old.datatake_ids[old_i]
        cols["products"][new_i] = ",".join(old.products[old_i])
        cols["tiles"][new_i] = old_tiles(old.products[old_i])
        cols["baselines"][new_i] = old_baselines(old.products[old_i])
    for slot in plan.slots:
        names = sorted(p.name for p in slot.products)
        cols["products"][slot.index] = ",".join(names)
        cols["tiles"][slot.index] = ",".join(sorted({p.tile for p in slot.products}))
        cols["baselines"][slot.index] = ",".join(sorted({p.baseline for p in slot.products}))
        first = products[slot.products[0].name]
        cols["datatake_id"][slot.index] = first.datatake_id
    return cols


def old_tiles(names: Iterable[str]) -> str:
    return ",".join(sorted({n.split("_")[5][1:] for n in names if n.count("_") >= 6}))


def old_baselines(names: Iterable[str]) -> str:
    return ",".join(sorted({f"{n.split('_')[3][1:3]}.{n.split('_')[3][3:5]}" for n in names if n.count("_") >= 6}))


def _move_published(tx: Transaction, metas: dict[str, ArrayMeta], group: str, plan: WritePlan,
                    t_old: int, t_new: int, tc: int) -> int:
    """Insert gaps for late datatakes: stage the published time steps at their new indices.

    Only time chunks from the first moved step on are rewritten; returns the chunks staged.
    """
    first_moved = min(o for o, n in plan.old_to_new.items() if o != n)
    k_lo = first_moved // tc
    t_lo = k_lo * tc
    k_hi = -(-t_new // tc)
    n = 0
    for var in VARIABLES:
        meta = metas[var]
        path = join(group, var)
        spatial = sorted({(int(p[1]), int(p[2])) for p in
                          (name.split(".") for name in tx.chunk_keys(path, lambda k: k >= k_lo))
                          if int(p[0]) >= k_lo})
        for c in spatial:
            old = np.full((max(t_old - t_lo, 0), *meta.chunks[1:]), meta.fill_value, dtype=meta.dtype)
            for k in range(k_lo, -(-t_old // tc)):
                key = chunk_key(path, "", k, *c)
                raw = tx.get(key)
                if raw is not None:
                    chunk = decode_chunk(meta, raw, key)
                    lo = k * tc - t_lo
                    m = min(tc, t_old - k * tc)
                    old[lo:lo + m] = chunk[:m]
            new = np.full(((k_hi - k_lo) * tc, *meta.chunks[1:]), meta.fill_value, dtype=meta.dtype)
            for o, nw in plan.old_to_new.items():
                if o >= t_lo:
                    new[nw - t_lo] = old[o - t_lo]
            for k in range(k_lo, k_hi):
                key = chunk_key(path, "", k, *c)
                part = new[(k - k_lo) * tc:(k - k_lo + 1) * tc]
                if (part != meta.fill_value).any():
                    tx.put(key, meta.encode(part))
                elif tx.get(key) is not None:
                    tx.delete(key)
                n += 1
    return n


def apply_plan(
    tx: Transaction, grid: CubeGrid, group: str, plan: WritePlan,
    products: dict[str, Product], resampling: dict[str, Resampling],
    *, threads: int = 2, progress: bool = True, executor: Executor | None = None,
    sink: ChunkSink | None = None, atlas: StepSums | None = None,
) -> WriteReport:
    """Stage ``plan`` in ``tx`` (the caller commits): resize, move published steps, warp +
    mosaic + encode every touched chunk, then the time axis and provenance.

    ``sink`` (the in-process writer only): gets every merged chunk as an array, for derived
    data made while the writer writes (``ChunkSink``). ``atlas``: the quality atlas' sums
    of the steps it names, filled from the merged chunks (by this process or the workers).

    DESIGN CHOICE: everything is staged before any published key changes (DESIGN.md §5), so
    a rewrite of published steps (insertion, supersede, late tile) is switched in one short
    run of renames at commit time. A failing write (full disk, lost mount) raises one
    ``StoreError`` naming the cause; the transaction then discards what it staged. A
    ``ProductError`` (a product found corrupt while decoding) passes through unchanged.

    With an ``executor`` (``ingest.compute``: a process pool or a dask cluster) the decoding,
    warping, mosaicking and encoding run there, part by part (``compute_part``); this
    process only stages what comes back (it stays the one writer).
    """
    tx.check_base(plan.base_version)
    try:
        return _apply_plan(tx, grid, group, plan, products, resampling, threads=threads,
                           progress=progress, executor=executor, sink=sink, atlas=atlas)
    except (StoreError, ProductError):  # already say what and why (both may be OSErrors)
        raise
    except OSError as exc:
        raise StoreError(f"cannot write to {tx.store.url}: {exc.strerror or exc}; "
                         "nothing was published") from exc


def _apply_plan(
    tx: Transaction, grid: CubeGrid, group: str, plan: WritePlan,
    products: dict[str, Product], resampling: dict[str, Resampling],
    *, threads: int, progress: bool, executor: Executor | None = None,
    sink: ChunkSink | None = None, atlas: StepSums | None = None,
) -> WriteReport:
    group = group.strip("/")
    tc = grid.time_chunk
    old = tx.published(group)
    t_old, t_new = old.length, len(plan.axis)
    metas = {var: tx.resize(join(group, var), (t_new, *grid.shape)) for var in VARIABLES}
    for var, meta in metas.items():  # what our own chunk codec assumes
        meta.check_plain(f"{group}/{var}")
    n_chunks = 0
    if plan.shifts:
        n_chunks += _move_published(tx, metas, group, plan, t_old, t_new, tc)
    by_tchunk: dict[int, list[SlotWrite]] = {}
    for slot in plan.slots:
        by_tchunk.setdefault(slot.index // tc, []).append(slot)
    if executor is not None:
        n_chunks += stage_parts(tx, executor, grid, group, metas, by_tchunk, products,
                                resampling, progress=progress, threads=threads, atlas=atlas)
        write_time_axis(tx, group, [key[0] for key in plan.axis], _provenance(plan, old, products))
        return WriteReport(t_new, len(plan.slots), n_chunks, plan.superseded)
    if atlas is not None:
        sink = Sinks(sink, AtlasSink(atlas))
    work = [(k, block) for k, slots in sorted(by_tchunk.items())
            for block in blocks_of(grid, set().union(*(s.chunks for s in slots)))]
    # DESIGN CHOICE: writer threads compress and stage the variables of block k while the
    # pool warps block k+1; at most two blocks are in flight (bounded memory). Blocks own
    # disjoint chunks.
    if sink is not None:
        for k, (_, block_chunks) in work:
            sink.expect(k, block_chunks, {s.index for s in by_tchunk[k] if s.chunks & block_chunks})
    in_flight: list[list] = []
    with (rasterio.Env(**GDAL_ENV), OpenRasters() as rasters,
          ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
          ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="write") as writer):
        for k, (window, block_chunks) in tqdm(work, desc=f"warp+write {group}", unit="block",
                                              disable=not progress):
            slots = by_tchunk[k]
            target = WarpTarget(grid, window)
            computed = {s.index: slot_block(s, products, target, resampling, pool, rasters)
                        for s in slots if s.chunks & block_chunks}
            release_finished(slots, window, grid, rasters)
            while len(in_flight) >= 2:
                for f in in_flight.pop(0):
                    n_chunks += f.result()
            in_flight.append([writer.submit(_write_var_block, tx, metas[var], join(group, var),
                                            grid, var, k, block_chunks, slots, computed, window,
                                            sink)
                              for var in VARIABLES])
        for futures in in_flight:
            for f in futures:
                n_chunks += f.result()
    write_time_axis(tx, group, [key[0] for key in plan.axis], _provenance(plan, old, products))
    return WriteReport(t_new, len(plan.slots), n_chunks, plan.superseded)
