"""One chunk's work, shared by the in-process writer (``write``) and the workers (``parts``).

Pure functions of their inputs (the warped pixels, a chunk's old bytes), so every way of
running the write (threads in this process, a process pool, a dask cluster) produces the same
bytes; only ``merge_into`` touches a store, through the ``Transaction`` it is given.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Protocol

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from ingest.errors import StoreError
from ingest.grid import ChunkIndex, CubeGrid
from ingest.publish.plan import SlotWrite
from ingest.products.model import Product
from ingest.store import Transaction
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import VARIABLES
from ingest.warping.mosaic import fill_gaps
from ingest.warping.warp import OpenRasters, WarpTarget, warp_product_part


class ChunkSink(Protocol):
    """Derived data made from the chunks the writer merges, while it writes (the overview
    levels: ``ingest.overviews.OverviewStream``)."""

    def expect(self, k: int, chunks: set[ChunkIndex], steps: set[int]) -> None:
        """Before the writing starts: the chunks of time chunk ``k`` one block will deliver,
        and the time steps (indices on the new axis) it writes there."""

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        """One block's final chunks of ``var`` (all time steps of time chunk ``k``), called in a
        writer thread; the arrays must not be changed."""


class Sinks:
    """Several ``ChunkSink``s fed as one (the overview stream and the atlas sums)."""

    def __init__(self, *sinks) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def expect(self, k: int, chunks: set[ChunkIndex], steps: set[int]) -> None:
        for s in self.sinks:
            s.expect(k, chunks, steps)

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        for s in self.sinks:
            s.merged(var, k, arrays)


class AtlasSink:
    """The quality atlas' sums (``ingest.quality.stats.StepSums``) as a ``ChunkSink``."""

    def __init__(self, sums) -> None:
        self.sums = sums

    def expect(self, k: int, chunks: set[ChunkIndex], steps: set[int]) -> None:
        pass

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        for c, a in arrays.items():
            self.sums.add(var, k, c, a)


def blocks_of(grid: CubeGrid, chunks: Iterable[ChunkIndex]) -> list[tuple[Window, set[ChunkIndex]]]:
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


def slot_block(
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


def decode_chunk(meta: ArrayMeta, raw: bytes, key: str, out: np.ndarray | None = None) -> np.ndarray:
    try:
        return meta.decode(raw, out=out)
    except (RuntimeError, ValueError, TypeError) as exc:  # numcodecs' errors for a damaged chunk
        raise StoreError(f"store chunk {key} is damaged ({exc}); restore it from a mirror "
                         "or backup, nothing was written") from exc


def merge_into(tx: Transaction, meta: ArrayMeta, grid: CubeGrid, var: str, k: int, c: ChunkIndex,
               key: str, slots: list[SlotWrite], computed: dict[int, dict[str, np.ndarray]],
               window: Window) -> np.ndarray:
    """Read, merge, encode and stage one chunk in ``tx``; returns it (every time step)."""
    old = tx.get(key)
    chunk = merged_array(meta, grid, var, k, c, key, old, slots, computed, window)
    data = encoded(meta, chunk, written_steps(grid, k, c, slots, computed), old)
    if data is not None:
        tx.put(key, data)
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
    return encoded(meta, chunk, written_steps(grid, k, c, slots, computed), old)


def encoded(meta: ArrayMeta, chunk: np.ndarray, steps: Iterable[int], old: bytes | None) -> bytes | None:
    """The stored bytes of a chunk whose time steps other than ``steps`` hold what ``old``
    holds (None: fill values); None when it holds only fill values (it is not stored)."""
    steps = list(steps)
    fill = meta.fill_value
    # the written steps first: in a new chunk the others hold the fill value
    written = any((chunk[s] != fill).any() for s in steps)
    if written or (old is not None and (chunk != fill).any()):
        return meta.encode_steps(chunk, steps, old)
    return None


def written_steps(grid: CubeGrid, k: int, c: ChunkIndex, slots: Iterable[SlotWrite],
                  computed: dict[int, dict[str, np.ndarray]]) -> list[int]:
    """The steps (within time chunk ``k``) that ``merged_array`` writes into chunk ``c``."""
    tc = grid.time_chunk
    return [s.index - k * tc for s in slots if s.index in computed and c in s.chunks]


def merged_array(meta: ArrayMeta, grid: CubeGrid, var: str, k: int, c: ChunkIndex, key: str,
                 old: bytes | None, slots: Iterable[SlotWrite],
                 computed: dict[int, dict[str, np.ndarray]], window: Window) -> np.ndarray:
    """The chunk of ``merged_chunk`` as an array (every time step of time chunk ``k``)."""
    tc = grid.time_chunk
    chunk = meta.empty_chunk() if old is None else decode_chunk(meta, old, key)
    cw = grid.chunk_window(c)
    r0, c0 = int(cw.row_off - window.row_off), int(cw.col_off - window.col_off)
    h, w = int(cw.height), int(cw.width)
    for s in slots:
        if s.index in computed and c in s.chunks:
            chunk[s.index - k * tc, :h, :w] = computed[s.index][var][r0:r0 + h, c0:c0 + w]
    return chunk


def release_finished(slots: list[SlotWrite], window: Window, grid: CubeGrid,
                     rasters: OpenRasters) -> None:
    """Drop decoded strips of products whose last chunk row is behind us (bounded memory)."""
    row = int(window.row_off) // grid.chunk_shape[0]
    for slot in slots:
        for p in slot.products:
            if p.chunks and max(c[0] for c in p.chunks) < row:
                rasters.release(p.name)


def _touches(chunks: frozenset[ChunkIndex], target: WarpTarget) -> bool:
    return any(c in chunks for c in target.grid.chunks_in_window(target.window))
