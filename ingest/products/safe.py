"""Read a Sentinel-2 L2A SAFE product (folder or zip) into a ``Product``: metadata only.

Only XML is read here (through defusedxml, matched on local names so that psd-12/14/15
namespaces all work); the rasters are opened later by GDAL through ``Product.gdal_path``
(``/vsizip/`` for zips), so a zip is never unpacked and its big JP2 members are never read.

Public API:
- ``read_product(path, require_files=True) -> Product``
- ``parse_product_metadata(mtd_xml, tile_xml, manifest=None, ...) -> Product``
- ``check_orbit``, ``check_overlaps``, ``product_bounds_in``, ``check_rasters``
"""
from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from ingest.errors import (
    CorruptProductError,
    MetadataError,
    OutsideGridError,
    UnsupportedProductError,
    WrongOrbitError,
)
from ingest.grid import Bounds, CubeGrid
from ingest.products.model import Product, TileGeocoding
from ingest.products.names import PRODUCT_NAME_RE, ProductName, strip_product_suffix
from ingest.variables import BAND_ID_TO_NAME, VARIABLES

__all__ = [
    "read_product",
    "parse_product_metadata",
    "check_orbit",
    "check_overlaps",
    "product_bounds_in",
    "check_rasters",
    "PRODUCT_MTD",
    "TILE_MTD",
    "MANIFEST",
    "metadata_size_limit",
    "check_metadata_size",
]

PRODUCT_MTD = "MTD_MSIL2A.xml"
TILE_MTD = "MTD_TL.xml"
MANIFEST = "manifest.safe"
RESOLUTIONS: tuple[int, ...] = (10, 20, 60)

# DESIGN CHOICE: the XML we parse is read whole into memory, so its size is checked (zip info
# or stat) before it is read, and the read itself stops one byte past the limit (a zip entry
# may lie about its size). The largest real ones (shared/samples, PB 02.08-05.11):
# MTD_MSIL2A.xml 55 KB, MTD_TL.xml 630 KB (the angle grids), manifest.safe 100 KB. The limits
# leave a margin of more than 10x; anything bigger is not a Sentinel-2 product and is refused
# before it can exhaust memory (a 2 GiB padded MTD_MSIL2A.xml deflates to a 3 MB zip).
MAX_PRODUCT_MTD_BYTES = 4 << 20
MAX_TILE_MTD_BYTES = 8 << 20
MAX_MANIFEST_BYTES = 4 << 20

# imageFormat attribute of Granule -> file extension of the IMAGE_FILE entries
IMAGE_FORMAT_EXT: dict[str, str] = {"JPEG2000": ".jp2", "GEOTIFF": ".tif"}

# Tokens in band file names that feed a cube variable (TCI is not one).
_BAND_FILE_RE = re.compile(r"_(?P<band>B\d{2}|B8A|SCL|AOT|WVP|TCI)_(?P<res>\d{2})m$")
_MASK_RES_RE = re.compile(r"_(?P<res>\d{2})m(\.\w+)?$")
_DATATAKE_RE = re.compile(r"^GS2(?P<sat>[A-D])_(?P<start>\d{8}T\d{6})_(?P<orbit>\d{6})_N(?P<pb>\d{2}\.\d{2})$")
_GRANULE_ID_RE = re.compile(r"_A(?P<orbit>\d{6})_T(?P<tile>\d{2}[A-Z]{3})_N(?P<pb>\d{2}\.\d{2})$")
_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?"
    r"(?P<tz>Z|[+-]\d{2}:?\d{2})?$"
)
_PRODUCT_MTD_RE = re.compile(r"^MTD_MSIL(?P<level>1C|2A)\.xml$", re.IGNORECASE)
_OLD_FORMAT_MTD_RE = re.compile(r"^S2[A-D]_\w+_MTD_SAF\w*\.xml$", re.IGNORECASE)


# --------------------------------------------------------------------------------------
# XML: one parsed document, indexed by local element name
# --------------------------------------------------------------------------------------
def _local(tag: str) -> str:
    """Local name of a tag, '{ns}Name' or 'prefix:Name' -> 'Name'."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


class _Doc:
    """A parsed XML member with a local-name index, and its names for error messages.

    DESIGN CHOICE: index every element by local name once; the SAFE XMLs use the same
    local names at every PSD version while namespaces (psd-12/14/15) and prefixes change.
    """

    def __init__(self, data: bytes, product: str, member: str) -> None:
        self.product = product
        self.member = member
        try:
            self.root: Element = DET.fromstring(data)
        except (ParseError, DefusedXmlException, ValueError) as exc:
            raise MetadataError(product, f"malformed XML in {member}: {exc}") from None
        self._index: dict[str, list[Element]] = {}
        for el in self.root.iter():
            if isinstance(el.tag, str):
                self._index.setdefault(_local(el.tag), []).append(el)

    @property
    def root_name(self) -> str:
        return _local(self.root.tag)

    def all(self, name: str) -> list[Element]:
        return self._index.get(name, [])

    def first(self, *names: str) -> Element | None:
        for name in names:
            found = self._index.get(name)
            if found:
                return found[0]
        return None

    def text(self, *names: str, required: bool = True) -> str | None:
        """Stripped text of the first element with one of ``names``."""
        el = self.first(*names)
        text = (el.text or "").strip() if el is not None else ""
        if not text:
            if required:
                raise self.error(f"missing {'/'.join(names)}")
            return None
        return text

    def error(self, reason: str) -> MetadataError:
        return MetadataError(self.product, f"{self.member}: {reason}")

    def number(self, *names: str, required: bool = True) -> float | None:
        text = self.text(*names, required=required)
        if text is None:
            return None
        return self.to_float(text, names[0])

    def to_float(self, text: str, what: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"{what} is not a number: {text!r}") from None
        if not math.isfinite(value):
            raise self.error(f"{what} is not finite: {text!r}")
        return value

    def to_int(self, text: str | None, what: str) -> int:
        try:
            return int(str(text).strip())
        except ValueError:
            raise self.error(f"{what} is not an integer: {text!r}") from None

    def time(self, *names: str) -> datetime:
        return _parse_time(self.text(*names), self, names[0])


def _child(el: Element, name: str) -> Element | None:
    for c in el:
        if isinstance(c.tag, str) and _local(c.tag) == name:
            return c
    return None


def _parse_time(text: str | None, doc: _Doc, what: str) -> datetime:
    """ISO time as in SAFE metadata ('...59.024Z', '....000000Z', '...10Z') -> aware UTC.

    DESIGN CHOICE: a time without zone is UTC (all Sentinel-2 metadata times are UTC);
    fractions beyond microseconds are truncated.
    """
    m = _TIME_RE.match((text or "").strip())
    if not m:
        raise doc.error(f"{what} is not an ISO time: {text!r}")
    frac = (m["frac"] or "0")[:6].ljust(6, "0")
    tz = m["tz"] or "Z"
    try:
        t = datetime.fromisoformat(f"{m['date']}T{m['time']}.{frac}")
    except ValueError:
        raise doc.error(f"{what} is not a valid time: {text!r}") from None
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        t -= sign * timedelta(hours=hh, minutes=mm)
    return t.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------
# Product type checks (L1C, L2Ap, old non-compact format)
# --------------------------------------------------------------------------------------
def _check_level_2a(doc: _Doc) -> None:
    """Reject what is not a compact L2A product, saying what it is instead."""
    ptype = (doc.text("PRODUCT_TYPE", required=False) or "").upper()
    level = (doc.text("PROCESSING_LEVEL", required=False) or "").upper()
    root = doc.root_name
    if "1C" in ptype or "1C" in level or root.startswith("Level-1C"):
        raise UnsupportedProductError(doc.product, f"not a Level-2A product ({ptype or level or root})")
    if ptype.endswith("2AP") or level.endswith("2AP") or doc.first("L2A_Product_Info") is not None:
        raise UnsupportedProductError(
            doc.product,
            "old L2Ap format (PRODUCT_TYPE S2MSI2Ap, PB 02.05-era sen2cor output) is not supported",
        )
    if not root.startswith("Level-2A") or (ptype and ptype != "S2MSI2A"):
        raise UnsupportedProductError(doc.product, f"not a Level-2A product ({ptype or root})")


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Identity:
    name: str
    platform: str
    datatake_id: str
    datatake_start: datetime
    product_start: datetime
    generation_time: datetime
    baseline: str
    relative_orbit: int
    absolute_orbit: int | None
    tile: str


def _platform(spacecraft: str | None, datatake_id: str) -> str | None:
    """'Sentinel-2B' -> 'S2B' (falls back to the datatake id 'GS2B_...')."""
    if spacecraft:
        m = re.fullmatch(r"(?i)sentinel-?2([a-d])", spacecraft.strip())
        if m:
            return f"S2{m[1].upper()}"
    m = _DATATAKE_RE.match(datatake_id)
    return f"S2{m['sat']}" if m else None


def _choose_name(doc: _Doc, name_hint: str | None) -> str:
    """The product name: PRODUCT_URI, checked against the file/folder name when that is one.

    DESIGN CHOICE: a file or folder name that is not a product name (e.g. 'esa_S2B_...SAFE'
    or a renamed download) is accepted; one that *is* a product name must match PRODUCT_URI.
    """
    uri = doc.text("PRODUCT_URI", required=False)
    uri_name = strip_product_suffix(uri) if uri else None
    hint = strip_product_suffix(name_hint) if name_hint else None
    hint_is_name = bool(hint and PRODUCT_NAME_RE.match(hint))
    if uri_name and PRODUCT_NAME_RE.match(uri_name):
        if hint_is_name and hint != uri_name:
            raise MetadataError(hint, f"file name differs from PRODUCT_URI {uri_name} in {doc.member}")
        return uri_name
    if hint_is_name:
        return hint  # type: ignore[return-value]
    raise doc.error(f"no product name: PRODUCT_URI {uri!r} and file name {name_hint!r} are not S2 names")


def _identity(mtd: _Doc, tile_doc: _Doc, name_hint: str | None) -> _Identity:
    """Identity fields, cross-checked between product name, MTD_MSIL2A.xml and MTD_TL.xml."""
    name = _choose_name(mtd, name_hint)
    pn = ProductName.parse(name)
    mtd.product = tile_doc.product = name
    if pn.level != "L2A":
        raise UnsupportedProductError(name, f"not a Level-2A product (name says MSI{pn.level})")

    datatake = mtd.first("Datatake")
    datatake_id = (datatake.get("datatakeIdentifier") or "").strip() if datatake is not None else ""
    if not datatake_id:
        raise mtd.error("missing Datatake@datatakeIdentifier")
    dt_match = _DATATAKE_RE.match(datatake_id)

    platform = _platform(mtd.text("SPACECRAFT_NAME", required=False), datatake_id) or pn.platform
    datatake_start = mtd.time("DATATAKE_SENSING_START")
    product_start = mtd.time("PRODUCT_START_TIME")
    generation_time = mtd.time("GENERATION_TIME")
    baseline = mtd.text("PROCESSING_BASELINE") or ""
    relative_orbit = mtd.to_int(mtd.text("SENSING_ORBIT_NUMBER"), "SENSING_ORBIT_NUMBER")

    granule_id = _granule_id(mtd)
    tile_id = tile_doc.text("TILE_ID", "TILE_ID_2A", required=False) or ""
    if granule_id and tile_id and granule_id != tile_id:
        raise MetadataError(name, f"{tile_doc.member} TILE_ID {tile_id} is not the granule {granule_id} of {mtd.member}")
    g_match = _GRANULE_ID_RE.search(tile_id or granule_id or "")

    # DESIGN CHOICE: the absolute orbit comes from the granule id (the tile's own orbit),
    # else from the datatake id; both are 6-digit fields in the real samples.
    absolute_orbit: int | None = None
    if g_match:
        absolute_orbit = int(g_match["orbit"])
    elif dt_match:
        absolute_orbit = int(dt_match["orbit"])
    tile = g_match["tile"] if g_match else pn.tile

    _check_name_vs_metadata(
        pn, mtd, platform=platform, datatake_start=datatake_start, baseline=baseline,
        relative_orbit=relative_orbit, tile=tile,
    )
    return _Identity(
        name=name, platform=platform, datatake_id=datatake_id, datatake_start=datatake_start,
        product_start=product_start, generation_time=generation_time, baseline=baseline,
        relative_orbit=relative_orbit, absolute_orbit=absolute_orbit, tile=tile,
    )


def _granule_id(mtd: _Doc) -> str | None:
    granules = {(g.get("granuleIdentifier") or "").strip() for g in mtd.all("Granule")}
    granules.discard("")
    if len(granules) > 1:
        raise UnsupportedProductError(
            mtd.product, f"{len(granules)} granules in one product (only single-tile compact SAFE is supported)"
        )
    return next(iter(granules), None)


def _check_name_vs_metadata(
    pn: ProductName, mtd: _Doc, *, platform: str, datatake_start: datetime, baseline: str,
    relative_orbit: int, tile: str,
) -> None:
    """Name fields must agree with the XML: a mismatch means a mislabelled or mixed product."""
    problems = []
    if pn.platform != platform:
        problems.append(f"platform {pn.platform} but SPACECRAFT_NAME says {platform}")
    if pn.relative_orbit != relative_orbit:
        problems.append(f"R{pn.relative_orbit:03d} but SENSING_ORBIT_NUMBER says {relative_orbit}")
    if pn.baseline != baseline:
        problems.append(f"N{pn.baseline.replace('.', '')} but PROCESSING_BASELINE says {baseline}")
    if pn.tile != tile:
        problems.append(f"tile {pn.tile} but the granule is {tile}")
    # DESIGN CHOICE: the name's time must be DATATAKE_SENSING_START to the second (floored):
    # it is the time-axis key; PRODUCT_START_TIME is equal in every sample but not relied on.
    if datatake_start.replace(microsecond=0) != pn.datatake_start:
        problems.append(f"start {pn.datatake_start:%Y%m%dT%H%M%S} but DATATAKE_SENSING_START is {datatake_start.isoformat()}")
    if problems:
        raise MetadataError(pn.name, f"name inconsistent with {mtd.member}: " + "; ".join(problems))


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


# --------------------------------------------------------------------------------------
# Containers: a SAFE folder or a zip, seen as relative paths under the SAFE root
# --------------------------------------------------------------------------------------
def metadata_size_limit(rel: str) -> int | None:
    """The most bytes we read of the metadata file ``rel`` (None: not a file we parse)."""
    name = PurePosixPath(rel).name
    if name == MANIFEST:
        return MAX_MANIFEST_BYTES
    if name == TILE_MTD:
        return MAX_TILE_MTD_BYTES
    if _PRODUCT_MTD_RE.match(name) or _OLD_FORMAT_MTD_RE.match(name):
        return MAX_PRODUCT_MTD_BYTES
    return None


def check_metadata_size(product: str, rel: str, size: int, limit: int | None = None) -> None:
    """Refuse a metadata file of ``size`` bytes beyond its limit (CorruptProductError)."""
    limit = limit if limit is not None else metadata_size_limit(rel)
    if limit is not None and size > limit:
        raise CorruptProductError(
            product, f"{rel} has {size:,} bytes, more than the {limit:,} a real product's file may have")


def _read_bounded(stream, product: str, rel: str, limit: int) -> bytes:
    """At most ``limit`` bytes of an open member; refuses one that turns out longer."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise CorruptProductError(product, f"{rel} has more than the {limit:,} bytes a real product's "
                                           "file may have (more than its zip entry or stat said)")
    return data


class _Container:
    """Read access to the members of one product (relative to its SAFE root)."""

    source: Path
    safe_root: str
    label: str
    mtd_name: str  # the product metadata file name as found (case may differ)

    def read(self, rel: str) -> bytes:
        """A metadata member, whole: refused beyond ``metadata_size_limit``."""
        ...

    def exists(self, rel: str) -> bool: ...
    def tile_metadata(self) -> list[str]: ...
    def close(self) -> None: ...


def _pick_product_mtd(names: Iterable[str], label: str) -> str:
    """The product metadata file among root names; rejects L1C and the pre-compact format.

    DESIGN CHOICE: match the name case-insensitively (a real ESRI-repackaged sample has
    'MTD_MSIL2a.xml').
    """
    names = list(names)
    for n in names:
        m = _PRODUCT_MTD_RE.match(n)
        if m and m["level"].upper() == "2A":
            return n
    for n in names:
        m = _PRODUCT_MTD_RE.match(n)
        if m and m["level"].upper() == "1C":
            raise UnsupportedProductError(label, f"not a Level-2A product ({n})")
    if any(_OLD_FORMAT_MTD_RE.match(n) for n in names):
        raise UnsupportedProductError(label, "pre-2016 non-compact SAFE format (S2A_USER_MTD_SAF*.xml) is not supported")
    raise CorruptProductError(label, f"missing {PRODUCT_MTD}")


class _FolderContainer(_Container):
    def __init__(self, path: Path) -> None:
        self.source, self.safe_root = path, ""
        self.label = strip_product_suffix(path.name)
        try:
            root_names = [e.name for e in os.scandir(path) if e.is_file()]
        except OSError as exc:
            raise CorruptProductError(self.label, f"cannot list the SAFE folder: {exc}") from None
        self.mtd_name = _pick_product_mtd(root_names, self.label)

    def read(self, rel: str) -> bytes:
        limit = metadata_size_limit(rel) or MAX_TILE_MTD_BYTES  # we only read the three kinds
        try:
            with open(self.source / rel, "rb") as f:
                check_metadata_size(self.label, rel, os.fstat(f.fileno()).st_size, limit)
                return _read_bounded(f, self.label, rel, limit)
        except OSError as exc:
            if isinstance(exc, CorruptProductError):
                raise
            raise CorruptProductError(self.label, f"cannot read {rel}: {exc}") from None

    def exists(self, rel: str) -> bool:
        return (self.source / rel).is_file()

    def tile_metadata(self) -> list[str]:
        return sorted(
            p.relative_to(self.source).as_posix() for p in self.source.glob(f"GRANULE/*/{TILE_MTD}") if p.is_file()
        )

    def close(self) -> None:
        pass


class _ZipContainer(_Container):
    """A hub zip: '<name>.SAFE/...' members; only the XML members are ever decompressed."""

    def __init__(self, path: Path) -> None:
        self.source = path
        self.label = strip_product_suffix(path.name)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise CorruptProductError(self.label, f"not a readable zip archive: {exc}") from None
        self._members = {n for n in self._zip.namelist() if not n.endswith("/")}
        self.safe_root = self._find_root()
        prefix = f"{self.safe_root}/" if self.safe_root else ""
        root_names = [n[len(prefix):] for n in self._members if n.startswith(prefix) and "/" not in n[len(prefix):]]
        self.mtd_name = _pick_product_mtd(root_names, self.label)

    def _find_root(self) -> str:
        """The folder holding the product metadata: '<name>.SAFE' (or '' if at top level).

        DESIGN CHOICE: the metadata file sits at depth 0 or 1; the shallowest wins, and
        several product folders in one zip are rejected.
        """
        roots = set()
        for n in self._members:
            parts = n.split("/")
            if len(parts) <= 2 and (_PRODUCT_MTD_RE.match(parts[-1]) or _OLD_FORMAT_MTD_RE.match(parts[-1])):
                roots.add("/".join(parts[:-1]))
        if not roots:
            self.close()
            raise CorruptProductError(self.label, f"missing {PRODUCT_MTD} (no '<name>.SAFE/{PRODUCT_MTD}' member)")
        if "" in roots:
            return ""
        if len(roots) > 1:
            self.close()
            raise UnsupportedProductError(self.label, f"zip holds several products: {sorted(roots)}")
        return roots.pop()

    def _member(self, rel: str) -> str:
        return f"{self.safe_root}/{rel}" if self.safe_root else rel

    def read(self, rel: str) -> bytes:
        limit = metadata_size_limit(rel) or MAX_TILE_MTD_BYTES  # we only read the three kinds
        try:
            info = self._zip.getinfo(self._member(rel))
            check_metadata_size(self.label, rel, info.file_size, limit)
            with self._zip.open(info) as f:
                return _read_bounded(f, self.label, rel, limit)
        except KeyError:
            raise CorruptProductError(self.label, f"missing {rel}") from None
        except CorruptProductError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise CorruptProductError(self.label, f"cannot read {rel} from the zip: {exc}") from None

    def exists(self, rel: str) -> bool:
        return self._member(rel) in self._members

    def tile_metadata(self) -> list[str]:
        prefix = f"{self.safe_root}/" if self.safe_root else ""
        pat = re.compile(rf"^{re.escape(prefix)}(GRANULE/[^/]+/{re.escape(TILE_MTD)})$")
        return sorted(m[1] for n in self._members if (m := pat.match(n)))

    def close(self) -> None:
        self._zip.close()


def _open_container(path: Path) -> _Container:
    if path.is_dir():
        return _FolderContainer(path)
    if path.is_file():
        # DESIGN CHOICE: any file is tried as a zip (hubs name them '.zip' or '.SAFE.zip');
        # a non-zip file is a corrupt download, not a different format.
        return _ZipContainer(path)
    raise FileNotFoundError(f"no such product: {path}")


def read_product(path: str | os.PathLike[str], *, require_files: bool = True) -> Product:
    """Read a product's metadata from a ``.SAFE`` folder or a hub ``.zip``.

    With ``require_files`` every raster the Product lists must exist in the product.
    A path to the SAFE's ``MTD_MSIL2A.xml`` itself is accepted too.
    DESIGN CHOICE: a path that does not exist raises FileNotFoundError, not a ProductError:
    a missing cache file is not a reason to reject the product permanently.
    """
    path = Path(path)
    if path.is_file() and _PRODUCT_MTD_RE.match(path.name):
        path = path.parent
    container = _open_container(path)
    try:
        mtd = _Doc(container.read(container.mtd_name), container.label, container.mtd_name)
        _check_level_2a(mtd)
        tiles = container.tile_metadata()
        if not tiles:
            raise CorruptProductError(container.label, f"missing granule {TILE_MTD} (GRANULE/*/{TILE_MTD})")
        if len(tiles) > 1:
            raise UnsupportedProductError(container.label, f"{len(tiles)} granules (only single-tile products are supported)")
        tile_doc = _Doc(container.read(tiles[0]), container.label, tiles[0])
        manifest = _Doc(container.read(MANIFEST), container.label, MANIFEST) if container.exists(MANIFEST) else None
        name_hint = container.safe_root or path.name
        product = _build_product(
            mtd, tile_doc, manifest, source=path, safe_root=container.safe_root, name_hint=name_hint,
            exists=container.exists if require_files else None,
        )
        if container.safe_root and PRODUCT_NAME_RE.match(strip_product_suffix(path.name)):
            if strip_product_suffix(path.name) != product.name:
                raise MetadataError(product.name, f"zip file name {path.name} differs from the product inside")
        return product
    finally:
        container.close()


# --------------------------------------------------------------------------------------
# Validation against the cube
# --------------------------------------------------------------------------------------
def check_orbit(product: Product, orbit: int) -> None:
    """The cube holds one relative orbit; refuse products of another."""
    if product.relative_orbit != orbit:
        raise WrongOrbitError(
            product.name, f"relative orbit R{product.relative_orbit:03d}, but the cube holds R{orbit:03d}"
        )


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str):  # -> pyproj.Transformer (thread-safe since pyproj 3.1)
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _data_polygon_utm(product: Product):
    """The data extent in the tile's UTM CRS: footprint ∩ tile square, else the tile square.

    DESIGN CHOICE: the footprint goes to UTM first, where it is continuous even across the
    antimeridian (real sample T01KAB has lon 180/-179.7 in one ring), and is clipped to the
    tile, so a sloppy footprint never claims more than the tile.
    """
    from shapely.geometry import Polygon, box

    tile_box = box(*product.geocoding.bounds(10))
    if len(product.footprint) < 4:
        return tile_box
    to_utm = _transformer("EPSG:4326", product.crs)
    lons, lats = zip(*product.footprint)
    xs, ys = to_utm.transform(lons, lats)
    if not all(map(math.isfinite, list(xs) + list(ys))):
        return tile_box
    poly = Polygon(zip(xs, ys)).buffer(0)
    clipped = poly.intersection(tile_box)
    if clipped.is_empty:
        raise MetadataError(product.name, "the footprint does not overlap the tile bounds of MTD_TL.xml")
    return clipped


def product_bounds_in(product: Product, crs: str) -> Bounds:
    """(left, bottom, right, top) of the product's data extent in ``crs`` (densified edges)."""
    import shapely

    poly = _data_polygon_utm(product)
    if crs == product.crs:
        return tuple(float(v) for v in poly.bounds)  # type: ignore[return-value]
    dense = shapely.segmentize(poly, max_segment_length=1000.0)
    xs, ys = dense.exterior.coords.xy if hasattr(dense, "exterior") else _all_coords(dense)
    tx, ty = _transformer(product.crs, crs).transform(list(xs), list(ys))
    pts = [(x, y) for x, y in zip(tx, ty) if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        raise MetadataError(product.name, f"the tile cannot be transformed to {crs}")
    return (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))


def _all_coords(geom) -> tuple[list[float], list[float]]:
    """Exterior coordinates of every part of a (multi)polygon."""
    xs: list[float] = []
    ys: list[float] = []
    for part in getattr(geom, "geoms", [geom]):
        px, py = part.exterior.coords.xy
        xs.extend(px)
        ys.extend(py)
    return xs, ys


def check_overlaps(product: Product, grid: CubeGrid) -> Bounds:
    """Raise OutsideGridError unless the product's data touches the grid; return the overlap.

    The returned bounds (grid CRS) are the product extent clipped to the grid: planning
    turns them into a window with ``grid.window_for_bounds``.
    """
    left, bottom, right, top = product_bounds_in(product, grid.crs)
    gl, gb, gr, gt = grid.bounds
    overlap = (max(left, gl), max(bottom, gb), min(right, gr), min(top, gt))
    if overlap[0] >= overlap[2] or overlap[1] >= overlap[3]:
        raise OutsideGridError(
            product.name,
            f"tile {product.tile} data extent {tuple(round(v) for v in (left, bottom, right, top))} "
            f"in {grid.crs} does not overlap grid {grid.name} {grid.bounds}",
        )
    return overlap


# --------------------------------------------------------------------------------------
# Consistency with the rasters
# --------------------------------------------------------------------------------------
def check_rasters(product: Product, variables: Iterable[str] | None = None) -> None:
    """Open each needed raster (GDAL, through ``gdal_path``) and check it against MTD_TL.

    CRS, upper-left corner, pixel size, shape and dtype must match what the XML says; the
    warp plans from the XML, so a raster that disagrees would land in the wrong place.
    CorruptProductError when a raster cannot be opened, MetadataError when it disagrees.
    """
    import rasterio
    from rasterio.errors import CRSError, RasterioError

    names = list(variables) if variables is not None else list(VARIABLES)
    geo = product.geocoding
    # headers only: no directory listing beside each file, no pixel decoded
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for var in names:
            spec = VARIABLES[var]
            res = spec.resolution
            rel = product.file_for(var, res)
            try:
                with rasterio.open(product.gdal_path(rel)) as src:
                    _check_one_raster(product, rel, res, spec.dtype, geo, src)
            except (RasterioError, CRSError) as exc:
                raise CorruptProductError(product.name, f"cannot open {rel}: {exc}") from None


def _check_one_raster(product: Product, rel: str, res: int, dtype: str, geo: TileGeocoding, src) -> None:
    def bad(reason: str) -> MetadataError:
        return MetadataError(product.name, f"{rel}: {reason}")

    epsg = src.crs.to_epsg() if src.crs else None
    if epsg != geo.epsg:
        raise bad(f"CRS {src.crs.to_string() if src.crs else None} but MTD_TL says EPSG:{geo.epsg}")
    t = src.transform
    tol = 1e-6 * res
    if abs(t.a - res) > tol or abs(t.e + res) > tol or t.b or t.d:
        raise bad(f"pixel size {t.a}/{t.e} (or rotated), expected {res}/-{res}")
    if abs(t.c - geo.ulx) > tol or abs(t.f - geo.uly) > tol:
        raise bad(f"origin ({t.c}, {t.f}) but MTD_TL ULX/ULY is ({geo.ulx}, {geo.uly})")
    if (src.height, src.width) != geo.sizes[res]:
        raise bad(f"size {src.height}x{src.width} but MTD_TL says {geo.sizes[res][0]}x{geo.sizes[res][1]} at {res} m")
    if src.count != 1 or src.dtypes[0] != dtype:
        raise bad(f"{src.count} band(s) of {src.dtypes[0]}, expected one {dtype} band")
