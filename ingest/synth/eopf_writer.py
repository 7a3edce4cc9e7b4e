"""Write synthetic EOPF Zarr S02MSIL2A products: the same scene as ``safe_writer``, in the EOPF layout.

The pixels come from ``scene.render`` exactly as the SAFE writer renders them (same window,
same resolution, reflectance DN + 1000 from PB 04.00 on), so a scene written in both formats
holds the same digital numbers. The container follows the real products (DESIGN.md §7, "EOPF
Zarr products"; eopf-facts §2-§7, §11):

* Zarr format 2 written by zarr-python 3, consolidated ``.zmetadata`` at the root, ``.zgroup``
  and ``.zattrs`` in every group, ``_ARRAY_DIMENSIONS``, chunk keys with ``.``;
* every array Blosc zstd level 3 with bit-shuffle (0-d arrays uncompressed), C order, no filters;
* the group tree of §3 (measurements, quality, conditions with masks, geometry, meteorology),
  every resolution group with its own ``x``/``y`` (int64 pixel centres);
* dtypes and fill values of §4 (reflectance ``<u2`` fill 0, SCL/CLD/SNW ``|u1`` and AOT/WVP
  ``<u2`` without fill value), the attributes of ``eopf_attrs``;
* chunking ``layout="A"`` (1830/915/305, CPM 2.5.9), ``"B"`` (Sample Service cpm_v256: 5490 at
  r10m reflectance, whole arrays elsewhere) or a side per resolution (``{10: 120, 20: 60, 60: 20}``),
  cut to the window;
* the folder ``<SAFE name>.zarr`` (as the Sample Service names products), or with
  ``name_style="native"`` the CPM's ``S02MSIL2A_<start>_0000_<unit><orbit>_T<crc>.zarr`` (its CRC
  here is synthetic); ``as_zip`` writes ``<folder name>.zip`` with the store at the zip root
  (zarr's ZipStore convention) or, ``zip_root="folder"``, under ``<folder name>/``.

Every chunk is written, also all-fill ones (``write_empty_chunks``), as the reader requires.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numcodecs
import numpy as np
import zarr
from zarr.storage import MemoryStore

from ingest.errors import ConfigError
from ingest.products.eopf.reader import REFLECTANCE_BANDS
from ingest.synth.eopf_attrs import BANDS, proj_attrs, raster_attrs, root_attrs
from ingest.synth.safe_writer import (
    PLATFORMS, STRIP_PIXELS, _ids, _pb, _utc, _windows, _with_offset, absolute_orbit_for,
    default_generation_time, footprint, scl_statistics,
)
from ingest.synth.scene import SceneParams, _to_lonlat, render, sun_angles
from ingest.synth.tiles import TILE_PIXELS, TileInfo, get_tile

COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=0)
LAYOUTS: dict[str, dict[int, int]] = {"A": {10: 1830, 20: 915, 60: 305}}
DETECTOR_BANDS = {10: ("b02", "b03", "b04", "b08"), 20: ("b05", "b06", "b07", "b11", "b12", "b8a"),
                  60: ("b01", "b09", "b10")}
ROW_BUFFER_PIXELS = 24_000_000  # a whole chunk row is buffered when it is at most this big
Layout = str | dict[int, int]


def _side(layout: Layout, res: int, kind: str, n: int) -> int:
    if isinstance(layout, dict):
        side = layout[res]
    elif layout == "A":
        side = LAYOUTS["A"][res]
    elif layout == "B":  # Sample Service cpm_v256 (eopf-facts §5)
        side = 5490 if (kind == "reflectance" and res == 10) else n
    else:
        raise ConfigError(f"chunk layout must be 'A', 'B' or {{10: n, 20: n, 60: n}}, not {layout!r}")
    return max(1, min(int(side), n))


def _array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
           fill: Any, attrs: dict[str, Any]) -> zarr.Array:
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
        compressors=COMPRESSOR if shape else None, filters=None, order="C",
        chunk_key_encoding={"name": "v2", "separator": "."}, attributes=attrs,
        config={"write_empty_chunks": True},
    )


def _coords(group: zarr.Group, ti: TileInfo, res: int, win: tuple[int, int, int, int]) -> None:
    r0, c0, h, w = win
    for axis, values in (("x", ti.ulx + (c0 + np.arange(w)) * res + res // 2),
                         ("y", ti.uly - (r0 + np.arange(h)) * res - res // 2)):
        a = _array(group, axis, (len(values),), (len(values),), "<i8", None, {"_ARRAY_DIMENSIONS": [axis]})
        a[:] = values.astype(np.int64)


class _Spool:
    """zarr writes into a dict (three times faster than file by file for the ~150 small arrays
    of a product); chunks are moved to the folder once no later write can touch them."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.keys = folder, {}
        self.store = MemoryStore(store_dict=self.keys)

    def flush(self, metadata: bool = False) -> None:
        for key in [k for k in self.keys if metadata or not k.rsplit("/", 1)[-1].startswith(".")]:
            path = self.folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.keys.pop(key).to_bytes())


class _Target:
    """One raster to fill: its array and how its values come from a rendered strip."""

    def __init__(self, array: zarr.Array, value: Callable[[dict[str, np.ndarray], tuple[int, int]], np.ndarray]):
        self.array, self.value = array, value
        self.buffer: np.ndarray | None = None


def _targets(root: zarr.Group, ti: TileInfo, res: int, win: tuple[int, int, int, int], layout: Layout,
             baseline: str) -> tuple[list[_Target], list[str]]:
    """The rasters of one resolution and the scene variables to render for them."""
    r0, c0, h, w = win
    proj = proj_attrs(ti.epsg, res, ti.ulx + c0 * res, ti.uly - r0 * res, (h, w))
    offset = 1000 if baseline >= "04.00" else 0
    targets: list[_Target] = []
    variables: set[str] = {"VALID"}

    def add(path: str, kind: str, dtype: str, fill: Any, value, bands: int = 0, name: str = "") -> None:
        group = root.require_group(path.rsplit("/", 1)[0])
        side = _side(layout, res, kind, max(h, w))
        shape = (bands, h, w) if bands else (h, w)
        chunks = (1, min(side, h), min(side, w)) if bands else (min(side, h), min(side, w))
        attrs = raster_attrs(kind, name, proj, baseline=baseline)
        targets.append(_Target(_array(group, path.rsplit("/", 1)[1], shape, chunks, dtype, fill, attrs), value))

    for b in REFLECTANCE_BANDS[res]:
        var = b.upper()
        variables.add(var)
        add(f"measurements/reflectance/r{res}m/{b}", "reflectance", "<u2", 0,
            lambda a, _, v=var: _with_offset(v, a[v], offset), name=b)
    for var in ("AOT", "WVP"):
        variables.add(var)
        add(f"quality/atmosphere/r{res}m/{var.lower()}", "atmosphere", "<u2", None, lambda a, _, v=var: a[v])
    if res in (20, 60):
        variables.add("SCL")
        add(f"conditions/mask/l2a_classification/r{res}m/scl", "scl", "|u1", None, lambda a, _: a["SCL"])
    if res == 20:
        for var in ("CLD", "SNW"):
            variables.add(var)
            add(f"quality/probability/r20m/{var.lower()}", "probability", "|u1", None, lambda a, _, v=var: a[v])
    variables.add("TCI")
    add(f"quality/l2a_quicklook/r{res}m/tci", "tci", "|u1", None, lambda a, _: a["TCI"], bands=3)

    def detector(a: dict[str, np.ndarray], cols: tuple[int, int]) -> np.ndarray:
        det = (1 + np.arange(*cols) * 12 // TILE_PIXELS[res]).astype(np.uint8)
        return np.where(a["VALID"], det[None, :], 0).astype(np.uint8)

    for b in DETECTOR_BANDS[res]:
        add(f"quality/mask/r{res}m/{b}", "quality", "|u1", None, lambda a, _: np.zeros(a["VALID"].shape, np.uint8))
        add(f"conditions/mask/detector_footprint/r{res}m/{b}", "detector", "|u1", None, detector)
    if res == 60:
        def classi(a: dict[str, np.ndarray], _) -> np.ndarray:
            scl = a["SCL"]
            return (np.isin(scl, (8, 9)) * 1 + (scl == 10) * 2 + (scl == 11) * 4).astype(np.uint8)
        add("conditions/mask/l1c_classification/r60m/b00", "classification", "|u1", None, classi)
    return targets, sorted(variables)


def _write_resolution(root: zarr.Group, spool: _Spool, params: SceneParams, res: int,
                      win: tuple[int, int, int, int], layout: Layout, baseline: str,
                      keep: set[str]) -> dict[str, np.ndarray]:
    """Render and write every raster of one resolution; return the ``keep`` arrays whole."""
    ti = params.tile
    r0, c0, h, w = win
    targets, variables = _targets(root, ti, res, win, layout, baseline)
    for group in sorted({t.array.path.rsplit("/", 1)[0] for t in targets}):
        _coords(root[group], ti, res, win)
    # the "band" coordinates: 3 of the quicklook, 0-d (uncompressed) of the probabilities
    _array(root[f"quality/l2a_quicklook/r{res}m"], "band", (3,), (3,), "<i8", None,
           {"_ARRAY_DIMENSIONS": ["band"]})[:] = np.arange(1, 4)
    if res == 20:
        _array(root["quality/probability/r20m"], "band", (), (), "<i8", None, {"_ARRAY_DIMENSIONS": []})[...] = 0
    chunk_rows = min(t.array.chunks[-2] for t in targets)
    strip = max(1, STRIP_PIXELS // w)
    # whole chunk rows when they fit the buffer (each chunk written once), else strips (zarr
    # then rewrites the chunks a strip touches: only layout B's 5490-row chunks on a full tile)
    rows = chunk_rows if chunk_rows * w <= ROW_BUFFER_PIXELS else strip
    kept: dict[str, list[np.ndarray]] = {k: [] for k in keep}
    for wr in range(0, h, rows):
        wh = min(rows, h - wr)
        for t in targets:
            t.buffer = np.empty((*t.array.shape[:-2], wh, w), dtype=t.array.dtype)
        for rr in range(wr, wr + wh, strip):
            hh = min(strip, wr + wh - rr)
            arrays = render(params, res, (r0 + rr, c0, hh, w), variables)
            for t in targets:
                t.buffer[..., rr - wr:rr - wr + hh, :] = t.value(arrays, (c0, c0 + w))
            for k in keep:
                kept[k].append(arrays[k])
        for t in targets:
            t.array[..., wr:wr + wh, :] = t.buffer
            t.buffer = None
        if rows == chunk_rows:  # whole chunk rows: written once, never read back
            spool.flush()
    spool.flush()
    return {k: np.concatenate(v, axis=0) for k, v in kept.items()}


def _write_conditions(root: zarr.Group, ti: TileInfo, win10: tuple[int, int, int, int], start: datetime) -> tuple[float, float]:
    """Geometry (tie-point angles) and meteorology (CAMS, ECMWF) groups, small and constant-ish."""
    r0, c0, _, _ = win10
    geo = root.require_group("conditions/geometry")
    x = ti.ulx + c0 * 10 + 5000 * np.arange(23)
    y = ti.uly - r0 * 10 - 5000 * np.arange(23)
    lon, lat = _to_lonlat(ti.epsg).transform(*np.meshgrid(x, y))
    zen, az = sun_angles(start, lon, lat)
    nan = float("nan")
    dims = {"angle": ["angle"], "band": ["band"], "detector": ["detector"], "x": ["x"], "y": ["y"]}
    values = {"angle": np.array(["zenith", "azimuth"]), "band": np.array(list(BANDS)),
              "detector": np.arange(1, 7, dtype=np.int64), "x": x.astype(np.int64), "y": y.astype(np.int64)}
    for name, v in values.items():
        _array(geo, name, v.shape, v.shape, v.dtype.str, None, {"_ARRAY_DIMENSIONS": dims[name]})[:] = v
    sun = np.stack([zen, az])
    for name, v, d, chunks in (
            ("sun_angles", sun, ["angle", "y", "x"], sun.shape),
            ("mean_sun_angles", sun.mean(axis=(1, 2)), ["angle"], (2,)),
            ("mean_viewing_incidence_angles", np.full((13, 2), 5.0), ["band", "angle"], (13, 2)),
            ("viewing_incidence_angles", np.full((13, 6, 2, 23, 23), 5.0), ["band", "detector", "angle", "y", "x"],
             (7, 4, 2, 23, 23))):
        attrs = {"_ARRAY_DIMENSIONS": d, "_eopf_attrs": {"coordinates": d, "dimensions": d}}
        _array(geo, name, v.shape, chunks, "<f8", nan, attrs)[:] = v
    for source, fields in (("cams", ("aod1240", "aod469", "aod550", "aod670", "aod865", "bcaod550", "duaod550",
                                     "omaod550", "ssaod550", "suaod550", "z")),
                           ("ecmwf", ("msl", "r", "tco3", "tcwv", "u10", "v10"))):
        g = root.require_group(f"conditions/meteorology/{source}")
        g.attrs.update({"Conventions": "CF-1.7", "GRIB_centre": "ecmf", "GRIB_edition": 1, "GRIB_subCentre": 0,
                        "history": f"synthetic {source.upper()} fields"})
        for f in fields:
            _array(g, f, (9, 9), (9, 9), "<f4", nan, {"_ARRAY_DIMENSIONS": ["latitude", "longitude"],
                                                      "GRIB_shortName": f})[:] = 1.0
        for axis, v in (("latitude", np.linspace(float(lat.max()), float(lat.min()), 9)),
                        ("longitude", np.linspace(float(lon.min()), float(lon.max()), 9))):
            _array(g, axis, (9,), (9,), "<f8", nan, {"_ARRAY_DIMENSIONS": [axis]})[:] = v
        for scalar, dtype in (("number", "<i8"), ("step", "<i8"), ("time", "<i8"), ("valid_time", "<i8"),
                              ("isobaricInhPa", "<f8"), ("surface", "<f8")):
            _array(g, scalar, (), (), dtype, None if dtype == "<i8" else nan, {"_ARRAY_DIMENSIONS": []})[...] = 0
    return float(zen.mean()), float(az.mean())


def native_name(platform: str, start: datetime, relative_orbit: int, legacy: str) -> str:
    """The CPM's default file name (eopf-facts §1); the 3-hex-digit CRC here is synthetic."""
    crc = zlib.crc32(legacy.encode()) & 0xFFF
    return f"S02MSIL2A_{_utc(start):%Y%m%dT%H%M%S}_0000_{platform[2]}{relative_orbit:03d}_T{crc:03X}"


def _zip_store(folder: Path, dest: Path, *, root_folder: bool) -> None:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{folder.name}/{rel}" if root_folder else rel)


def make_eopf_product(
    out_dir: str | os.PathLike, *, tile: str = "31UFU", datatake_start: datetime, platform: str = "S2A",
    baseline: str = "05.09", generation_time: datetime | None = None, relative_orbit: int = 51,
    absolute_orbit: int | None = None, window: tuple[int, int, int, int] | None = None, content: str = "scene",
    seed: int | None = None, as_zip: bool = False, cloudiness: float | None = None, snow: bool | None = None,
    swath_edge=None, overwrite: bool = False, exist_ok: bool = False, layout: Layout = "A",
    name_style: str = "legacy", zip_root: str = "root",
) -> Path:
    """Write one synthetic EOPF product; the arguments are ``safe_writer.make_product``'s, plus
    ``layout`` (chunking), ``name_style`` ("legacy" or "native") and ``zip_root`` ("root" or
    "folder"). Returns the ``.zarr`` folder or the ``.zarr.zip``."""
    if platform not in PLATFORMS:
        raise ConfigError(f"platform must be one of {PLATFORMS}, not {platform!r}")
    _pb(baseline)
    if not 1 <= relative_orbit <= 143:
        raise ConfigError(f"relative orbit must be 1..143, not {relative_orbit}")
    if name_style not in ("legacy", "native") or zip_root not in ("root", "folder"):
        raise ConfigError("name_style must be 'legacy' or 'native', zip_root 'root' or 'folder'")
    ti, wins = get_tile(tile), _windows(window)
    start = _utc(datatake_start)
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)  # SAFE times have milliseconds
    gen = _utc(generation_time) if generation_time else default_generation_time(start)
    absorbit = absolute_orbit if absolute_orbit is not None else absolute_orbit_for(platform, start, relative_orbit)
    ids = _ids(ti.tile, start, platform, baseline, relative_orbit, absorbit, gen)
    params = SceneParams(tile=ti, datatake_start=start, content=content, seed=0 if seed is None else seed,
                         cloudiness=cloudiness, snow=snow, swath_edge=swath_edge)
    stem = ids.name if name_style == "legacy" else native_name(platform, start, relative_orbit, ids.name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (f"{stem}.zarr" + (".zip" if as_zip else ""))
    if final.exists():
        if exist_ok and not overwrite:
            return final
        if not overwrite:
            raise ConfigError(f"{final} exists (replace it with `s2ingest synth --overwrite`, or overwrite=True)")
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    work = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        folder = work / f"{stem}.zarr"
        spool = _Spool(folder)
        root = zarr.open_group(spool.store, mode="w", zarr_format=2)
        kept = {}
        for res in (10, 20, 60):
            keep = {"SCL", "AOT", "WVP"} if res == 20 else set()
            kept[res] = _write_resolution(root, spool, params, res, wins[res], layout, baseline, keep)
        sun = _write_conditions(root, ti, wins[10], start)
        r0, c0, h, w = wins[10]
        ulx, uly = ti.ulx + c0 * 10, ti.uly - r0 * 10
        root.attrs.update(root_attrs(
            name=ids.name, platform=platform, baseline=baseline, start=start, generation=gen,
            datatake_id=ids.datatake_id, granule_id=ids.granule_id, relative_orbit=relative_orbit,
            absolute_orbit=absorbit, epsg=ti.epsg, bbox_utm=[float(ulx), float(uly - h * 10), float(ulx + w * 10), float(uly)],
            footprint_lonlat=[(lon, lat) for lat, lon in footprint(ti, wins[10], params.swath_edge)],
            qi=scl_statistics(kept[20]["SCL"], kept[20]["AOT"], kept[20]["WVP"]), mean_sun=sun,
        ))
        zarr.consolidate_metadata(spool.store, zarr_format=2)
        spool.flush(metadata=True)
        if as_zip:
            tmpzip = work / final.name
            _zip_store(folder, tmpzip, root_folder=zip_root == "folder")
            os.replace(tmpzip, final)
        else:
            os.replace(folder, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
