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

import numpy as np

from ..variables import VariableSpec


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
    q = [a[..., i::2, j::2] for i in (0, 1) for j in (0, 1)]
    valid = [v != fill for v in q]
    if how == "mean":
        n = np.zeros(q[0].shape, dtype=np.uint8)
        s = np.zeros(q[0].shape, dtype=np.uint32)
        for v, ok in zip(q, valid):
            n += ok
            s += v
        if fill:
            s -= (4 - n).astype(np.uint32) * np.uint32(fill)
        out = np.full(n.shape, fill, dtype=a.dtype)
        has = n > 0
        nn = n[has].astype(np.uint32)
        out[has] = ((s[has] + nn // 2) // nn).astype(a.dtype)
        return out
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
