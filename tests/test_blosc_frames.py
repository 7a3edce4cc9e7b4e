"""Chunks encoded by reusing Blosc blocks (``ingest.store.blosc_frames``) are byte for byte the
chunks a full encode gives: for both dtypes of the cube, fill values, every pattern of changed
steps, new chunks and chunks that already hold data, and frames that cannot be spliced."""
from __future__ import annotations

import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.store import blosc_frames, zarrdocs
from ingest.store.blosc_frames import Splicer, parse, splice
from ingest.store.layout import compressor
from ingest.store.zarrdocs import ArrayMeta

SHAPE = (5, 125, 100)  # a small chunk of several Blosc blocks per step
CODEC = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=8192)


def _step(rng, dtype, shape, kind):
    if kind == "smooth":
        walk = np.cumsum(rng.normal(0, 4, shape), axis=-1) + 500
        return np.clip(walk, 0, np.iinfo(dtype).max).astype(dtype)
    if kind == "noise":
        return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    if kind == "classes":
        return rng.integers(0, 12, shape, dtype=dtype)
    return np.zeros(shape, dtype)


def _meta(dtype, fill, codec=CODEC, shape=SHAPE) -> ArrayMeta:
    return ArrayMeta({"zarr_format": 2, "shape": [10, *shape[1:]], "chunks": list(shape),
                      "dtype": np.dtype(dtype).str, "fill_value": fill, "order": "C", "filters": None,
                      "compressor": codec.get_config()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from([np.uint16, np.uint8]), fill=st.sampled_from([0, 255]),
       seed=st.integers(0, 2**16), old_steps=st.sets(st.integers(0, 4)),
       new_steps=st.sets(st.integers(0, 4), min_size=1),
       kind=st.sampled_from(["smooth", "classes", "noise", "zeros"]))
def test_a_spliced_chunk_is_the_full_encode(dtype, fill, seed, old_steps, new_steps, kind):
    rng = np.random.default_rng(seed)
    meta = _meta(dtype, fill)
    chunk = meta.empty_chunk()
    for s in old_steps:
        chunk[s] = _step(rng, dtype, SHAPE[1:], "smooth")
    old = meta.encode(chunk) if old_steps else None
    for s in new_steps:
        chunk[s] = _step(rng, dtype, SHAPE[1:], kind)
        chunk[s, rng.integers(0, SHAPE[1]):] = fill  # part of the step outside the product
    assert meta.encode_steps(chunk, sorted(new_steps), old) == meta.encode(chunk)


def test_only_the_blocks_of_the_changed_steps_are_compressed(monkeypatch):
    meta = _meta(np.uint16, 0)
    rng = np.random.default_rng(1)
    chunk = meta.empty_chunk()
    chunk[:3] = _step(rng, np.uint16, (3, *SHAPE[1:]), "smooth")
    old = meta.encode(chunk)
    chunk[3] = _step(rng, np.uint16, SHAPE[1:], "smooth")
    assert meta.encode_steps(chunk, [3], old) == meta.encode(chunk)  # the probe ran
    sizes = []
    real = CODEC.encode

    class Spy:
        def encode(self, buf):
            sizes.append(np.asarray(buf).nbytes)
            return real(buf)

    splicer = Splicer(Spy(), SHAPE, np.dtype(np.uint16), 0)
    splicer._usable = True
    assert splicer.encode(chunk, [3], old) == meta.encode(chunk)
    step = chunk[0].nbytes
    # one buffer: the blocks that meet step 3, nothing of steps 0-2 and 4 beyond them
    assert len(sizes) == 1 and step <= sizes[0] <= step + 2 * CODEC.blocksize


def test_frames_that_cannot_be_spliced_are_encoded_whole():
    meta = _meta(np.uint16, 0)
    rng = np.random.default_rng(2)
    chunk = meta.empty_chunk()
    chunk[1] = _step(rng, np.uint16, SHAPE[1:], "smooth")
    # an old chunk stored uncompressed (memcpyed: c-blosc's fallback for noise)
    noise = rng.integers(0, 65535, SHAPE, dtype=np.uint16)
    stored = meta.encode(noise)
    assert parse(stored) is None
    noise[1] = chunk[1]
    assert meta.encode_steps(noise, [1], stored) == meta.encode(noise)
    # an old chunk written with another block size: its blocks are not reused
    other = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=4096)
    old = bytes(other.encode(chunk))
    chunk[2] = chunk[1]
    assert splice(CODEC, chunk, parse(old), [(2 * chunk[0].nbytes, 3 * chunk[0].nbytes)]) is None
    assert meta.encode_steps(chunk, [2], old) == meta.encode(chunk)
    # noise written into a new chunk: near c-blosc's size limit, the full encode decides
    fresh = meta.empty_chunk()
    fresh[:4] = rng.integers(0, 65535, (4, *SHAPE[1:]), dtype=np.uint16)
    assert meta.encode_steps(fresh, range(4), None) == meta.encode(fresh)
    # damaged or foreign bytes are not a frame
    assert parse(b"\x02\x01" + b"\x00" * 10) is None and parse(stored[:-1]) is None


def test_the_cubes_codec_is_spliced_and_a_failed_probe_turns_splicing_off(monkeypatch):
    meta = _meta(np.uint16, 0, codec=compressor(), shape=(5, 625, 500))
    chunk = meta.empty_chunk()
    chunk[2] = 1000
    assert blosc_frames.parse(meta.encode(chunk)) is not None
    splicer = Splicer(compressor(), (5, 625, 500), np.dtype(np.uint16), 0)
    assert splicer.usable and splicer.encode(chunk, [2], None) == meta.encode(chunk)
    # a c-blosc whose blocks depend on their neighbours would fail the probe
    monkeypatch.setattr(blosc_frames, "splice", lambda *a, **k: b"other bytes")
    monkeypatch.setattr(zarrdocs, "_SPLICERS", {})
    off = Splicer(compressor(), (5, 625, 500), np.dtype(np.uint16), 0)
    assert not off.usable and off.encode(chunk, [2], None) is None
    assert meta.encode_steps(chunk, [2], None) == meta.encode(chunk)


@pytest.mark.parametrize("codec", [numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE),
                                   numcodecs.Zstd(level=1)])
def test_codecs_without_fixed_blocks_are_encoded_whole(codec):
    meta = _meta(np.uint16, 0, codec=codec)
    assert zarrdocs._splicer(meta) is None  # their blocks' sizes follow the data: never spliced
    chunk = meta.empty_chunk()
    chunk[0] = 7
    assert meta.encode_steps(chunk, [0], None) == meta.encode(chunk)
