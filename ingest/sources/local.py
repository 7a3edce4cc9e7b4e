"""A directory of products (``.SAFE`` or ``.zarr`` folders, ``.zip`` files) as a source.

DESIGN CHOICE: ``fetch`` verifies the product (SAFE: its manifest.safe checksums; EOPF Zarr,
which has none: its structure, ``ingest.products.eopf.verify``) and returns it *in place*: the
files belong to the user, so they are neither copied into the cache nor moved to quarantine; a
product that fails verification raises ``CorruptProductError`` (permanent: there is nothing to
download again).

An EOPF product is recognised by its content (``formats.detect_format``: a ``.zarr`` folder, or
a zip holding ``.zmetadata``), whatever its name: the EOPF Sample Service zips are named like
SAFE products (``<item id>.zip``) and the CPM names products ``S02MSIL2A_…`` without tile or
baseline. Its catalog name is ``<SAFE-style name>.zarr``, from the file name when that is a
SAFE-style name, else from the product's own metadata (``eopf.identify``).
"""
from __future__ import annotations

import logging
import re
import zipfile
import zlib
from datetime import datetime
from pathlib import Path
from typing import Sequence

from ingest.errors import ChecksumError, CorruptProductError, MetadataError, ProductError
from ingest.products import eopf
from ingest.products.formats import detect_format, verify_product
from ingest.products.names import EOPF, PRODUCT_NAME_RE, ProductName, eopf_name, strip_product_suffix
from ingest.products.safe.container import MAX_PRODUCT_MTD_BYTES
from ingest.sources.base import AreaLike, ProductRecord, Source, mismatch, sort_records

log = logging.getLogger(__name__)

_CLOUD_RE = re.compile(rb"<Cloud_Coverage_Assessment>\s*([0-9.]+)\s*<")
_LEVELS = {"S2MSI2A": "L2A", "S2MSI1C": "L1C"}


def _cloud_cover(path: Path) -> float | None:
    """Cloud cover from MTD_MSIL2A.xml when cheap to read; None when absent, unreadable or
    bigger than a real one (the product is then refused, with the reason, when it is read).

    DESIGN CHOICE: search opens one member of bounded size (``MAX_PRODUCT_MTD_BYTES``) and
    nothing else: a hostile zip must not cost memory before it has even been verified.
    """
    try:
        if path.is_dir():
            mtd = next(path.glob("MTD_MSI*.xml"), None)
            if mtd is None or mtd.stat().st_size > MAX_PRODUCT_MTD_BYTES:
                return None
            with open(mtd, "rb") as f:
                data = f.read(MAX_PRODUCT_MTD_BYTES + 1)
        else:
            with zipfile.ZipFile(path) as zf:
                info = next((i for i in zf.infolist() if re.search(r"(^|/)MTD_MSIL\w+\.xml$", i.filename)), None)
                if info is None or info.file_size > MAX_PRODUCT_MTD_BYTES:
                    return None
                with zf.open(info) as f:
                    data = f.read(MAX_PRODUCT_MTD_BYTES + 1)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return None
    if len(data) > MAX_PRODUCT_MTD_BYTES:
        return None
    m = _CLOUD_RE.search(data)
    return float(m.group(1)) if m else None


class LocalSource(Source):
    """Products already on disk, e.g. a shared archive or test fixtures."""

    hub = "local"

    def __init__(self, directory: str | Path, recursive: bool = False) -> None:
        self.directory = Path(directory)
        self.recursive = recursive
        # (path, why) of every .zip/.SAFE the last search left out, for the user to be told.
        self.skipped: list[tuple[Path, str]] = []

    def _candidates(self) -> list[Path]:
        pattern = "**/*" if self.recursive else "*"
        return sorted(p for p in self.directory.glob(pattern)
                      if (p.suffix == ".zip" and p.is_file()) or (p.suffix in (".SAFE", ".zarr") and p.is_dir()))

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))
        log.debug("skipped %s: %s", path, why)

    def search(
        self, orbit: int, area: AreaLike = None, since: datetime | None = None,
        until: datetime | None = None, tiles: Sequence[str] | None = None,
        max_cloud: float | None = None, product_type: str = "S2MSI2A",
    ) -> list[ProductRecord]:
        """Products in the directory whose *name* matches; ``area`` is not used (names carry tiles)."""
        level = _LEVELS.get(product_type)
        records = []
        self.skipped = []
        for path in self._candidates():
            if detect_format(path) == EOPF:
                pn, cloud = self._eopf_name(path)
                if pn is None:
                    continue
            else:
                try:
                    pn = ProductName.parse(path.name)
                except MetadataError:
                    self._skip(path, "not a Sentinel-2 product name")
                    continue
                cloud = _cloud_cover(path)
            if level and pn.level != level:
                self._skip(path, f"{pn.level} product, not {level}")
                continue
            size = path.stat().st_size if path.is_file() else None
            record = ProductRecord.from_name(
                pn.name, hub=self.hub, hub_id=str(path), size=size, cloud_cover=cloud,
                product_type=product_type,
            )
            why = mismatch(record, orbit, since, until, tiles, max_cloud)
            if why is None:
                records.append(record)
            else:
                self._skip(path, why)
        return sort_records(records)

    def _eopf_name(self, path: Path) -> tuple[ProductName | None, float | None]:
        """The catalog name and cloud cover of an EOPF product (None: skipped, with the reason).

        DESIGN CHOICE: a product whose metadata cannot be read but whose file name is a
        SAFE-style name is recorded under that name (``.zarr``) all the same, so that its
        verification rejects it with the cause, as a damaged SAFE product is; one that has
        neither is no product and is skipped with the cause.
        """
        legacy = strip_product_suffix(path.name).removesuffix(".zarr")
        try:
            name, cloud = eopf.identify(path)
        except (ProductError, OSError) as exc:
            if not PRODUCT_NAME_RE.match(legacy):
                self._skip(path, f"not an EOPF Sentinel-2 L2A product ({exc})")
                return None, None
            name, cloud = eopf_name(legacy), None
        if PRODUCT_NAME_RE.match(legacy):
            name = eopf_name(legacy)  # verification checks it against the metadata
        return ProductName.parse(name), cloud

    def skipped_summary(self) -> str | None:
        """One line on what the last search left out and why (None: nothing)."""
        if not self.skipped:
            return None
        counts: dict[str, int] = {}
        for _, why in self.skipped:
            counts[why] = counts.get(why, 0) + 1
        parts = "; ".join(f"{n} {why}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"skipped {len(self.skipped)} in {self.directory}: {parts}"

    def fetch(self, record: ProductRecord, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
        """The product's own path after verifying it (SAFE: manifest.safe; EOPF: structure)."""
        path = Path(record.hub_id)
        try:
            verify_product(path, product=record.name)
        except ChecksumError as exc:
            raise CorruptProductError(record.name, str(exc)) from exc
        return path
