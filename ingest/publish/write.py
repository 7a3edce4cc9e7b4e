"""Apply a ``WritePlan`` inside a store ``Transaction``: resize, move, warp + mosaic, stage.

The caller (``ingest.publish.engine``) made the plan under the same transaction's lock and commits it;
either the whole plan is published or nothing is (``ingest.store.transaction``).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from ingest.errors import ProductError, StoreError
from ingest.grid import ChunkIndex, CubeGrid
from ingest.warping.mosaic import fill_gaps
from ingest.publish.plan import SlotWrite, WritePlan
from ingest.products.model import Product
from ingest.store import PROVENANCE, CommitReport, PublishedState, Transaction, chunk_key, digest, join
from ingest.store.imagery import write_time_axis
from ingest.store.zarrdocs import ArrayMeta
from ingest.compute import Emit, Executor
from ingest.variables import VARIABLES
from ingest.warping.warp import GDAL_ENV, OpenRasters, WarpTarget, warp_product_part

log = logging.getLogger(__name__)


@dataclass
class WriteReport:
    time_steps: int
    slots_written: int
    chunks_written: int
    superseded: tuple[str, ...] = ()
    version: int | None = None  # set when committed
    commit: CommitReport | None = None  # what the commit changed (keys, sizes, hashes)


class ChunkSink(Protocol):
    """Derived data made from the chunks the writer merges, while it writes (the overview
    levels: ``ingest.overviews.OverviewStream``)."""

    def expect(self, k: int, chunks: set[ChunkIndex], steps: set[int]) -> None:
        """Before the writing starts: the chunks of time chunk ``k`` one block will deliver,
        and the time steps (indices on the new axis) it writes there."""

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        """One block's final chunks of ``var`` (all time steps of time chunk ``k``), called in a
        writer thread; the arrays must not be changed."""


def _blocks(grid: CubeGrid, chunks: Iterable[ChunkIndex]) -> list[tuple[Window, set[ChunkIndex]]]:
    """Group chunks into row bands: one window per chunk row, spanning its chunks."""
    rows: dict[int, set[ChunkIndex]] = {}
    for c in chunks:
        rows.setdefault(c[0], set()).add(c)
    blocks = []
    for iy in sorted(rows):
        cols = sorted(ix for _, ix in rows[iy])
        first = grid.chunk_window((iy, cols[0]))
        last = grid.chunk_window((iy, cols[-1]))
        width = last.col_off + last.width - first.col_off
        blocks.append((Window(first.col_off, first.row_off, width, first.height), rows[iy]))
    return blocks


def _slot_block(
    slot: SlotWrite, products: dict[str, Product], target: WarpTarget,
    resampling: dict[str, Resampling], pool: ThreadPoolExecutor, rasters: OpenRasters,
) -> dict[str, np.ndarray]:
    """Mosaic every variable of one time step over one block window."""
    out: dict[str, np.ndarray] = {}
    h, w = target.shape
    for var in VARIABLES:
        spec = VARIABLES[var]
        out[var] = np.full((h, w), spec.fill_value, dtype=spec.dtype)
    untouched = set(VARIABLES)  # nothing merged yet: ``out`` holds only fill values
    for planned in slot.products:  # highest priority first
        if not _touches(planned.chunks, target):
            continue
        # DESIGN CHOICE: variable groups go to a thread pool (GDAL releases the GIL while it
        # decodes and warps), so both cores stay busy.
        part = warp_product_part(products[planned.name], target, resampling, rasters, pool)
        if part is None:
            continue
        inner, warped = part
        for var, data in warped.items():
            if var in untouched:  # the first product here: a plain copy is the same, and cheaper
                out[var][inner] = data
            else:
                fill_gaps(out[var][inner], data, VARIABLES[var].fill_value)
        untouched.clear()
    return out


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
            arrays[c] = _merge_chunk(tx, meta, grid, var, k, c, key, slots, computed, window)
        except OSError as exc:  # full disk, lost mount, permissions: name the key and the cause
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write chunk {key}: {exc.strerror or exc}; "
                             "nothing was published") from exc
        n += 1
    if sink is not None:
        sink.merged(var, k, arrays)
    return n


def _decode(meta: ArrayMeta, raw: bytes, key: str, out: np.ndarray | None = None) -> np.ndarray:
    try:
        return meta.decode(raw, out=out)
    except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs' errors for a damaged chunk
        raise StoreError(f"store chunk {key} is damaged ({exc}); restore it from a mirror "
                         "or backup, nothing was written") from exc


def _merge_chunk(tx: Transaction, meta: ArrayMeta, grid: CubeGrid, var: str, k: int, c: ChunkIndex,
                 key: str, slots: list[SlotWrite], computed: dict[int, dict[str, np.ndarray]],
                 window: Window) -> np.ndarray:
    """Read, merge, encode and stage one chunk (see ``_write_var_block``); returns it."""
    old = tx.get(key)
    chunk = merged_array(meta, grid, var, k, c, key, old, slots, computed, window)
    if (chunk != meta.fill_value).any():
        tx.put(key, meta.encode(chunk))
    elif old is not None:
        tx.delete(key)
    return chunk


def merged_chunk(meta: ArrayMeta, grid: CubeGrid, var: str, k: int, c: ChunkIndex, key: str,
                 old: bytes | None, slots: Iterable[SlotWrite],
                 computed: dict[int, dict[str, np.ndarray]], window: Window) -> bytes | None:
    """The encoded chunk (time chunk ``k``, spatial chunk ``c``) with the computed time steps
    merged into its ``old`` bytes; None when it holds only fill values (it is not stored).

    Pure (no store access): the in-process writer and the worker processes
    (``ingest.compute``) both use it, so both write the same bytes.
    """
    chunk = merged_array(meta, grid, var, k, c, key, old, slots, computed, window)
    if (chunk != meta.fill_value).any():
        return meta.encode(chunk)
    return None


def merged_array(meta: ArrayMeta, grid: CubeGrid, var: str, k: int, c: ChunkIndex, key: str,
                 old: bytes | None, slots: Iterable[SlotWrite],
                 computed: dict[int, dict[str, np.ndarray]], window: Window) -> np.ndarray:
    """The chunk of ``merged_chunk`` as an array (every time step of time chunk ``k``)."""
    tc = grid.time_chunk
    chunk = meta.empty_chunk() if old is None else _decode(meta, old, key)
    cw = grid.chunk_window(c)
    r0, c0 = int(cw.row_off - window.row_off), int(cw.col_off - window.col_off)
    h, w = int(cw.height), int(cw.width)
    for s in slots:
        if s.index in computed and c in s.chunks:
            chunk[s.index - k * tc, :h, :w] = computed[s.index][var][r0:r0 + h, c0:c0 + w]
    return chunk


def _release_finished(slots: list[SlotWrite], window: Window, grid: CubeGrid,
                      rasters: OpenRasters) -> None:
    """Drop decoded strips of products whose last chunk row is behind us (bounded memory)."""
    row = int(window.row_off) // grid.chunk_shape[0]
    for slot in slots:
        for p in slot.products:
            if p.chunks and max(c[0] for c in p.chunks) < row:
                rasters.release(p.name)


def _touches(chunks: frozenset[ChunkIndex], target: WarpTarget) -> bool:
    return any(c in chunks for c in target.grid.chunks_in_window(target.window))


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
                    chunk = _decode(meta, raw, key)
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
    sink: ChunkSink | None = None,
) -> WriteReport:
    """Stage ``plan`` in ``tx`` (the caller commits): resize, move published steps, warp +
    mosaic + encode every touched chunk, then the time axis and provenance.

    ``sink`` (the in-process writer only): gets every merged chunk as an array, for derived
    data made while the writer writes (``ChunkSink``).

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
                           progress=progress, executor=executor, sink=sink)
    except (StoreError, ProductError):  # already say what and why (both may be OSErrors)
        raise
    except OSError as exc:
        raise StoreError(f"cannot write to {tx.store.url}: {exc.strerror or exc}; "
                         "nothing was published") from exc


def _apply_plan(
    tx: Transaction, grid: CubeGrid, group: str, plan: WritePlan,
    products: dict[str, Product], resampling: dict[str, Resampling],
    *, threads: int, progress: bool, executor: Executor | None = None,
    sink: ChunkSink | None = None,
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
        n_chunks += _stage_parts(tx, executor, grid, group, metas, by_tchunk, products,
                                 resampling, progress=progress, threads=threads)
        write_time_axis(tx, group, [key[0] for key in plan.axis], _provenance(plan, old, products))
        return WriteReport(t_new, len(plan.slots), n_chunks, plan.superseded)
    work = [(k, block) for k, slots in sorted(by_tchunk.items())
            for block in _blocks(grid, set().union(*(s.chunks for s in slots)))]
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
            computed = {s.index: _slot_block(s, products, target, resampling, pool, rasters)
                        for s in slots if s.chunks & block_chunks}
            _release_finished(slots, window, grid, rasters)
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


# -- the same work in worker processes (``ingest.compute``) ------------------------------------
@dataclass(frozen=True)
class PartTask:
    """One unit of work for a worker: every time step of time chunk ``k`` over a run of
    consecutive blocks (chunk rows). Plain data: it is pickled to the worker."""

    grid: CubeGrid
    group: str
    k: int
    blocks: tuple[tuple[Window, frozenset[ChunkIndex]], ...]
    slots: tuple[SlotWrite, ...]
    products: dict[str, Product]  # the products of ``slots`` (paths the worker can read)
    resampling: dict[str, Resampling]
    metas: dict[str, ArrayMeta]
    holding: frozenset[str]  # keys of this part's chunks that hold data now (to merge into)


@dataclass
class PartBlock:
    """What a worker hands back for one block.

    ``encoded``: (key, bytes, (size, sha256)) of chunks that held nothing before: final.
    ``to_merge``: (variable, chunk, {time index: the chunk's pixels}) of chunks that hold data
    now: the committer merges them into what its transaction holds (``merged_chunk``)."""

    k: int  # the time chunk
    counted: int
    encoded: list[tuple[str, bytes, tuple[int, str]]]
    to_merge: list[tuple[str, ChunkIndex, dict[int, np.ndarray]]]


def compute_part(task: PartTask, emit: Emit) -> None:
    """Warp, mosaic and encode one part; ``emit`` gets one ``PartBlock`` per block, north
    to south.

    DESIGN CHOICE: a part walks its blocks north to south in one process, so each JP2 strip
    is decoded once per part (``OpenRasters``), exactly as the in-process writer does; the
    block windows are the same ``_blocks`` windows and chunks are encoded by the same
    ``merged_chunk``, so the bytes equal a single-process run. Workers never read the store:
    a chunk that already holds data goes back as pixels and is merged by the committer,
    which alone sees what its transaction holds (published or staged); the rest, usually
    nearly all, comes back encoded, with its sha256, so the committer only writes it.
    """
    grid, k, slots = task.grid, task.k, list(task.slots)
    missing = sorted({str(p.source) for p in task.products.values() if not p.source.exists()})
    if missing:
        from ingest.errors import ComputeError  # not a ProductError: the product is fine

        raise ComputeError(f"worker cannot read {missing[0]}: workers must see the product "
                           "cache at the same path (a shared volume)")
    with (rasterio.Env(**GDAL_ENV), OpenRasters() as rasters,
          ThreadPoolExecutor(max_workers=1) as pool):
        for window, block_chunks in task.blocks:
            target = WarpTarget(grid, window)
            computed = {s.index: _slot_block(s, task.products, target, task.resampling, pool, rasters)
                        for s in slots if s.chunks & block_chunks}
            _release_finished(slots, window, grid, rasters)
            out = PartBlock(k, len(block_chunks) * len(VARIABLES), [], [])
            for var in VARIABLES:
                path = join(task.group, var)
                for c in sorted(block_chunks):
                    key = chunk_key(path, "", k, *c)
                    if key in task.holding:
                        out.to_merge.append((var, c, _chunk_pixels(grid, c, var, slots, computed, window)))
                        continue
                    data = merged_chunk(task.metas[var], grid, var, k, c, key, None, slots, computed, window)
                    if data is not None:
                        out.encoded.append((key, data, digest(data)))
            del computed
            emit(out)


def _chunk_pixels(grid: CubeGrid, c: ChunkIndex, var: str, slots: list[SlotWrite],
                  computed: dict[int, dict[str, np.ndarray]], window: Window) -> dict[int, np.ndarray]:
    cw = grid.chunk_window(c)
    r0, c0 = int(cw.row_off - window.row_off), int(cw.col_off - window.col_off)
    h, w = int(cw.height), int(cw.width)
    return {s.index: computed[s.index][var][r0:r0 + h, c0:c0 + w].copy()
            for s in slots if s.index in computed and c in s.chunks}


def split_parts(grid: CubeGrid, by_tchunk: dict[int, list[SlotWrite]], workers: int,
                max_blocks: int | None) -> list[tuple[int, list[tuple[Window, set[ChunkIndex]]]]]:
    """The parts of a write: per time chunk its blocks, cut into runs of consecutive blocks.

    DESIGN CHOICE: a time chunk is cut only as far as needed to give every worker work
    (and, where the executor asks for it, to bound a part's result: ``max_blocks``): each
    cut costs decoding the JP2 strips at the cut twice. Cuts balance the chunks per part.
    """
    per_k = [(k, _blocks(grid, set().union(*(s.chunks for s in slots))))
             for k, slots in sorted(by_tchunk.items())]
    want = max(1, -(-workers // max(1, len(per_k))))
    parts = []
    for k, blocks in per_k:
        n = want if max_blocks is None else max(want, -(-len(blocks) // max_blocks))
        n = max(1, min(n, len(blocks)))
        sizes = [len(b[1]) for b in blocks]
        total, acc, start = sum(sizes), 0, 0
        for i in range(1, n + 1):
            goal = total * i / n
            end = start
            while end < len(blocks) and (acc + sizes[end] <= goal or end == start) \
                    and len(blocks) - end > n - i:
                acc += sizes[end]
                end += 1
            if i == n:
                end = len(blocks)
            parts.append((k, blocks[start:end]))
            start = end
    return [p for p in parts if p[1]]


def _stage_parts(tx: Transaction, executor: Executor, grid: CubeGrid, group: str,
                 metas: dict[str, ArrayMeta], by_tchunk: dict[int, list[SlotWrite]],
                 products: dict[str, Product], resampling: dict[str, Resampling],
                 *, progress: bool, threads: int) -> int:
    """Compute the parts on ``executor`` and stage the chunks as they come back."""
    wanted = set(by_tchunk)  # only the pieces of the time chunks written (bookkeeping O(change))
    existing = {var: set(tx.chunk_keys(join(group, var), wanted.__contains__)) for var in VARIABLES}
    tasks = []
    for k, blocks in split_parts(grid, by_tchunk, executor.workers, executor.max_part_blocks):
        slots = tuple(by_tchunk[k])
        chunks = set().union(*(b[1] for b in blocks))
        holding = frozenset(chunk_key(join(group, var), "", k, *c) for var in VARIABLES for c in chunks
                            if f"{k}.{c[0]}.{c[1]}" in existing[var])
        window_chunks = {c for w, _ in blocks for c in grid.chunks_in_window(w)}  # as _touches
        names = {p.name for s in slots for p in s.products if p.chunks & window_chunks}
        tasks.append(PartTask(grid, group, k, tuple((w, frozenset(c)) for w, c in blocks), slots,
                              {n: products[n] for n in names}, resampling, metas, holding))
    n = 0

    def merge(k: int, var: str, c: ChunkIndex, pixels: dict[int, np.ndarray]) -> None:
        key = chunk_key(join(group, var), "", k, *c)
        window = grid.chunk_window(c)
        computed = {i: {var: a} for i, a in pixels.items()}
        _merge_chunk(tx, metas[var], grid, var, k, c, key, by_tchunk[k], computed, window)

    total = sum(len(t.blocks) for t in tasks)
    # DESIGN CHOICE: merges (decode what is held, merge, encode) run in writer threads, as in
    # the in-process writer; at most a few blocks' merges are pending (bounded memory).
    # closing: an error here (or Ctrl-C) ends the stream, which stops the workers at once
    with (tqdm(total=total, desc=f"warp+write {group} ({executor.describe()})", unit="block",
               disable=not progress) as bar,
          ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="merge") as writer,
          closing(executor.stream(compute_part, tasks)) as blocks):
        pending: list = []
        for block in blocks:
            for key, data, d in block.encoded:
                tx.put(key, data, checksum=d)
            pending.extend(writer.submit(merge, block.k, var, c, px) for var, c, px in block.to_merge)
            while len(pending) > 4 * len(VARIABLES):
                pending.pop(0).result()
            n += block.counted
            bar.update(1)
        for f in pending:
            f.result()
    return n
