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
from ingest.store.zarrdocs import ArrayMeta
from ingest.variables import VARIABLES

OVERVIEWS = "overviews"


SMALLEST = 512  # the last level's larger side is at most this many pixels


MULTISCALES_UUID = "d35379db-88df-4056-af3a-620245f8e347"


GEO_PROJ_UUID = "f17cb550-5864-4468-aeb7-f3180cfb622f"


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
    """The multiscale group's attributes: zarr-conventions ``multiscales`` (v0.1.0) composed
    with ``geo-proj`` (``proj:*``) as the convention's README shows for geospatial data."""
    layout = []
    prev = None
    for f in level_factors(grid.shape):
        entry = {"asset": str(f),
                 "transform": {"scale": [2.0, 2.0] if prev else [float(f), float(f)],
                               "translation": [0.0, 0.0]},
                 "resampling_method": "average",
                 "proj:transform": _affine6(grid, f),
                 "proj:shape": list(level_shape(grid.shape, f)),
                 "s2ingest:factor": f}
        if prev is not None:
            entry["derived_from"] = str(prev)
        else:
            # Relative paths cannot point at the parent group: the first level says in words
            # (and with its absolute scale) that it derives from the native group "..".
            entry["s2ingest:derived_from_native"] = True
        layout.append(entry)
        prev = f
    left, bottom, right, top = grid.bounds
    return {
        "zarr_conventions_version": "0.1.0",
        "zarr_conventions": [
            {"uuid": MULTISCALES_UUID, "name": "multiscales",
             "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1.0/schema.json",
             "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1.0/README.md",
             "description": "Multiscale layout of zarr datasets"},
            {"uuid": GEO_PROJ_UUID, "name": "geo-proj",
             "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v0.1.0/schema.json",
             "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v0.1.0/README.md",
             "description": "Coordinate reference system information for geospatial data"},
        ],
        "multiscales": {"layout": layout, "resampling_method": "average",
                        "s2ingest:resampling": {v: reduction(s) for v, s in VARIABLES.items()}},
        "proj:code": grid.crs,
        "proj:spatial_dimensions": ["y", "x"],
        "proj:transform": _affine6(grid, 1),
        "proj:bbox": [left, bottom, right, top],
        "title": "overviews (multiscale levels) of the parent group",
    }


def _affine6(grid: CubeGrid, f: int) -> list[float]:
    left, _, _, top = grid.bounds
    r = grid.resolution * f
    return [r, 0.0, left, 0.0, -r, top]


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
