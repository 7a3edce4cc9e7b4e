"""Reading an EOPF product's arrays from their Zarr chunks, as the warp reads a raster.

``open_raster(product, path)`` gives a ``ZarrRaster``: the few things of a rasterio dataset that
``ingest.warping.warp`` uses (``crs``, ``transform``, ``bounds``, ``height``, ``width``,
``block_shapes``, ``read(1, window=...)``, ``close``), so the warp's ``StripReader`` and
everything after it are the same for SAFE and EOPF; no JPEG 2000 is decoded.

Decoding: each chunk key is read whole with a size limit (``container``), its Blosc header
must state exactly the chunk's decoded size and the bytes it has (both before anything is
decompressed: a hostile header cannot make us allocate more), and numcodecs' Blosc decodes it
into a buffer of exactly that size. A chunk that is missing, of another size, or does not
decode is a ``CorruptProductError`` naming the array and the chunk. DESIGN CHOICE: a missing
chunk is refused, not read as the fill value (Zarr's rule): a product has no checksums, so a
lost file would otherwise turn into nodata silently; real products store every chunk [U].

Values come as the variable's cube dtype: the stored dtype is converted exactly (another byte
order, a wider integer SCL, CPM 2.7's float32 CLD/SNW with NaN as 0); a value that does not fit
is refused. DESIGN CHOICE: a read that needs only part of a chunk row keeps that decoded row,
so a chunk is decoded once however the warp cuts its strips (a layout-B product has 5490-row
chunks, more than the warp's 2048-row strips); a read of whole chunk rows (layout A: the warp's
strips are the chunk rows) decodes straight into its result and keeps nothing.
"""
from __future__ import annotations

import json
import math
import struct
import threading

import numcodecs
import numpy as np
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.windows import Window

from ingest.errors import CorruptProductError
from ingest.products.eopf.container import Container, open_container
from ingest.products.model import Product, ZarrArray
from ingest.variables import VARIABLES

BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
BLOSC_MAX_OVERHEAD = 16


def chunk_bytes(layout: ZarrArray) -> int:
    return math.prod(layout.chunks) * np.dtype(layout.dtype).itemsize


def decode_chunk(container: Container, layout: ZarrArray, index: tuple[int, ...], label: str) -> np.ndarray:
    """One chunk as an array of the chunk shape and the stored dtype (native byte order)."""
    key = layout.chunk_key(*index)
    where = f"{layout.path} chunk {'.'.join(map(str, index)) or '0'}"
    nbytes = chunk_bytes(layout)
    config = json.loads(layout.compressor)
    if not container.exists(key):
        raise CorruptProductError(label, f"{where} is missing")
    raw = container.read(key, nbytes + BLOSC_MAX_OVERHEAD if config else nbytes)
    out = np.empty(nbytes, dtype=np.uint8)
    if config is None:
        if len(raw) != nbytes:
            raise CorruptProductError(label, f"{where}: {len(raw):,} bytes, expected {nbytes:,} (uncompressed)")
        out[:] = np.frombuffer(raw, dtype=np.uint8)
    else:
        if len(raw) < BLOSC_HEADER.size:
            raise CorruptProductError(label, f"{where}: {len(raw)} bytes, not a Blosc chunk")
        _, _, _, _, decoded, _, stored = BLOSC_HEADER.unpack_from(raw)
        if decoded != nbytes or stored != len(raw):
            raise CorruptProductError(label, f"{where}: the Blosc header says {decoded:,} bytes from {stored:,}, "
                                             f"the chunk must decode to {nbytes:,} from the {len(raw):,} stored")
        try:
            numcodecs.get_codec(config).decode(raw, out=out)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CorruptProductError(label, f"cannot decode {where}: {exc}") from None
    stored_dtype = np.dtype(layout.dtype)
    return out.view(stored_dtype).reshape(layout.chunks).astype(stored_dtype.newbyteorder("="), copy=False)


def to_dtype(data: np.ndarray, dtype: np.dtype, label: str, where: str) -> np.ndarray:
    """Stored values as ``dtype``, exactly; CorruptProductError for a value that does not fit."""
    if data.dtype == dtype:
        return data
    if data.dtype.kind == "f":
        data = np.where(np.isnan(data), 0, data)
        if not np.all(np.floor(data) == data):
            raise CorruptProductError(label, f"{where}: non-integer values where {dtype} is expected")
    info = np.iinfo(dtype)
    if data.size and (data.min() < info.min or data.max() > info.max):
        raise CorruptProductError(label, f"{where}: values {data.min()}..{data.max()} do not fit {dtype}")
    return data.astype(dtype)


class ZarrRaster:
    """One 2-D array of an EOPF product behind the dataset interface the warp uses."""

    def __init__(self, product: Product, path: str, dtype: str, container: Container | None = None) -> None:
        try:
            self.layout = product.arrays[path]
        except KeyError:
            raise CorruptProductError(product.name, f"{path} is not an array of the product") from None
        if len(self.layout.shape) != 2:
            raise CorruptProductError(product.name, f"{path} has shape {list(self.layout.shape)}, not (y, x)")
        self.label = product.name
        self.dtype = np.dtype(dtype)
        res, geo = self.layout.resolution, product.geocoding
        self.crs = CRS.from_epsg(geo.epsg)
        self.transform = Affine(res, 0.0, geo.ulx, 0.0, -res, geo.uly)
        self.height, self.width = self.layout.shape
        self.bounds = BoundingBox(geo.ulx, geo.uly - self.height * res, geo.ulx + self.width * res, geo.uly)
        self.block_shapes = [tuple(self.layout.chunks)]
        self.dtypes = (self.dtype.name,)
        self.count = 1
        self._container = container or open_container(product.source, product.name)
        self._row: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _decode_row(self, i: int, out: np.ndarray) -> None:
        """Chunk row ``i``, whole width, into ``out`` in the output dtype."""
        ch, cw = self.layout.chunks
        h = out.shape[0]
        for j in range(self.layout.chunk_grid[1]):
            w = min(cw, self.width - j * cw)
            chunk = decode_chunk(self._container, self.layout, (i, j), self.label)[:h, :w]
            out[:, j * cw:j * cw + w] = to_dtype(chunk, self.dtype, self.label, f"{self.layout.path} chunk {i}.{j}")

    def _chunk_row(self, i: int) -> np.ndarray:
        """Chunk row ``i`` for a read that needs part of it (kept until another row is read)."""
        if self._row is None or self._row[0] != i:
            ch = self.layout.chunks[0]
            row = np.empty((min(ch, self.height - i * ch), self.width), dtype=self.dtype)
            self._decode_row(i, row)
            self._row = (i, row)
        return self._row[1]

    def read(self, band: int = 1, window: Window | None = None) -> np.ndarray:
        """Rows and columns of ``window`` (the whole array without one), a new array."""
        if band != 1:
            raise ValueError("an EOPF array has one band")
        if window is None:
            window = Window(0, 0, self.width, self.height)
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        if r0 < 0 or c0 < 0 or r1 > self.height or c1 > self.width:
            raise ValueError(f"window {window} outside {self.height}x{self.width}")
        out = np.empty((r1 - r0, c1 - c0), dtype=self.dtype)
        ch = self.layout.chunks[0]
        with self._lock:
            for i in range(r0 // ch, (r1 - 1) // ch + 1) if r1 > r0 else ():
                a, b = max(r0, i * ch), min(r1, (i + 1) * ch)
                if a == i * ch and b == min(self.height, (i + 1) * ch) and (c0, c1) == (0, self.width):
                    self._decode_row(i, out[a - r0:b - r0])  # the whole row is wanted: no copy kept
                    continue
                row = self._chunk_row(i)
                out[a - r0:b - r0] = row[a - i * ch:b - i * ch, c0:c1]
        return out

    def close(self) -> None:
        self._row = None
        self._container.close()


def open_raster(product: Product, path: str, dtype: str | None = None) -> ZarrRaster:
    """The array ``path`` of an EOPF product, read as ``dtype`` (default: the dtype of the cube
    variable it feeds)."""
    if dtype is None:
        var = next((v for v, by_res in product.files.items() if path in by_res.values()), None)
        if var is None:
            raise CorruptProductError(product.name, f"{path} feeds no cube variable")
        dtype = VARIABLES[var].dtype
    return ZarrRaster(product, path, dtype)


def read_small(container: Container, layout: ZarrArray, label: str) -> np.ndarray:
    """A whole 1-D array (coordinates), decoded chunk by chunk."""
    parts = [decode_chunk(container, layout, (j,), label) for j in range(layout.chunk_grid[0])]
    return np.concatenate(parts)[: layout.shape[0]] if parts else np.empty(0, layout.dtype)
