"""Sentinel-2 product names: the identity a name encodes, parsed without reading the product.

Pure string parsing (no I/O, no heavy imports): the catalog uses this module alone.
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


def _ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)


def strip_product_suffix(name: str) -> str:
    """Product name without directory, ``.zip`` and ``.SAFE``."""
    name = Path(name).name
    for suffix in (".zip", ".SAFE"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class ProductName:
    """The fields encoded in a product name (enough to plan before downloading)."""

    name: str
    platform: str
    level: str
    datatake_start: datetime  # to the second, as in the name
    baseline: str  # "05.09"
    relative_orbit: int
    tile: str
    discriminator: datetime

    @classmethod
    def parse(cls, name: str) -> "ProductName":
        bare = strip_product_suffix(name)
        m = PRODUCT_NAME_RE.match(bare)
        if not m:
            raise MetadataError(bare, "not a Sentinel-2 product name (S2x_MSIL2A_<start>_Nxxxx_Rxxx_Txxxxx_<gen>)")
        b = m["baseline"]
        return cls(
            name=bare, platform=m["platform"], level=m["level"], datatake_start=_ts(m["start"]),
            baseline=f"{b[:2]}.{b[2:]}", relative_orbit=int(m["orbit"]), tile=m["tile"],
            discriminator=_ts(m["discriminator"]),
        )
