"""Overview levels computed from the chunks the writer has in memory, while it still warps.

DESIGN CHOICE (DESIGN.md §12): the publish hook ``update_overviews`` recomputes level 2 from
the native chunks the commit staged, which means decoding again every chunk the writer has
just encoded (as many decodes as the write made encodes), and only after the warp, when the
second core has nothing else to do. The writer holds each merged native chunk as an array
before encoding it, so this stream takes it from there (``ingest.write.apply_plan``'s
``sink``):

* every native chunk is halved into its *partial* at once, in the writer thread that merged
  it: the 2 x 2 blocks that lie inside the chunk, plus its raw edge row when the chunk height
  is odd (625 on the NL grid: the block straddling two chunk rows needs both);
* when both chunk rows under a level chunk row have arrived (or the commit does not touch one
  of them: it is read from the store as it is), the level chunks of that row are assembled
  from the partials, encoded and staged, and handed as arrays to the next level the same way.

Memory is one chunk row's partials (a quarter of the pixels), per variable; nothing is
decoded that the commit wrote. The bytes are those ``update_overviews`` would stage (the same
reduction on the same pixels, the same codec). What the stream did not see (published steps
moved by an insertion, the executor path) ``update_overviews`` still does afterwards.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..errors import StoreError
from ..grid import ChunkIndex, CubeGrid
from ..store import Transaction, join
from ..store.zarrdocs import ArrayMeta
from ..variables import VARIABLES
from .aggregate import halve, reduction
from .pyramid import ChunkId, has_overviews, level_factors, level_path, level_shape


@dataclass
class _Partial:
    """One source chunk, halved: ``body`` (nt, rows, cx/2) covers its whole 2 x 2 blocks;
    ``edge`` (nt, 1, cx) is the row it shares with its partner chunk (odd chunk heights)."""

    body: np.ndarray
    edge: np.ndarray | None


@dataclass
class _Level:
    factor: int
    src_path: str
    src_shape: tuple[int, int]
    dst_path: str
    # (time chunk, level chunk row) -> the source chunk rows the commit will deliver
    expected: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    # (variable, time chunk, level chunk row) -> source row -> source column -> partial
    arrived: dict[tuple[str, int, int], dict[int, dict[int, _Partial]]] = field(default_factory=dict)


class OverviewStream:
    """Level chunks made from the native chunks the writer merges (see the module doc)."""

    def __init__(self, tx: Transaction, grid: CubeGrid, group: str, length: int):
        self.tx, self.grid, self.group, self.length = tx, grid, group.strip("/"), length
        self.factors = level_factors(grid.shape)
        self.levels: list[_Level] = []
        src_path, src_shape = self.group, grid.shape
        for f in self.factors:
            self.levels.append(_Level(f, src_path, src_shape, level_path(self.group, f)))
            src_path, src_shape = level_path(self.group, f), level_shape(grid.shape, f)
        self.seen_native: set[ChunkId] = set()  # native chunks the writer reported
        self.staged = 0
        self._done: Counter = Counter()  # (factor, level chunk) -> variables computed
        self._lock = threading.Lock()
        self._metas: dict[str, ArrayMeta] = {}

    # -- the writer's side (``ingest.write.ChunkSink``) ------------------------------------------
    def expect(self, k: int, chunks: Iterable[ChunkIndex]) -> None:
        """The writer will deliver these native chunks of time chunk ``k`` (before it starts)."""
        chunks = list(chunks)
        self.seen_native.update((k, iy, ix) for iy, ix in chunks)
        rows = {iy for iy, _ in chunks}
        for level in self.levels:
            for r in rows:
                level.expected.setdefault((k, r // 2), set()).add(r)
            rows = {r // 2 for r in rows}

    def merged(self, var: str, k: int, arrays: dict[ChunkIndex, np.ndarray]) -> None:
        """The final native chunks (all time steps of time chunk ``k``) of one variable."""
        by_row: dict[int, dict[int, np.ndarray]] = {}
        for (iy, ix), a in arrays.items():
            by_row.setdefault(iy, {})[ix] = a
        for iy, cols in sorted(by_row.items()):
            self._arrive(0, var, k, iy, cols)

    # -- level by level ----------------------------------------------------------------------
    def _arrive(self, i: int, var: str, k: int, row: int, cols: dict[int, np.ndarray]) -> None:
        level = self.levels[i]
        spec = VARIABLES[var]
        nt = self._nt(k)
        parts = {c: self._partial(level, var, a[:nt], row, c, spec.fill_value, reduction(spec))
                 for c, a in cols.items()}
        key = (var, k, row // 2)
        with self._lock:
            got = level.arrived.setdefault(key, {})
            got.setdefault(row, {}).update(parts)
            if set(got) < level.expected.get((k, row // 2), set()):
                return  # the other chunk row of the pair is still to come
            del level.arrived[key]
        self._compute(i, var, k, row // 2, got)

    def _compute(self, i: int, var: str, k: int, jrow: int,
                 got: dict[int, dict[int, _Partial]]) -> None:
        """Assemble, stage and pass on the level chunks of row ``jrow`` over the columns below
        which something arrived; missing children are read from the transaction."""
        level = self.levels[i]
        spec = VARIABLES[var]
        fill, how, nt = spec.fill_value, reduction(spec), self._nt(k)
        meta = self._meta(join(level.dst_path, var))
        tc, cy, cx = meta.chunks
        out_cols: dict[int, np.ndarray] = {}
        for jcol in sorted({c // 2 for cols in got.values() for c in cols}):
            out = np.full((tc, cy, cx), fill, dtype=meta.dtype)
            for b in range(2):
                col = 2 * jcol + b
                top, bottom = (got.get(2 * jrow + a, {}).get(col) or
                               self._read_partial(level, var, k, 2 * jrow + a, col, fill, how)
                               for a in range(2))
                half = slice(b * (cx // 2), (b + 1) * (cx // 2))
                n_top = top.body.shape[1]
                out[:nt, :n_top, half] = top.body
                if top.edge is not None:  # odd heights: the block across the two chunk rows
                    out[:nt, n_top:n_top + 1, half] = halve(np.concatenate([top.edge, bottom.edge], axis=1),
                                                           how, fill)
                    n_top += 1
                out[:nt, n_top:, half] = bottom.body
            key = f"{join(level.dst_path, var)}/{k}.{jrow}.{jcol}"
            if (out[:nt] != fill).any():
                self.tx.put(key, meta.encode(out))
            elif self.tx.get(key) is not None:
                self.tx.delete(key)
            out_cols[jcol] = out
        with self._lock:
            self.staged += len(out_cols)
            for jcol in out_cols:
                self._done[(level.factor, (k, jrow, jcol))] += 1
        if i + 1 < len(self.levels):
            self._arrive(i + 1, var, k, jrow, out_cols)

    def _partial(self, level: _Level, var: str, a: np.ndarray, row: int, col: int, fill,
                 how: str) -> _Partial:
        cy, cx = self.grid.chunk_shape
        # what lies outside the source array (its ragged edge) is nodata
        rows = level.src_shape[0] - row * cy
        cols = level.src_shape[1] - col * cx
        if rows < cy or cols < cx:
            a = a.copy()
            a[:, max(rows, 0):, :] = fill
            a[:, :, max(cols, 0):] = fill
        pos = row % 2
        if not (a != fill).any():  # nothing there (a new time chunk's neighbours): no halving
            return self._empty_partial(a, fill)
        if cy % 2 == 0:
            return _Partial(halve(a, how, fill), None)
        if pos == 0:
            return _Partial(halve(a[:, :cy - 1], how, fill), a[:, cy - 1:])
        return _Partial(halve(a[:, 1:], how, fill), a[:, :1])

    def _empty_partial(self, a: np.ndarray, fill) -> _Partial:
        """The partial of an all-fill chunk shaped like ``a`` (nt, cy, cx)."""
        nt, cy, cx = a.shape
        rows = cy // 2
        edge = np.full((nt, 1, cx), fill, a.dtype) if cy % 2 else None
        return _Partial(np.full((nt, rows, cx // 2), fill, a.dtype), edge)

    def _read_partial(self, level: _Level, var: str, k: int, row: int, col: int, fill,
                      how: str) -> _Partial:
        """A child the commit does not change, as the transaction holds it."""
        path = join(level.src_path, var)
        src = self._meta(path)
        raw = self.tx.get(f"{path}/{k}.{row}.{col}")
        if raw is None:
            return self._empty_partial(np.empty((self._nt(k), *src.chunks[1:]), src.dtype), fill)
        else:
            try:
                a = src.decode(raw)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise StoreError(f"store chunk {path}/{k}.{row}.{col} is damaged ({exc})") from exc
        return self._partial(level, var, a[:self._nt(k)], row, col, fill, how)

    def _nt(self, k: int) -> int:
        return min(self.grid.time_chunk, max(self.length - k * self.grid.time_chunk, 0))

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
        """Compute the rows still waiting for a chunk row that never came (a writer that
        delivered less than it announced), level by level."""
        for i, level in enumerate(self.levels):
            with self._lock:
                waiting = sorted(level.arrived.items())
                level.arrived.clear()
            for (var, k, jrow), got in waiting:
                self._compute(i, var, k, jrow, got)

    def done(self, factor: int) -> set[ChunkId]:
        """Level chunks of level ``factor`` computed for every variable."""
        return {c for (f, c), n in self._done.items() if f == factor and n == len(VARIABLES)}


def overview_stream(tx: Transaction, grid: CubeGrid, group: str, length: int) -> OverviewStream | None:
    """A stream for a commit into ``group`` that will publish ``length`` time steps; None when
    the group has no overviews, its levels must be rebuilt first (``update_overviews`` does
    that) or the chunk width is odd (the halves of a chunk would not be whole level pixels)."""
    group = group.strip("/")
    if grid.chunk_shape[1] % 2 or not has_overviews(tx, group):
        return None
    for f in level_factors(grid.shape):
        path = join(level_path(group, f), "B04")
        if not tx.is_array(path) or tx.array(path).chunks != (grid.time_chunk, *grid.chunk_shape):
            return None
    return OverviewStream(tx, grid, group, length)
