"""What an EOPF product is: the L2A check and its identity, from the root attributes.

The root ``.zattrs`` hold ``stac_discovery`` (a STAC item) and ``other_metadata`` (eopf-facts
§7). Key names differ between CPM versions and every variant seen is accepted:

* datatake: ``eopf:data_take_id`` (CPM 2.5.x) or ``eopf:datatake_id`` (2.8, the STAC API);
* baseline: ``processing:version`` when not empty (empty string in CPM 2.5.6, absent in 2.5.9),
  then ``eopf:baseline``, then the ``_Nxx.yy`` of the datatake id, then ``_Nxxyy_`` of the id;
* sensing time: ``start_datetime`` (``datetime`` is JSON null or the string "null" in 2.5.x);
* ``other_metadata`` keys are lower-cased from CPM 2.8 on (``utm_zone_identification``,
  ``horizontal_crs_code``): looked up case-insensitively;
* the tile: ``other_metadata.UTM_zone_identification`` (the SAFE granule id, ``_T32TQM_``),
  else the SAFE name in ``stac_discovery.id``.

The product's name is the SAFE-style legacy name made from these fields plus ``.zarr``
(``ingest.products.names``): an EOPF-native file name (``S02MSIL2A_<start>_0000_<B><orbit>_<tag><crc>``)
carries no tile, baseline or generation time, and its CRC changes with every conversion
(eopf-facts §1). The legacy names the product carries (``stac_discovery.id``, a legacy-named
folder or zip) must agree with it, as the SAFE reader checks PRODUCT_URI against the file name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ingest.errors import MetadataError, UnsupportedProductError
from ingest.products.names import EOPF_SUFFIX, PRODUCT_NAME_RE, strip_product_suffix

PRODUCT_TYPE = "S02MSIL2A"  # stac_discovery.properties["product:type"] (eopf-facts §1)
_DATATAKE_RE = re.compile(r"^GS2(?P<sat>[A-D])_(?P<start>\d{8}T\d{6})_(?P<orbit>\d{6})_N(?P<pb>\d{2}\.\d{2})$")
_TILE_RE = re.compile(r"_T(?P<tile>\d{2}[A-Z]{3})(_|$)")
_BASELINE_RE = re.compile(r"^\d{2}\.\d{2}$")


def lower_keys(d: Any) -> dict[str, Any]:
    """A mapping's keys lower-cased (CPM 2.8 lower-cases other_metadata)."""
    return {str(k).lower(): v for k, v in d.items()} if isinstance(d, dict) else {}


@dataclass(frozen=True)
class EopfIdentity:
    name: str  # legacy name + ".zarr"
    platform: str
    datatake_id: str
    datatake_start: datetime
    generation_time: datetime
    baseline: str
    relative_orbit: int
    absolute_orbit: int | None
    tile: str
    cloud_cover: float | None
    footprint: tuple[tuple[float, float], ...]


def _time(value: Any, what: str, label: str) -> datetime:
    if not isinstance(value, str) or value.strip().lower() in ("", "null"):
        raise MetadataError(label, f"stac_discovery {what} is missing")
    text = value.strip().replace("Z", "+00:00")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise MetadataError(label, f"stac_discovery {what} is not an ISO time: {value!r}") from None
    return (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t).astimezone(timezone.utc)


def _baseline(props: dict, datatake_id: str, stac_id: str, label: str) -> str:
    candidates = [props.get("processing:version"), props.get("eopf:baseline")]
    m = _DATATAKE_RE.match(datatake_id)
    candidates.append(m["pb"] if m else None)
    n = re.search(r"_N(\d{2})(\d{2})_", stac_id)
    candidates.append(f"{n[1]}.{n[2]}" if n else None)
    for c in candidates:
        if isinstance(c, str) and c.strip():
            if not _BASELINE_RE.match(c.strip()):
                raise MetadataError(label, f"processing baseline {c!r} is not 'NN.NN'")
            return c.strip()
    raise MetadataError(label, "no processing baseline (processing:version, eopf:baseline, datatake id)")


def _platform(props: dict, datatake_id: str, label: str) -> str:
    m = re.fullmatch(r"(?i)sentinel-?2([a-d])", str(props.get("platform") or "").strip())
    if m:
        return f"S2{m[1].upper()}"
    d = _DATATAKE_RE.match(datatake_id)
    if d:
        return f"S2{d['sat']}"
    raise MetadataError(label, f"stac_discovery platform {props.get('platform')!r} is not a Sentinel-2 unit")


def _int(value: Any, what: str, label: str, required: bool = True) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise MetadataError(label, f"stac_discovery {what} is not an integer: {value!r}")
    return int(value)


def _footprint(stac: dict, label: str) -> tuple[tuple[float, float], ...]:
    geom = stac.get("geometry")
    if not isinstance(geom, dict) or geom.get("type") != "Polygon":
        return ()
    try:
        ring = tuple((float(x), float(y)) for x, y in geom["coordinates"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise MetadataError(label, "stac_discovery geometry is not a lon/lat polygon") from None
    if len(ring) < 4 or any(not (-180 <= lon <= 180 and -90 <= lat <= 90) for lon, lat in ring):
        raise MetadataError(label, "stac_discovery geometry is not a lon/lat ring")
    return ring


def check_level_2a(props: dict, label: str) -> None:
    ptype = str(props.get("product:type") or "")
    level = str(props.get("processing:level") or "")
    if ptype != PRODUCT_TYPE:
        raise UnsupportedProductError(label, f"not a Sentinel-2 Level-2A EOPF product (product:type {ptype!r}, "
                                             f"expected {PRODUCT_TYPE})")
    if level and level.upper() != "L2A":
        raise UnsupportedProductError(label, f"not a Level-2A product (processing:level {level!r})")


def identity(root_attrs: dict, name_hints: tuple[str | None, ...], label: str) -> EopfIdentity:
    """The identity from the root attributes, cross-checked against the names the product carries."""
    stac = root_attrs.get("stac_discovery")
    if not isinstance(stac, dict) or not isinstance(stac.get("properties"), dict):
        raise MetadataError(label, "the root attributes have no stac_discovery.properties")
    props: dict = stac["properties"]
    other = lower_keys(root_attrs.get("other_metadata"))
    check_level_2a(props, label)
    datatake_id = str(props.get("eopf:data_take_id") or props.get("eopf:datatake_id") or "").strip()
    if not datatake_id:
        raise MetadataError(label, "stac_discovery has no eopf:data_take_id / eopf:datatake_id")
    stac_id = strip_product_suffix(str(stac.get("id") or ""))
    start = _time(props.get("start_datetime"), "start_datetime", label)
    created = _time(props.get("created"), "created", label)
    platform = _platform(props, datatake_id, label)
    baseline = _baseline(props, datatake_id, stac_id, label)
    rel = _int(props.get("sat:relative_orbit"), "sat:relative_orbit", label)
    if not 1 <= rel <= 143:
        raise MetadataError(label, f"sat:relative_orbit {rel} is not 1..143")
    absolute = _int(props.get("sat:absolute_orbit"), "sat:absolute_orbit", label, required=False)
    tiles = {m["tile"] for text in (other.get("utm_zone_identification"), stac_id)
             if isinstance(text, str) and (m := _TILE_RE.search(text))}
    if len(tiles) != 1:
        raise MetadataError(label, f"no single tile in UTM_zone_identification and stac_discovery.id: {sorted(tiles)}")
    tile = tiles.pop()
    dt = _DATATAKE_RE.match(datatake_id)
    if dt and (f"S2{dt['sat']}" != platform or dt["start"] != f"{start:%Y%m%dT%H%M%S}"):
        raise MetadataError(label, f"datatake {datatake_id} is not the one of platform {platform} "
                                   f"starting {start.isoformat()} (stac_discovery)")
    legacy = (f"{platform}_MSIL2A_{start:%Y%m%dT%H%M%S}_N{baseline.replace('.', '')}_R{rel:03d}"
              f"_T{tile}_{created:%Y%m%dT%H%M%S}")
    for what, other_name in (("stac_discovery.id", stac_id), *(("the file name", h) for h in name_hints)):
        other_name = strip_product_suffix(other_name or "").removesuffix(EOPF_SUFFIX)
        if PRODUCT_NAME_RE.match(other_name) and other_name != legacy:
            raise MetadataError(label, f"{what} {other_name} differs from the product's metadata ({legacy})")
    cloud = props.get("eo:cloud_cover")
    return EopfIdentity(
        name=legacy + EOPF_SUFFIX, platform=platform, datatake_id=datatake_id, datatake_start=start,
        generation_time=created, baseline=baseline, relative_orbit=rel, absolute_orbit=absolute, tile=tile,
        cloud_cover=float(cloud) if isinstance(cloud, (int, float)) and not isinstance(cloud, bool) else None,
        footprint=_footprint(stac, label),
    )
