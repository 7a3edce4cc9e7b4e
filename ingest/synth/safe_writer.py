"""Write synthetic Sentinel-2 L2A SAFE products (folder or hub-style zip).

Layout, names, band lists per resolution and QI files per processing baseline follow
``shared/reference/sentinel2-l2a.md`` section 1; pixel content comes from ``scene.render``.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine

from ingest.errors import ConfigError
from ingest.variables import BAND_ID_TO_NAME
import ingest.synth.xml_templates as X
from ingest.synth.scene import GEO_M_PER_DEG_LAT, GEO_M_PER_DEG_LON, LonLat, SceneParams, _to_lonlat, render, sun_angles
from ingest.synth.tiles import TILE_PIXELS, TileInfo, get_tile

SUPPORTED_BASELINES = ("02.12", "02.14", "04.00", "05.09", "05.10", "05.11")
PLATFORMS = ("S2A", "S2B", "S2C", "S2D")

# IMAGE_FILE order of the real PB 05.09 sample, per resolution.
_IMG_10 = ["B02", "B03", "B04", "B08", "TCI", "AOT", "WVP"]
_IMG_20 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "TCI", "AOT", "WVP", "SCL"]
_IMG_60 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "TCI", "AOT", "WVP", "SCL"]
MASK_BANDS = [BAND_ID_TO_NAME[i] for i in sorted(BAND_ID_TO_NAME)]  # B01..B12 with B10, as real

# DESIGN CHOICE: like real products, lossless JPEG 2000 in 1024x1024 tiles (GDAL's block size);
# REVERSIBLE + QUALITY=100 + no YCC gives bit-exact round trips (verified in tests).
JP2_OPTIONS = {"REVERSIBLE": "YES", "QUALITY": "100", "YCC": "NO", "BLOCKXSIZE": "1024", "BLOCKYSIZE": "1024"}
STRIP_PIXELS = 6_000_000  # above this, rasters are rendered in strips through temporary GeoTIFFs

# -- orbits -----------------------------------------------------------------------------------
ORBIT_PERIOD_S = 10 * 86400 / 143  # 143 orbits per 10-day repeat cycle
# platform -> (reference absolute orbit, its time, offset k with relative = (abs + k) % 143 + 1)
# S2A/S2B from real products (abs 42640 = R029 on 2023-08-21, abs 33753 = R122 on 2023-08-23);
# S2C/S2D are invented but self-consistent.
_ORBIT_REF: dict[str, tuple[int, datetime, int]] = {
    "S2A": (42640, datetime(2023, 8, 21, 22, 19, 41, tzinfo=timezone.utc), 2),
    "S2B": (33753, datetime(2023, 8, 23, 9, 55, 59, tzinfo=timezone.utc), -27),
    "S2C": (1000, datetime(2024, 11, 1, tzinfo=timezone.utc), 0),
    "S2D": (1000, datetime(2028, 1, 1, tzinfo=timezone.utc), 0),
}


def absolute_orbit_for(platform: str, datatake_start: datetime, relative_orbit: int) -> int:
    """A plausible absolute orbit: the one nearest the time that has this relative orbit."""
    ref, t_ref, k = _ORBIT_REF[platform]
    est = ref + (_utc(datatake_start) - t_ref).total_seconds() / ORBIT_PERIOD_S
    base = round(est)
    delta = (relative_orbit - 1 - (base + k)) % 143
    cands = [base + delta, base + delta - 143]
    best = min(cands, key=lambda a: abs(a - est))
    while best < 1:
        best += 143
    return best


def relative_orbit_of(platform: str, absolute_orbit: int) -> int:
    return (absolute_orbit + _ORBIT_REF[platform][2]) % 143 + 1


# -- names ------------------------------------------------------------------------------------
def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def _ts(d: datetime) -> str:
    return _utc(d).strftime("%Y%m%dT%H%M%S")


def _pb(baseline: str) -> str:
    if not re.fullmatch(r"\d\d\.\d\d", baseline):
        raise ConfigError(f"processing baseline must look like '05.09', not {baseline!r}")
    return baseline.replace(".", "")


def default_generation_time(datatake_start: datetime) -> datetime:
    """Typical L2A production delay (~3 h), to the second."""
    return (_utc(datatake_start) + timedelta(hours=2, minutes=52)).replace(microsecond=0)


def product_name(*, tile: str = "31UFU", datatake_start: datetime, platform: str = "S2A",
                 baseline: str = "05.09", relative_orbit: int = 51,
                 generation_time: datetime | None = None) -> str:
    """``S2A_MSIL2A_{start}_N{pb}_R{orbit:03d}_T{tile}_{generation}`` (no .SAFE)."""
    gen = generation_time or default_generation_time(datatake_start)
    return (f"{platform}_MSIL2A_{_ts(datatake_start)}_N{_pb(baseline)}_R{relative_orbit:03d}"
            f"_T{get_tile(tile).tile}_{_ts(gen)}")


@dataclass(frozen=True)
class _Ids:
    name: str
    granule_dir: str
    datastrip_dir: str
    granule_id: str
    datastrip_id: str
    datatake_id: str
    l1c_tile_id: str
    ds_start: datetime
    file_prefix: str  # T31UFU_20230714T105619


def _ids(tile: str, start: datetime, platform: str, baseline: str, rel: int, absorbit: int, gen: datetime) -> _Ids:
    """Identifiers as in section 1.1 (site code ``2APS``-style for every baseline)."""
    site = f"{platform[1:]}PS"
    ds_start = _utc(start).replace(microsecond=0) - timedelta(seconds=6)
    n = f"N{baseline}"
    return _Ids(
        name=product_name(tile=tile, datatake_start=start, platform=platform, baseline=baseline,
                          relative_orbit=rel, generation_time=gen),
        granule_dir=f"L2A_T{tile}_A{absorbit:06d}_{_ts(ds_start)}",
        datastrip_dir=f"DS_{site}_{_ts(gen)}_S{_ts(ds_start)}",
        granule_id=f"{platform}_OPER_MSI_L2A_TL_{site}_{_ts(gen)}_A{absorbit:06d}_T{tile}_{n}",
        datastrip_id=f"{platform}_OPER_MSI_L2A_DS_{site}_{_ts(gen)}_S{_ts(ds_start)}_{n}",
        datatake_id=f"G{platform}_{_ts(start)}_{absorbit:06d}_{n}",
        l1c_tile_id=f"{platform}_OPER_MSI_L1C_TL_{site}_{_ts(gen - timedelta(hours=1))}_A{absorbit:06d}_T{tile}_{n}",
        ds_start=ds_start,
        file_prefix=f"T{tile}_{_ts(start)}",
    )


def image_variables(baseline: str, resolution: int) -> list[str]:
    """The IMG_DATA files of a resolution folder (B01_20m only from PB 04.00)."""
    lst = {10: _IMG_10, 20: _IMG_20, 60: _IMG_60}[resolution]
    if resolution == 20 and baseline < "04.00":
        lst = [v for v in lst if v != "B01"]
    return list(lst)


# -- windows ----------------------------------------------------------------------------------
Window = tuple[int, int, int, int]


def _windows(window: Window | None) -> dict[int, Window]:
    """The window at each resolution; 10 m values must be multiples of 6 (60 m alignment)."""
    if window is None:
        window = (0, 0, TILE_PIXELS[10], TILE_PIXELS[10])
    if len(window) != 4 or any(int(v) != v or v % 6 for v in window):
        raise ConfigError(f"window {window} must be 4 integers (row_off, col_off, height, width), all multiples of 6")
    r0, c0, h, w = (int(v) for v in window)
    if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > TILE_PIXELS[10] or c0 + w > TILE_PIXELS[10]:
        raise ConfigError(f"window {window} is not inside the 10980x10980 tile")
    return {r: (r0 * 10 // r, c0 * 10 // r, h * 10 // r, w * 10 // r) for r in (10, 20, 60)}


# -- raster writing ---------------------------------------------------------------------------
def _write_jp2(path: Path, arr: np.ndarray, transform: Affine, crs: str, nodata: int | None = None) -> None:
    """Write a lossless, georeferenced JP2 (GMLJP2 + GeoJP2 boxes, like GDAL writes them).

    DESIGN CHOICE: like ESA's own JP2s, the files declare no nodata value (0 means nodata by
    the product's Special_Values; GDAL's SENTINEL2 driver sets it), and no ``.aux.xml``
    sidecar is written (GDAL_PAM_ENABLED=NO), so the SAFE holds exactly the real file set.
    """
    del nodata  # semantic only; see the docstring
    arr = arr if arr.ndim == 3 else arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(path, "w", driver="JP2OpenJPEG", width=arr.shape[2], height=arr.shape[1],
                           count=arr.shape[0], dtype=arr.dtype, crs=crs, transform=transform,
                           **JP2_OPTIONS) as dst:
            dst.write(arr)


def _nodata_for(var: str) -> int | None:
    return None if var in ("CLD", "SNW") else 0  # 0 is a valid probability


def _render_resolution(params: SceneParams, res: int, window: Window, targets: dict[str, Path],
                       offset: int, keep: set[str], tmp: Path) -> dict[str, np.ndarray]:
    """Render and write every target raster of one resolution; return the ``keep`` arrays."""
    tile = params.tile
    r0, c0, h, w = window
    transform = tile.transform(res, r0, c0)
    variables = list(targets)
    if h * w <= STRIP_PIXELS:
        arrays = render(params, res, window, variables)
        for var, path in targets.items():
            _write_jp2(path, _with_offset(var, arrays[var], offset), transform, tile.crs, _nodata_for(var))
        return {k: arrays[k] for k in keep}
    # big rasters: strips -> temporary tiled GeoTIFFs -> JP2 (memory stays bounded)
    strip = max(1, STRIP_PIXELS // w)
    kept: dict[str, np.ndarray] = {}
    tifs: dict[str, Path] = {}
    dsts = {}
    try:
        for var in variables:
            count = 3 if var == "TCI" else 1
            dtype = "uint8" if var in ("TCI", "SCL", "CLD", "SNW") else "uint16"
            tifs[var] = tmp / f"{var}_{res}.tif"
            dsts[var] = rasterio.open(tifs[var], "w", driver="GTiff", width=w, height=h, count=count, dtype=dtype,
                                      crs=tile.crs, transform=transform, tiled=True,
                                      blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER")
        for row in range(0, h, strip):
            hh = min(strip, h - row)
            arrays = render(params, res, (r0 + row, c0, hh, w), variables + ["VALID"])
            win = rasterio.windows.Window(0, row, w, hh)
            for var in variables:
                a = _with_offset(var, arrays[var], offset)
                dsts[var].write(a if a.ndim == 3 else a[None], window=win)
            for k in keep:
                kept.setdefault(k, []).append(arrays[k])  # type: ignore[arg-type]
    finally:
        for d in dsts.values():
            d.close()
    for var, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            rasterio.shutil.copy(tifs[var], path, driver="JP2OpenJPEG", **JP2_OPTIONS)
        tifs[var].unlink()
    return {k: np.concatenate(v, axis=-2) for k, v in kept.items()}  # type: ignore[arg-type]


def _with_offset(var: str, arr: np.ndarray, offset: int) -> np.ndarray:
    """PB >= 04.00 reflectance: DN = harmonised DN + 1000 where valid (never touches 0)."""
    if offset and var.startswith("B"):
        return np.where(arr > 0, arr + np.uint16(offset), 0).astype(np.uint16)
    return arr


# -- statistics and geometry ------------------------------------------------------------------
def scl_statistics(scl: np.ndarray, aot: np.ndarray, wvp: np.ndarray) -> dict[str, float]:
    """Image_Content_QI percentages from the SCL (class shares of the valid pixels, as sen2cor)."""
    counts = np.bincount(scl.ravel(), minlength=12).astype(float)
    total = counts.sum()
    valid = total - counts[0]

    def pct(*classes: int) -> float:
        return float(sum(counts[c] for c in classes) / valid * 100) if valid else 0.0

    cloudy = pct(8, 9, 10)
    land = valid - counts[6]
    cloud_px = counts[8] + counts[9] + counts[10]
    m = scl > 0
    return {
        "NODATA_PIXEL_PERCENTAGE": float(counts[0] / total * 100),
        "SATURATED_DEFECTIVE_PIXEL_PERCENTAGE": pct(1), "DARK_FEATURES_PERCENTAGE": pct(2),
        "CLOUD_SHADOW_PERCENTAGE": pct(3), "VEGETATION_PERCENTAGE": pct(4),
        "NOT_VEGETATED_PERCENTAGE": pct(5), "WATER_PERCENTAGE": pct(6), "UNCLASSIFIED_PERCENTAGE": pct(7),
        "MEDIUM_PROBA_CLOUDS_PERCENTAGE": pct(8), "HIGH_PROBA_CLOUDS_PERCENTAGE": pct(9),
        "THIN_CIRRUS_PERCENTAGE": pct(10), "SNOW_ICE_PERCENTAGE": pct(11),
        "CLOUDY_PIXEL_PERCENTAGE": cloudy,
        "CLOUDY_PIXEL_OVER_LAND_PERCENTAGE": float(min(100.0, cloud_px / land * 100)) if land > 0 else 0.0,
        "GRANULE_MEAN_AOT": float(aot[m].mean() / 1000) if m.any() else 0.0,
        "GRANULE_MEAN_WV": float(wvp[m].mean() / 1000) if m.any() else 0.0,
    }


def footprint(tile: TileInfo, window10: Window, swath_edge: tuple[LonLat, LonLat] | None) -> list[tuple[float, float]]:
    """Closed (lat, lon) ring of the valid data: the window, cut by the swath edge."""
    r0, c0, h, w = window10
    x0, y0 = tile.ulx + c0 * 10, tile.uly - r0 * 10
    x1, y1 = x0 + w * 10, y0 - h * 10
    # densify the edges a little so the ring follows the UTM rectangle in lon/lat
    pts = []
    for (xa, ya), (xb, yb) in zip([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], [(x1, y0), (x1, y1), (x0, y1), (x0, y0)]):
        for t in np.linspace(0, 1, 4, endpoint=False):
            pts.append((xa + (xb - xa) * t, ya + (yb - ya) * t))
    xs, ys = zip(*pts)
    lon, lat = _to_lonlat(tile.epsg).transform(np.array(xs), np.array(ys))
    poly = [(lo * GEO_M_PER_DEG_LON, la * GEO_M_PER_DEG_LAT) for lo, la in zip(lon, lat)]
    if swath_edge is not None:
        (lo1, la1), (lo2, la2) = swath_edge
        poly = _clip_left(poly, (lo1 * GEO_M_PER_DEG_LON, la1 * GEO_M_PER_DEG_LAT),
                          (lo2 * GEO_M_PER_DEG_LON, la2 * GEO_M_PER_DEG_LAT))
    ring = [(n / GEO_M_PER_DEG_LAT, e / GEO_M_PER_DEG_LON) for e, n in poly]
    return ring + ring[:1] if ring else ring


def _clip_left(poly: list[tuple[float, float]], p1: tuple[float, float], p2: tuple[float, float]) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: keep the part of the polygon left of the directed line p1->p2."""
    def side(p: tuple[float, float]) -> float:
        return (p2[0] - p1[0]) * (p[1] - p1[1]) - (p2[1] - p1[1]) * (p[0] - p1[0])

    out: list[tuple[float, float]] = []
    for a, b in zip(poly, poly[1:] + poly[:1]):
        sa, sb = side(a), side(b)
        if sa >= 0:
            out.append(a)
        if (sa >= 0) != (sb >= 0):
            t = sa / (sa - sb)
            out.append((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t))
    return out


def swath_edge_across(tile: str, top_fraction: float, bottom_fraction: float) -> tuple[LonLat, LonLat]:
    """A swath edge crossing the tile from (top, x=top_fraction) to (bottom, x=bottom_fraction).

    Data is kept west (left) of the line, looking south, like the eastern edge of a descending
    swath... the directed line runs from the bottom point to the top point so that "left" is west.
    """
    t = get_tile(tile)
    size = 109_800
    xt, yt = t.ulx + top_fraction * size, t.uly
    xb, yb = t.ulx + bottom_fraction * size, t.uly - size
    lon, lat = _to_lonlat(t.epsg).transform(np.array([xb, xt]), np.array([yb, yt]))
    return ((float(lon[0]), float(lat[0])), (float(lon[1]), float(lat[1])))


def _sun_grids(tile: TileInfo, window10: Window, when: datetime) -> tuple[list[list[float]], list[list[float]]]:
    r0, c0, _, _ = window10
    x = tile.ulx + c0 * 10 + 5000.0 * np.arange(23)
    y = tile.uly - r0 * 10 - 5000.0 * np.arange(23)
    xx, yy = np.meshgrid(x, y)
    lon, lat = _to_lonlat(tile.epsg).transform(xx, yy)
    zen, az = sun_angles(when, lon, lat)
    return np.round(zen, 6).tolist(), np.round(az, 6).tolist()


# -- the product ------------------------------------------------------------------------------
def make_product(
    out_dir: str | os.PathLike,
    *,
    tile: str = "31UFU",
    datatake_start: datetime,
    platform: str = "S2A",
    baseline: str = "05.09",
    generation_time: datetime | None = None,
    relative_orbit: int = 51,
    absolute_orbit: int | None = None,
    window: Window | None = None,
    content: str = "scene",
    seed: int | None = None,
    as_zip: bool = False,
    cloudiness: float | None = None,
    snow: bool | None = None,
    swath_edge: tuple[LonLat, LonLat] | None = None,
    overwrite: bool = False,
    exist_ok: bool = False,
) -> Path:
    """Write one synthetic L2A product and return its ``.SAFE`` folder (or ``.zip``).

    An existing product of the same name is an error, replaced with ``overwrite``, or returned
    as it is with ``exist_ok`` (products are renamed into place only when complete).

    ``window=(row_off, col_off, height, width)`` in 10 m pixels of the 10980² tile, all
    multiples of 6 (None: the full tile). DESIGN CHOICE: a windowed product's MTD_TL.xml
    describes the rasters actually written (ULX/ULY at the window corner, NROWS/NCOLS the
    window size), so metadata, JP2 georeferencing and GDAL's SENTINEL2 driver agree.

    Content options: ``cloudiness`` (0..1, None: drawn per datatake), ``snow`` (None: some
    winter datatakes), ``swath_edge`` (two lon/lat points; data left of the directed line,
    nodata beyond; see ``swath_edge_across``). ``seed`` selects the synthetic world (0 if None).
    Content never depends on baseline or generation time, so PB twins hold the same scene.

    Manifest checksums: MD5 for PB < 05.00 and SHA3-256 from 05.00 on (real products: MD5 up
    to 04.00, SHA3-256 at 05.09; the switch at 05.00 is our DESIGN CHOICE).
    """
    if platform not in PLATFORMS:
        raise ConfigError(f"platform must be one of {PLATFORMS}, not {platform!r}")
    _pb(baseline)
    if not 1 <= relative_orbit <= 143:
        raise ConfigError(f"relative orbit must be 1..143, not {relative_orbit}")
    ti = get_tile(tile)
    wins = _windows(window)
    start = _utc(datatake_start)
    gen = _utc(generation_time) if generation_time else default_generation_time(start)
    absorbit = absolute_orbit if absolute_orbit is not None else absolute_orbit_for(platform, start, relative_orbit)
    ids = _ids(ti.tile, start, platform, baseline, relative_orbit, absorbit, gen)
    params = SceneParams(tile=ti, datatake_start=start, content=content, seed=0 if seed is None else seed,
                         cloudiness=cloudiness, snow=snow, swath_edge=swath_edge)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (ids.name + (".zip" if as_zip else ".SAFE"))
    if final.exists():
        if exist_ok and not overwrite:
            return final
        if not overwrite:
            raise ConfigError(f"{final} exists (replace it with `s2ingest synth --overwrite`, "
                              "or overwrite=True in Python)")
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    work = Path(tempfile.mkdtemp(prefix=f".{ids.name}.", dir=out_dir))
    try:
        safe = work / (ids.name + ".SAFE")
        _write_safe(safe, ti, wins, params, ids, platform, baseline, start, gen, relative_orbit, absorbit)
        if as_zip:
            tmpzip = work / (ids.name + ".zip")
            _zip_safe(safe, tmpzip)
            os.replace(tmpzip, final)
        else:
            os.replace(safe, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def make_twins(out_dir: str | os.PathLike, *, old_baseline: str = "02.14", new_baseline: str = "05.09",
               **kwargs) -> tuple[Path, Path]:
    """Two products of the same datatake and tile with identical physical reflectance.

    The old one (PB < 04.00) stores DN = 10000·ρ, the new one (PB >= 04.00) DN + 1000 with
    BOA_ADD_OFFSET = -1000, so a reader that applies the offset gets the same values from both.
    The new one gets a later generation time, as a reprocessing would.
    """
    if not (old_baseline < "04.00" <= new_baseline):
        raise ConfigError("make_twins needs an old baseline < 04.00 and a new one >= 04.00")
    start = _utc(kwargs["datatake_start"])
    gen_old = kwargs.pop("generation_time", None) or default_generation_time(start)
    old = make_product(out_dir, baseline=old_baseline, generation_time=gen_old, **kwargs)
    new = make_product(out_dir, baseline=new_baseline, generation_time=gen_old + timedelta(days=400), **kwargs)
    return old, new


def _zip_safe(safe: Path, dest: Path) -> None:
    """Hub-style zip: a single root folder ``<name>.SAFE/``; JP2 stored, XML deflated."""
    with zipfile.ZipFile(dest, "w") as zf:
        zf.write(safe, safe.name + "/")
        for p in sorted(safe.rglob("*")):
            arc = f"{safe.name}/{p.relative_to(safe).as_posix()}"
            if p.is_dir():
                zf.write(p, arc + "/")
            else:
                zf.write(p, arc, compress_type=zipfile.ZIP_STORED if p.suffix == ".jp2" else zipfile.ZIP_DEFLATED)


def _write_safe(safe: Path, ti: TileInfo, wins: dict[int, Window], params: SceneParams, ids: _Ids,
                platform: str, baseline: str, start: datetime, gen: datetime, rel: int, absorbit: int) -> None:
    granule = safe / "GRANULE" / ids.granule_dir
    qi = granule / "QI_DATA"
    offset = 1000 if baseline >= "04.00" else 0
    image_files: list[str] = []
    kept: dict[int, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(dir=safe.parent) as tmp:
        for res in (10, 20, 60):
            targets: dict[str, Path] = {}
            for var in image_variables(baseline, res):
                rel_path = f"GRANULE/{ids.granule_dir}/IMG_DATA/R{res}m/{ids.file_prefix}_{var}_{res}m"
                image_files.append(rel_path)
                targets[var] = safe / (rel_path + ".jp2")
            if res in (20, 60):
                targets["CLD"] = qi / f"MSK_CLDPRB_{res}m.jp2"
                targets["SNW"] = qi / f"MSK_SNWPRB_{res}m.jp2"
            keep = {"SCL", "AOT", "WVP"} if res == 20 else ({"SCL", "TCI"} if res == 60 else set())
            kept[res] = _render_resolution(params, res, wins[res], targets, offset, keep, Path(tmp))

    mask_files = _write_masks(safe, ti, wins[60], ids, baseline, kept[60]["SCL"])
    pvi = f"GRANULE/{ids.granule_dir}/QI_DATA/{ids.file_prefix}_PVI.jp2"
    _write_pvi(safe / pvi, ti, wins[10], kept[60]["TCI"])

    r0, c0, h, w = wins[10]
    info = X.ProductInfo(
        name=ids.name, platform=platform, baseline=baseline, product_start=start, product_stop=start,
        generation_time=gen, relative_orbit=rel, absolute_orbit=absorbit, tile=ti.tile, epsg=ti.epsg,
        datatake_id=ids.datatake_id, granule_id=ids.granule_id, datastrip_id=ids.datastrip_id,
        l1c_tile_id=ids.l1c_tile_id, granule_dir=ids.granule_dir, datastrip_dir=ids.datastrip_dir,
        ds_sensing_start=ids.ds_start, image_files=image_files,
        footprint_latlon=footprint(ti, wins[10], params.swath_edge),
        sizes={res: (wins[res][2], wins[res][3]) for res in (10, 20, 60)},
        ulx=ti.ulx + c0 * 10, uly=ti.uly - r0 * 10,
        qi=scl_statistics(kept[20]["SCL"], kept[20]["AOT"], kept[20]["WVP"]),
        mask_files=mask_files, pvi_file=pvi,
    )
    info.sun_zenith_grid, info.sun_azimuth_grid = _sun_grids(ti, wins[10], start)
    _write_small_files(safe, info, ids, baseline)
    _write(granule / "MTD_TL.xml", X.tile_metadata(info))
    _write(safe / "MTD_MSIL2A.xml", X.product_metadata(info))
    _write(safe / "manifest.safe", X.manifest(info, _data_objects(safe, ids, baseline)))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_masks(safe: Path, ti: TileInfo, win60: Window, ids: _Ids, baseline: str,
                 scl60: np.ndarray) -> list[tuple[str, int | None, str]]:
    """QI masks per baseline; returns MTD_TL MASK_FILENAME entries (type, bandId, path).

    PB >= 04.00: raster MSK_CLASSI_B00 (3 bands: opaque clouds, cirrus, snow), MSK_DETFOO_Bxx
    (detector index), MSK_QUALIT_Bxx (8 quality bits, all clear). DESIGN CHOICE: all written
    at 60 m to stay small (real ones are at the band's resolution); nothing downstream reads them.
    PB < 04.00: GML vector masks (MSK_CLOUDS_B00 and MSK_{DEFECT,DETFOO,NODATA,SATURA,TECQUA}_Bxx).
    """
    qdir = f"GRANULE/{ids.granule_dir}/QI_DATA"
    entries: list[tuple[str, int | None, str]] = []
    transform = ti.transform(60, win60[0], win60[1])
    if baseline >= "04.00":
        valid = scl60 > 0
        for bid, band in enumerate(MASK_BANDS):
            for mtype in ("MSK_DETFOO", "MSK_QUALIT"):
                entries.append((mtype, bid, f"{qdir}/{mtype}_{band}.jp2"))
        r0, c0, h, w = win60
        cols = c0 + np.arange(w)
        det = np.broadcast_to((1 + cols * 12 // TILE_PIXELS[60]).astype(np.uint8), (h, w))
        detfoo = np.where(valid, det, 0).astype(np.uint8)
        qualit = np.zeros((8, h, w), np.uint8)
        for bid, band in enumerate(MASK_BANDS):
            _write_jp2(safe / qdir / f"MSK_DETFOO_{band}.jp2", detfoo, transform, ti.crs, None)
            _write_jp2(safe / qdir / f"MSK_QUALIT_{band}.jp2", qualit, transform, ti.crs, None)
        classi = np.stack([np.isin(scl60, (8, 9)), scl60 == 10, scl60 == 11]).astype(np.uint8)
        _write_jp2(safe / qdir / "MSK_CLASSI_B00.jp2", classi, transform, ti.crs, None)
        entries.append(("MSK_CLASSI", None, f"{qdir}/MSK_CLASSI_B00.jp2"))
    else:
        info_stub = _StubInfo(ti, win60)
        for bid, band in enumerate(MASK_BANDS):
            for mtype in ("MSK_DEFECT", "MSK_DETFOO", "MSK_NODATA", "MSK_SATURA", "MSK_TECQUA"):
                path = f"{qdir}/{mtype}_{band}.gml"
                _write(safe / path, X.gml_mask(mtype, band, info_stub))  # type: ignore[arg-type]
                entries.append((mtype, bid, path))
        _write(safe / qdir / "MSK_CLOUDS_B00.gml", X.gml_mask("MSK_CLOUDS", "B00", info_stub))  # type: ignore[arg-type]
        entries.append(("MSK_CLOUDS", None, f"{qdir}/MSK_CLOUDS_B00.gml"))
    for res in (20, 60):
        entries.append(("MSK_CLDPRB", None, f"{qdir}/MSK_CLDPRB_{res}m.jp2"))
        entries.append(("MSK_SNWPRB", None, f"{qdir}/MSK_SNWPRB_{res}m.jp2"))
    return entries


@dataclass
class _StubInfo:
    """Just what ``gml_mask`` needs (EPSG and the written extent)."""

    tile: TileInfo
    win60: Window

    @property
    def epsg(self) -> int:
        return self.tile.epsg

    @property
    def ulx(self) -> float:
        return self.tile.ulx + self.win60[1] * 60

    @property
    def uly(self) -> float:
        return self.tile.uly - self.win60[0] * 60

    @property
    def sizes(self) -> dict[int, tuple[int, int]]:
        return {10: (self.win60[2] * 6, self.win60[3] * 6)}


def _write_pvi(path: Path, ti: TileInfo, win10: Window, tci60: np.ndarray) -> None:
    """Preview: TCI sampled at 320 m (343 px across a full tile, as real PVIs)."""
    r0, c0, h, w = win10
    n_r, n_c = max(1, math.floor(h * 10 / 320)), max(1, math.floor(w * 10 / 320))
    rows = np.minimum(((np.arange(n_r) + 0.5) * 320 / 60).astype(int), tci60.shape[1] - 1)
    cols = np.minimum(((np.arange(n_c) + 0.5) * 320 / 60).astype(int), tci60.shape[2] - 1)
    pvi = np.ascontiguousarray(tci60[:, rows][:, :, cols])
    _write_jp2(path, pvi, Affine(320, 0, ti.ulx + c0 * 10, 0, -320, ti.uly - r0 * 10), ti.crs, 0)


def _write_small_files(safe: Path, info: X.ProductInfo, ids: _Ids, baseline: str) -> None:
    """INSPIRE, HTML, rep_info, datastrip and granule QI reports, AUX_DATA."""
    lats = [p[0] for p in info.footprint_latlon] or [0.0]
    lons = [p[1] for p in info.footprint_latlon] or [0.0]
    _write(safe / "INSPIRE.xml", X.inspire(info, (min(lons), min(lats), max(lons), max(lats))))
    _write(safe / "HTML" / "UserProduct_index.html", X.HTML_INDEX)
    _write(safe / "HTML" / "UserProduct_index.xsl", X.HTML_XSL)
    for xsd in ("S2_User_Product_Level-2A_Metadata.xsd", "S2_PDI_Level-2A_Tile_Metadata.xsd",
                "S2_PDI_Level-2A_Datastrip_Metadata.xsd"):
        _write(safe / "rep_info" / xsd, X.xsd_placeholder(xsd))
    ds = safe / "DATASTRIP" / ids.datastrip_dir
    _write(ds / "MTD_DS.xml", X.datastrip_metadata(info))
    for check in ("FORMAT_CORRECTNESS", "GENERAL_QUALITY", "GEOMETRIC_QUALITY", "RADIOMETRIC_QUALITY", "SENSOR_QUALITY"):
        _write(ds / "QI_DATA" / f"{check}.xml", X.quality_report(check, info, ids.datastrip_id))
    granule = safe / "GRANULE" / ids.granule_dir
    checks = ["FORMAT_CORRECTNESS", "GENERAL_QUALITY", "GEOMETRIC_QUALITY", "SENSOR_QUALITY"]
    if baseline >= "04.00":
        checks.append("L2A_QUALITY")
    for check in checks:
        _write(granule / "QI_DATA" / f"{check}.xml", X.quality_report(check, info, ids.granule_id))
    aux = granule / "AUX_DATA"
    _write(aux / "AUX_ECMWFT", b"GRIB synthetic ECMWF placeholder\n")
    if baseline >= "04.00":
        _write(aux / "AUX_CAMSFO", b"GRIB synthetic CAMS placeholder\n")


def _object_id(rel: str, ids: _Ids) -> tuple[str, str]:
    """dataObject ID and MIME type, after the patterns of real manifests."""
    name = rel.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0]
    if rel == "MTD_MSIL2A.xml":
        return "S2_Level-2A_Product_Metadata", "text/xml"
    if rel == "INSPIRE.xml":
        return "INSPIRE_Metadata", "text/xml"
    if rel.startswith("HTML/"):
        return ("HTML_Presentation" if name.endswith(".html") else "HTML_Presentation_Stylesheet"), "octet"
    if rel.startswith("DATASTRIP/"):
        if name == "MTD_DS.xml":
            return "S2_Level-2A_Datastrip1_Metadata", "application/xml"
        return f"{stem}_Report_Datastrip1_InformationData", "application/xml"
    if name == "MTD_TL.xml":
        return "S2_Level-2A_Tile1_Metadata", "text/xml"
    if "/IMG_DATA/" in rel:
        m = re.search(r"_([A-Z0-9]{3})_(\d\dm)$", stem)
        return f"IMG_DATA_Band_{m.group(1)}_{m.group(2)}_Tile1_Data", "application/octet-stream"
    if "/AUX_DATA/" in rel:
        return ("CAMS_Tile1_Data" if name == "AUX_CAMSFO" else "ECMWF_Tile1_Data"), "application/octet-stream"
    if name.endswith("_PVI.jp2"):
        return "Preview_0_Tile1_Data", "application/octet-stream"
    if name.endswith(".xml"):
        return f"{stem}_Report_Tile1_InformationData", "application/xml"
    fixed = {"MSK_CLDPRB_20m": "CloudPrbMask_Tile1_Data", "MSK_CLDPRB_60m": "CloudPrbMask_1_Tile1_Data",
             "MSK_SNWPRB_20m": "SnowPrbMask_Tile1_Data", "MSK_SNWPRB_60m": "SnowPrbMask_1_Tile1_Data",
             "MSK_CLASSI_B00": "ClassiPixelsMask_Band_00m_0_Tile1_Data", "MSK_CLOUDS_B00": "FineCloudMask_Tile1_Data"}
    if stem in fixed:
        return fixed[stem], ("application/octet-stream" if name.endswith(".jp2") else "text/xml")
    kind = {"MSK_DETFOO": "DetectorFootprintMask", "MSK_QUALIT": "QualitPixelsMask", "MSK_DEFECT": "DefectivePixelsMask",
            "MSK_NODATA": "NodataPixelsMask", "MSK_SATURA": "SaturatedPixelsMask", "MSK_TECQUA": "TechQualityMask"}
    return f"{kind[stem[:10]]}_{stem[11:]}_Tile1_Data", ("application/octet-stream" if name.endswith(".jp2") else "text/xml")


def checksum_algorithm(baseline: str) -> str:
    """DESIGN CHOICE: SHA3-256 from PB 05.00 on, MD5 before (see make_product)."""
    return "SHA3-256" if baseline >= "05.00" else "MD5"


def file_checksum(path: Path, algorithm: str) -> str:
    h = hashlib.sha3_256() if algorithm == "SHA3-256" else hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_objects(safe: Path, ids: _Ids, baseline: str) -> list[X.DataObject]:
    algo = checksum_algorithm(baseline)
    objs = []
    for p in sorted(safe.rglob("*")):
        if not p.is_file() or p.name == "manifest.safe" or p.parent.name == "rep_info":
            continue
        rel = p.relative_to(safe).as_posix()
        oid, mime = _object_id(rel, ids)
        objs.append(X.DataObject(oid, rel, mime, p.stat().st_size, algo, file_checksum(p, algo)))
    return objs
