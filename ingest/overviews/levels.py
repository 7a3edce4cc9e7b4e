"""The layout of the overview levels of an imagery group (a contract readers rely on): which
levels exist, their shape, transform and chunks, where they live, the multiscales attributes
of the ``overviews`` group, and how one level chunk is staged.

Computing the levels is ``pyramid`` (from the stored chunks) and ``stream`` (from the writer's
arrays); both depend on this module, never on each other.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ingest.grid import CubeGrid
from ingest.overviews.aggregate import reduction
from ingest.store import Transaction, join
from ingest.store.geozarr import (
    MULTISCALES, PROJ, SPATIAL, conventions, multiscales_layout, raster_group_attrs, spatial_attrs,
)
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import VARIABLES

OVERVIEWS = "overviews"


SMALLEST = 512  # the last level's larger side is at most this many pixels


ChunkId = tuple[int, int, int]  # native: (time chunk, row, column); levels: (step, row, column)


def level_factors(shape: tuple[int, int]) -> list[int]:
    """2, 4, 8, … until the level's larger side is at most ``SMALLEST`` pixels."""
    factors, f = [], 2
    while True:
        factors.append(f)
        if max(math.ceil(n / f) for n in shape) <= SMALLEST:
            return factors
        f *= 2


def level_shape(shape: tuple[int, int], f: int) -> tuple[int, int]:
    return (math.ceil(shape[0] / f), math.ceil(shape[1] / f))


def level_transform(grid: CubeGrid, f: int) -> list[float]:
    """GDAL geotransform of level ``f`` (same upper-left corner, pixels ``f`` times larger)."""
    left, _, _, top = grid.bounds
    r = grid.resolution * f
    return [left, r, 0.0, top, 0.0, -r]


def level_chunks(grid: CubeGrid) -> tuple[int, int, int]:
    """The chunks of every level array: one time step, twice the native chunk on each side."""
    cy, cx = grid.chunk_shape
    return (1, 2 * cy, 2 * cx)


def overviews_path(group: str) -> str:
    return join(group, OVERVIEWS)


def level_path(group: str, f: int) -> str:
    return join(group, OVERVIEWS, str(f))


def has_overviews(tx_or_store, group: str) -> bool:
    """Whether ``group`` has overviews (a ``Transaction``: as it would publish them)."""
    return tx_or_store.is_group(overviews_path(group))


def multiscales_attrs(grid: CubeGrid) -> dict:
    """The multiscale group's attributes: the zarr-conventions ``multiscales`` layout of the
    levels composed with ``proj:`` and ``spatial:`` (``ingest.store.geozarr``)."""
    layout = multiscales_layout(grid, level_factors(grid.shape))
    for entry in layout:
        entry["s2ingest:factor"] = int(entry["asset"])
    # Relative paths cannot point at the parent group: the first level says in words (and
    # with its absolute scale) that it derives from the native group "..".
    layout[0]["s2ingest:derived_from_native"] = True
    return {
        **conventions(MULTISCALES, PROJ, SPATIAL),
        "multiscales": {"layout": layout, "resampling_method": "average",
                        "s2ingest:resampling": {v: reduction(s) for v, s in VARIABLES.items()}},
        **spatial_attrs(grid),
        "title": "overviews (multiscale levels) of the parent group",
    }


def level_attrs(grid: CubeGrid, f: int) -> dict:
    """The attributes of level group ``f``: CF title and factor, ``proj:``/``spatial:`` of the level."""
    return {"title": f"overview level {f} ({grid.resolution * f:g} m)", "s2ingest_overview_factor": f,
            **raster_group_attrs(grid, f)}


def stage_level_chunk(tx: Transaction, meta: ArrayMeta, key: str, chunk: np.ndarray) -> None:
    """Stage one level chunk; one holding only fill values is not stored (removed if it was)."""
    if (chunk != meta.fill_value).any():
        tx.put(key, meta.encode(chunk))
    elif tx.get(key) is not None:
        tx.delete(key)


def levels_of(consolidated: dict) -> list[int]:
    """The level factors a group's consolidated metadata (``.zmetadata`` documents) lists."""
    attrs = consolidated.get(f"{OVERVIEWS}/.zattrs") or {}
    return [int(e["asset"]) for e in attrs.get("multiscales", {}).get("layout", [])]



class LevelsComputed(Protocol):
    """What ``update_overviews`` asks of the level chunks computed while the writer warped
    (``ingest.overviews.stream.OverviewStream``)."""

    seen_native: set
    staged: int

    def finish(self) -> None: ...

    def done(self, factor: int) -> set: ...
