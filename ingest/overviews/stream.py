"""Overview levels computed from the chunks the writer has in memory, while it still warps.

DESIGN CHOICE (DESIGN.md §12): the publish hook ``update_overviews`` recomputes level 2 from
the native chunks the commit staged, which means decoding again every chunk the writer has
just encoded (as many decodes as the write made encodes), and only after the warp. The
writer holds each merged native chunk as an array before encoding it, so this stream takes it
from there (``ingest.publish.write.apply_plan``'s ``sink``):

* every native chunk is halved into its *partial* at once, in the writer thread that merged
  it, at the time steps the commit changes: the 2 x 2 blocks that lie inside the chunk, plus
  its raw edge row when the chunk height is odd (625 on the NL grid: the block straddling two
  chunk rows needs both);
* when every chunk row under a level chunk row has arrived (a row the commit does not touch
  is read from the store as it is), the level chunks of that row are assembled from the
  partials, encoded and staged, and handed as arrays to the next level the same way.

Memory is a few chunk rows' partials (a quarter of the pixels of the changed steps), per
variable; nothing the commit wrote is decoded again. The bytes are those ``update_overviews``
would stage (the same reduction of the same pixels, the same codec). What the stream did not
see (published steps moved by an insertion, the executor path) ``update_overviews`` still
does afterwards.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ingest.errors import StoreError
from ingest.grid import ChunkIndex, CubeGrid
from ingest.store import Transaction, join
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import VARIABLES
from ingest.overviews.aggregate import halve, reduction
from ingest.overviews.levels import (
    ChunkId, has_overviews, level_chunks, level_factors, level_path, level_shape,
    stage_level_chunk,
)

Unit = tuple[int, int]  # (source time chunk, level chunk row): level chunks made together


@dataclass
class _Partial:
    """One source chunk at some time steps, halved: ``body`` (steps, rows, sx/2) covers its
    whole 2 x 2 blocks; ``edge`` (steps, 1, sx) is the row it shares with its partner chunk
    (odd chunk heights only)."""

    body: np.ndarray
    edge: np.ndarray | None


@dataclass
class _Level:
    factor: int
    src_path: str
    src_shape: tuple[int, int]
    dst_path: str
    # unit -> the source chunk rows the commit delivers, and the time steps it changes there
    expected: dict[Unit, set[int]] = field(default_factory=dict)
    steps: dict[Unit, set[int]] = field(default_factory=dict)
    # (variable, unit) -> source row -> source column -> partial
    arrived: dict[tuple[str, Unit], dict[int, dict[int, _Partial]]] = field(default_factory=dict)


class OverviewStream:
    """Level chunks made from the native chunks the writer merges (see the module doc)."""

    def __init__(self, tx: Transaction, grid: CubeGrid, group: str):
        self.tx, self.grid, self.group = tx, grid, group.strip("/")
        self.levels: list[_Level] = []
        src_path, src_shape = self.group, grid.shape
        for f in level_factors(grid.shape):
            self.levels.append(_Level(f, src_path, src_shape, level_path(self.group, f)))
            src_path, src_shape = level_path(self.group, f), level_shape(grid.shape, f)
        self.seen_native: set[ChunkId] = set()  # native chunks the writer reported
        self.staged = 0
        self._done: Counter = Counter()  # (factor, level chunk) -> variables computed
        self._lock = threading.Lock()
        self._metas: dict[str, ArrayMeta] = {}
        cy = grid.chunk_shape[0]
        self._ratio = [2 * level_chunks(grid)[1] // cy] + [2] * (len(self.levels) - 1)

    # -- the writer's side (``ingest.publish.chunks.ChunkSink``) ------------------------------------------
    def expect(self, k: int, chunks: Iterable[ChunkIndex], steps: Iterable[int]) -> None:
        """Before the writing starts: one block will deliver these native chunks of time chunk
        ``k``, changed at ``steps`` (indices on the new time axis)."""
        chunks, steps = list(chunks), set(steps)
        self.seen_native.update((k, iy, ix) for iy, ix in chunks)
        rows = {iy for iy, _ in chunks}
        first = self.levels[0]
        for r in rows:
            unit = (k, r // self._ratio[0])
            first.expected.setdefault(unit, set()).add(r)
            first.steps.setdefault(unit, set()).update(steps)
        rows = {r // self._ratio[0] for r in rows}
        for i, level in enumerate(self.levels[1:], 1):  # a level's source time chunk is one step
            for t in steps:
                for r in rows:
                    unit = (t, r // self._ratio[i])
                    level.expected.setdefault(unit, set()).add(r)
                    level.steps.setdefault(unit, set()).add(t)
            rows = {r // self._ratio[i] for r in rows}

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        """The final native chunks (all time steps of time chunk ``k``) of one variable."""
        by_row: dict[int, dict[int, np.ndarray]] = {}
        for (iy, ix), a in arrays.items():
            by_row.setdefault(iy, {})[ix] = a
        for iy, cols in sorted(by_row.items()):
            self._arrive(0, var, k, iy, cols)

    # -- level by level ----------------------------------------------------------------------
    def _arrive(self, i: int, var: str, tk: int, row: int, cols: dict[int, np.ndarray]) -> None:
        """Source row ``row`` (of source time chunk ``tk``) of level ``i`` is final over
        ``cols`` (arrays holding every step of the source chunk)."""
        level = self.levels[i]
        unit = (tk, row // self._ratio[i])
        steps = sorted(level.steps.get(unit, ()))
        if not steps:
            return
        spec = VARIABLES[var]
        src = self._meta(join(level.src_path, var))
        local = [t - tk * src.chunks[0] for t in steps]
        parts = {c: self._partial(level, src, a[local], row, c, spec) for c, a in cols.items()}
        with self._lock:
            got = level.arrived.setdefault((var, unit), {})
            got.setdefault(row, {}).update(parts)
            if set(got) < level.expected.get(unit, set()):
                return  # a chunk row of the unit is still to come
            del level.arrived[(var, unit)]
        self._compute(i, var, unit, got)

    def _compute(self, i: int, var: str, unit: Unit, got: dict[int, dict[int, _Partial]]) -> None:
        """Assemble, stage and pass on the level chunks of ``unit`` over the columns below
        which something arrived; missing children are read from the transaction."""
        level = self.levels[i]
        tk, jrow = unit
        steps = sorted(level.steps[unit])
        spec = VARIABLES[var]
        src = self._meta(join(level.src_path, var))
        dst = self._meta(join(level.dst_path, var))
        _, sy, sx = src.chunks
        _, dy, dx = dst.chunks
        ry, rx = 2 * dy // sy, 2 * dx // sx
        out_cols: dict[int, np.ndarray] = {}
        for jcol in sorted({c // rx for cols in got.values() for c in cols}):
            out = np.full((len(steps), dy, dx), spec.fill_value, dtype=dst.dtype)
            for m in range(ry // 2):  # pairs of source chunk rows
                for b in range(rx):
                    col = jcol * rx + b
                    top, bottom = (got.get(jrow * ry + 2 * m + a, {}).get(col) or
                                   self._read_partial(level, src, var, tk, steps,
                                                      jrow * ry + 2 * m + a, col, spec)
                                   for a in range(2))
                    rows = m * sy
                    half = slice(b * (sx // 2), (b + 1) * (sx // 2))
                    n_top = top.body.shape[1]
                    out[:, rows:rows + n_top, half] = top.body
                    if top.edge is not None:  # odd heights: the blocks across the two chunks
                        both = np.concatenate([top.edge, bottom.edge], axis=1)
                        out[:, rows + n_top:rows + n_top + 1, half] = halve(
                            both, reduction(spec), spec.fill_value)
                        n_top += 1
                    out[:, rows + n_top:rows + sy, half] = bottom.body
            for n, t in enumerate(steps):
                stage_level_chunk(self.tx, dst, f"{join(level.dst_path, var)}/{t}.{jrow}.{jcol}",
                                  out[n:n + 1])
            out_cols[jcol] = out
        with self._lock:
            self.staged += len(out_cols) * len(steps)
            for jcol in out_cols:
                for t in steps:
                    self._done[(level.factor, (t, jrow, jcol))] += 1
        if i + 1 < len(self.levels):
            for n, t in enumerate(steps):
                self._arrive(i + 1, var, t, jrow, {c: a[n:n + 1] for c, a in out_cols.items()})

    def _partial(self, level: _Level, src: ArrayMeta, a: np.ndarray, row: int, col: int,
                 spec) -> _Partial:
        _, sy, sx = src.chunks
        fill, how = spec.fill_value, reduction(spec)
        # what lies outside the source array (its ragged edge) is nodata
        rows = level.src_shape[0] - row * sy
        cols = level.src_shape[1] - col * sx
        if rows < sy or cols < sx:
            a = a.copy()
            a[:, max(rows, 0):, :] = fill
            a[:, :, max(cols, 0):] = fill
        has = (a != fill).any(axis=0)
        if not has.any():  # nothing there (a new time chunk's neighbours): no halving
            return _empty_partial(a.shape, a.dtype, fill)
        # the body: whole 2 x 2 blocks from row ``o``; odd heights leave one edge row
        o = 1 if sy % 2 and row % 2 else 0
        nb = sy // 2
        # (a copy: a view would keep the whole chunk alive while the partial waits)
        edge = None if sy % 2 == 0 else (a[:, :1] if o else a[:, sy - 1:]).copy()
        body = np.full((a.shape[0], nb, sx // 2), fill, dtype=a.dtype)
        # DESIGN CHOICE: only the 2 x 2 aligned box holding data is reduced (the coarse levels'
        # chunks are mostly empty); the rest of the body is nodata by construction
        rr = np.flatnonzero(has[o:o + 2 * nb].any(axis=1))
        cc = np.flatnonzero(has.any(axis=0))
        if rr.size:
            r0, r1 = rr[0] // 2 * 2, (rr[-1] // 2 + 1) * 2
            c0, c1 = cc[0] // 2 * 2, min((cc[-1] // 2 + 1) * 2, sx)
            body[:, r0 // 2:r1 // 2, c0 // 2:c1 // 2] = halve(a[:, o + r0:o + r1, c0:c1], how, fill)
        return _Partial(body, edge)

    def _read_partial(self, level: _Level, src: ArrayMeta, var: str, tk: int, steps: list[int],
                      row: int, col: int, spec) -> _Partial:
        """A child the commit does not change (at these steps), as the transaction holds it."""
        key = f"{join(level.src_path, var)}/{tk}.{row}.{col}"
        shape = (len(steps), *src.chunks[1:])
        raw = self.tx.get(key)
        if raw is None:
            return _empty_partial(shape, src.dtype, spec.fill_value)
        try:
            a = src.decode(raw)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise StoreError(f"store chunk {key} is damaged ({exc})") from exc
        return self._partial(level, src, a[[t - tk * src.chunks[0] for t in steps]], row, col, spec)

    def _meta(self, path: str) -> ArrayMeta:
        with self._lock:
            meta = self._metas.get(path)
        if meta is None:
            meta = self.tx.array(path)
            with self._lock:
                self._metas[path] = meta
        return meta

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> None:
        """Compute the units still waiting for a chunk row that never came (a writer that
        delivered less than it announced), level by level."""
        for i, level in enumerate(self.levels):
            with self._lock:
                waiting = sorted(level.arrived.items())
                level.arrived.clear()
            for (var, unit), got in waiting:
                self._compute(i, var, unit, got)

    def done(self, factor: int) -> set[ChunkId]:
        """Level chunks (step, row, column) of level ``factor`` computed for every variable."""
        return {c for (f, c), n in self._done.items() if f == factor and n == len(VARIABLES)}


def _empty_partial(shape: tuple[int, int, int], dtype, fill) -> _Partial:
    """The partial of an all-fill chunk of ``shape`` (steps, sy, sx)."""
    n, sy, sx = shape
    edge = np.full((n, 1, sx), fill, dtype) if sy % 2 else None
    return _Partial(np.full((n, sy // 2, sx // 2), fill, dtype), edge)


def overview_stream(tx: Transaction, grid: CubeGrid, group: str) -> OverviewStream | None:
    """A stream for a commit into ``group``; None when the group has no overviews, its levels
    must be rebuilt first (``update_overviews`` does that) or the native chunk width is odd
    (the halves of a chunk would not be whole level pixels)."""
    group = group.strip("/")
    if grid.chunk_shape[1] % 2 or not has_overviews(tx, group):
        return None
    for f in level_factors(grid.shape):
        path = join(level_path(group, f), "B04")
        if not tx.is_array(path) or tx.array(path).chunks != level_chunks(grid):
            return None
    return OverviewStream(tx, grid, group)
