"""``read_eopf``: an EOPF Zarr L2A product (``.zarr`` folder or zip) -> ``Product``.

Reads ``.zmetadata`` (bounded, ``zmeta``) and the small ``x``/``y`` coordinate arrays of the
resolution groups it uses; pixels are left to the warp (``arrays``). The same ``Product`` as
the SAFE reader builds, so planning, warping and the catalog are format-blind:

* identity (``identity``), footprint (``stac_discovery.geometry``), cloud cover (``eo:cloud_cover``);
* geocoding: EPSG (``other_metadata.horizontal_CRS_code``, the arrays' ``proj:epsg``,
  ``stac_discovery.properties`` ``proj:epsg``/``proj:code``: all that exist must agree), the
  upper-left corner and pixel size from each array's ``proj:transform`` (the same at every
  resolution), the size per resolution from the array shapes; the ``x``/``y`` coordinates
  (pixel centres, eopf-facts §6) must lie on that grid;
* files: variable -> resolution -> array path, with every array's layout (``Product.arrays``);
* radiometry: per reflectance band ``round(add_offset / scale_factor)`` is its BOA_ADD_OFFSET
  and ``1 / scale_factor`` its quantification (eopf-facts §4.1: the stored integers are the
  SAFE DNs, the offset is only in the attributes), so ``warp.harmonise`` treats both formats
  alike. DESIGN CHOICE, as for SAFE: a PB >= 04.00 product without ``add_offset`` is refused,
  never read as offset 0.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ingest.errors import CorruptProductError, MetadataError, UnsupportedProductError
from ingest.products.eopf.arrays import read_small
from ingest.products.eopf.container import ZARR3_ROOT, ZMETADATA, Container, open_container
from ingest.products.eopf.identity import lower_keys, identity
from ingest.products.eopf.zmeta import MAX_ZMETADATA_BYTES, ZMeta, array_layout, parse_zmetadata
from ingest.products.model import Product, TileGeocoding, ZarrArray
from ingest.products.names import EOPF, strip_product_suffix
from ingest.variables import VARIABLES

RESOLUTIONS = (10, 20, 60)
# Where each cube variable lives, per resolution (eopf-facts §3 and §8; CLD/SNW only at 20 m).
REFLECTANCE_BANDS = {
    10: ("b02", "b03", "b04", "b08"),
    20: ("b01", "b02", "b03", "b04", "b05", "b06", "b07", "b11", "b12", "b8a"),
    60: ("b01", "b02", "b03", "b04", "b05", "b06", "b07", "b09", "b11", "b12", "b8a"),
}


def array_paths() -> dict[str, dict[int, str]]:
    """variable -> resolution -> array path, for every array a product may hold."""
    paths: dict[str, dict[int, str]] = {}
    for res, bands in REFLECTANCE_BANDS.items():
        for b in bands:
            paths.setdefault(b.upper(), {})[res] = f"measurements/reflectance/r{res}m/{b}"
    for res in (20, 60):
        paths.setdefault("SCL", {})[res] = f"conditions/mask/l2a_classification/r{res}m/scl"
    for var in ("CLD", "SNW"):
        paths[var] = {20: f"quality/probability/r20m/{var.lower()}"}
    for var in ("AOT", "WVP"):
        paths[var] = {res: f"quality/atmosphere/r{res}m/{var.lower()}" for res in RESOLUTIONS}
    return paths


ARRAY_PATHS = array_paths()
_KINDS = {"reflectance": "u", "classes": "ui", "probability": "uf", "aot": "u", "wvp": "u"}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _attr(attrs: dict, key: str) -> Any:
    """An array attribute, at the top level (what xarray decodes) or in ``_eopf_attrs``."""
    if key in attrs:
        return attrs[key]
    inner = attrs.get("_eopf_attrs")
    return inner.get(key) if isinstance(inner, dict) else None


def _epsg(zm: ZMeta, arrays: dict[str, tuple[ZarrArray, dict]], label: str) -> int:
    found: dict[str, int] = {}
    code = lower_keys(zm.root_attrs.get("other_metadata")).get("horizontal_crs_code")
    props = (zm.root_attrs.get("stac_discovery") or {}).get("properties") or {}
    for what, value in (("other_metadata.horizontal_CRS_code", code), ("stac proj:code", props.get("proj:code")),
                        ("stac proj:epsg", props.get("proj:epsg")),
                        *((f"{p} proj:epsg", a.get("proj:epsg")) for p, (_, a) in arrays.items())):
        if value is None:
            continue
        m = re.fullmatch(r"(?i)(?:EPSG:)?(\d{4,5})", str(value).strip())
        if not m:
            raise MetadataError(label, f"{what} is not an EPSG code: {value!r}")
        found[what] = int(m[1])
    if not found:
        raise MetadataError(label, "no CRS: neither horizontal_CRS_code nor proj:epsg / proj:code")
    if len(set(found.values())) > 1:
        raise MetadataError(label, f"the CRS differs between {', '.join(f'{k}={v}' for k, v in found.items())}")
    return next(iter(found.values()))


def _corner(path: str, layout: ZarrArray, attrs: dict, label: str) -> tuple[float, float]:
    t = attrs.get("proj:transform")
    res = layout.resolution
    if not isinstance(t, list) or len(t) not in (6, 9) or not all(_number(v) is not None for v in t):
        raise MetadataError(label, f"{path}: proj:transform {t!r} is not an affine transform")
    a, b, c, d, e, f = (float(v) for v in t[:6])
    if abs(a - res) > 1e-6 * res or abs(e + res) > 1e-6 * res or b or d:
        raise MetadataError(label, f"{path}: pixel size {a}/{e} (or rotated), expected {res}/-{res}")
    shape = attrs.get("proj:shape")
    if shape is not None and list(shape) != list(layout.shape):
        raise MetadataError(label, f"{path}: proj:shape {shape} but the array is {list(layout.shape)}")
    return c, f


def _geocoding(arrays: dict[str, tuple[ZarrArray, dict]], epsg: int, label: str) -> TileGeocoding:
    sizes: dict[int, tuple[int, int]] = {}
    corner: tuple[float, float] | None = None
    for path, (layout, attrs) in sorted(arrays.items()):
        res = layout.resolution
        if len(layout.shape) != 2:
            raise CorruptProductError(label, f"{path} has shape {list(layout.shape)}, not (y, x)")
        shape = (layout.shape[0], layout.shape[1])
        if sizes.setdefault(res, shape) != shape:
            raise MetadataError(label, f"{path} is {shape[0]}x{shape[1]}, other {res} m arrays are "
                                       f"{sizes[res][0]}x{sizes[res][1]}")
        c = _corner(path, layout, attrs, label)
        if corner is None:
            corner = c
        elif max(abs(c[0] - corner[0]), abs(c[1] - corner[1])) > 1e-6:
            raise MetadataError(label, f"{path}: origin {c} but other arrays start at {corner}")
    missing = [r for r in RESOLUTIONS if r not in sizes]
    if missing or corner is None:
        raise CorruptProductError(label, f"no arrays at {missing} m")
    extents = {(n * r, m * r) for r, (n, m) in sizes.items()}
    if len(extents) != 1 or any(n <= 0 or m <= 0 for n, m in sizes.values()):
        raise MetadataError(label, f"the arrays' extents differ between resolutions: {sizes}")
    return TileGeocoding(epsg=epsg, ulx=corner[0], uly=corner[1], sizes=dict(sorted(sizes.items())))


def _offsets(arrays: dict[str, tuple[ZarrArray, dict]], baseline: str, label: str) -> tuple[dict[str, int], float]:
    offsets: dict[str, int] = {}
    quantification: set[float] = set()
    for var, spec in VARIABLES.items():
        if not spec.is_reflectance:
            continue
        path = ARRAY_PATHS[var][spec.resolution]
        attrs = arrays[path][1]
        scale, add = _number(_attr(attrs, "scale_factor")), _number(_attr(attrs, "add_offset"))
        if scale is None or scale <= 0:
            raise MetadataError(label, f"{path}: scale_factor {_attr(attrs, 'scale_factor')!r} is not positive")
        q = 1.0 / scale
        if abs(q - round(q)) > 1e-6 * q:
            raise MetadataError(label, f"{path}: scale_factor {scale} is not 1/integer")
        quantification.add(float(round(q)))
        if add is None:
            if baseline >= "04.00":
                raise MetadataError(label, f"PB {baseline} but {path} has no add_offset")
            add = 0.0
        off = add / scale  # -0.1 / 0.0001 = -1000.0000000000001 (eopf-facts §4.1)
        if abs(off - round(off)) > 1e-6:
            raise MetadataError(label, f"{path}: add_offset {add} is not a whole number of {scale}")
        offsets[var] = int(round(off))
    if len(quantification) != 1:
        raise MetadataError(label, f"reflectance bands differ in scale_factor: {sorted(quantification)}")
    return offsets, quantification.pop()


def _quantification(attrs: dict, default: float) -> float:
    scale = _number(_attr(attrs, "scale_factor"))
    return round(1.0 / scale, 6) if scale else default


def _arrays(zm: ZMeta, label: str) -> tuple[dict[str, dict[int, str]], dict[str, tuple[ZarrArray, dict]]]:
    files: dict[str, dict[int, str]] = {}
    arrays: dict[str, tuple[ZarrArray, dict]] = {}
    missing = []
    for var, by_res in ARRAY_PATHS.items():
        for res, path in by_res.items():
            if path not in zm.arrays:
                if res == VARIABLES[var].resolution:
                    missing.append(f"{path} ({var} at {res} m)")
                continue
            zarray, attrs = zm.arrays[path]
            layout = array_layout(path, zarray, res, label)
            if np.dtype(layout.dtype).kind not in _KINDS[VARIABLES[var].kind]:
                raise MetadataError(label, f"{path}: dtype {layout.dtype} where {VARIABLES[var].dtype} is expected")
            files.setdefault(var, {})[res] = path
            arrays[path] = (layout, attrs)
    if missing:
        raise CorruptProductError(label, "missing array " + ", ".join(missing))
    return files, arrays


def build_product(zm: ZMeta, *, source: Path, root: str, name_hints: tuple[str | None, ...],
                  label: str) -> Product:
    """The Product from parsed metadata (no chunk read); ``name_hints``: the names it carries."""
    ident = identity(zm.root_attrs, name_hints, label)
    label = ident.name
    files, arrays = _arrays(zm, label)
    epsg = _epsg(zm, arrays, label)
    geocoding = _geocoding(arrays, epsg, label)
    offsets, boa_q = _offsets(arrays, ident.baseline, label)
    return Product(
        name=ident.name, source=source, platform=ident.platform, datatake_id=ident.datatake_id,
        datatake_start=ident.datatake_start, product_start=ident.datatake_start,
        generation_time=ident.generation_time, baseline=ident.baseline, relative_orbit=ident.relative_orbit,
        absolute_orbit=ident.absolute_orbit, tile=ident.tile, geocoding=geocoding,
        files={v: dict(sorted(r.items())) for v, r in sorted(files.items())},
        boa_add_offset=offsets, boa_quantification=boa_q,
        aot_quantification=_quantification(arrays[ARRAY_PATHS["AOT"][20]][1], 1000.0),
        wvp_quantification=_quantification(arrays[ARRAY_PATHS["WVP"][20]][1], 1000.0),
        cloud_cover=ident.cloud_cover, footprint=ident.footprint, safe_root=root, format=EOPF,
        arrays={p: layout for p, (layout, _) in sorted(arrays.items())},
    )


def _check_coordinates(container: Container, zm: ZMeta, product: Product) -> None:
    """Each resolution group's ``x``/``y`` must be the pixel centres of the geocoding's grid."""
    geo = product.geocoding
    groups = sorted({layout.path.rsplit("/", 1)[0] for layout in product.arrays.values()})
    for group in groups:
        res = product.arrays[next(p for p in product.arrays if p.startswith(group + "/"))].resolution
        nrows, ncols = geo.sizes[res]
        for axis, n, first, step in (("x", ncols, geo.ulx + res / 2, res), ("y", nrows, geo.uly - res / 2, -res)):
            path = f"{group}/{axis}"
            if path not in zm.arrays:
                raise CorruptProductError(product.name, f"missing coordinate array {path}")
            layout = array_layout(path, zm.arrays[path][0], res, product.name)
            if len(layout.shape) != 1 or layout.shape[0] != n:
                raise MetadataError(product.name, f"{path} has shape {list(layout.shape)}, expected [{n}]")
            values = read_small(container, layout, product.name).astype(np.float64)
            expected = first + step * np.arange(n)
            if not np.allclose(values, expected, rtol=0, atol=1e-3 * res):
                bad = int(np.argmax(np.abs(values - expected) > 1e-3 * res))
                raise MetadataError(product.name, f"{path}[{bad}] = {values[bad]:g}, but proj:transform puts that "
                                                  f"pixel centre at {expected[bad]:g}")


def parse_eopf_metadata(zmetadata: bytes, *, source: str | os.PathLike[str] = "", name_hint: str | None = None,
                        root: str = "") -> Product:
    """A Product from a ``.zmetadata`` document alone (no chunk read; e.g. real metadata dumps)."""
    label = strip_product_suffix(name_hint or str(source) or "product")
    if len(zmetadata) > MAX_ZMETADATA_BYTES:
        raise CorruptProductError(label, f"{ZMETADATA} has {len(zmetadata):,} bytes, more than the "
                                         f"{MAX_ZMETADATA_BYTES:,} it may have")
    return build_product(parse_zmetadata(zmetadata, label), source=Path(source), root=root,
                         name_hints=(name_hint,), label=label)


def read_eopf(path: str | os.PathLike[str]) -> Product:
    """Read an EOPF product's metadata and coordinates from a ``.zarr`` folder or a zip of one.

    DESIGN CHOICE, as the SAFE reader: a path that does not exist raises FileNotFoundError
    (a vanished cache file is not a reason to reject the product for good).
    """
    path = Path(path)
    label = strip_product_suffix(path.name)
    with open_container(path, label) as container:
        if not container.exists(ZMETADATA):
            if container.exists(ZARR3_ROOT):
                raise UnsupportedProductError(label, "a Zarr v3 store (zarr.json): EOPF products are read as "
                                                     "Zarr v2 with consolidated metadata")
            raise CorruptProductError(label, f"no {ZMETADATA} (consolidated metadata) at the product root")
        zm = parse_zmetadata(container.read(ZMETADATA, MAX_ZMETADATA_BYTES), label)
        product = build_product(zm, source=path, root=container.root, name_hints=(container.root, path.name),
                                label=label)
        _check_coordinates(container, zm, product)
        return product


def identify(path: str | os.PathLike[str]) -> tuple[str, float | None]:
    """(name, cloud cover) of an EOPF product from its ``.zmetadata`` alone (a source's search:
    one bounded document read, no array checked; ProductError if it is not one)."""
    path = Path(path)
    label = strip_product_suffix(path.name)
    with open_container(path, label) as container:
        zm = parse_zmetadata(container.read(ZMETADATA, MAX_ZMETADATA_BYTES), label)
        ident = identity(zm.root_attrs, (container.root, path.name), label)
    return ident.name, ident.cloud_cover
