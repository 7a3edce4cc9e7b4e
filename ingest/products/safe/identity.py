"""What a product is: the Level-2A check and its identity, cross-checked name against XML.

The identity (platform, datatake, times, baseline, orbits, tile) comes from MTD_MSIL2A.xml and
MTD_TL.xml and must agree with the product name; a mismatch means a mislabelled or mixed product.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ingest.errors import MetadataError, UnsupportedProductError
from ingest.products.names import PRODUCT_NAME_RE, ProductName, strip_product_suffix
from ingest.products.safe.xml import _Doc

_DATATAKE_RE = re.compile(r"^GS2(?P<sat>[A-D])_(?P<start>\d{8}T\d{6})_(?P<orbit>\d{6})_N(?P<pb>\d{2}\.\d{2})$")
_GRANULE_ID_RE = re.compile(r"_A(?P<orbit>\d{6})_T(?P<tile>\d{2}[A-Z]{3})_N(?P<pb>\d{2}\.\d{2})$")


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
