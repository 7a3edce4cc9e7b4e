"""The cube grid: one immutable value from which windows, chunks and coordinates derive.

In the spirit of odc-geo's ``GeoBox``/``GridSpec``: a ``CubeGrid`` carries the CRS, the
pixel size, the pixel-edge bounds and the chunking; every operation returns a new value or
a plain derived object, so nothing can drift out of sync. The grid is written into each
store and checked on every open (DESIGN.md §2, a contract). ``pinned_operation`` is the other
half of that contract: the one PROJ operation every module uses to transform into (or out of)
the grid's CRS.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Iterator

import numpy as np
from affine import Affine

if TYPE_CHECKING:
    from rasterio.windows import Window

from ingest.errors import ConfigError, GridMismatchError

Bounds = tuple[float, float, float, float]  # left, bottom, right, top (pixel edges)
ChunkIndex = tuple[int, int]  # (chunk row, chunk column)


@dataclass(frozen=True)
class CubeGrid:
    """A north-up raster grid with its spatial and temporal chunking."""

    name: str
    crs: str
    resolution: float
    bounds: Bounds
    chunk_shape: tuple[int, int] = (625, 500)  # (y, x) pixels
    time_chunk: int = 5

    def __post_init__(self) -> None:
        left, bottom, right, top = self.bounds
        if not (right > left and top > bottom and self.resolution > 0):
            raise ConfigError(f"grid {self.name}: empty bounds {self.bounds} or bad resolution")
        for edge in self.bounds:
            if not math.isclose(edge / self.resolution, round(edge / self.resolution), abs_tol=1e-9):
                raise ConfigError(
                    f"grid {self.name}: edge {edge} is not a multiple of the resolution {self.resolution}"
                )
        if min(self.chunk_shape) < 1 or self.time_chunk < 1:
            raise ConfigError(f"grid {self.name}: chunk sizes must be positive")

    # -- shape and geometry -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) in pixels."""
        left, bottom, right, top = self.bounds
        return (round((top - bottom) / self.resolution), round((right - left) / self.resolution))

    @property
    def transform(self) -> Affine:
        left, _, _, top = self.bounds
        return Affine(self.resolution, 0.0, left, 0.0, -self.resolution, top)

    @cached_property
    def x(self) -> np.ndarray:
        """Pixel-centre x coordinates, ascending."""
        return self.bounds[0] + (np.arange(self.shape[1]) + 0.5) * self.resolution

    @cached_property
    def y(self) -> np.ndarray:
        """Pixel-centre y coordinates, descending (north-up)."""
        return self.bounds[3] - (np.arange(self.shape[0]) + 0.5) * self.resolution

    @property
    def full_window(self) -> Window:
        from rasterio.windows import Window  # rasterio on first use: the CLI starts without it

        return Window(0, 0, self.shape[1], self.shape[0])

    def window_bounds(self, window: Window) -> Bounds:
        """Pixel-edge bounds of a window."""
        left = self.bounds[0] + window.col_off * self.resolution
        top = self.bounds[3] - window.row_off * self.resolution
        return (left, top - window.height * self.resolution, left + window.width * self.resolution, top)

    def window_transform(self, window: Window) -> Affine:
        left, _, _, top = self.window_bounds(window)
        return Affine(self.resolution, 0.0, left, 0.0, -self.resolution, top)

    def window_for_bounds(self, bounds: Bounds) -> Window | None:
        """The smallest window of whole pixels covering ``bounds``, clipped to the grid.

        Returns None when the bounds do not overlap the grid.
        """
        left, bottom, right, top = bounds
        gl, gb, gr, gt = self.bounds
        col0 = max(0, math.floor((left - gl) / self.resolution))
        col1 = min(self.shape[1], math.ceil((right - gl) / self.resolution))
        row0 = max(0, math.floor((gt - top) / self.resolution))
        row1 = min(self.shape[0], math.ceil((gt - bottom) / self.resolution))
        if col1 <= col0 or row1 <= row0:
            return None
        from rasterio.windows import Window

        return Window(col0, row0, col1 - col0, row1 - row0)

    # -- chunks ---------------------------------------------------------------------------
    @property
    def chunk_counts(self) -> tuple[int, int]:
        """Number of chunks along (y, x)."""
        cy, cx = self.chunk_shape
        ny, nx = self.shape
        return (-(-ny // cy), -(-nx // cx))

    def chunk_window(self, index: ChunkIndex) -> Window:
        """The pixel window of one spatial chunk (edge chunks are clipped to the grid)."""
        iy, ix = index
        ncy, ncx = self.chunk_counts
        if not (0 <= iy < ncy and 0 <= ix < ncx):
            raise IndexError(f"chunk {index} outside grid {self.name} ({ncy}x{ncx} chunks)")
        cy, cx = self.chunk_shape
        ny, nx = self.shape
        row0, col0 = iy * cy, ix * cx
        from rasterio.windows import Window

        return Window(col0, row0, min(cx, nx - col0), min(cy, ny - row0))

    def chunks_in_window(self, window: Window) -> Iterator[ChunkIndex]:
        """Every spatial chunk that the window touches, row-major."""
        cy, cx = self.chunk_shape
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        for iy in range(r0 // cy, (r1 - 1) // cy + 1):
            for ix in range(c0 // cx, (c1 - 1) // cx + 1):
                yield (iy, ix)

    def chunks_in_bounds(self, bounds: Bounds) -> list[ChunkIndex]:
        window = self.window_for_bounds(bounds)
        return [] if window is None else list(self.chunks_in_window(window))

    # -- derived grids --------------------------------------------------------------------
    def replace(self, **changes) -> "CubeGrid":
        """A new grid with some fields changed (the value itself never changes)."""
        return replace(self, **changes)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["bounds"] = list(d["bounds"])
        d["chunk_shape"] = list(d["chunk_shape"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CubeGrid":
        try:
            return cls(
                name=str(d["name"]), crs=str(d["crs"]), resolution=float(d["resolution"]),
                bounds=tuple(float(b) for b in d["bounds"]),  # type: ignore[arg-type]
                chunk_shape=tuple(int(c) for c in d["chunk_shape"]),  # type: ignore[arg-type]
                time_chunk=int(d["time_chunk"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid grid definition {d!r}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def check_same(self, other: "CubeGrid", where: str) -> None:
        """Refuse to mix grids: a store is never written with a different grid."""
        if self.to_dict() != other.to_dict():
            raise GridMismatchError(
                f"{where} was written with grid {other.to_dict()}, not {self.to_dict()}"
            )


@lru_cache(maxsize=32)
def pinned_operation(src_crs: str, dst_crs: str) -> str:
    """The PROJ pipeline used for ``src_crs -> dst_crs``, fixed for reproducibility.

    DESIGN CHOICE: PROJ picks the best *available* operation, which depends on the grids a
    machine happens to have. We take the best operation that needs no grid file (for
    UTM/WGS 84 -> RD New: the EPSG:4833 Helmert, ~0.15 m from RDNAPTRANS2018, < 2 % of a
    pixel), so every machine warps identically.
    """
    from pyproj.transformer import TransformerGroup

    group = TransformerGroup(src_crs, dst_crs, always_xy=True)
    for transformer in group.transformers:
        definition = transformer.to_proj4()
        if definition and "grids=" not in definition:
            return definition
    raise ConfigError(f"no grid-free coordinate operation from {src_crs} to {dst_crs}")


# DESIGN CHOICE: the default NL grid's edges lie on the Dutch map-sheet index (5 km x 6.25 km),
# so one spatial chunk is one map sheet (625 rows x 500 columns at 10 m) and the extent
# x 0..300 000, y 300 000..643 750 holds the whole country (30 000 x 34 375 pixels).
NL_GRID = CubeGrid(
    name="NL",
    crs="EPSG:28992",
    resolution=10.0,
    bounds=(0.0, 300_000.0, 300_000.0, 643_750.0),
    chunk_shape=(625, 500),
    time_chunk=5,
)

GRIDS: dict[str, CubeGrid] = {"NL": NL_GRID}


def get_grid(name_or_path: str) -> CubeGrid:
    """A named grid, or one read from a JSON file (``CubeGrid.to_json`` format)."""
    if name_or_path in GRIDS:
        return GRIDS[name_or_path]
    try:
        with open(name_or_path, encoding="utf-8") as f:
            return CubeGrid.from_dict(json.load(f))
    except OSError as exc:
        raise ConfigError(
            f"unknown grid {name_or_path!r}: not one of {sorted(GRIDS)} and not a readable file ({exc})"
        ) from None
