"""Integrity checks for downloaded products: the hub checksum and manifest.safe.

Two independent checks, both needed:

* the hub checksum covers the whole file as the hub sent it (MD5 on DHuS, MD5/BLAKE3 on CDSE),
  so it catches transport damage (a dropped connection resumed at the wrong offset, a proxy
  that rewrote the body), but hubs do not always advertise one (CDSE ``Checksum`` may be empty);
* the per-file checksums in ``manifest.safe`` (MD5 up to PB 04.00, SHA3-256 from 05.xx,
  ``checksumName`` says which) were written by the ground segment, so they catch a product that
  was damaged before the hub ever zipped it, and they work for local folders too.

DESIGN CHOICE: hash mismatches raise ``ChecksumError`` (the bytes are wrong: a new download may
fix it, so the download layer retries and finally quarantines), while structural damage (not a
zip, truncated archive, no manifest, a listed file missing) raises ``CorruptProductError``.
Everything streams in 1 MiB blocks, so a 1 GB product never sits in memory.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

import defusedxml.ElementTree as DET

from ingest.errors import ChecksumError, CorruptProductError
from ingest.products.names import strip_product_suffix
from ingest.products.safe.container import MANIFEST, MAX_MANIFEST_BYTES, check_metadata_size

BLOCK = 1 << 20

# checksumName / hub Algorithm (upper-cased) -> hashlib constructor name
_ALGORITHMS = {
    "MD5": "md5",
    "SHA3-256": "sha3_256",
    "SHA3_256": "sha3_256",
    "SHA-256": "sha256",
    "SHA256": "sha256",
    "SHA-1": "sha1",
    "SHA1": "sha1",
}


def supported_algorithm(name: str) -> bool:
    """Whether we can compute this checksum (CDSE also lists BLAKE3, which hashlib lacks)."""
    return name.strip().upper() in _ALGORITHMS


def new_hash(algorithm: str):
    """A hashlib object for a manifest ``checksumName`` or hub ``Algorithm``."""
    try:
        return hashlib.new(_ALGORITHMS[algorithm.strip().upper()])
    except KeyError:
        raise ValueError(f"unsupported checksum algorithm {algorithm!r}") from None


def hash_stream(stream: BinaryIO, algorithm: str) -> tuple[str, int]:
    """Hex digest and byte count of a stream, read in blocks."""
    h = new_hash(algorithm)
    n = 0
    while block := stream.read(BLOCK):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def hash_file(path: str | Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hash_stream(f, algorithm)[0]


def verify_file_checksum(path: str | Path, algorithm: str, expected: str) -> None:
    """Check a whole file against a hub checksum; raise ``ChecksumError`` on mismatch."""
    actual = hash_file(path, algorithm)
    if actual.lower() != expected.strip().lower():
        raise ChecksumError(
            f"{Path(path).name}: {algorithm} of the downloaded file is {actual}, the hub says {expected.lower()}"
        )


@dataclass(frozen=True)
class ManifestEntry:
    """One file listed in manifest.safe."""

    path: str  # relative to the SAFE root, without "./"
    algorithm: str  # as in checksumName: "MD5", "SHA3-256"
    value: str  # lower-case hex
    size: int | None


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_product`` checked (for logs and the catalog)."""

    product: str
    files_checked: int
    algorithms: frozenset[str]
    hub_checksum: tuple[str, str] | None = None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_manifest(data: bytes, product: str = "product") -> list[ManifestEntry]:
    """The per-file checksums of a manifest.safe (namespace-agnostic: SAFE versions differ)."""
    try:
        root = DET.fromstring(data)
    except Exception as exc:  # ParseError, defusedxml's EntitiesForbidden, ...
        raise CorruptProductError(product, f"manifest.safe is not valid XML ({exc})") from None
    entries: list[ManifestEntry] = []
    for stream in root.iter():
        if _local(stream.tag) != "byteStream":
            continue
        href = checksum = None
        for child in stream:
            if _local(child.tag) == "fileLocation":
                href = child.get("href")
            elif _local(child.tag) == "checksum":
                checksum = child
        if not href or checksum is None or not (checksum.text or "").strip():
            continue
        rel = str(PurePosixPath(href.strip()))
        if rel.startswith("./"):
            rel = rel[2:]
        size = stream.get("size")
        entries.append(ManifestEntry(
            path=rel, algorithm=checksum.get("checksumName", "MD5").strip(),
            value=checksum.text.strip().lower(), size=int(size) if size and size.isdigit() else None,
        ))
    return entries


def _read_manifest(stream: BinaryIO, size: int, product: str) -> bytes:
    """manifest.safe, whole, after checking its size (it is parsed in memory)."""
    check_metadata_size(product, MANIFEST, size)
    data = stream.read(MAX_MANIFEST_BYTES + 1)
    check_metadata_size(product, MANIFEST, len(data))  # a zip entry may lie about its size
    return data


def _check_size(entry: ManifestEntry, size: int, product: str) -> None:
    """Before hashing: a metadata file beyond its limit, or a size other than the manifest's.

    DESIGN CHOICE: both are decided from the zip entry or the stat, so a padded 2 GiB XML is
    refused at once instead of being inflated and hashed first.
    """
    check_metadata_size(product, entry.path, size)
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{product}: {entry.path} has {size} bytes, manifest.safe says {entry.size}")


def _check_entry(entry: ManifestEntry, stream: BinaryIO, product: str) -> None:
    try:
        digest, n = hash_stream(stream, entry.algorithm)
    except ValueError:  # an algorithm we cannot compute: say so rather than pass silently
        raise CorruptProductError(product, f"manifest.safe uses unknown checksum {entry.algorithm!r}") from None
    if entry.size is not None and n != entry.size:
        raise ChecksumError(f"{product}: {entry.path} has {n} bytes, manifest.safe says {entry.size}")
    if digest != entry.value:
        raise ChecksumError(
            f"{product}: {entry.algorithm} of {entry.path} is {digest}, manifest.safe says {entry.value}"
        )


def _zip_root(names: Iterable[str]) -> str | None:
    """The member prefix of the SAFE root inside a zip ("X.SAFE/" or "" for a flat zip)."""
    candidates = [n[: -len(MANIFEST)] for n in names if n == MANIFEST or n.endswith("/" + MANIFEST)]
    if not candidates:
        return None
    return min(candidates, key=len)


def _verify_zip(path: Path, product: str) -> tuple[int, set[str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptProductError(product, f"not a readable zip ({exc})") from None
    with zf:
        names = set(zf.namelist())
        root = _zip_root(names)
        if root is None:
            raise CorruptProductError(product, "no manifest.safe in the zip")
        try:
            info = zf.getinfo(root + MANIFEST)
            with zf.open(info) as f:
                entries = parse_manifest(_read_manifest(f, info.file_size, product), product)
            for entry in entries:
                member = root + entry.path
                if member not in names:
                    raise CorruptProductError(product, f"{entry.path} is listed in manifest.safe but missing")
                _check_size(entry, zf.getinfo(member).file_size, product)
                with zf.open(member) as f:
                    _check_entry(entry, f, product)
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:  # CRC error, truncation
            raise CorruptProductError(product, f"damaged zip member ({exc})") from None
    return len(entries), {e.algorithm for e in entries}


def _verify_folder(path: Path, product: str) -> tuple[int, set[str]]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CorruptProductError(product, "no manifest.safe in the folder")
    with open(manifest, "rb") as f:
        entries = parse_manifest(_read_manifest(f, os.fstat(f.fileno()).st_size, product), product)
    for entry in entries:
        member = path / entry.path
        if not member.is_file():
            raise CorruptProductError(product, f"{entry.path} is listed in manifest.safe but missing")
        _check_size(entry, member.stat().st_size, product)
        with open(member, "rb") as f:
            _check_entry(entry, f, product)
    return len(entries), {e.algorithm for e in entries}


def verify_product(
    path: str | Path, hub_checksum: tuple[str, str] | None = None, *, product: str | None = None
) -> VerifyReport:
    """Verify a product zip or .SAFE folder: hub checksum (if given) then every manifest entry.

    Raises ``ChecksumError`` for wrong bytes and ``CorruptProductError`` for a broken structure.
    A manifest listing no checksums at all counts as corrupt: we would be verifying nothing.
    """
    path = Path(path)
    name = product or strip_product_suffix(path.name)
    if not path.exists():
        raise CorruptProductError(name, f"{path} does not exist")
    if hub_checksum is not None:
        if path.is_dir():
            raise ValueError("a hub checksum applies to a downloaded file, not a folder")
        verify_file_checksum(path, *hub_checksum)
    if path.is_dir():
        n, algorithms = _verify_folder(path, name)
    else:
        n, algorithms = _verify_zip(path, name)
    if n == 0:
        raise CorruptProductError(name, "manifest.safe lists no file checksums")
    return VerifyReport(name, n, frozenset(algorithms), hub_checksum)
