"""The consolidated metadata of an EOPF product (``.zmetadata``), parsed with bounds and checked.

A real S02MSIL2A product is Zarr format 2 with one consolidated ``.zmetadata`` at its root that
holds every ``.zgroup``, ``.zattrs`` and ``.zarray`` of the tree (eopf-facts §2: 370 keys,
~240 KB compact, nesting depth 9 in a CPM 2.5.9 product; the longest string ~11 000 characters).
Readers rely on it (xarray-eopf opens the tree through it), and so do we: the per-array
documents are not read.

DESIGN CHOICE, limits (a margin of 20-100x over the real product, refused beyond them before
anything else is done with the document): 8 MiB for ``.zmetadata``, nesting depth 32, 1 MiB for
one string, 1 000 000 JSON values. A "huge attribute" is refused either by the document size
(read bounded, ``container``) or by the string limit; deep nesting by the depth limit (Python's
decoder itself stops at its recursion limit, which is reported the same way).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

from ingest.errors import CorruptProductError, UnsupportedProductError
from ingest.products.model import ZarrArray

MAX_ZMETADATA_BYTES = 8 << 20
MAX_DEPTH = 32
MAX_STRING = 1 << 20
MAX_VALUES = 1_000_000
# One chunk decoded holds at most this many bytes: a layout-B 10 m AOT chunk is 241 MB, a
# whole 10980² float32 array 482 MB (eopf-facts §4.4, §5); anything bigger is not a product.
MAX_CHUNK_BYTES = 512 << 20
MAX_SIDE = 100_000  # pixels along one dimension (a tile has 10 980 at 10 m)
MAX_CHUNKS = 10_000  # chunks of one array (a real one has at most 36): bounds verification's walk
# DESIGN CHOICE: Blosc only (every compressed array of a real product, eopf-facts §2): its
# header states the decoded size, checked before anything is decompressed (``arrays``).
CODECS = frozenset({"blosc"})


@dataclass(frozen=True)
class ZMeta:
    """The tree as ``.zmetadata`` describes it."""

    root_attrs: dict[str, Any]
    groups: frozenset[str]
    arrays: dict[str, tuple[dict[str, Any], dict[str, Any]]]  # path -> (.zarray, .zattrs)


def _check_values(obj: Any, label: str, what: str) -> None:
    """Depth, string length and value count of a parsed document, walked without recursion."""
    stack = [(obj, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise CorruptProductError(label, f"{what} nests deeper than {MAX_DEPTH} levels (hostile metadata)")
        if count > MAX_VALUES:
            raise CorruptProductError(label, f"{what} holds more than {MAX_VALUES:,} values (hostile metadata)")
        if isinstance(value, dict):
            for k, v in value.items():
                if len(k) > MAX_STRING:
                    raise CorruptProductError(label, f"{what} has a key of {len(k):,} characters (hostile metadata)")
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise CorruptProductError(label, f"{what} has an attribute of {len(value):,} characters, more than "
                                             f"the {MAX_STRING:,} one may have (hostile metadata)")


def load_json(data: bytes, label: str, what: str) -> Any:
    """A JSON document with the limits above (NaN/Infinity accepted: Zarr v2 writes them)."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise CorruptProductError(label, f"{what} nests deeper than {MAX_DEPTH} levels (hostile metadata)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptProductError(label, f"{what} is not valid JSON: {exc}") from None
    _check_values(obj, label, what)
    return obj


def parse_zmetadata(data: bytes, label: str) -> ZMeta:
    """Groups and arrays of the consolidated metadata; refuses what is not a Zarr v2 tree."""
    doc = load_json(data, label, ".zmetadata")
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        raise CorruptProductError(label, ".zmetadata has no 'metadata' object")
    if doc.get("zarr_consolidated_format") != 1:
        raise UnsupportedProductError(label, f".zmetadata zarr_consolidated_format "
                                             f"{doc.get('zarr_consolidated_format')!r}, expected 1")
    meta: dict[str, Any] = doc["metadata"]
    groups: set[str] = set()
    zarrays: dict[str, dict] = {}
    zattrs: dict[str, dict] = {}
    for key, value in meta.items():
        path, _, leaf = key.rpartition("/")
        if not isinstance(value, dict):
            raise CorruptProductError(label, f".zmetadata entry {key} is not an object")
        if leaf == ".zgroup":
            if value.get("zarr_format") != 2:
                raise UnsupportedProductError(label, f"{key}: zarr_format {value.get('zarr_format')!r}, expected 2")
            groups.add(path)
        elif leaf == ".zarray":
            zarrays[path] = value
        elif leaf == ".zattrs":
            zattrs[path] = value
    if "" not in groups:
        raise CorruptProductError(label, ".zmetadata has no root .zgroup")
    arrays = {p: (z, zattrs.get(p, {})) for p, z in zarrays.items()}
    return ZMeta(zattrs.get("", {}), frozenset(groups), arrays)


def _ints(value: Any, what: str, label: str, *, positive: bool) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CorruptProductError(label, f"{what} is not a list of integers: {value!r}")
    if any(v < (1 if positive else 0) or v > MAX_SIDE for v in value):
        raise CorruptProductError(label, f"{what} out of range: {value!r}")
    return tuple(value)


def _fill(value: Any, dtype: np.dtype, what: str, label: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity") and dtype.kind == "f":
        return float(value.replace("Infinity", "inf"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if dtype.kind in "ui" and (not float(value).is_integer()):
            raise CorruptProductError(label, f"{what} fill_value {value!r} for an integer array")
        return value
    raise CorruptProductError(label, f"{what} fill_value {value!r} is not a number")


def array_layout(path: str, zarray: dict[str, Any], resolution: int, label: str) -> ZarrArray:
    """The validated layout of one array we read (CorruptProductError / Unsupported naming it)."""
    what = f"{path}/.zarray"
    if zarray.get("zarr_format") != 2:
        raise UnsupportedProductError(label, f"{what}: zarr_format {zarray.get('zarr_format')!r}, expected 2")
    shape = _ints(zarray.get("shape"), f"{what} shape", label, positive=False)
    chunks = _ints(zarray.get("chunks"), f"{what} chunks", label, positive=True)
    if len(shape) != len(chunks):
        raise CorruptProductError(label, f"{what}: shape {list(shape)} and chunks {list(chunks)} differ in rank")
    try:
        dtype = np.dtype(zarray.get("dtype"))
    except (TypeError, ValueError):
        raise CorruptProductError(label, f"{what}: unknown dtype {zarray.get('dtype')!r}") from None
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise UnsupportedProductError(label, f"{what}: dtype {dtype.str} is not a number type")
    n_chunks = math.prod(-(-n // c) for n, c in zip(shape, chunks))
    if n_chunks > MAX_CHUNKS:
        raise CorruptProductError(label, f"{what}: {n_chunks:,} chunks, more than the {MAX_CHUNKS:,} a product may have")
    if math.prod(chunks) * dtype.itemsize > MAX_CHUNK_BYTES:
        raise CorruptProductError(label, f"{what}: chunks {list(chunks)} of {dtype.str} exceed "
                                         f"{MAX_CHUNK_BYTES:,} bytes decoded")
    if zarray.get("order", "C") != "C":
        raise UnsupportedProductError(label, f"{what}: order {zarray.get('order')!r} (only 'C' is read)")
    if zarray.get("filters") not in (None, []):
        raise UnsupportedProductError(label, f"{what}: filters {zarray.get('filters')!r} (none expected)")
    separator = zarray.get("dimension_separator", ".")
    if separator not in (".", "/"):
        raise CorruptProductError(label, f"{what}: dimension_separator {separator!r}")
    compressor = zarray.get("compressor")
    if compressor is not None:
        if not isinstance(compressor, dict) or compressor.get("id") not in CODECS:
            raise UnsupportedProductError(label, f"{what}: compressor {compressor!r} (one of {sorted(CODECS)} expected)")
        try:
            numcodecs.get_codec(dict(compressor))
        except (TypeError, ValueError, KeyError) as exc:
            raise CorruptProductError(label, f"{what}: bad compressor {compressor!r}: {exc}") from None
    return ZarrArray(
        path=path, resolution=resolution, shape=shape, chunks=chunks, dtype=dtype.str,
        fill_value=_fill(zarray.get("fill_value"), dtype, what, label),
        compressor=json.dumps(compressor, sort_keys=True), separator=separator,
    )
