"""H3 cells on the cube's grid: the cell axis, and which cell each pixel belongs to.

A pixel belongs to the H3 cell that holds its centre (``h3.latlng_to_cell`` of the pixel
centre, taken to WGS 84 lon/lat with the grid's pinned coordinate operation,
``grid.pinned_operation``). Calling ``latlng_to_cell`` for every 10 m pixel would cost about
a second per chunk, so the assignment is computed from the cells' polygons instead:

DESIGN CHOICE: each cell's boundary (``h3.cell_to_boundary``) is taken into the grid's CRS
once, and the pixel centres inside it are found row by row (a scanline over the polygon's
edges, half-open so that two neighbours sharing an edge never both take a pixel). H3 cell
edges are great-circle arcs; in the grid's CRS (RD New) they are drawn as straight lines
between the vertices. The two differ at an edge's middle by 0.3 mm at resolution 7
(1.4 km edges), 1.6 cm at 5 and 7 µm at 9 (measured near Delft: the great-circle midpoint
against the straight segment's, in RD), far below a 10 m pixel. So the assignment equals ``latlng_to_cell`` for
every pixel whose centre is farther than that from a cell edge -- in practice for every
pixel (``tests/test_quality.py`` takes ``latlng_to_cell`` of every pixel of its test window
as the reference of the statistics). A pixel the
polygons leave unassigned (floating-point ties at a vertex) gets ``latlng_to_cell`` itself.
It costs a few ms per 625 x 500 chunk and is cached per process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import h3
import numpy as np
from pyproj import Transformer

from ingest.errors import ConfigError
from ingest.grid import ChunkIndex, CubeGrid, pinned_operation

DEFAULT_RESOLUTION = 7  # ~5.2 km² per cell, edge ~1.4 km
MIN_RESOLUTION, MAX_RESOLUTION = 5, 11


def check_resolution(res: int) -> int:
    """DESIGN CHOICE: 5..11. Coarser cells make class counts too large to recover exactly
    from float32 fractions (2.5 M pixels at 5), finer ones more than 65 535 cells per chunk."""
    if not MIN_RESOLUTION <= int(res) <= MAX_RESOLUTION:
        raise ConfigError(f"H3 resolution {res} is not supported; use {MIN_RESOLUTION}..{MAX_RESOLUTION} "
                          f"(7: ~5.2 km² cells, the default)")
    return int(res)


@lru_cache(maxsize=8)
def to_lonlat(grid_crs: str) -> Transformer:
    """Grid CRS -> WGS 84 (lon, lat), the pinned grid-free operation (DESIGN.md §2)."""
    return Transformer.from_pipeline(pinned_operation(grid_crs, "EPSG:4326"))


def grid_lonlat(grid: CubeGrid, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    return to_lonlat(grid.crs).transform(np.asarray(xs, float), np.asarray(ys, float))


def lonlat_grid(grid: CubeGrid, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    return to_lonlat(grid.crs).transform(np.asarray(lon, float), np.asarray(lat, float),
                                         direction="INVERSE")


@dataclass(frozen=True, eq=False)
class CellIndex:
    """The cell axis of a grid at one resolution: the sorted uint64 ids of every cell that
    overlaps the grid's bounds (a few at the edges may hold no pixel centre)."""

    grid: CubeGrid
    resolution: int
    cells: np.ndarray

    def __len__(self) -> int:
        return len(self.cells)

    def position(self, cells) -> np.ndarray:
        """Index of each cell id on the axis (-1 where it is not on it)."""
        cells = np.asarray(cells, dtype=np.uint64)
        if not len(self.cells):
            return np.full(cells.shape, -1)
        pos = np.clip(np.searchsorted(self.cells, cells), 0, len(self.cells) - 1)
        return np.where(self.cells[pos] == cells, pos, -1)


def cells_in_bounds(grid: CubeGrid, bounds, resolution: int) -> list[str]:
    """Every cell overlapping a rectangle of the grid's CRS (its edges densified)."""
    left, bottom, right, top = bounds
    n = 64
    xs = np.r_[np.linspace(left, right, n), np.full(n, right), np.linspace(right, left, n), np.full(n, left)]
    ys = np.r_[np.full(n, top), np.linspace(top, bottom, n), np.full(n, bottom), np.linspace(bottom, top, n)]
    lon, lat = grid_lonlat(grid, xs, ys)
    return list(h3.h3shape_to_cells_experimental(h3.LatLngPoly(list(zip(lat, lon))), resolution,
                                                 contain="overlap"))


def rings_xy(grid: CubeGrid, cells) -> tuple[np.ndarray, np.ndarray]:
    """Closed vertex rings (n, V) of ``cells`` (ids, str or int) in the grid's CRS, padded by
    repeating the first vertex."""
    cells = [c if isinstance(c, str) else h3.int_to_str(int(c)) for c in cells]
    if not cells:
        return np.empty((0, 2)), np.empty((0, 2))
    bounds = [h3.cell_to_boundary(c) for c in cells]
    nv = max(len(b) for b in bounds) + 1
    lat = np.empty((len(cells), nv))
    lon = np.empty((len(cells), nv))
    for i, b in enumerate(bounds):
        lat[i], lon[i] = np.array(list(b) + [b[0]] * (nv - len(b))).T
    x, y = lonlat_grid(grid, lon.ravel(), lat.ravel())
    return x.reshape(lon.shape), y.reshape(lon.shape)


def _rings(grid: CubeGrid, cells) -> tuple[np.ndarray, np.ndarray]:
    """``rings_xy`` in pixel coordinates (column, row of pixel centres)."""
    x, y = rings_xy(grid, cells)
    left, _, _, top = grid.bounds
    res = grid.resolution
    return (x - left) / res - 0.5, (top - y) / res - 0.5


def _runs(u: np.ndarray, v: np.ndarray, row_lo: int, row_hi: int, col_lo: int, col_hi: int):
    """Pixel runs of convex polygons: (cell, row, start, stop) arrays, rows in [row_lo, row_hi),
    columns clipped to [col_lo, col_hi). A pixel centre (row i, column j) is inside when
    xa <= j < xb on its row, and an edge covers the rows v0 <= i < v1 (half-open both ways:
    a pixel centre on an edge shared by two cells goes to exactly one of them).

    Vectorised over every (cell, edge, row): a convex polygon crosses each of its rows once on
    an edge going down and once on an edge going up, so the two ends of a run are scattered
    from those two sets of edges, with no search."""
    u0, u1, v0, v1 = u[:, :-1], u[:, 1:], v[:, :-1], v[:, 1:]
    lo = np.ceil(np.minimum(v0, v1)).astype(np.int64)
    hi = np.ceil(np.maximum(v0, v1)).astype(np.int64)
    lo = np.maximum(lo, row_lo)
    hi = np.minimum(hi, row_hi)
    length = np.maximum(hi - lo, 0)
    r0 = np.maximum(np.ceil(v.min(axis=1)).astype(np.int64), row_lo)
    r1 = np.minimum(np.ceil(v.max(axis=1)).astype(np.int64), row_hi)
    nrows = np.maximum(r1 - r0, 0)
    base = np.cumsum(nrows) - nrows
    cell_of_edge = np.broadcast_to(np.arange(len(u))[:, None], length.shape)
    sel = length.ravel() > 0
    L = length.ravel()[sel]
    total = int(L.sum())
    e_cell = cell_of_edge.ravel()[sel]
    e_lo = lo.ravel()[sel]
    eu0, ev0 = u0.ravel()[sel], v0.ravel()[sel]
    eu1, ev1 = u1.ravel()[sel], v1.ravel()[sel]
    rep = np.repeat(np.arange(len(L)), L)
    row = e_lo[rep] + np.arange(total) - np.repeat(np.cumsum(L) - L, L)
    x = eu0[rep] + (row - ev0[rep]) * ((eu1 - eu0) / (ev1 - ev0))[rep]
    key = base[e_cell[rep]] + row - r0[e_cell[rep]]
    down = (ev1 > ev0)[rep]
    a = np.full(int(nrows.sum()), np.nan)
    b = np.full(int(nrows.sum()), np.nan)
    a[key[down]] = x[down]
    b[key[~down]] = x[~down]
    start = np.clip(np.ceil(np.fmin(a, b)), col_lo, col_hi)
    stop = np.clip(np.ceil(np.fmax(a, b)), col_lo, col_hi)
    ok = np.isfinite(a) & np.isfinite(b) & (stop > start)
    cells = np.repeat(np.arange(len(u)), nrows)
    rows = np.repeat(r0, nrows) + np.arange(int(nrows.sum())) - np.repeat(base, nrows)
    return cells[ok], rows[ok], start[ok].astype(np.int64), stop[ok].astype(np.int64)


@lru_cache(maxsize=4)
def _cell_index(grid_json: str, resolution: int) -> CellIndex:
    grid = CubeGrid.from_dict(json.loads(grid_json))
    found = cells_in_bounds(grid, grid.bounds, resolution)
    return CellIndex(grid, resolution, np.sort(np.array([h3.str_to_int(c) for c in found], dtype=np.uint64)))


def cell_index(grid: CubeGrid, resolution: int = DEFAULT_RESOLUTION) -> CellIndex:
    """The cell axis of ``grid`` (cached per process; ~0.1 s for the NL grid at 7)."""
    return _cell_index(grid.to_json(), check_resolution(resolution))


@dataclass(frozen=True, eq=False)
class ChunkCells:
    """Pixel -> cell of one spatial chunk: ``labels`` (the chunk's pixels in C order, int32,
    the keys ``bincount`` is given) index ``positions`` (positions on the cell axis); pixels
    outside the grid hold ``len(positions)``."""

    positions: np.ndarray
    labels: np.ndarray


# DESIGN CHOICE: 64 maps (1.25 MB each: 80 MB) cover the chunk rows the writer has in flight
# (the writer threads sum SCL/CLD/SNW of a chunk one after the other, rows north to south);
# more would sit beside the writer's own peak memory.
@lru_cache(maxsize=64)
def _chunk_cells(index: CellIndex, chunk: ChunkIndex) -> ChunkCells:
    grid = index.grid
    w = grid.chunk_window(chunk)
    r_lo, c_lo = int(w.row_off), int(w.col_off)
    r_hi, c_hi = r_lo + int(w.height), c_lo + int(w.width)
    b = grid.window_bounds(w)
    pad = grid.resolution
    cand = sorted(cells_in_bounds(grid, (b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad), index.resolution),
                  key=h3.str_to_int)
    cand_ids = np.array([h3.str_to_int(c) for c in cand], dtype=np.uint64)
    u, v = _rings(grid, cand)
    ci, rows, start, stop = _runs(u, v, r_lo, r_hi, c_lo, c_hi)
    cy, cx = grid.chunk_shape
    outside = len(cand)
    unset = outside + 1
    lengths = stop - start
    first = (rows - r_lo) * cx + (start - c_lo)  # flat offset of each run in the chunk
    order = np.argsort(first, kind="stable")
    first, lengths, ci = first[order], lengths[order], ci[order]
    gaps = np.diff(np.r_[first, cy * cx]) - lengths  # unassigned pixels after each run
    lead = int(first[0]) if len(first) else cy * cx
    if len(first) and (gaps >= 0).all():
        # DESIGN CHOICE: the runs sorted by position tile the chunk; one ``repeat`` of
        # (run, gap) pairs writes the whole map (a scatter of every pixel costs ~5x more)
        vals = np.empty(2 * len(ci) + 1, dtype=np.uint16)
        vals[0], vals[1::2], vals[2::2] = unset, ci, unset
        reps = np.empty(2 * len(ci) + 1, dtype=np.int64)
        reps[0], reps[1::2], reps[2::2] = lead, lengths, gaps
        flat = np.repeat(vals, reps)
    else:  # overlapping runs (a float tie on a shared edge): scatter, the later cell wins
        flat = np.full(cy * cx, unset, dtype=np.uint16)
        if len(lengths):
            offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
            pos = np.repeat(first, lengths) + np.arange(int(lengths.sum())) - offsets
            flat[pos] = np.repeat(ci, lengths).astype(np.uint16)
    local = flat.reshape(cy, cx)
    local[r_hi - r_lo:, :] = outside
    local[:, c_hi - c_lo:] = outside
    missing = np.argwhere(local == unset)
    positions = cand_ids
    if len(missing):  # ties at a vertex: ask h3 itself
        left, _, _, top = grid.bounds
        res = grid.resolution
        xs = left + (c_lo + missing[:, 1] + 0.5) * res
        ys = top - (r_lo + missing[:, 0] + 0.5) * res
        lon, lat = grid_lonlat(grid, xs, ys)
        ids = np.array([h3.str_to_int(h3.latlng_to_cell(a, o, index.resolution))
                        for a, o in zip(lat, lon)], dtype=np.uint64)
        extra = np.setdiff1d(ids, positions)
        positions = np.concatenate([positions, extra])
        outside = len(positions)
        local[local == len(cand)] = outside
        lookup = {int(c): i for i, c in enumerate(positions)}
        local[missing[:, 0], missing[:, 1]] = [lookup[int(c)] for c in ids]
    return ChunkCells(index.position(positions), local.ravel().astype(np.int32))


def chunk_cells(index: CellIndex, chunk: ChunkIndex) -> ChunkCells:
    """Which cell each pixel of ``chunk`` belongs to (cached per process)."""
    return _chunk_cells(index, tuple(int(c) for c in chunk))
