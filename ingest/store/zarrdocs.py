"""Zarr format 2 documents and chunk codecs, produced and read by zarr-python itself.

The store owner writes keys through its own transaction, so it cannot hand zarr-python the
store. DESIGN CHOICE: metadata documents of new arrays and the chunks of small coordinate
arrays are made by zarr-python on an in-memory "twin" (``zarr.storage.MemoryStore``, same
shape, chunks, dtype, codec and fill) and their bytes copied into the transaction; nothing
here writes Zarr metadata by hand. The hot path (imagery chunks) encodes with the array's
own numcodecs codec, read from its ``.zarray``, exactly as zarr-python does for format 2.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numcodecs
import numcodecs.blosc
import numpy as np

from ingest.errors import StoreError
from ingest.store.blosc_frames import Splicer

if TYPE_CHECKING:
    from zarr.storage import MemoryStore

# zarr-python is imported by the functions that make documents (on first use): a command that
# only reads a store's bookkeeping and coordinates (``status``, ``verify``) never loads it.

KEY_ENCODING = {"name": "v2", "separator": "."}

# DESIGN CHOICE: Blosc compresses with one thread per call. Called from the main thread with
# its own threads, c-blosc writes the compressed blocks in the order its threads finish: the
# same chunk gave 5 different encodings in 10 fresh processes (measured), so the bytes of a
# chunk (and its sha256 in the bookkeeping) depended on timing. Our parallelism is across
# chunks (thread pools, worker processes), so one thread per chunk costs nothing there, and
# the same data always encodes to the same bytes (``tests/test_zarrdocs.py``); zarr-python
# encodes off the main thread, where numcodecs already uses one thread.
numcodecs.blosc.use_threads = False


def dumps(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=True).encode()


def _memory_store(docs: dict[str, bytes] | None = None) -> "MemoryStore":
    """An in-memory zarr store holding ``docs``."""
    from zarr.core.buffer.cpu import Buffer
    from zarr.storage import MemoryStore

    mem = MemoryStore()
    for key, raw in (docs or {}).items():
        asyncio.run(mem.set(key, Buffer.from_bytes(raw)))
    return mem


def _dump_store(store: "MemoryStore") -> dict[str, bytes]:
    from zarr.core.buffer import default_buffer_prototype

    async def collect() -> dict[str, bytes]:
        out = {}
        proto = default_buffer_prototype()
        async for key in store.list():
            buf = await store.get(key, prototype=proto)
            out[key] = buf.to_bytes()
        return out

    return asyncio.run(collect())


def new_array(name: str, *, shape, chunks, dtype, fill_value, compressor, attrs: dict,
              data: np.ndarray | None = None) -> dict[str, bytes]:
    """Every key (relative to the array's parent) of a new format 2 array, made by zarr:
    ``name/.zarray``, ``name/.zattrs`` and, with ``data``, its non-empty chunks."""
    import zarr

    mem = _memory_store()
    arr = zarr.create_array(mem, name=name, shape=shape, chunks=chunks, dtype=dtype,
                            fill_value=fill_value, compressors=compressor, filters=None,
                            chunk_key_encoding=KEY_ENCODING, zarr_format=2, attributes=attrs,
                            config={"write_empty_chunks": data is not None}, overwrite=True)
    if data is not None and data.size:
        arr[...] = data
    return {k: v for k, v in _dump_store(mem).items() if k.startswith(f"{name}/")}


def new_group(attrs: dict | None = None) -> dict[str, bytes]:
    """``.zgroup`` and ``.zattrs`` of a format 2 group, byte for byte as zarr-python writes
    them (its ``json_to_buffer``: indent 2, NaN allowed).

    DESIGN CHOICE: two small JSON documents written here rather than by loading zarr (0.16 s
    of imports a first mirror or a new cube would pay for them alone); a test compares them
    with zarr's own."""
    return {".zgroup": json.dumps({"zarr_format": 2}, indent=2).encode(),
            ".zattrs": json.dumps(attrs or {}, indent=2, allow_nan=True).encode()}


@dataclass(frozen=True)
class ArrayMeta:
    """A format 2 array as its ``.zarray`` document describes it; encodes and decodes chunks."""

    doc: dict

    @classmethod
    def parse(cls, raw: bytes | None, where: str) -> "ArrayMeta":
        if raw is None:
            raise StoreError(f"{where}/.zarray is missing")
        try:
            return cls(json.loads(raw))
        except ValueError as exc:
            raise StoreError(f"{where}/.zarray is not valid JSON: {exc}") from exc

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.doc["shape"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.doc["chunks"])

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype(self.doc["dtype"])

    @property
    def fill_value(self):
        return self.doc["fill_value"]

    @cached_property
    def codec(self):
        return numcodecs.get_codec(self.doc["compressor"]) if self.doc.get("compressor") else None

    def check_plain(self, where: str) -> None:
        """What our own chunk codec assumes: no filters, C order, one compressor."""
        if self.doc.get("filters") or self.doc.get("order", "C") != "C" or self.codec is None:
            raise StoreError(f"{where}: unexpected array encoding (filters, order or compressor)")

    def resized(self, shape) -> "ArrayMeta":
        return ArrayMeta({**self.doc, "shape": [int(n) for n in shape]})

    def to_bytes(self) -> bytes:
        return dumps(self.doc)

    def empty_chunk(self) -> np.ndarray:
        """A chunk of the fill value. Zeros come from ``np.zeros``: the system hands out zeroed
        pages as they are first written, so steps nobody writes cost nothing."""
        if self.fill_value == 0:
            return np.zeros(self.chunks, dtype=self.dtype)
        return np.full(self.chunks, self.fill_value, dtype=self.dtype)

    def decode(self, raw: bytes, out: np.ndarray | None = None) -> np.ndarray:
        chunk = out if out is not None else np.empty(self.chunks, dtype=self.dtype)
        self.codec.decode(raw, out=chunk)
        return chunk

    def encode(self, chunk: np.ndarray) -> bytes:
        return bytes(self.codec.encode(np.ascontiguousarray(chunk, dtype=self.dtype)))

    def encode_steps(self, chunk: np.ndarray, steps: Iterable[int], old: bytes | None) -> bytes:
        """``encode(chunk)``, the same bytes, for a chunk whose steps (first axis) other than
        ``steps`` hold what the chunk ``old`` holds (None: the fill value): Blosc blocks that
        lie wholly in the other steps are reused, not compressed again (``blosc_frames``)."""
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        splicer = _splicer(self)
        spliced = splicer.encode(chunk, steps, old) if splicer is not None else None
        return spliced if spliced is not None else self.encode(chunk)


_SPLICERS: dict[str, Splicer] = {}
_SPLICERS_LOCK = threading.Lock()


def _splicer(meta: ArrayMeta) -> Splicer | None:
    """The ``Splicer`` of chunks like ``meta``'s (one per codec, chunk shape, dtype and fill,
    shared by every commit of the process); None where the codec is not a Blosc with a fixed
    block size compressing on one thread (the blocks of anything else cannot be reused)."""
    codec = meta.codec
    if not (isinstance(codec, numcodecs.Blosc) and codec.blocksize > 0 and not numcodecs.blosc.use_threads):
        return None
    key = json.dumps([meta.doc.get("compressor"), meta.chunks, meta.dtype.str, meta.fill_value],
                     sort_keys=True, default=str)
    with _SPLICERS_LOCK:
        if key not in _SPLICERS:
            _SPLICERS[key] = Splicer(codec, meta.chunks, meta.dtype, meta.fill_value)
        return _SPLICERS[key]


def encode_1d(meta: ArrayMeta, values: np.ndarray) -> dict[int, bytes | None]:
    """Chunks of a 1-D array holding ``values`` (its new shape), made by a zarr twin.

    Returns every chunk index up to the new length; None where the chunk holds fill only.
    """
    import zarr

    (n,) = values.shape
    mem = _memory_store({".zarray": dumps({**meta.doc, "shape": [n]})})
    arr = zarr.open_array(mem, zarr_format=2, mode="r+")
    if n:
        arr[:] = values
    dumped = _dump_store(mem)
    (c,) = meta.chunks
    return {i: dumped.get(str(i)) for i in range(-(-n // c))}


def _chunk_names(meta: ArrayMeta) -> Iterator[tuple[tuple[int, ...], str]]:
    grid = [-(-s // c) for s, c in zip(meta.shape, meta.chunks)]
    for index in np.ndindex(*grid) if meta.shape else [()]:
        yield index, (".".join(str(i) for i in index) if index else "0")


# dtypes whose format 2 chunks are the raw C-order items and whose JSON fill value numpy reads
# as is (numbers, "NaN"/"Infinity", strings of fixed width); anything else is read by zarr
_DIRECT_KINDS = frozenset("biufU")


def read_array(meta: ArrayMeta, get: Callable[[str], bytes | None]) -> np.ndarray:
    """The whole of a small array (coordinates), its chunks fetched by ``get(chunk_name)``.

    DESIGN CHOICE: a plain array (one compressor, no filters, C order, a numeric or fixed-width
    string dtype) is decoded with its own numcodecs codec, as zarr-python does for format 2 and
    as the hot path encodes imagery chunks; any other encoding is read by zarr-python itself.
    Both give the same values (tested), and reading coordinates then needs no zarr import.
    """
    chunks = {name: get(name) for _, name in _chunk_names(meta)}
    plain = (meta.dtype.kind in _DIRECT_KINDS and not meta.doc.get("filters")
             and meta.doc.get("order", "C") == "C" and meta.codec is not None)
    if not plain:
        return _read_with_zarr(meta, chunks)
    try:
        out = (np.zeros(meta.shape, dtype=meta.dtype) if meta.fill_value is None  # as zarr: 0, ""
               else np.full(meta.shape, meta.fill_value, dtype=meta.dtype))
        for index, name in _chunk_names(meta):
            raw = chunks[name]
            if raw is None:
                continue
            block = meta.decode(raw)
            where = tuple(slice(i * c, min((i + 1) * c, s))
                          for i, c, s in zip(index, meta.chunks, meta.shape))
            out[where] = block[tuple(slice(0, w.stop - w.start) for w in where)]
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StoreError(f"a coordinate chunk is damaged: {exc}") from exc
    return out


def _read_with_zarr(meta: ArrayMeta, chunks: dict[str, bytes | None]) -> np.ndarray:
    import zarr

    mem = _memory_store({".zarray": meta.to_bytes(),
                         **{name: raw for name, raw in chunks.items() if raw is not None}})
    arr = zarr.open_array(mem, zarr_format=2, mode="r")
    try:
        return arr[...]
    except (RuntimeError, ValueError) as exc:
        raise StoreError(f"a coordinate chunk is damaged: {exc}") from exc
