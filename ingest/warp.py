"""Warp one product's rasters onto a window of the cube grid.

GDAL (through rasterio) does the resampling; we only choose the window, the pinned coordinate
operation, the nodata rules and the harmonisation of reflectance across processing baselines.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import rasterio
from pyproj.transformer import TransformerGroup
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.windows import Window

from .errors import ConfigError, CorruptProductError
from .grid import CubeGrid
from .product import Product
from .variables import VARIABLES, VariableSpec, get_variable

log = logging.getLogger(__name__)

# GDAL settings for the warp: the block cache must hold a row of decoded JP2 tiles of the
# band being warped, so each JP2 tile is decoded once while we walk output windows.
GDAL_ENV = {
    "GDAL_CACHEMAX": 1024,  # MB
    "GDAL_NUM_THREADS": "ALL_CPUS",  # OpenJPEG multi-threaded decoding
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".jp2,.tif,.zip",
}


@functools.lru_cache(maxsize=32)
def pinned_operation(src_crs: str, dst_crs: str) -> str:
    """The PROJ pipeline used for ``src_crs -> dst_crs``, fixed for reproducibility.

    DESIGN CHOICE: PROJ picks the best *available* operation, which depends on the grids a
    machine happens to have. We take the best operation that needs no grid file (for
    UTM/WGS 84 -> RD New: the EPSG:4833 Helmert, ~0.15 m from RDNAPTRANS2018, < 2 % of a
    pixel), so every machine warps identically.
    """
    group = TransformerGroup(src_crs, dst_crs, always_xy=True)
    for transformer in group.transformers:
        definition = transformer.to_proj4()
        if definition and "grids=" not in definition:
            return definition
    raise ConfigError(f"no grid-free coordinate operation from {src_crs} to {dst_crs}")


def parse_resampling(overrides: dict[str, str] | None) -> dict[str, Resampling]:
    """Per-variable resampling: each variable's default, with ``{"B04": "cubic"}`` overrides."""
    result = {name: spec.default_resampling for name, spec in VARIABLES.items()}
    for name, method in (overrides or {}).items():
        names = list(VARIABLES) if name in ("*", "all") else [get_variable(name).name]
        try:
            value = Resampling[method]
        except KeyError:
            raise ConfigError(
                f"unknown resampling {method!r} for {name}; use one of "
                + ", ".join(r.name for r in Resampling if r.value <= 14)
            ) from None
        for n in names:
            result[n] = value
    return result


@dataclass(frozen=True)
class WarpTarget:
    """A window of the cube grid that rasters are warped into."""

    grid: CubeGrid
    window: Window

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.window.height), int(self.window.width))


def _harmonise(data: np.ndarray, offset: int) -> np.ndarray:
    """Apply BOA_ADD_OFFSET (PB >= 04.00) so every baseline encodes rho = value / 10000.

    DESIGN CHOICE: a valid pixel that would drop below 1 is clamped to 1 so it never turns
    into the fill value 0; 0 stays 0 (nodata), whatever the offset.
    """
    if offset == 0:
        return data
    valid = data != 0
    shifted = data.astype(np.int32) + offset
    np.clip(shifted, 1, 65535, out=shifted)
    return np.where(valid, shifted, 0).astype(np.uint16)


def _warp_file(
    product: Product, relpath: str, target: WarpTarget, resampling: Resampling,
    src_nodata: float | None, dst_nodata: float, dtype: str, threads: int,
) -> np.ndarray:
    out = np.full(target.shape, dst_nodata, dtype=dtype)
    path = product.gdal_path(relpath)
    try:
        with rasterio.open(path) as src:
            reproject(
                source=rasterio.band(src, 1),
                destination=out,
                dst_transform=target.grid.window_transform(target.window),
                dst_crs=target.grid.crs,
                src_nodata=src_nodata,
                dst_nodata=dst_nodata,
                resampling=resampling,
                num_threads=threads,
                warp_mem_limit=256,
                init_dest_nodata=True,
                COORDINATE_OPERATION=pinned_operation(str(src.crs), target.grid.crs),
            )
    except RasterioError as exc:
        raise CorruptProductError(product.name, f"cannot read {relpath}: {exc}") from exc
    return out


def warp_variable(
    product: Product, spec: VariableSpec, target: WarpTarget,
    resampling: Resampling | None = None, *, scl: np.ndarray | None = None, threads: int = 2,
) -> np.ndarray:
    """One variable of one product on the target window, encoded as the store expects.

    CLD and SNW have no nodata value of their own (0 means "clear"); their footprint is
    taken from the product's SCL on the same window (pass the warped ``scl``).
    """
    method = resampling if resampling is not None else spec.default_resampling
    relpath = product.file_for(spec.name, spec.resolution)
    if spec.kind == "probability":
        data = _warp_file(product, relpath, target, method, None, 0, spec.dtype, threads)
        if scl is None:
            raise ValueError("CLD/SNW need the warped SCL of the same product")
        return np.where(scl == 0, np.uint8(spec.fill_value), data).astype(spec.dtype)
    data = _warp_file(product, relpath, target, method, 0, spec.fill_value, spec.dtype, threads)
    if spec.is_reflectance:
        data = _harmonise(data, int(product.boa_add_offset.get(spec.name, 0)))
    return data
