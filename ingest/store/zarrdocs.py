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
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numcodecs
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.buffer.cpu import Buffer
from zarr.storage import MemoryStore

from ingest.errors import StoreError

KEY_ENCODING = {"name": "v2", "separator": "."}


def dumps(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=True).encode()


def _dump_store(store: MemoryStore) -> dict[str, bytes]:
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
    mem = MemoryStore()
    arr = zarr.create_array(mem, name=name, shape=shape, chunks=chunks, dtype=dtype,
                            fill_value=fill_value, compressors=compressor, filters=None,
                            chunk_key_encoding=KEY_ENCODING, zarr_format=2, attributes=attrs,
                            config={"write_empty_chunks": data is not None}, overwrite=True)
    if data is not None and data.size:
        arr[...] = data
    return {k: v for k, v in _dump_store(mem).items() if k.startswith(f"{name}/")}


def new_group(attrs: dict | None = None) -> dict[str, bytes]:
    """``.zgroup`` and ``.zattrs`` of a format 2 group, made by zarr."""
    mem = MemoryStore()
    zarr.open_group(mem, mode="w", zarr_format=2, attributes=attrs or {})
    return _dump_store(mem)


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
        return np.full(self.chunks, self.fill_value, dtype=self.dtype)

    def decode(self, raw: bytes, out: np.ndarray | None = None) -> np.ndarray:
        chunk = out if out is not None else np.empty(self.chunks, dtype=self.dtype)
        self.codec.decode(raw, out=chunk)
        return chunk

    def encode(self, chunk: np.ndarray) -> bytes:
        return bytes(self.codec.encode(np.ascontiguousarray(chunk, dtype=self.dtype)))


def encode_1d(meta: ArrayMeta, values: np.ndarray) -> dict[int, bytes | None]:
    """Chunks of a 1-D array holding ``values`` (its new shape), made by a zarr twin.

    Returns every chunk index up to the new length; None where the chunk holds fill only.
    """
    (n,) = values.shape
    mem = MemoryStore()
    doc = {**meta.doc, "shape": [n]}
    asyncio.run(mem.set(".zarray", Buffer.from_bytes(dumps(doc))))
    arr = zarr.open_array(mem, zarr_format=2, mode="r+")
    if n:
        arr[:] = values
    dumped = _dump_store(mem)
    (c,) = meta.chunks
    return {i: dumped.get(str(i)) for i in range(-(-n // c))}


def read_array(meta: ArrayMeta, get: Callable[[str], bytes | None]) -> np.ndarray:
    """The whole of a small array (coordinates), its chunks fetched by ``get(chunk_name)``."""
    mem = MemoryStore()
    asyncio.run(mem.set(".zarray", Buffer.from_bytes(meta.to_bytes())))
    grid = [range(-(-s // c)) for s, c in zip(meta.shape, meta.chunks)] or [range(1)]
    for index in np.ndindex(*[len(r) for r in grid]) if meta.shape else [()]:
        name = ".".join(str(i) for i in index) if index else "0"
        raw = get(name)
        if raw is not None:
            asyncio.run(mem.set(name, Buffer.from_bytes(raw)))
    arr = zarr.open_array(mem, zarr_format=2, mode="r")
    try:
        return arr[...]
    except (RuntimeError, ValueError) as exc:
        raise StoreError(f"a coordinate chunk is damaged: {exc}") from exc
