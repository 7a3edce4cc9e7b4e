"""Pixel content of synthetic products: a plausible landscape, or pixels that encode their position.

``content="scene"``
    A deterministic function of *geographic position* (WGS 84 lon/lat, scaled to metres by a
    fixed equirectangular factor) and of the datatake: rectangular agricultural parcels with a
    growing season (sowing, green-up, senescence, harvest per crop type), grassland with mowing,
    forest, lakes and canals, built-up areas, clouds (SCL 8/9/10 with matching CLD), their
    shadows (SCL 3), winter snow (SCL 11 with SNW). Because it depends on position and not on
    the tile, overlapping tiles (also across UTM zones) show the same landscape and clouds.
    Within one UTM zone, overlapping pixels are bit-identical.

``content="coords"``
    Each pixel encodes its own index in the *full* tile grid at the raster's resolution, for
    exact geometric tests. See ``coords_value`` and ``decode_coords``:

    - X_VARIABLES (B01 B02 B04 B06 B8A B11 AOT): value = 1 + column index
    - Y_VARIABLES (B03 B05 B07 B08 B09 B12 WVP): value = 1 + row index
    - SCL = 1 + column % 11, CLD = row % 100, SNW = column % 100
    - TCI = (1 + column % 255, 1 + row % 255, 1 + (row + column) % 255)

    Reflectance values are given as PB < 04.00 DNs (= harmonised DNs); products of
    PB >= 04.00 store them + 1000, like any reflectance.

Speed: geographic coordinates and the large-scale fields (lakes, towns, clouds, aerosols) are
computed on a coarse lattice fixed in absolute UTM coordinates (every ``LATTICE_M`` metres)
and interpolated bilinearly; fine features (parcels, texture) are evaluated per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from statistics import NormalDist

import numpy as np
from pyproj import Transformer

from ingest.errors import ConfigError
from ingest.synth.tiles import TILE_PIXELS, TileInfo

Window = tuple[int, int, int, int]  # row_off, col_off, height, width (at the raster's resolution)
LonLat = tuple[float, float]

# DESIGN CHOICE: "geographic metres" = lon/lat scaled by fixed factors (equirectangular at
# ~52.3 N). Inverse UTM to lon/lat is pure math (no datum shift), so content does not move
# between PROJ versions, and the same place gives the same value from any UTM zone.
GEO_M_PER_DEG_LON = 68_000.0
GEO_M_PER_DEG_LAT = 111_250.0
LATTICE_M = 600  # coarse lattice step in UTM metres (a multiple of 60: tile corners are too)

BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
X_VARIABLES = frozenset({"B01", "B02", "B04", "B06", "B8A", "B11", "AOT"})
Y_VARIABLES = frozenset({"B03", "B05", "B07", "B08", "B09", "B12", "WVP"})

# Typical surface reflectances (B01..B12, without B10), after common spectral libraries.
_SPECTRA: dict[str, list[float]] = {
    "veg": [0.030, 0.035, 0.075, 0.035, 0.110, 0.310, 0.390, 0.420, 0.440, 0.150, 0.220, 0.100],
    "soil": [0.070, 0.080, 0.110, 0.140, 0.160, 0.185, 0.205, 0.225, 0.235, 0.100, 0.300, 0.250],
    "water": [0.055, 0.048, 0.042, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.005, 0.005, 0.003],
    "urban": [0.100, 0.105, 0.115, 0.125, 0.135, 0.145, 0.155, 0.165, 0.170, 0.065, 0.200, 0.180],
    "forest": [0.020, 0.025, 0.045, 0.022, 0.070, 0.200, 0.260, 0.290, 0.300, 0.100, 0.150, 0.065],
    "cloud": [0.450, 0.460, 0.470, 0.480, 0.490, 0.500, 0.505, 0.510, 0.515, 0.250, 0.350, 0.250],
    "snow": [0.800, 0.820, 0.800, 0.780, 0.760, 0.750, 0.730, 0.700, 0.680, 0.350, 0.080, 0.050],
}
SPECTRA = {k: dict(zip(BANDS, v)) for k, v in _SPECTRA.items()}

# Crop calendars: (day of year, vegetation cover) knots; linear in between.
_CROPS: list[tuple[str, float, list[tuple[int, float]]]] = [
    # name, share, knots
    ("grass", 0.38, [(0, 0.55), (70, 0.60), (130, 0.90), (250, 0.85), (330, 0.65), (366, 0.55)]),
    ("maize", 0.20, [(0, 0.05), (130, 0.05), (160, 0.25), (205, 0.90), (255, 0.80), (275, 0.10), (366, 0.05)]),
    ("potato", 0.12, [(0, 0.05), (110, 0.05), (145, 0.30), (180, 0.92), (220, 0.80), (235, 0.10), (366, 0.05)]),
    ("wheat", 0.17, [(0, 0.35), (60, 0.40), (140, 0.95), (180, 0.70), (205, 0.30), (215, 0.10), (280, 0.08), (300, 0.30), (366, 0.35)]),
    ("beet", 0.09, [(0, 0.05), (100, 0.05), (140, 0.20), (200, 0.95), (280, 0.85), (295, 0.08), (366, 0.05)]),
    ("fallow", 0.04, [(0, 0.15), (120, 0.30), (200, 0.45), (366, 0.15)]),
]
PARCEL_W_M = 260.0  # parcel width (east-west), geographic metres
PARCEL_H_M = 420.0  # parcel height (north-south)


@dataclass(frozen=True)
class SceneParams:
    """Everything the pixel content depends on (never the baseline or generation time)."""

    tile: TileInfo
    datatake_start: datetime
    content: str = "scene"
    seed: int = 0  # selects the synthetic world (landscape and weather)
    cloudiness: float | None = None  # target cloud fraction 0..1; None = drawn per datatake
    snow: bool | None = None  # None = some winter datatakes
    swath_edge: tuple[LonLat, LonLat] | None = None  # valid data left of the directed line

    def __post_init__(self) -> None:
        if self.content not in ("scene", "coords"):
            raise ConfigError(f"content must be 'scene' or 'coords', not {self.content!r}")
        if self.cloudiness is not None and not 0.0 <= self.cloudiness <= 1.0:
            raise ConfigError(f"cloudiness must be within 0..1, not {self.cloudiness}")

    @property
    def weather_seed(self) -> int:
        """Weather is per datatake: every tile of a datatake shares the clouds."""
        t = int(_utc(self.datatake_start).timestamp())
        return int(_hash_ints(np.array([t]), np.array([self.seed]), 0x57EA7E5)[0] >> np.uint64(16))

    @property
    def doy(self) -> float:
        d = _utc(self.datatake_start)
        return d.timetuple().tm_yday + d.hour / 24.0


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


# -- hashing and noise -----------------------------------------------------------------------
_U = np.uint64


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed integer hash (uint64 wraparound intended)."""
    x = x + _U(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U(27))) * _U(0x94D049BB133111EB)
    return x ^ (x >> _U(31))


def _hash_ints(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    s = _splitmix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    a = np.asarray(ix, dtype=np.int64).view(np.uint64)
    b = np.asarray(iy, dtype=np.int64).view(np.uint64)
    return _splitmix(a ^ _splitmix(b ^ s))


def hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point."""
    return (_hash_ints(ix, iy, seed) >> _U(11)).astype(np.float64) * (1.0 / 2**53)


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1], x/y in lattice units."""
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx, fy = x - x0, y - y0
    ux, uy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)
    h00, h10 = hash01(ix, iy, seed), hash01(ix + 1, iy, seed)
    h01, h11 = hash01(ix, iy + 1, seed), hash01(ix + 1, iy + 1, seed)
    return (h00 + (h10 - h00) * ux) * (1 - uy) + (h01 + (h11 - h01) * ux) * uy


def fbm(e: np.ndarray, n: np.ndarray, seed: int, scale: float, octaves: int) -> np.ndarray:
    """Fractal noise in [0, 1] (mean 0.5) at the given feature scale in metres."""
    total = np.zeros_like(e, dtype=np.float64)
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        s = scale / 2**k
        total += amp * value_noise(e / s, n / s, seed + 101 * k)
        norm += amp
        amp *= 0.5
    return total / norm


# -- geometry ---------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


@lru_cache(maxsize=8)
def _from_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


def lonlat_to_geo(lon, lat):
    """Lon/lat to the geographic metres that the landscape is defined in."""
    return np.asarray(lon) * GEO_M_PER_DEG_LON, np.asarray(lat) * GEO_M_PER_DEG_LAT


def pixel_centres(tile: TileInfo, resolution: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """UTM x (per column) and y (per row) of the pixel centres of a window."""
    r0, c0, h, w = window
    xs = tile.ulx + (c0 + np.arange(w) + 0.5) * resolution
    ys = tile.uly - (r0 + np.arange(h) + 0.5) * resolution
    return xs, ys


@dataclass
class _Lattice:
    """Coarse UTM lattice around a window, with bilinear interpolation to its pixel centres."""

    xs_nodes: np.ndarray
    ys_nodes: np.ndarray  # ascending
    ix: np.ndarray
    tx: np.ndarray
    iy: np.ndarray
    ty: np.ndarray

    @classmethod
    def around(cls, xs: np.ndarray, ys: np.ndarray) -> "_Lattice":
        s = float(LATTICE_M)
        kx0, kx1 = math.floor(xs.min() / s), math.floor(xs.max() / s) + 1
        ky0, ky1 = math.floor(ys.min() / s), math.floor(ys.max() / s) + 1
        fx, fy = xs / s, ys / s
        ix, iy = np.floor(fx), np.floor(fy)
        return cls(
            xs_nodes=np.arange(kx0, kx1 + 1) * s, ys_nodes=np.arange(ky0, ky1 + 1) * s,
            ix=(ix - kx0).astype(np.intp), tx=fx - ix, iy=(iy - ky0).astype(np.intp), ty=fy - iy,
        )

    def interp(self, f: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Bilinear interpolation of node values f[ny_nodes, nx_nodes] to the pixels.

        Works one lattice row band at a time (broadcasting instead of big gathers): the
        per-pixel cost is two operations.
        """
        f = np.asarray(f, dtype=dtype)
        tx = self.tx.astype(dtype)
        g = f[:, self.ix] + (f[:, self.ix + 1] - f[:, self.ix]) * tx
        out = np.empty((self.iy.size, self.ix.size), dtype=dtype)
        ty = self.ty.astype(dtype)[:, None]
        for k in np.unique(self.iy):
            rows = np.flatnonzero(self.iy == k)
            sl = slice(rows[0], rows[-1] + 1)  # rows of one lattice band are contiguous
            out[sl] = g[k] + (g[k + 1] - g[k]) * ty[sl]
        return out


# -- sun --------------------------------------------------------------------------------------
def sun_angles(when: datetime, lon: np.ndarray | float, lat: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Solar zenith and azimuth (degrees, azimuth clockwise from north); NOAA approximation."""
    d = _utc(when)
    doy = d.timetuple().tm_yday
    hours = d.hour + d.minute / 60 + d.second / 3600
    g = 2 * math.pi / 365 * (doy - 1 + (hours - 12) / 24)
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g) - 0.006758 * math.cos(2 * g)
            + 0.000907 * math.sin(2 * g) - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                       - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    lon_a, lat_r = np.asarray(lon, float), np.radians(np.asarray(lat, float))
    tst = hours * 60 + eqtime + 4 * lon_a
    ha = np.radians(tst / 4 - 180)
    cosz = np.sin(lat_r) * math.sin(decl) + np.cos(lat_r) * math.cos(decl) * np.cos(ha)
    zen = np.arccos(np.clip(cosz, -1, 1))
    az = np.degrees(np.arctan2(np.sin(ha), np.cos(ha) * np.sin(lat_r) - np.tan(decl) * np.cos(lat_r))) + 180
    return np.degrees(zen), az % 360


# -- phenology --------------------------------------------------------------------------------
def crop_cover(crop_index: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """Vegetation cover (0..1) per pixel from its crop calendar and (jittered) day of year."""
    out = np.zeros(crop_index.shape, np.float32)
    for k, (_, _, knots) in enumerate(_CROPS):
        m = crop_index == k
        if m.any():
            kx, ky = zip(*knots)
            out[m] = np.interp(doy[m] % 366, kx, ky)
    return out


_CROP_CUM = np.cumsum([c[1] for c in _CROPS])


# -- rendering --------------------------------------------------------------------------------
def render(params: SceneParams, resolution: int, window: Window, variables: list[str]) -> dict[str, np.ndarray]:
    """Arrays for the requested variables (reflectance as PB<04 DN) of one raster window.

    Variables: the 12 bands, AOT, WVP (uint16, 0 = nodata), SCL, CLD, SNW (uint8), TCI
    (uint8, shape (3, h, w)), VALID (bool).
    """
    _check_window(resolution, window)
    if params.content == "coords":
        return _render_coords(params, resolution, window, variables)
    return _render_scene(params, resolution, window, variables)


def _check_window(resolution: int, window: Window) -> None:
    n = TILE_PIXELS[resolution]
    r0, c0, h, w = window
    if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > n or c0 + w > n:
        raise ConfigError(f"window {window} is not inside the {n}x{n} tile grid at {resolution} m")


def _geo_fields(params: SceneParams, lat: _Lattice) -> dict[str, np.ndarray]:
    """Geographic metres at the lattice nodes."""
    xx, yy = np.meshgrid(lat.xs_nodes, lat.ys_nodes)
    lon, la = _to_lonlat(params.tile.epsg).transform(xx, yy)
    e, n = lonlat_to_geo(lon, la)
    return {"E": e, "N": n, "lon": np.asarray(lon), "lat": np.asarray(la)}


def _valid_mask(params: SceneParams, e: np.ndarray, n: np.ndarray) -> np.ndarray:
    if params.swath_edge is None:
        return np.ones(e.shape, bool)
    (lo1, la1), (lo2, la2) = params.swath_edge
    e1, n1 = lonlat_to_geo(lo1, la1)
    e2, n2 = lonlat_to_geo(lo2, la2)
    return (e2 - e1) * (n - n1) - (n2 - n1) * (e - e1) >= 0  # left of the directed line


def _render_coords(params: SceneParams, resolution: int, window: Window, variables: list[str]) -> dict[str, np.ndarray]:
    r0, c0, h, w = window
    rows = (r0 + np.arange(h))[:, None]
    cols = (c0 + np.arange(w))[None, :]
    valid = _window_valid(params, resolution, window)
    out: dict[str, np.ndarray] = {"VALID": valid}
    for v in variables:
        if v == "TCI":
            arr = np.stack([np.broadcast_to(coords_value(f"TCI{i}", rows, cols), (h, w)) for i in range(3)])
            out[v] = np.where(valid[None], np.broadcast_to(arr, (3, h, w)), 0).astype(np.uint8)
        elif v != "VALID":
            arr = np.broadcast_to(coords_value(v, rows, cols), (h, w))
            dtype = np.uint8 if v in ("SCL", "CLD", "SNW") else np.uint16
            out[v] = np.where(valid, arr, 0).astype(dtype)
    return out


def _window_valid(params: SceneParams, resolution: int, window: Window) -> np.ndarray:
    r0, c0, h, w = window
    if params.swath_edge is None:
        return np.ones((h, w), bool)
    xs, ys = pixel_centres(params.tile, resolution, window)
    lat = _Lattice.around(xs, ys)
    g = _geo_fields(params, lat)
    return _valid_mask(params, lat.interp(g["E"]), lat.interp(g["N"]))


def coords_value(variable: str, row, col):
    """The value a ``content="coords"`` pixel holds (reflectance as harmonised DN).

    ``row``/``col`` are indices in the full tile grid at the raster's resolution. TCI0..TCI2
    are the three TCI bands.
    """
    row, col = np.asarray(row), np.asarray(col)
    if variable in X_VARIABLES:
        return 1 + col
    if variable in Y_VARIABLES:
        return 1 + row
    table = {
        "SCL": lambda: 1 + col % 11, "CLD": lambda: row % 100, "SNW": lambda: col % 100,
        "TCI0": lambda: 1 + col % 255, "TCI1": lambda: 1 + row % 255, "TCI2": lambda: 1 + (row + col) % 255,
    }
    if variable not in table:
        raise ConfigError(f"no coords encoding for {variable!r}")
    return table[variable]()


def decode_coords(variable: str, value, tile: TileInfo, resolution: int, *, boa_add_offset: int = 0):
    """UTM coordinate of the pixel centre that a ``content="coords"`` value came from.

    Returns the x (easting) for X_VARIABLES, the y (northing) for Y_VARIABLES; vectorised.
    ``value`` is a harmonised DN; for a raw DN of a PB >= 04.00 product pass
    ``boa_add_offset=-1000``. SCL/CLD/SNW/TCI hold residues only: compare them with
    ``coords_value`` instead.
    """
    v = np.asarray(value, dtype=np.float64)
    if variable in BANDS:
        v = v + boa_add_offset
    idx = v - 1
    if variable in X_VARIABLES:
        return tile.ulx + (idx + 0.5) * resolution
    if variable in Y_VARIABLES:
        return tile.uly - (idx + 0.5) * resolution
    raise ConfigError(f"{variable} encodes a residue, not a coordinate; use coords_value()")


def _cloud_threshold(cloudiness: float) -> float:
    """Threshold on the cloud noise giving about ``cloudiness`` cover (fbm sd ~ 0.11)."""
    if cloudiness <= 0:
        return 9.0
    if cloudiness >= 1:
        return -9.0
    return 0.5 + 0.11 * NormalDist().inv_cdf(1 - cloudiness)


def weather(params: SceneParams) -> dict[str, float | bool]:
    """Datatake-level weather: cloudiness, snow, sun angles (shared by every tile)."""
    ws = params.weather_seed
    u = float(hash01(np.array([1]), np.array([2]), ws)[0])
    if params.cloudiness is not None:
        cloudiness = params.cloudiness
    else:
        cloudiness = 0.0 if u < 0.3 else 0.08 if u < 0.55 else 0.3 if u < 0.8 else 0.65
    doy = params.doy
    winter = doy >= 335 or doy <= 59
    u2 = float(hash01(np.array([3]), np.array([4]), ws)[0])
    snow = params.snow if params.snow is not None else (winter and u2 < 0.35)
    zen, az = sun_angles(params.datatake_start, 5.4, 52.2)
    return {"cloudiness": cloudiness, "snow": bool(snow), "sun_zenith": float(zen), "sun_azimuth": float(az)}


def _render_scene(params: SceneParams, resolution: int, window: Window, variables: list[str]) -> dict[str, np.ndarray]:
    xs, ys = pixel_centres(params.tile, resolution, window)
    lat = _Lattice.around(xs, ys)
    g = _geo_fields(params, lat)
    en, nn = g["E"], g["N"]
    wx = weather(params)
    seed, ws = params.seed, params.weather_seed

    # large-scale fields at the nodes (cheap), interpolated to the pixels
    nodes = {
        "lake": fbm(en, nn, seed + 11, 9000.0, 2),
        "town": fbm(en, nn, seed + 12, 7000.0, 2),
        "wood": fbm(en, nn, seed + 13, 6000.0, 2),
        "aot": 0.06 + 0.25 * fbm(en, nn, ws + 21, 40000.0, 2),
        "wvp": 1.0 + 2.0 * fbm(en, nn, ws + 22, 50000.0, 2),
    }
    # clouds drift between datatakes: a per-datatake shift of the noise domain
    dx, dy = (hash01(np.array([5, 6]), np.array([7, 8]), ws) - 0.5) * 1e6
    thr = _cloud_threshold(float(wx["cloudiness"]))
    cloud_scale = 14000.0
    nodes["cloud"] = np.clip((fbm(en + dx, nn + dy, ws + 31, cloud_scale, 4) - thr) / 0.06, 0, 1)
    # shadow: the cloud seen from here towards the sun, clouds at ~1.5 km height
    d = 1500.0 * math.tan(math.radians(min(float(wx["sun_zenith"]), 80.0)))
    az = math.radians(float(wx["sun_azimuth"]))
    sdx, sdy = d * math.sin(az), d * math.cos(az)
    nodes["shade"] = np.clip((fbm(en + dx + sdx, nn + dy + sdy, ws + 31, cloud_scale, 4) - thr) / 0.06, 0, 1)
    if wx["snow"]:
        nodes["snow"] = np.clip((fbm(en, nn, ws + 41, 20000.0, 3) - 0.42) / 0.08, 0, 1)

    e = lat.interp(en)
    n = lat.interp(nn)
    f = {k: lat.interp(v, np.float32) for k, v in nodes.items()}
    valid = _valid_mask(params, e, n)

    # fine features: per-pixel hash texture and parcels
    ie = np.floor(e / 10.0).astype(np.int64)
    inn = np.floor(n / 10.0).astype(np.int64)
    tex = (_hash_ints(ie, inn, seed + 1) >> _U(40)).astype(np.float32) * np.float32(1.0 / 2**24)
    del ie, inn
    jrow = np.floor(n / PARCEL_H_M).astype(np.int64)
    j0 = int(jrow.min())
    shift_lut = hash01(np.arange(j0, int(jrow.max()) + 1), np.full(int(jrow.max()) - j0 + 1, 17), seed + 2)
    icol = np.floor((e + shift_lut[jrow - j0] * PARCEL_W_M) / PARCEL_W_M).astype(np.int64)
    # one 64-bit hash per parcel, split into four 16-bit uniforms
    ph = _hash_ints(icol, jrow, seed + 3)
    del icol, jrow
    pu = [((ph >> _U(16 * k)) & _U(0xFFFF)).astype(np.float32) * np.float32(1 / 65536) for k in range(4)]
    crop = np.searchsorted(_CROP_CUM.astype(np.float32), pu[0] * np.float32(_CROP_CUM[-1])).astype(np.int8)
    cover = crop_cover(crop, params.doy + (pu[1] - 0.5) * 24.0)  # +-12 days per parcel
    soil_b = 0.8 + 0.4 * pu[2]
    # grass mowing: a few weeks of short grass, parcel by parcel
    if 120 < params.doy < 280:
        mow = (crop == 0) & (((params.doy + pu[3] * 42.0) % 42.0) < 8.0)
        cover = np.where(mow, cover * np.float32(0.55), cover)

    canal = (np.abs(((n + 0.37 * e) % 7300.0) - 3650.0) < 15.0) & (f["town"] < 0.62)
    water = (f["lake"] > 0.70) | canal
    town = ~water & (f["town"] > 0.66)
    wood = ~water & ~town & (f["wood"] > 0.72)
    garden = town & (tex < 0.25)
    dark = town & (tex > 0.97)

    alpha = np.clip(f["cloud"] + 0.25 * (tex - 0.5) * (f["cloud"] > 0), 0, 1)
    cld = np.clip(np.rint(100 * alpha), 0, 100).astype(np.uint8)
    shadow = (f["shade"] > 0.5) & (cld < 20)
    snow = f["snow"] * (~water) if "snow" in f else np.zeros(e.shape, np.float32)
    snw = np.clip(np.rint(100 * snow), 0, 100).astype(np.uint8)

    out: dict[str, np.ndarray] = {"VALID": valid}
    need_refl = [b for b in BANDS if b in variables]
    if "TCI" in variables:
        need_refl = sorted(set(need_refl) | {"B02", "B03", "B04"}, key=BANDS.index)
    refl: dict[str, np.ndarray] = {}
    forest_cover = np.float32(0.85 if 90 < params.doy < 310 else 0.55)
    # per-pixel multiplicative factor (texture, town brightness, dark features, shadows)
    fac = np.float32(0.97) + np.float32(0.06) * tex
    fac = np.where(town & ~garden, fac * (np.float32(0.7) + np.float32(0.6) * tex), fac)
    fac = np.where(dark, fac * np.float32(0.3), fac)
    shade_fac = np.where(shadow, np.float32(0.4), np.float32(1.0))
    if not wx["snow"]:
        fac = fac * shade_fac
    # surface type: 0 crops/grass (cover mix), 1 water, 2 town, 3 garden, 4 wood
    surf = np.zeros(e.shape, np.uint8)
    surf[water], surf[town], surf[garden], surf[wood] = 1, 2, 3, 4
    special = np.flatnonzero(surf)
    surf_sp = surf.ravel()[special]
    cloudy = np.flatnonzero(alpha > 0)
    alpha_c = alpha.ravel()[cloudy]
    for b in need_refl:
        sp = {k: np.float32(v[b]) for k, v in SPECTRA.items()}
        rho = cover * sp["veg"] + (1 - cover) * (sp["soil"] * soil_b)
        lut = np.array([0, sp["water"], sp["urban"], 0.6 * sp["veg"] + 0.4 * sp["urban"],
                        forest_cover * sp["forest"] + (1 - forest_cover) * sp["soil"] * 0.6], np.float32)
        rho.ravel()[special] = lut[surf_sp]
        rho *= fac
        if wx["snow"]:
            rho = ((1 - snow) * rho + snow * sp["snow"]) * shade_fac
        rc = rho.ravel()[cloudy]
        rho.ravel()[cloudy] = rc + alpha_c * (sp["cloud"] - rc)
        refl[b] = rho
        if b in variables:
            dn = np.clip(np.rint(rho * np.float32(10000.0)), 1, 64000).astype(np.uint16)
            dn[~valid] = 0
            out[b] = dn
    if "TCI" in variables:
        tci = [np.clip(np.rint(1 + refl[b] * 1270.0), 1, 255) for b in ("B04", "B03", "B02")]
        out["TCI"] = np.where(valid[None], np.stack(tci), 0).astype(np.uint8)
    if "AOT" in variables:
        out["AOT"] = np.where(valid, np.clip(np.rint(f["aot"] * 1000), 1, 65535), 0).astype(np.uint16)
    if "WVP" in variables:
        out["WVP"] = np.where(valid, np.clip(np.rint(f["wvp"] * 1000), 1, 65535), 0).astype(np.uint16)
    if "CLD" in variables:
        out["CLD"] = np.where(valid, cld, 0).astype(np.uint8)
    if "SNW" in variables:
        out["SNW"] = np.where(valid, snw, 0).astype(np.uint8)
    if "SCL" in variables:
        scl = np.where(cover >= 0.35, 4, 5).astype(np.uint8)
        scl = np.where(town, np.where(garden, 4, 5), scl)
        scl = np.where(wood, 4, scl)
        scl = np.where(tex > 0.9985, 7, scl)
        scl = np.where(dark, 2, scl)
        scl = np.where(water, 6, scl)
        scl = np.where(shadow, 3, scl)
        scl = np.where(snw >= 50, 11, scl)  # SCL agrees with the SNW probability written
        scl = np.where(cld >= 20, 10, scl)
        scl = np.where(cld >= 35, 8, scl)
        scl = np.where(cld >= 65, 9, scl)
        out["SCL"] = np.where(valid, scl, 0).astype(np.uint8)
    return out
