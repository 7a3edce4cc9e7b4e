"""Sentinel-2 product names: the identity a name encodes, parsed without reading the product.

Pure string parsing (no I/O, no heavy imports): the catalog uses this module alone.

Two formats carry the same name (DESIGN.md §7, "EOPF Zarr products"): a SAFE product is known by
its bare name (``S2B_MSIL2A_…_20230823T124759``, what every existing catalog and cube records),
an EOPF Zarr product by the same legacy name with the suffix ``.zarr`` (the EOPF Sample Service
publishes ``<SAFE name>.zarr`` products). So the same datatake and tile delivered in both formats
gives two distinct products whose identity fields are equal, and the reprocessing rule decides
which one stands (``FORMAT_PREFERENCE``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ingest.errors import MetadataError

# S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759(.SAFE)(.zip)
PRODUCT_NAME_RE = re.compile(
    r"^(?P<platform>S2[A-D])_MSI(?P<level>L2A|L1C|L2Ap)_(?P<start>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R(?P<orbit>\d{3})_T(?P<tile>\d{2}[A-Z]{3})_(?P<discriminator>\d{8}T\d{6})$"
)

SAFE = "SAFE"
EOPF = "EOPF"
EOPF_SUFFIX = ".zarr"
# DESIGN CHOICE (DESIGN.md §4): per (datatake, tile) the greater (baseline, generation time)
# wins; equal ones are the same processing in two formats, and SAFE wins: it carries its own
# checksums (manifest.safe) and is what every existing cube holds, so a cube built from SAFE is
# never rewritten for an EOPF copy of the same product. A function of the set, never of arrival.
FORMAT_PREFERENCE: dict[str, int] = {EOPF: 0, SAFE: 1}


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)


def strip_product_suffix(name: str) -> str:
    """Product name without directory, ``.zip`` and ``.SAFE`` (an EOPF name keeps ``.zarr``)."""
    name = Path(name).name
    for suffix in (".zip", ".SAFE"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def format_of(name: str) -> str:
    """``EOPF`` for a ``….zarr`` product name, else ``SAFE``."""
    return EOPF if strip_product_suffix(name).endswith(EOPF_SUFFIX) else SAFE


def format_rank(name: str) -> int:
    """The tie-break of two processings with equal (baseline, generation time): higher wins."""
    return FORMAT_PREFERENCE[format_of(name)]


def eopf_name(legacy: str) -> str:
    """The catalog name of an EOPF product whose legacy (SAFE-style) name is ``legacy``."""
    return strip_product_suffix(legacy).removesuffix(EOPF_SUFFIX) + EOPF_SUFFIX


@dataclass(frozen=True)
class ProductName:
    """The fields encoded in a product name (enough to plan before downloading)."""

    name: str  # SAFE: the bare name; EOPF: the legacy name + ".zarr"
    platform: str
    level: str
    datatake_start: datetime  # to the second, as in the name
    baseline: str  # "05.09"
    relative_orbit: int
    tile: str
    discriminator: datetime
    format: str = SAFE

    @property
    def legacy(self) -> str:
        """The SAFE-style name, without a format suffix."""
        return self.name.removesuffix(EOPF_SUFFIX)

    @classmethod
    def parse(cls, name: str) -> "ProductName":
        bare = strip_product_suffix(name)
        fmt = EOPF if bare.endswith(EOPF_SUFFIX) else SAFE
        core = bare.removesuffix(EOPF_SUFFIX)
        m = PRODUCT_NAME_RE.match(core)
        if not m:
            raise MetadataError(bare, "not a Sentinel-2 product name (S2x_MSIL2A_<start>_Nxxxx_Rxxx_Txxxxx_<gen>)")
        b = m["baseline"]
        return cls(
            name=bare, platform=m["platform"], level=m["level"], datatake_start=_ts(m["start"]),
            baseline=f"{b[:2]}.{b[2:]}", relative_orbit=int(m["orbit"]), tile=m["tile"],
            discriminator=_ts(m["discriminator"]), format=fmt,
        )
