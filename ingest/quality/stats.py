"""Per (time step, H3 cell) statistics of the scene classification, from SCL/CLD/SNW chunks.

Counts are exact integers per cell; what the store keeps is derived from them
(``ingest.quality.group``): the valid pixel count and, per class group, the fraction of the
valid pixels, plus the mean cloud and snow probability.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ingest.quality.cells import CellIndex, chunk_cells

N_CLASSES = 12  # SCL 0..11; 0 is no data
SCL_FILL = 0
PROB_FILL = 255  # CLD/SNW fill (uint8 percent)

# stored fraction -> SCL classes it counts (of the valid pixels, SCL != 0)
FRACTIONS: dict[str, tuple[tuple[int, ...], str]] = {
    "clear": ((4, 5, 6), "clear view of the surface: vegetation, not vegetated or water (SCL 4, 5, 6)"),
    "cloud": ((8, 9, 10), "cloud: medium or high probability, or thin cirrus (SCL 8, 9, 10)"),
    "vegetation": ((4,), "vegetation (SCL 4)"),
    "not_vegetated": ((5,), "not vegetated (SCL 5)"),
    "water": ((6,), "water (SCL 6)"),
    "cloud_shadow": ((3,), "cloud shadow (SCL 3)"),
    "cloud_medium": ((8,), "cloud, medium probability (SCL 8)"),
    "cloud_high": ((9,), "cloud, high probability (SCL 9)"),
    "thin_cirrus": ((10,), "thin cirrus (SCL 10)"),
    "snow": ((11,), "snow or ice (SCL 11)"),
}
# cld_mean/snw_mean: mean of the CLD/SNW values present (not fill) in the cell
MEANS = {"cld_mean": "CLD", "snw_mean": "SNW"}


@dataclass
class Rows:
    """Exact sums for some time steps over every cell of the axis."""

    counts: np.ndarray  # (steps, cells, N_CLASSES) int64
    prob_sum: dict[str, np.ndarray]  # "CLD" -> (steps, cells) float64, sum of percent values
    prob_n: dict[str, np.ndarray]  # "CLD" -> (steps, cells) int64

    @classmethod
    def zeros(cls, steps: int, cells: int) -> "Rows":
        return cls(np.zeros((steps, cells, N_CLASSES), np.int64),
                   {v: np.zeros((steps, cells)) for v in MEANS.values()},
                   {v: np.zeros((steps, cells), np.int64) for v in MEANS.values()})

    @property
    def valid(self) -> np.ndarray:
        return self.counts[..., 1:].sum(axis=-1)

    def fractions(self) -> dict[str, np.ndarray]:
        """Every stored (steps, cells) array: ``valid`` (uint32), fractions and means (float32,
        NaN where the cell has no valid pixel)."""
        valid = self.valid
        out: dict[str, np.ndarray] = {"valid": valid.astype(np.uint32)}
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, (classes, _) in FRACTIONS.items():
                n = self.counts[..., list(classes)].sum(axis=-1)
                out[name] = np.where(valid > 0, n / valid, np.nan).astype(np.float32)
            for name, var in MEANS.items():
                n = self.prob_n[var]
                out[name] = np.where(n > 0, self.prob_sum[var] / np.maximum(n, 1) / 100.0,
                                     np.nan).astype(np.float32)
        return out


def add_chunk(rows: Rows, row_of: dict[int, int], index: CellIndex, chunk: tuple[int, int],
              k: int, tc: int, scl: np.ndarray, probs: dict[str, np.ndarray | None]) -> None:
    """Add one (time chunk ``k``, spatial ``chunk``) of SCL (and CLD/SNW) to the rows of the
    time steps in ``row_of`` (time index -> row) that fall in that time chunk.

    DESIGN CHOICE: one ``bincount`` per array and step over a joint key (cell, value): SCL
    classes (12 values) and the uint8 percent of CLD/SNW (256 values, 255 = fill) give exact
    counts and sums without masking or copying the pixels. The arrays are independent (SCL
    gives the counts, CLD/SNW their own sums), so each can be added as soon as it is made
    (``StepSums``)."""
    add_array(rows, row_of, index, chunk, k, tc, "SCL", scl)
    for var, data in probs.items():
        if data is not None:
            add_array(rows, row_of, index, chunk, k, tc, var, data)


def _sums(index: CellIndex, chunk: tuple[int, int], step: np.ndarray, var: str):
    """(positions on the cell axis, sums) of one time step of one chunk of ``var``."""
    cc = chunk_cells(index, chunk)
    ncl = len(cc.positions) + 1  # + outside
    keep = cc.positions >= 0
    pos = cc.positions[keep]
    lab = cc.labels
    if var == "SCL":
        counts = np.bincount(lab * N_CLASSES + step.ravel(), minlength=ncl * N_CLASSES)
        return pos, (counts.reshape(ncl, N_CLASSES)[:-1][keep],)
    hist = np.bincount(lab * 256 + step.ravel(), minlength=ncl * 256).reshape(ncl, 256)
    hist = hist[:-1][keep, :PROB_FILL]
    return pos, (hist @ np.arange(PROB_FILL, dtype=np.float64), hist.sum(axis=1))


def _add(rows: Rows, r: int, var: str, pos: np.ndarray, sums: tuple) -> None:
    if var == "SCL":
        rows.counts[r, pos] += sums[0]
    else:
        rows.prob_sum[var][r, pos] += sums[0]
        rows.prob_n[var][r, pos] += sums[1]


def add_array(rows: Rows, row_of: dict[int, int], index: CellIndex, chunk: tuple[int, int],
              k: int, tc: int, var: str, data: np.ndarray) -> None:
    """``add_chunk`` for one of SCL, CLD, SNW."""
    for t, r in row_of.items():
        if t // tc == k:
            _add(rows, r, var, *_sums(index, chunk, data[t - k * tc], var))


ATLAS_VARIABLES = ("SCL", *MEANS.values())


class StepSums:
    """The sums of some time steps, added chunk by chunk while the imagery is written.

    The writer (``ingest.publish``) holds every chunk it merges as an array; adding it here
    spares decoding it again from the store (``group.compute_rows``). Thread-safe (writer
    threads add at once); the bincounts run outside the lock. Every value is an exact
    integer (the float sums are sums of integers far below 2**53), so the order in which
    chunks arrive does not change a bit of the result. As in ``compute_rows``, CLD/SNW count
    only where the SCL chunk is stored (holds a class somewhere), so their sums wait for the
    SCL chunk of the same place.

    In a worker process, ``sparse()`` gives only the cells the worker's chunks touched, which
    the committer adds with ``add_sparse``."""

    def __init__(self, index: CellIndex, steps, tc: int) -> None:
        self.index, self.tc = index, tc
        self.steps = tuple(sorted(steps))
        self.row_of = {t: r for r, t in enumerate(self.steps)}
        self.rows = Rows.zeros(len(self.steps), len(index))
        self.touched = np.zeros(len(index), dtype=bool)
        self._scl_stored: dict[tuple, bool] = {}  # (k, chunk) -> whether its SCL chunk is stored
        self._waiting: dict[tuple, list] = {}  # (k, chunk) -> CLD/SNW sums waiting for SCL
        self._lost = False  # some chunks' sums will never arrive (``give_up``)
        self._lock = threading.Lock()

    def add(self, var: str, k: int, chunk: tuple[int, int], data: np.ndarray) -> None:
        """One merged chunk of ``var`` (every time step of time chunk ``k``)."""
        if var not in ATLAS_VARIABLES:
            return
        at = (k, tuple(int(c) for c in chunk))
        sums = [(r, var, *_sums(self.index, at[1], data[t - k * self.tc], var))
                for t, r in self.row_of.items() if t // self.tc == k]
        with self._lock:
            if var == "SCL":
                stored = self._scl_stored[at] = bool((data != SCL_FILL).any())
                sums += self._waiting.pop(at, [])
                if not stored:  # not stored: compute_rows counts nothing here
                    return
            elif at not in self._scl_stored:
                self._waiting.setdefault(at, []).extend(sums)
                return
            elif not self._scl_stored[at]:
                return
            for r, v, pos, s in sums:
                _add(self.rows, r, v, pos, s)
                self.touched[pos] = True

    def give_up(self) -> None:
        """Some chunks will not be added: the sums must not be used."""
        self._lost = True

    def complete(self) -> bool:
        """Whether every chunk was added (``give_up`` was not called) and every CLD/SNW
        chunk found its SCL chunk."""
        with self._lock:
            return not self._waiting and not self._lost

    def sparse(self) -> tuple:
        """(steps, cell positions, their rows): what a worker sends back."""
        pos = np.flatnonzero(self.touched)
        rows = self.rows
        return (self.steps, pos, rows.counts[:, pos],
                {v: rows.prob_sum[v][:, pos] for v in MEANS.values()},
                {v: rows.prob_n[v][:, pos] for v in MEANS.values()})

    def add_sparse(self, part: tuple) -> None:
        steps, pos, counts, prob_sum, prob_n = part
        ix = np.ix_([self.row_of[t] for t in steps], pos)
        with self._lock:
            self.rows.counts[ix] += counts
            for v in MEANS.values():
                self.rows.prob_sum[v][ix] += prob_sum[v]
                self.rows.prob_n[v][ix] += prob_n[v]
            self.touched[pos] = True
