"""Small arrays (coordinates) are read by the store's own codec path exactly as zarr-python reads
them: the same values for every dtype, shape, fill value and missing chunk, and a damaged chunk
is a StoreError either way."""
from __future__ import annotations

import numpy as np
import pytest

from ingest.errors import StoreError
from ingest.store.layout import compressor
from ingest.store.zarrdocs import ArrayMeta, _read_with_zarr, new_array, read_array

CASES = [
    ("i8", -1, (13,), (5,), np.arange(13, dtype="i8") * 1000),
    ("f4", float("nan"), (7,), (3,), np.linspace(0, 1, 7, dtype="f4")),
    ("u2", 0, (6, 5), (4, 2), np.arange(30, dtype="u2").reshape(6, 5)),
    ("<U8", "", (9,), (4,), np.array([f"S2{c}" for c in "ABCABCABC"])),
    ("<U64", "", (3,), (64,), np.array(["x" * 64, "", "é"])),
    ("bool", False, (5,), (2,), np.array([True, False, True, True, False])),
    ("i4", None, (7,), (3,), np.arange(7, dtype="i4")),
    ("<U4", None, (5,), (2,), np.array(["a", "bb", "ccc", "dddd", ""])),
]


def _array(dtype, fill, shape, chunks, data) -> tuple[ArrayMeta, dict[str, bytes]]:
    keys = new_array("a", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                     compressor=compressor(), attrs={}, data=data)
    meta = ArrayMeta.parse(keys["a/.zarray"], "a")
    return meta, {k[2:]: v for k, v in keys.items() if not k.split("/")[-1].startswith(".")}


@pytest.mark.parametrize("dtype,fill,shape,chunks,data", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("missing", [False, True], ids=["all-chunks", "a-chunk-missing"])
def test_the_codec_path_reads_what_zarr_reads(dtype, fill, shape, chunks, data, missing):
    meta, chunks_ = _array(dtype, fill, shape, chunks, data)
    if missing:
        chunks_.pop(sorted(chunks_)[-1])  # fill value there
    ours = read_array(meta, chunks_.get)
    theirs = _read_with_zarr(meta, dict(chunks_))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == shape
    np.testing.assert_array_equal(ours, theirs)
    if not missing:
        np.testing.assert_array_equal(ours, data)


def test_a_damaged_coordinate_chunk_is_a_store_error():
    meta, chunks = _array("i8", -1, (10,), (5,), np.arange(10, dtype="i8"))
    chunks["1"] = b"not a blosc frame"
    with pytest.raises(StoreError, match="a coordinate chunk is damaged"):
        read_array(meta, chunks.get)
    with pytest.raises(StoreError, match="a coordinate chunk is damaged"):
        _read_with_zarr(meta, chunks)


def test_other_encodings_are_read_by_zarr():
    # a filter the codec path does not apply: zarr reads it
    import numcodecs

    meta, chunks = _array("i8", -1, (10,), (5,), np.arange(10, dtype="i8"))
    doc = {**meta.doc, "filters": [numcodecs.Delta(dtype="i8").get_config()]}
    delta = numcodecs.Delta(dtype="i8")
    chunks = {name: meta.codec.encode(delta.encode(meta.decode(raw))) for name, raw in chunks.items()}
    np.testing.assert_array_equal(read_array(ArrayMeta(doc), chunks.get), np.arange(10))


def test_the_same_chunk_encodes_to_the_same_bytes_in_every_process():
    # c-blosc with its own threads (numcodecs' default on the main thread) writes blocks in the
    # order its threads finish; the store's content hashes need one encoding per chunk
    import subprocess
    import sys

    code = ("import hashlib, numpy as np\n"
            "from ingest.store.zarrdocs import ArrayMeta\n"
            "from ingest.store.layout import compressor\n"
            "meta = ArrayMeta({'shape': [5, 625, 500], 'chunks': [5, 625, 500], 'dtype': '<u2',\n"
            "                  'fill_value': 0, 'compressor': compressor().get_config(),\n"
            "                  'filters': None, 'order': 'C', 'zarr_format': 2})\n"
            "a = np.zeros((5, 625, 500), 'u2'); a[1, :10, :10] = 2; a[3] = np.arange(500, dtype='u2')\n"
            "print(hashlib.sha256(meta.encode(a)).hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(6)}
    assert len(digests) == 1, digests


@pytest.mark.parametrize("attrs", [None, {}, {"title": "cube", "n": 3, "x": [1.5, None], "t": "é",
                                              "nan": float("nan"), "nested": {"a": {"b": True}}}])
def test_group_documents_are_the_ones_zarr_writes(attrs):
    """``new_group`` writes the two documents itself; they are byte for byte zarr's."""
    import zarr

    from ingest.store.zarrdocs import _dump_store, _memory_store, new_group

    mem = _memory_store()
    zarr.open_group(mem, mode="w", zarr_format=2, attributes=attrs or {})
    assert new_group(attrs) == _dump_store(mem)
