"""A product's container, a SAFE folder or a hub zip, seen as paths under the SAFE root.

Only the metadata members are ever read, and whole: so each one's size is checked before it is
read (zip info or stat) and the read stops one byte past the limit (a zip entry may lie about
its size). The rasters are left to GDAL (``Product.gdal_path``, ``/vsizip/`` for zips): a zip
is never unpacked.
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ingest.errors import CorruptProductError, UnsupportedProductError
from ingest.products.names import strip_product_suffix

PRODUCT_MTD = "MTD_MSIL2A.xml"
TILE_MTD = "MTD_TL.xml"
MANIFEST = "manifest.safe"

# DESIGN CHOICE: the XML we parse is read whole into memory, so its size is checked (zip info
# or stat) before it is read, and the read itself stops one byte past the limit (a zip entry
# may lie about its size). The largest real ones (shared/samples, PB 02.08-05.11):
# MTD_MSIL2A.xml 55 KB, MTD_TL.xml 630 KB (the angle grids), manifest.safe 100 KB. The limits
# leave a margin of more than 10x; anything bigger is not a Sentinel-2 product and is refused
# before it can exhaust memory (a 2 GiB padded MTD_MSIL2A.xml deflates to a 3 MB zip).
MAX_PRODUCT_MTD_BYTES = 4 << 20
MAX_TILE_MTD_BYTES = 8 << 20
MAX_MANIFEST_BYTES = 4 << 20

_PRODUCT_MTD_RE = re.compile(r"^MTD_MSIL(?P<level>1C|2A)\.xml$", re.IGNORECASE)
_OLD_FORMAT_MTD_RE = re.compile(r"^S2[A-D]_\w+_MTD_SAF\w*\.xml$", re.IGNORECASE)


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
