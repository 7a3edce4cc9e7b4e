"""The XML documents of a product -> ``Product``: ``parse_product_metadata`` (no file access).

From MTD_MSIL2A.xml, MTD_TL.xml and manifest.safe: identity (``identity``), tile geocoding,
band and mask files, BOA offsets and quantification, cloud cover, footprint and the manifest's
checksums. Each value is checked where it is read; a bad one is a ``MetadataError`` naming the
file and the element.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ingest.errors import CorruptProductError, MetadataError, UnsupportedProductError
from ingest.products.model import Product, TileGeocoding
from ingest.products.names import strip_product_suffix
from ingest.products.safe.container import MANIFEST, PRODUCT_MTD, TILE_MTD
from ingest.products.safe.identity import _check_level_2a, _identity
from ingest.products.safe.xml import _child, _Doc
from ingest.variables import BAND_ID_TO_NAME, VARIABLES

RESOLUTIONS: tuple[int, ...] = (10, 20, 60)

# imageFormat attribute of Granule -> file extension of the IMAGE_FILE entries
IMAGE_FORMAT_EXT: dict[str, str] = {"JPEG2000": ".jp2", "GEOTIFF": ".tif"}

# Tokens in band file names that feed a cube variable (TCI is not one).
_BAND_FILE_RE = re.compile(r"_(?P<band>B\d{2}|B8A|SCL|AOT|WVP|TCI)_(?P<res>\d{2})m$")
_MASK_RES_RE = re.compile(r"_(?P<res>\d{2})m(\.\w+)?$")


# --------------------------------------------------------------------------------------
# Geocoding (MTD_TL.xml)
# --------------------------------------------------------------------------------------
def _geocoding(doc: _Doc) -> TileGeocoding:
    """EPSG, upper-left corner and size per resolution; the corner must agree at 10/20/60 m."""
    code = doc.text("HORIZONTAL_CS_CODE") or ""
    m = re.fullmatch(r"(?i)EPSG:(\d+)", code)
    if not m:
        raise doc.error(f"HORIZONTAL_CS_CODE is not 'EPSG:<code>': {code!r}")
    sizes: dict[int, tuple[int, int]] = {}
    for el in doc.all("Size"):
        res = doc.to_int(el.get("resolution"), "Size@resolution")
        nrows, ncols = _child(el, "NROWS"), _child(el, "NCOLS")
        if nrows is None or ncols is None:
            raise doc.error(f"Size[@resolution={res}] lacks NROWS/NCOLS")
        sizes[res] = (doc.to_int(nrows.text, "NROWS"), doc.to_int(ncols.text, "NCOLS"))
    corners: dict[int, tuple[float, float]] = {}
    for el in doc.all("Geoposition"):
        res = doc.to_int(el.get("resolution"), "Geoposition@resolution")
        vals = {}
        for key in ("ULX", "ULY", "XDIM", "YDIM"):
            c = _child(el, key)
            if c is None or not (c.text or "").strip():
                raise doc.error(f"Geoposition[@resolution={res}] lacks {key}")
            vals[key] = doc.to_float(c.text.strip(), key)
        if vals["XDIM"] != res or vals["YDIM"] != -res:
            raise doc.error(f"Geoposition[@resolution={res}] has pixel size {vals['XDIM']}/{vals['YDIM']}")
        corners[res] = (vals["ULX"], vals["ULY"])
    missing = [r for r in RESOLUTIONS if r not in sizes or r not in corners]
    if missing:
        raise doc.error(f"Tile_Geocoding lacks Size/Geoposition for resolution(s) {missing}")
    if len(set(corners.values())) != 1:
        raise doc.error(f"upper-left corner differs between resolutions: {corners}")
    extents = {(n * r, c * r) for r, (n, c) in sizes.items() if r in RESOLUTIONS}
    if len(extents) != 1:
        raise doc.error(f"Size differs in extent between resolutions: {sizes}")
    if any(n <= 0 or c <= 0 for n, c in sizes.values()):
        raise doc.error(f"empty Size: {sizes}")
    ulx, uly = corners[10]
    return TileGeocoding(epsg=int(m[1]), ulx=ulx, uly=uly, sizes={r: sizes[r] for r in sorted(sizes)})


# --------------------------------------------------------------------------------------
# Files: IMAGE_FILE entries and QI masks
# --------------------------------------------------------------------------------------
FileExists = Callable[[str], bool]


def _image_ext(mtd: _Doc) -> str:
    granule = mtd.first("Granule")
    fmt = (granule.get("imageFormat") if granule is not None else None) or "JPEG2000"
    ext = IMAGE_FORMAT_EXT.get(fmt.strip().upper())
    if ext is None:
        raise UnsupportedProductError(mtd.product, f"unknown Granule@imageFormat {fmt!r}")
    return ext


def _resolve_file(stem: str, ext: str, exists: FileExists | None, product: str) -> str:
    """Path with extension; with ``exists``, the file must be in the product.

    DESIGN CHOICE: IMAGE_FILE has no extension, so try the one @imageFormat names first,
    then the other known one (repackaged products sometimes convert); never guess further.
    """
    if PurePosixPath(stem).suffix.lower() in (".jp2", ".tif", ".tiff"):
        candidates = [stem]
    else:
        candidates = [stem + ext] + [stem + e for e in (".jp2", ".tif") if e != ext]
    if exists is None:
        return candidates[0]
    for cand in candidates:
        if exists(cand):
            return cand
    raise CorruptProductError(product, f"{candidates[0]} is listed in the metadata but missing from the product")


def _band_files(mtd: _Doc, ext: str, exists: FileExists | None) -> tuple[dict[str, dict[int, str]], str]:
    """variable -> resolution -> relative path, from IMAGE_FILE; and the granule folder."""
    files: dict[str, dict[int, str]] = {}
    granule_dirs: set[str] = set()
    for el in mtd.all("IMAGE_FILE"):
        stem = _normalise_rel((el.text or "").strip())
        if not stem:
            continue
        parts = PurePosixPath(stem).parts
        if len(parts) >= 2 and parts[0] == "GRANULE":
            granule_dirs.add("/".join(parts[:2]))
        m = _BAND_FILE_RE.search(re.sub(r"(?i)\.(jp2|tiff?)$", "", stem))
        if not m or m["band"] == "TCI":
            continue
        var, res = m["band"], int(m["res"])
        if var not in VARIABLES:
            continue
        files.setdefault(var, {})[res] = _resolve_file(stem, ext, exists, mtd.product)
    if len(granule_dirs) != 1:
        raise mtd.error(f"IMAGE_FILE entries point into {len(granule_dirs)} granule folders, expected 1")
    return files, granule_dirs.pop()


def _mask_files(
    tile_doc: _Doc, granule_dir: str, ext: str, exists: FileExists | None
) -> dict[str, dict[int, str]]:
    """CLD/SNW probability rasters: from Pixel_Level_QI, else the conventional QI_DATA names."""
    kinds = {"MSK_CLDPRB": "CLD", "MSK_SNWPRB": "SNW"}
    found: dict[str, dict[int, str]] = {}
    for el in tile_doc.all("MASK_FILENAME"):
        var = kinds.get((el.get("type") or "").strip())
        path = _normalise_rel((el.text or "").strip())
        m = _MASK_RES_RE.search(path)
        if var and m:
            found.setdefault(var, {})[int(m["res"])] = path
    files: dict[str, dict[int, str]] = {}
    for mask, var in kinds.items():
        for res in (20, 60):
            # listed names carry their extension; conventional ones take @imageFormat's
            path = found.get(var, {}).get(res) or f"{granule_dir}/QI_DATA/{mask}_{res}m"
            files.setdefault(var, {})[res] = _resolve_file(path, ext, exists, tile_doc.product)
    return files


def _check_required_files(files: dict[str, dict[int, str]], product: str) -> None:
    """Every cube variable must be listed at the resolution it is read from."""
    missing = [f"{v} at {spec.resolution} m" for v, spec in VARIABLES.items() if spec.resolution not in files.get(v, {})]
    if missing:
        raise MetadataError(product, "the metadata lists no raster for " + ", ".join(missing))


def _normalise_rel(path: str) -> str:
    """Relative path inside the SAFE without './' or leading '/'."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


# --------------------------------------------------------------------------------------
# Radiometry, cloud cover, footprint, manifest
# --------------------------------------------------------------------------------------
def _band_id_names(mtd: _Doc) -> dict[int, str]:
    """bandId -> band name, from Spectral_Information@physicalBand ('B1' -> 'B01')."""
    names = dict(BAND_ID_TO_NAME)
    for el in mtd.all("Spectral_Information"):
        band_id, physical = el.get("bandId"), (el.get("physicalBand") or "").strip().upper()
        m = re.fullmatch(r"B(\d{1,2}|8A)", physical)
        if band_id is None or not m:
            continue
        num = m[1]
        names[mtd.to_int(band_id, "Spectral_Information@bandId")] = "B8A" if num == "8A" else f"B{int(num):02d}"
    return names


def _boa_offsets(mtd: _Doc, baseline: str) -> dict[str, int]:
    """BOA_ADD_OFFSET per band; required from PB 04.00 on.

    DESIGN CHOICE: a PB >= 04.00 product without offsets is rejected rather than read as
    offset 0, which would shift every reflectance by +0.1.
    """
    names = _band_id_names(mtd)
    offsets: dict[str, int] = {}
    for el in mtd.all("BOA_ADD_OFFSET"):
        band_id = mtd.to_int(el.get("band_id"), "BOA_ADD_OFFSET@band_id")
        if band_id not in names:
            raise mtd.error(f"BOA_ADD_OFFSET for unknown band_id {band_id}")
        value = mtd.to_float((el.text or "").strip(), "BOA_ADD_OFFSET")
        if value != int(value):
            raise mtd.error(f"BOA_ADD_OFFSET {value} is not an integer")
        offsets[names[band_id]] = int(value)
    if _baseline_tuple(baseline, mtd) >= (4, 0):
        missing = [b for b in VARIABLES if VARIABLES[b].is_reflectance and b not in offsets]
        if missing:
            raise mtd.error(f"PB {baseline} but no BOA_ADD_OFFSET for {', '.join(missing)}")
    return offsets


def _baseline_tuple(baseline: str, doc: _Doc) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{2})\.(\d{2})", baseline)
    if not m:
        raise doc.error(f"PROCESSING_BASELINE is not 'NN.NN': {baseline!r}")
    return int(m[1]), int(m[2])


def _quantification(mtd: _Doc) -> tuple[float, float, float]:
    boa = mtd.number("BOA_QUANTIFICATION_VALUE", "L2A_BOA_QUANTIFICATION_VALUE")
    aot = mtd.number("AOT_QUANTIFICATION_VALUE", "L2A_AOT_QUANTIFICATION_VALUE")
    wvp = mtd.number("WVP_QUANTIFICATION_VALUE", "L2A_WVP_QUANTIFICATION_VALUE")
    for what, v in (("BOA", boa), ("AOT", aot), ("WVP", wvp)):
        if not v or v <= 0:
            raise mtd.error(f"{what}_QUANTIFICATION_VALUE must be positive, got {v}")
    return boa, aot, wvp  # type: ignore[return-value]


def _cloud_cover(mtd: _Doc, tile_doc: _Doc) -> float | None:
    value = mtd.number("Cloud_Coverage_Assessment", required=False)
    if value is None:
        value = tile_doc.number("CLOUDY_PIXEL_PERCENTAGE", required=False)
    return value


def _footprint(mtd: _Doc) -> tuple[tuple[float, float], ...]:
    """EXT_POS_LIST 'lat lon lat lon ...' -> ((lon, lat), ...)."""
    text = mtd.text("EXT_POS_LIST", required=False)
    if not text:
        return ()
    values = [mtd.to_float(v, "EXT_POS_LIST") for v in text.split()]
    if len(values) % 2 or len(values) < 8:
        raise mtd.error(f"EXT_POS_LIST has {len(values)} numbers, expected lat/lon pairs of a ring")
    ring = tuple((values[i + 1], values[i]) for i in range(0, len(values), 2))
    if any(not (-90 <= lat <= 90 and -180 <= lon <= 180) for lon, lat in ring):
        raise mtd.error("EXT_POS_LIST has coordinates outside lat/lon range")
    return ring


def _manifest(doc: _Doc, relative_orbit: int, absolute_orbit: int | None) -> dict[str, tuple[str, str]]:
    """Checksums (path -> (algorithm, lower-case hex)); orbits cross-checked against MTD.

    DESIGN CHOICE: hex digests are lower-cased so they compare directly with hashlib's
    ``hexdigest()``; manifests write them in upper case.
    """
    checksums: dict[str, tuple[str, str]] = {}
    for bs in doc.all("byteStream"):
        loc, cs = _child(bs, "fileLocation"), _child(bs, "checksum")
        if loc is None or cs is None:
            continue
        href = _normalise_rel((loc.get("href") or "").strip())
        algo = (cs.get("checksumName") or "").strip()
        digest = (cs.text or "").strip().lower()
        if href and algo and digest:
            checksums[href] = (algo, digest)
    rel = doc.text("relativeOrbitNumber", required=False)
    if rel is not None and doc.to_int(rel, "relativeOrbitNumber") != relative_orbit:
        raise doc.error(f"relativeOrbitNumber {rel} differs from SENSING_ORBIT_NUMBER {relative_orbit}")
    absn = doc.text("orbitNumber", required=False)
    if absn is not None and absolute_orbit is not None and doc.to_int(absn, "orbitNumber") != absolute_orbit:
        raise doc.error(f"orbitNumber {absn} differs from the absolute orbit {absolute_orbit} of the granule")
    return checksums


# --------------------------------------------------------------------------------------
# Assembling a Product
# --------------------------------------------------------------------------------------
def _build_product(
    mtd: _Doc, tile_doc: _Doc, manifest: _Doc | None, *, source: Path, safe_root: str,
    name_hint: str | None, exists: FileExists | None,
) -> Product:
    _check_level_2a(mtd)
    if not tile_doc.root_name.endswith("Tile_ID"):
        raise tile_doc.error(f"root element is {tile_doc.root_name}, not a tile metadata (Level-2A_Tile_ID)")
    ident = _identity(mtd, tile_doc, name_hint)
    if manifest is not None:
        manifest.product = ident.name
    geocoding = _geocoding(tile_doc)
    ext = _image_ext(mtd)
    files, granule_dir = _band_files(mtd, ext, exists)
    files.update(_mask_files(tile_doc, granule_dir, ext, exists))
    _check_required_files(files, ident.name)
    boa, aot, wvp = _quantification(mtd)
    return Product(
        name=ident.name, source=source, platform=ident.platform, datatake_id=ident.datatake_id,
        datatake_start=ident.datatake_start, product_start=ident.product_start,
        generation_time=ident.generation_time, baseline=ident.baseline,
        relative_orbit=ident.relative_orbit, absolute_orbit=ident.absolute_orbit, tile=ident.tile,
        geocoding=geocoding, files={v: dict(sorted(r.items())) for v, r in sorted(files.items())},
        boa_add_offset=_boa_offsets(mtd, ident.baseline), boa_quantification=boa,
        aot_quantification=aot, wvp_quantification=wvp, cloud_cover=_cloud_cover(mtd, tile_doc),
        footprint=_footprint(mtd),
        checksums=_manifest(manifest, ident.relative_orbit, ident.absolute_orbit) if manifest is not None else {},
        safe_root=safe_root,
    )


def parse_product_metadata(
    mtd_xml: bytes,
    tile_xml: bytes,
    manifest: bytes | None = None,
    *,
    source: str | os.PathLike[str] = "",
    safe_root: str = "",
    name_hint: str | None = None,
    file_exists: FileExists | None = None,
) -> Product:
    """Build a Product from the three XML documents (no file access of its own).

    ``file_exists(relpath) -> bool`` verifies the rasters and resolves their extension;
    None skips that (metadata-only parsing, e.g. of the samples that ship without rasters).
    ``name_hint`` is the file/folder name, checked against PRODUCT_URI.
    """
    label = strip_product_suffix(name_hint or str(source) or "product")
    mtd = _Doc(mtd_xml, label, PRODUCT_MTD)
    tile_doc = _Doc(tile_xml, label, TILE_MTD)
    man = _Doc(manifest, label, MANIFEST) if manifest is not None else None
    return _build_product(
        mtd, tile_doc, man, source=Path(source), safe_root=safe_root,
        name_hint=name_hint, exists=file_exists,
    )
