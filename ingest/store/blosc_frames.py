"""Encoding a chunk of which only some time steps changed: unchanged Blosc blocks are reused.

A Blosc frame (c-blosc 1, as numcodecs writes it) is a 16-byte header, a table of where each
block starts, then the blocks, each compressed on its own (shuffled, then zstd). With one
thread per call (``zarrdocs``), c-blosc writes the blocks in order, and a block's bytes depend
only on its raw bytes and the codec's settings, never on its neighbours. So when a commit
writes one time step into a chunk of five, the blocks whose raw bytes lie wholly outside that
step are the bytes the chunk already holds (or, in a new chunk, the bytes of a block of fill
values): only the blocks that meet the changed steps are compressed again.

DESIGN CHOICE: the result must be the bytes a full ``encode`` gives, so that a chunk's bytes
and its sha256 never depend on how it was written. That holds by construction, and is checked:

* each run of changed blocks is compressed by the codec itself, as one buffer; its header
  must show the same settings, block size and number of blocks, or the full encode is used;
* c-blosc stores a frame uncompressed ("memcpyed") when it does not fit in its input's size
  plus 16 bytes, and shrinks a block's output budget near that limit: a frame spliced to
  within one block of the limit is refused (full encode), so every block had its full budget;
* a probe, once per process and codec, compares splicing with the full encode of a test chunk
  (``usable``); if they differ (another c-blosc or zstd), splicing is not used at all;
* ``tests/test_blosc_frames.py`` compares the two for many chunks, dtypes and step patterns.
"""
from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

HEADER = 16  # bytes of a Blosc 1 header
MAX_OVERHEAD = 16  # BLOSC_MAX_OVERHEAD: a frame is at most its raw size plus this
MEMCPYED = 0x02  # header flag: the data is stored uncompressed, there is no block table


@dataclass(frozen=True)
class Frame:
    """A parsed Blosc 1 frame with a block table."""

    raw: bytes
    nbytes: int
    blocksize: int
    starts: tuple[int, ...]

    @property
    def settings(self) -> bytes:
        """Format versions, flags and type size: what two frames must share to be spliced."""
        return self.raw[:4]

    def block(self, i: int) -> bytes:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.raw)
        return self.raw[self.starts[i]:end]


def parse(raw: bytes) -> Frame | None:
    """The frame ``raw``; None where it has no block table (stored uncompressed) or is not a
    well-formed frame whose blocks follow each other (then the caller encodes in full)."""
    if len(raw) < HEADER:
        return None
    _, _, flags, _, nbytes, blocksize, cbytes = struct.unpack_from("<BBBBiii", raw)
    if flags & MEMCPYED or blocksize <= 0 or nbytes <= 0 or cbytes != len(raw):
        return None
    n = -(-nbytes // blocksize)
    table = HEADER + 4 * n
    if table > len(raw):
        return None
    starts = struct.unpack_from(f"<{n}i", raw, HEADER)
    if starts[0] != table or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= len(raw):
        return None
    return Frame(bytes(raw), nbytes, blocksize, starts)


def splice(codec, data: np.ndarray, base: Frame, changed: Iterable[tuple[int, int]]) -> bytes | None:
    """The frame of ``data`` (C-contiguous), where only the byte ranges ``changed`` differ from
    the raw bytes ``base`` encodes: the other blocks are taken from ``base``. None where the
    result could differ from ``codec.encode(data)`` (then the caller encodes in full)."""
    flat = data.reshape(-1).view(np.uint8)
    nbytes, bs = flat.size, base.blocksize
    if base.nbytes != nbytes:
        return None
    n = len(base.starts)
    dirty = sorted({b for lo, hi in changed if hi > lo for b in range(lo // bs, min(n, -(-hi // bs)))})
    blocks: list[bytes | None] = [None] * n
    run: list[int] = []
    for b in [*dirty, None]:
        if run and (b is None or b != run[-1] + 1):
            lo, hi = run[0] * bs, min((run[-1] + 1) * bs, nbytes)
            part = parse(bytes(codec.encode(flat[lo:hi].view(data.dtype))))
            if part is None or part.settings != base.settings or len(part.starts) != len(run) or \
                    part.blocksize != min(bs, hi - lo):
                return None
            for j, i in enumerate(run):
                blocks[i] = part.block(j)
            run = []
        if b is not None:
            run.append(b)
    payload = [blk if blk is not None else base.block(i) for i, blk in enumerate(blocks)]
    table = HEADER + 4 * n
    total = table + sum(len(p) for p in payload)
    if total + bs > nbytes + MAX_OVERHEAD:  # near c-blosc's limit: its budgets could differ
        return None
    starts, at = [], table
    for p in payload:
        starts.append(at)
        at += len(p)
    header = base.settings + struct.pack("<iii", nbytes, bs, total)
    return b"".join([header, struct.pack(f"<{n}i", *starts), *payload])


class Splicer:
    """Chunks of one array encoded by splicing (``ArrayMeta.encode_steps``): the frame of a
    chunk of fill values is made once, and splicing is used only where a probe showed it
    gives the full encode's bytes."""

    def __init__(self, codec, shape: tuple[int, ...], dtype: np.dtype, fill) -> None:
        self.codec = codec
        self.shape, self.dtype, self.fill = shape, dtype, fill
        self._lock = threading.Lock()
        self._fill_frame: Frame | None = None
        self._usable: bool | None = None

    def fill_frame(self) -> Frame | None:
        with self._lock:
            if self._fill_frame is None:
                self._fill_frame = parse(bytes(self.codec.encode(np.full(self.shape, self.fill, self.dtype))))
            return self._fill_frame

    @property
    def usable(self) -> bool:
        """Splicing gives the full encode's bytes here (probed once: a chunk of varied values
        with its first step changed, spliced onto the fill frame and onto itself)."""
        if self._usable is None:
            self._usable = _probe(self)
        return self._usable

    def encode(self, chunk: np.ndarray, steps: Iterable[int], old: bytes | None) -> bytes | None:
        """The frame of ``chunk``, whose steps (along the first axis) other than ``steps`` hold
        what ``old`` holds (None: the fill value); None where splicing does not apply."""
        if not self.usable or chunk.shape != self.shape or not chunk.flags.c_contiguous:
            return None
        base = self.fill_frame() if old is None else parse(old)
        if base is None:
            return None
        step = chunk[0].nbytes
        return splice(self.codec, chunk, base, ((s * step, (s + 1) * step) for s in steps))


def _probe(splicer: Splicer) -> bool:
    rng = np.random.default_rng(2026)
    info = np.iinfo(splicer.dtype) if splicer.dtype.kind in "iu" else None
    high = min(info.max, 4000) if info is not None else 1.0
    chunk = np.full(splicer.shape, splicer.fill, splicer.dtype)
    if chunk.ndim < 2 or chunk.shape[0] < 2:
        return False
    walk = np.cumsum(rng.normal(0, 3, chunk.shape[1:]), axis=-1) + high / 2
    chunk[0] = np.clip(walk, 0, high).astype(splicer.dtype)
    expected = bytes(splicer.codec.encode(chunk))
    base = splicer.fill_frame()
    first = splice(splicer.codec, chunk, base, [(0, chunk[0].nbytes)]) if base else None
    # then the second and the last step (the last block may be shorter) onto that frame
    frame = parse(expected)
    ok = first == expected and frame is not None
    for s in (1, chunk.shape[0] - 1):
        changed = chunk.copy()
        changed[s] = chunk[0][..., ::-1]
        spliced = splice(splicer.codec, changed, frame, [(s * chunk[0].nbytes, (s + 1) * chunk[0].nbytes)]) \
            if ok else None
        ok = ok and spliced == bytes(splicer.codec.encode(changed))
    if not ok:
        log.info("Blosc frames of %s %s chunks are encoded whole (splicing gave other bytes here)",
                 splicer.dtype, splicer.shape)
    return ok
