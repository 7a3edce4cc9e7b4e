"""Per (time step, H3 cell) statistics of the scene classification, from SCL/CLD/SNW chunks.

Counts are exact integers per cell; what the store keeps is derived from them
(``ingest.quality.group``): the valid pixel count and, per class group, the fraction of the
valid pixels, plus the mean cloud and snow probability.
"""
from __future__ import annotations

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
    counts and sums without masking or copying the pixels."""
    cc = chunk_cells(index, chunk)
    ncl = len(cc.positions) + 1  # + outside
    keep = cc.positions >= 0
    pos = cc.positions[keep]
    lab = cc.labels
    values = np.arange(PROB_FILL, dtype=np.float64)
    for t, r in row_of.items():
        if t // tc != k:
            continue
        s = scl[t - k * tc].ravel()
        counts = np.bincount(lab * N_CLASSES + s, minlength=ncl * N_CLASSES).reshape(ncl, N_CLASSES)
        rows.counts[r, pos] += counts[:-1][keep]
        for var, data in probs.items():
            if data is None:
                continue
            hist = np.bincount(lab * 256 + data[t - k * tc].ravel(), minlength=ncl * 256).reshape(ncl, 256)
            hist = hist[:-1][keep, :PROB_FILL]
            rows.prob_sum[var][r, pos] += hist @ values
            rows.prob_n[var][r, pos] += hist.sum(axis=1)
