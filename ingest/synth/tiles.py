"""The Sentinel-2 tiles over the Netherlands: UTM zone and upper-left corner.

Values from ``shared/reference/nl-tiles.txt`` (ESA tiling-grid KML projected to UTM, which
reproduces real MTD_TL.xml ULX/ULY exactly). Every tile is 109 800 m square: 10980 px at 10 m,
5490 at 20 m, 1830 at 60 m.
"""
from __future__ import annotations

from dataclasses import dataclass

from affine import Affine

from ingest.errors import ConfigError

TILE_SIZE_M = 109_800
RESOLUTIONS: tuple[int, ...] = (10, 20, 60)
TILE_PIXELS: dict[int, int] = {r: TILE_SIZE_M // r for r in RESOLUTIONS}


@dataclass(frozen=True)
class TileInfo:
    """One MGRS tile: its UTM CRS and the corner of its pixel grid."""

    tile: str
    epsg: int
    ulx: float
    uly: float

    @property
    def utm_zone(self) -> int:
        return self.epsg - 32600

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def transform(self, resolution: int, row_off: int = 0, col_off: int = 0) -> Affine:
        """Affine of the raster at ``resolution`` whose first pixel is (row_off, col_off)."""
        return Affine(resolution, 0.0, self.ulx + col_off * resolution,
                      0.0, -resolution, self.uly - row_off * resolution)

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.ulx, self.uly - TILE_SIZE_M, self.ulx + TILE_SIZE_M, self.uly)


# tile -> (EPSG, ULX, ULY)
_TABLE: dict[str, tuple[int, float, float]] = {
    "31UES": (32631, 499980, 5700000),
    "31UET": (32631, 499980, 5800020),
    "31UEU": (32631, 499980, 5900040),
    "31UEV": (32631, 499980, 6000000),
    "31UFS": (32631, 600000, 5700000),
    "31UFT": (32631, 600000, 5800020),
    "31UFU": (32631, 600000, 5900040),
    "31UFV": (32631, 600000, 6000000),
    "31UGS": (32631, 699960, 5700000),
    "31UGT": (32631, 699960, 5800020),
    "31UGU": (32631, 699960, 5900040),
    "31UGV": (32631, 699960, 6000000),
    "32ULB": (32632, 300000, 5700000),
    "32ULC": (32632, 300000, 5800020),
    "32ULD": (32632, 300000, 5900040),
    "32ULE": (32632, 300000, 6000000),
}

TILES: dict[str, TileInfo] = {t: TileInfo(t, *v) for t, v in _TABLE.items()}


def get_tile(tile: str) -> TileInfo:
    """Look a tile up (accepts a leading ``T``), with a message listing the known tiles."""
    key = tile.upper().removeprefix("T")
    try:
        return TILES[key]
    except KeyError:
        raise ConfigError(f"unknown tile {tile!r}; the synthetic kit knows {', '.join(TILES)}") from None
