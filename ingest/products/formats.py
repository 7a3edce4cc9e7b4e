"""One entry per product operation, whatever the format: SAFE or EOPF Zarr.

``read_product``, ``verify_product`` and ``check_rasters`` look at the product itself to
choose the reader (``detect_format``): sync, the engine and the sources call these, never a
format's reader directly.

DESIGN CHOICE: the format is recognised by the product's own metadata, not by its name alone:
an EOPF store has a consolidated ``.zmetadata`` (or, unsupported, a Zarr v3 ``zarr.json``) at its
root or one folder down in a zip; a SAFE product has ``MTD_MSIL2A.xml``. The ``.zarr`` suffix
(folder, ``.zarr.zip``) decides without opening anything.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ingest.errors import CorruptProductError
from ingest.products import eopf, safe
from ingest.products.checksums import VerifyReport, verify_file_checksum
from ingest.products.checksums import verify_product as verify_safe
from ingest.products.model import Product
from ingest.products.names import EOPF, EOPF_SUFFIX, SAFE

_ZARR_ROOTS = (".zmetadata", "zarr.json")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"EOPF"`` or ``"SAFE"`` for a product folder or zip (FileNotFoundError: nothing there)."""
    path = Path(path)
    if path.is_dir():
        if path.name.endswith(EOPF_SUFFIX) or any((path / n).is_file() for n in _ZARR_ROOTS):
            return EOPF
        return SAFE
    if not path.is_file():
        raise FileNotFoundError(f"no such product: {path}")
    if path.name.endswith(EOPF_SUFFIX + ".zip"):
        return EOPF
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                parts = name.split("/")
                if len(parts) <= 2 and parts[-1] in _ZARR_ROOTS:
                    return EOPF
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        pass  # not a zip: the SAFE reader says why (a file may also be MTD_MSIL2A.xml)
    return SAFE


def read_product(path: str | os.PathLike[str], *, require_files: bool = True) -> Product:
    """The ``Product`` of a SAFE or EOPF folder or zip (metadata only; rasters later)."""
    if detect_format(path) == EOPF:
        return eopf.read_eopf(path)
    return safe.read_product(path, require_files=require_files)


def verify_product(path: str | os.PathLike[str], hub_checksum: tuple[str, str] | None = None, *,
                   product: str | None = None) -> VerifyReport:
    """SAFE: hub checksum and every ``manifest.safe`` checksum; EOPF: hub checksum and the
    structure (an EOPF product has no checksums of its own, ``eopf.verify``)."""
    path = Path(path)
    if not path.exists():
        raise CorruptProductError(product or path.name, f"{path} does not exist")
    if detect_format(path) == SAFE:
        return verify_safe(path, hub_checksum, product=product)
    if hub_checksum is not None:
        if path.is_dir():
            raise ValueError("a hub checksum applies to a downloaded file, not a folder")
        verify_file_checksum(path, *hub_checksum)
    report = eopf.verify_eopf(path, product=product)
    return VerifyReport(report.product, report.files_checked, report.algorithms, hub_checksum)


def check_rasters(product: Product) -> None:
    """The rasters (SAFE) or arrays (EOPF) the cube reads agree with the metadata."""
    if product.format == EOPF:
        eopf.check_arrays(product)
    else:
        safe.check_rasters(product)
