"""Halving one overview level into the next: 2 x 2 blocks, nodata-aware (pure numpy).

DESIGN CHOICE: every level is made from the level above it by 2 x 2 blocks (levels 2, 4, 8, …
form a chain, as the multiscales ``derived_from`` says), so a level chunk depends on exactly
four chunks of the level above: updating a publish costs the same at every level. The
reduction per variable kind:

- ``mean``: the mean of the valid (non-fill) values of the block, rounded half up to the
  integer encoding (``(sum + n // 2) // n``); fill where no value is valid. A fill value never
  drags a mean down (reflectance 0 is nodata, not black).
- ``mode``: the most frequent valid class (SCL); ties go to the lowest class code; fill where
  no value is valid. A class is never averaged into another one.
"""
from __future__ import annotations

import cv2
import numpy as np

from ingest.variables import VariableSpec


def reduction(spec: VariableSpec) -> str:
    """``mode`` for class variables (SCL), ``mean`` for everything else."""
    return "mode" if spec.kind == "classes" else "mean"


def pad_even(a: np.ndarray, fill) -> np.ndarray:
    """Pad the last two axes with ``fill`` to even lengths (the ragged edge of a level)."""
    h, w = a.shape[-2:]
    if h % 2 == 0 and w % 2 == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
    return np.pad(a, pad, constant_values=fill)


def halve(a: np.ndarray, how: str, fill) -> np.ndarray:
    """The next level of ``a`` (..., h, w): shape (..., ceil(h/2), ceil(w/2)), same dtype.

    Works on the four strided views of the 2 x 2 blocks (no copies): a few vector passes."""
    a = pad_even(a, fill)
    if how == "mean":
        return _mean(a, fill)
    q = [a[..., i::2, j::2] for i in (0, 1) for j in (0, 1)]
    valid = [v != fill for v in q]
    if how == "mode":
        if a.dtype.itemsize != 1:
            raise ValueError("mode reduction is for uint8 classes")
        # score = (how often the value occurs in its block) * 256 + (255 - value): the maximum
        # is the most frequent valid value, the lowest one on ties; fill scores 0
        best = np.zeros(q[0].shape, dtype=np.uint16)
        for v, ok in zip(q, valid):
            count = np.zeros(q[0].shape, dtype=np.uint16)
            for w in q:
                count += v == w
            score = (count * 256 + (255 - v.astype(np.uint16))) * ok
            np.maximum(best, score, out=best)
        out = (255 - (best & 255)).astype(a.dtype)
        out[best == 0] = fill
        return out
    raise ValueError(f"unknown reduction {how!r}")


def _mean(a: np.ndarray, fill) -> np.ndarray:
    """``mean`` of ``halve`` (even sizes), exact: OpenCV's area resampling of an exact 2x
    reduction is the mean of the 2 x 2 block in float32, exact here (a sum of four 16-bit
    values has at most 18 bits), so sum / count = mean(values) / mean(valid) is the correctly
    rounded quotient, and ``floor(q + 0.5)`` equals the integer ``(sum + n // 2) // n``."""
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    flat = a.reshape(-1, h, w)
    out = np.empty((flat.shape[0], h // 2, w // 2), dtype=a.dtype)
    for i, band in enumerate(flat):
        valid = band != fill
        values = band.astype(np.float32)
        if fill:
            values[~valid] = 0
        s = cv2.resize(values, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        n = cv2.resize(valid.view(np.uint8).astype(np.float32), (w // 2, h // 2),
                       interpolation=cv2.INTER_AREA)
        q = np.floor(cv2.divide(s, n) + 0.5)  # n == 0 gives 0 (OpenCV), replaced below
        q[n == 0] = fill
        out[i] = q
    return out.reshape(*lead, h // 2, w // 2)
