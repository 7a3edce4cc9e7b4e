"""The write on workers (``ingest.compute``: a process pool or a dask cluster).

A plan is cut into *parts* (``split_parts``); a worker computes one (``compute_part``) and the
process holding the transaction, the committer, stages what comes back (``stage_parts``).

DESIGN CHOICE: workers stage their chunks themselves. The committer names its transaction's
staging area (``Transaction.staging_area``: the store's location, the staging prefix and a
token written there); a worker that reads the token back through its own view of the store (a
shared folder, the same bucket) merges, encodes and writes every chunk of its part into the
staging area and sends back only key, size and sha256, plus its part of the quality atlas'
sums. The committer's work per chunk is then one dictionary entry (``put_staged``), so one
committer keeps many workers busy. Published chunks a part merges into are read by the worker
where the transaction holds them (``Transaction.where``); parts own disjoint chunks, and
nobody else writes while the committer holds the lock. A worker that cannot see the store
(a dask worker on a machine without the shared folder) sends its chunks back instead, as
before: encoded, or as pixels for chunks that hold data (merged by the committer).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from ingest.compute import Emit, Executor
from ingest.errors import ComputeError, StoreError
from ingest.grid import ChunkIndex, CubeGrid
from ingest.publish.chunks import (
    blocks_of, encoded, merge_into, merged_array, merged_chunk, release_finished, slot_block,
    written_steps,
)
from ingest.publish.plan import SlotWrite
from ingest.products.model import Product
from ingest.store import Transaction, chunk_key, digest, join
from ingest.store.transaction import StagingWriter
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import VARIABLES
from ingest.warping.warp import GDAL_ENV, OpenRasters, WarpTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagingArea:
    """Where workers write their chunks (``Transaction.staging_area``)."""

    location: str  # the store: an absolute path or an s3:// URL
    prefix: str  # the transaction's staging prefix
    token: str  # what ``<prefix>/.workers`` holds


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
    holding: dict[str, str]  # key of a chunk that holds data now -> where its value lies
    staging: StagingArea | None = None
    atlas: tuple[int, tuple[int, ...]] | None = None  # (H3 resolution, steps) to sum


@dataclass
class PartBlock:
    """What a worker hands back for one block.

    A worker that sees the store (``direct``): ``staged`` (key, (size, sha256)) of the chunks
    it wrote into the staging area, ``deleted`` keys whose merge left only fill values, and,
    with the part's last block, ``atlas`` (its sparse ``StepSums``; None if it could not sum).
    Otherwise: ``encoded`` (key, bytes, (size, sha256)) of chunks that held nothing before, and
    ``to_merge`` (variable, chunk, {time index: pixels}) of chunks that hold data now, which
    the committer merges into what its transaction holds."""

    k: int  # the time chunk
    counted: int
    direct: bool = False
    staged: list[tuple[str, tuple[int, str]]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    encoded: list[tuple[str, bytes, tuple[int, str]]] = field(default_factory=list)
    to_merge: list[tuple[str, ChunkIndex, dict[int, np.ndarray]]] = field(default_factory=list)
    atlas: tuple | None = None


def _staging_writer(area: StagingArea | None) -> StagingWriter | None:
    """The staging area when this process sees it, else None."""
    return None if area is None else StagingWriter.open(area.location, area.prefix, area.token)


def compute_part(task: PartTask, emit: Emit) -> None:
    """Warp, mosaic and encode one part; ``emit`` gets one ``PartBlock`` per block, north
    to south.

    DESIGN CHOICE: a part walks its blocks north to south in one process, so each JP2 strip
    is decoded once per part (``OpenRasters``), exactly as the in-process writer does; the
    block windows are the same windows and chunks are merged and encoded by the same
    functions (``ingest.publish.chunks``), so the bytes equal a single-process run.
    """
    grid, k, slots = task.grid, task.k, list(task.slots)
    missing = sorted({str(p.source) for p in task.products.values() if not p.source.exists()})
    if missing:
        raise ComputeError(f"worker cannot read {missing[0]}: workers must see the product "
                           "cache at the same path (a shared volume)")
    staging = _staging_writer(task.staging)
    sums = None
    if staging is not None and task.atlas is not None:
        from ingest.quality.cells import cell_index
        from ingest.quality.stats import StepSums

        sums = StepSums(cell_index(grid, task.atlas[0]), task.atlas[1], grid.time_chunk)
    with (rasterio.Env(**GDAL_ENV), OpenRasters() as rasters,
          ThreadPoolExecutor(max_workers=1) as pool):
        for i, (window, block_chunks) in enumerate(task.blocks):
            target = WarpTarget(grid, window)
            computed = {s.index: slot_block(s, task.products, target, task.resampling, pool, rasters)
                        for s in slots if s.chunks & block_chunks}
            release_finished(slots, window, grid, rasters)
            out = PartBlock(k, len(block_chunks) * len(VARIABLES), direct=staging is not None)
            for var in VARIABLES:
                for c in sorted(block_chunks):
                    if staging is None:
                        _send_back(out, task, var, c, slots, computed, window)
                    else:
                        _stage(out, staging, task, var, c, slots, computed, window, sums)
            del computed
            if i == len(task.blocks) - 1 and sums is not None and sums.complete():
                out.atlas = sums.sparse()
            emit(out)


def _stage(out: PartBlock, staging: StagingWriter, task: PartTask, var: str, c: ChunkIndex,
           slots: list[SlotWrite], computed: dict[int, dict[str, np.ndarray]], window: Window,
           sums) -> None:
    """Merge one chunk into its current value, write it into the staging area, sum it."""
    key = chunk_key(join(task.group, var), "", task.k, *c)
    meta = task.metas[var]
    old = None
    if key in task.holding:
        old = staging.read(task.holding[key])
        if old is None:
            raise StoreError(f"store chunk {key} is missing from {staging.location} while a "
                             "commit holds the lock; nothing was published")
    chunk = merged_array(meta, task.grid, var, task.k, c, key, old, slots, computed, window)
    if sums is not None:
        sums.add(var, task.k, c, chunk)
    data = encoded(meta, chunk, written_steps(task.grid, task.k, c, slots, computed), old)
    if data is None:
        if old is not None:
            out.deleted.append(key)
        return
    # a whole file or none: a task that dask reruns writes the same bytes again
    out.staged.append((key, staging.stage(key, data)))


def _send_back(out: PartBlock, task: PartTask, var: str, c: ChunkIndex, slots: list[SlotWrite],
               computed: dict[int, dict[str, np.ndarray]], window: Window) -> None:
    """A worker that cannot see the store: the chunk goes back to the committer."""
    key = chunk_key(join(task.group, var), "", task.k, *c)
    if key in task.holding:
        out.to_merge.append((var, c, _chunk_pixels(task.grid, c, var, slots, computed, window)))
        return
    data = merged_chunk(task.metas[var], task.grid, var, task.k, c, key, None, slots, computed, window)
    if data is not None:
        out.encoded.append((key, data, digest(data)))


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
    per_k = [(k, blocks_of(grid, set().union(*(s.chunks for s in slots))))
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


def stage_parts(tx: Transaction, executor: Executor, grid: CubeGrid, group: str,
                metas: dict[str, ArrayMeta], by_tchunk: dict[int, list[SlotWrite]],
                products: dict[str, Product], resampling: dict[str, Resampling],
                *, progress: bool, threads: int, atlas=None) -> int:
    """Compute the parts on ``executor`` and stage the chunks as they come back.

    ``atlas`` (``ingest.quality.stats.StepSums``): the workers' sums are added to it; when a
    part's sums do not come back (a worker that could not see the store), ``atlas.give_up()``
    (the atlas is then computed from the staged chunks, as without workers)."""
    wanted = set(by_tchunk)  # only the pieces of the time chunks written (bookkeeping O(change))
    existing = {var: set(tx.chunk_keys(join(group, var), wanted.__contains__)) for var in VARIABLES}
    area = StagingArea(*tx.staging_area())
    tasks = []
    for k, blocks in split_parts(grid, by_tchunk, executor.workers, executor.max_part_blocks):
        slots = tuple(by_tchunk[k])
        chunks = set().union(*(b[1] for b in blocks))
        holding = {}
        for var in VARIABLES:
            for c in chunks:
                if f"{k}.{c[0]}.{c[1]}" in existing[var]:
                    key = chunk_key(join(group, var), "", k, *c)
                    where = tx.where(key)
                    if where is not None:
                        holding[key] = where
        window_chunks = {c for w, _ in blocks for c in grid.chunks_in_window(w)}  # as slot_block
        names = {p.name for s in slots for p in s.products if p.chunks & window_chunks}
        steps = () if atlas is None else tuple(t for t in atlas.steps if t // grid.time_chunk == k)
        tasks.append(PartTask(grid, group, k, tuple((w, frozenset(c)) for w, c in blocks), slots,
                              {n: products[n] for n in names}, resampling, metas, holding, area,
                              (atlas.index.resolution, steps) if steps else None))
    n = 0

    def merge(k: int, var: str, c: ChunkIndex, pixels: dict[int, np.ndarray]) -> None:
        key = chunk_key(join(group, var), "", k, *c)
        window = grid.chunk_window(c)
        computed = {i: {var: a} for i, a in pixels.items()}
        merge_into(tx, metas[var], grid, var, k, c, key, by_tchunk[k], computed, window)

    total = sum(len(t.blocks) for t in tasks)
    sums_expected = sum(1 for t in tasks if t.atlas is not None)
    sums_back = staged = sent_back = 0
    told = False
    # DESIGN CHOICE: merges (decode what is held, merge, encode) run in writer threads, as in
    # the in-process writer; at most a few blocks' merges are pending (bounded memory).
    # closing: an error here (or Ctrl-C) ends the stream, which stops the workers at once
    with (tqdm(total=total, desc=f"warp+write {group} ({executor.describe()})", unit="block",
               disable=not progress) as bar,
          ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="merge") as writer,
          closing(executor.stream(compute_part, tasks)) as blocks):
        pending: list = []
        for block in blocks:
            staged += len(block.staged)
            sent_back += len(block.encoded) + len(block.to_merge)
            for key, d in block.staged:
                tx.put_staged(key, d)
            for key in block.deleted:
                tx.delete(key)
            for key, data, d in block.encoded:
                tx.put(key, data, checksum=d)
            if not block.direct and not told:
                told = True
                log.warning("workers cannot see the store at %s: their chunks come back through "
                            "this process (a shared folder or an object store spares that)",
                            area.location)
            if block.atlas is not None and atlas is not None:
                atlas.add_sparse(block.atlas)
                sums_back += 1
            pending.extend(writer.submit(merge, block.k, var, c, px) for var, c, px in block.to_merge)
            while len(pending) > 4 * len(VARIABLES):
                pending.pop(0).result()
            n += block.counted
            bar.update(1)
        for f in pending:
            f.result()
    if atlas is not None and sums_back != sums_expected:
        atlas.give_up()
    log.info("%s: %d chunks staged by the workers themselves, %d sent back to this process",
             group, staged, sent_back)
    return n
