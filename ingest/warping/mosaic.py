"""Mosaic: combine the products of one datatake into one time step.

DESIGN CHOICE: nodata never overwrites data, and where several products have data the one
with the highest priority (``plan.priority_key``) wins. Callers add products highest
priority first, so "first valid value wins" implements the rule with one masked copy per
product and no per-pixel bookkeeping; the result depends only on the set of products.
"""
from __future__ import annotations

import numpy as np


def fill_gaps(out: np.ndarray, data: np.ndarray, fill_value: int) -> None:
    """Copy ``data`` into the pixels of ``out`` that still hold ``fill_value`` (in place)."""
    gaps = out == fill_value
    if not gaps.any():
        return
    np.copyto(out, data, where=gaps & (data != fill_value))


def mosaic(layers: list[np.ndarray], fill_value: int) -> np.ndarray:
    """First-valid-wins composite of ``layers`` given in priority order."""
    if not layers:
        raise ValueError("mosaic of no layers")
    out = layers[0].copy()
    for data in layers[1:]:
        fill_gaps(out, data, fill_value)
    return out
