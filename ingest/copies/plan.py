"""Pure planning of a bounded-memory rechunk (no I/O; property-tested).

The approach of rechunker's planner: a copy reads *read chunks* (whole source chunks, merged
along the axes where the target is longer, so a pixel's time series is gathered from few
reads), cuts them into *intermediate chunks* (on each axis the smaller of read and write) and
assembles *write chunks* (whole target chunks, or whole shards). Every chunk of every stage
holds at most ``max_mem`` bytes, so no task of the copy holds more.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Sequence

from ingest.errors import ConfigError


@dataclass(frozen=True)
class RechunkPlan:
    read: tuple[int, ...]
    intermediate: tuple[int, ...]
    write: tuple[int, ...]

    def nbytes(self, itemsize: int) -> int:
        """The largest chunk of any stage, in bytes."""
        return itemsize * max(prod(self.read), prod(self.intermediate), prod(self.write))


def consolidate(shape: Sequence[int], chunks: Sequence[int], itemsize: int, max_mem: int,
                limits: Sequence[int | None]) -> tuple[int, ...]:
    """``chunks`` merged by whole multiples along the axes with a limit (last axis first),
    each axis up to its limit and the array's length, while the chunk stays within ``max_mem``."""
    out = [min(c, n) for c, n in zip(chunks, shape)]
    for axis in reversed(range(len(shape))):
        if limits[axis] is None:
            continue
        base = out[axis]
        others = itemsize * prod(out[:axis] + out[axis + 1:])
        n = min(limits[axis], shape[axis], max_mem // max(1, others))
        out[axis] = shape[axis] if n >= shape[axis] else max(base, n // base * base)
    return tuple(out)


def plan_rechunk(shape: Sequence[int], source: Sequence[int], target: Sequence[int],
                 itemsize: int, max_mem: int, *, name: str = "array") -> RechunkPlan:
    """The read, intermediate and write chunks of copying an array of ``shape`` from chunks
    ``source`` to chunks ``target`` (whole shards where the copy is sharded) within ``max_mem``."""
    shape, source, target = tuple(shape), tuple(source), tuple(target)
    if not (len(shape) == len(source) == len(target)):
        raise ConfigError(f"{name}: shape {shape}, source chunks {source} and target {target} "
                          "differ in rank")
    if min(source + target, default=1) < 1:
        raise ConfigError(f"{name}: chunk sizes must be positive ({source} -> {target})")
    source = tuple(min(c, max(n, 1)) for c, n in zip(source, shape))
    target = tuple(min(c, max(n, 1)) for c, n in zip(target, shape))
    for what, chunks in (("source", source), ("target", target)):
        need = itemsize * prod(chunks)
        if need > max_mem:
            raise ConfigError(f"{name}: one {what} chunk {chunks} holds {_fmt(need)}, more than "
                              f"--max-mem {_fmt(max_mem)}; give more memory or smaller chunks")
    read = consolidate(shape, source, itemsize, max_mem,
                       [t if t > s else None for s, t in zip(source, target)])
    intermediate = tuple(min(r, w) for r, w in zip(read, target))
    return RechunkPlan(read, intermediate, target)


@dataclass(frozen=True)
class CopyGroup:
    """One task of a planned copy: the box ``[start, stop)`` per axis to read (whole target
    chunks, clipped at the array's end) and write in one go."""
    start: tuple[int, ...]
    stop: tuple[int, ...]

    def nbytes(self, itemsize: int) -> int:
        return itemsize * prod(b - a for a, b in zip(self.start, self.stop))


def copy_unit(shape: Sequence[int], source: Sequence[int], target: Sequence[int], itemsize: int,
              budget: int, *, name: str = "array") -> tuple[int, ...]:
    """The box one task copies: on each axis the least common multiple of the source and
    target chunk lengths (so no source chunk is decoded by two tasks and every target chunk
    is written whole, once), capped at the axis; where that box holds more than ``budget``
    bytes, the box is cut (largest axis first) down to whole target chunks until it fits (a
    source chunk is then decoded by several tasks: more work, never more memory)."""
    from math import lcm

    shape = tuple(max(int(n), 1) for n in shape)
    source = tuple(min(int(c), n) for c, n in zip(source, shape))
    target = tuple(min(int(c), n) for c, n in zip(target, shape))
    if itemsize * prod(target) > budget:
        raise ConfigError(f"{name}: one target chunk {target} holds {_fmt(itemsize * prod(target))}, "
                          f"more than the memory of one task ({_fmt(budget)}); give more --max-mem "
                          "or smaller chunks")
    unit = [min(lcm(s, t), n) for s, t, n in zip(source, target, shape)]
    while itemsize * prod(unit) > budget:
        # the axis holding the most target chunks in the box loses half of them
        axis = max(range(len(unit)), key=lambda a: -(-unit[a] // target[a]))
        k = -(-unit[axis] // target[axis])
        unit[axis] = max(1, k // 2) * target[axis]
    return tuple(unit)


def plan_copy(shape: Sequence[int], source: Sequence[int], target: Sequence[int], itemsize: int,
              budget: int, stored: set[tuple[int, ...]] | None = None, *,
              name: str = "array") -> list[CopyGroup]:
    """The tasks of copying an array of ``shape`` stored in chunks ``source`` into chunks
    ``target`` (whole shards where sharded), each holding at most ``budget`` bytes of values:
    only the boxes that meet a stored source chunk (``stored``: their chunk indices; None:
    every chunk may hold data). The rest of the copy is the fill value: nothing to read, and
    nothing is written there (Zarr reads a missing chunk as its fill value)."""
    shape = tuple(max(int(n), 1) for n in shape)
    src = tuple(min(int(c), n) for c, n in zip(source, shape))
    unit = copy_unit(shape, src, target, itemsize, budget, name=name)
    counts = [-(-n // u) for n, u in zip(shape, unit)]
    if stored is None:
        boxes = _all_boxes(counts)
    else:
        boxes = set()
        for idx in stored:  # the boxes a stored source chunk meets
            lo = [i * c // u for i, c, u in zip(idx, src, unit)]
            hi = [min(((i + 1) * c - 1) // u, k - 1) for i, c, u, k in zip(idx, src, unit, counts)]
            if any(a > b for a, b in zip(lo, hi)) or any(i * c >= n for i, c, n in zip(idx, src, shape)):
                continue  # a chunk outside the array (a stale key) holds nothing of it
            boxes.update(_all_boxes([b - a + 1 for a, b in zip(lo, hi)], lo))
    out = []
    for box in sorted(boxes):
        start = tuple(b * u for b, u in zip(box, unit))
        out.append(CopyGroup(start, tuple(min(a + u, n) for a, u, n in zip(start, unit, shape))))
    return out


def _all_boxes(counts: Sequence[int], offset: Sequence[int] | None = None):
    from itertools import product

    offset = offset or [0] * len(counts)
    return set(product(*(range(o, o + c) for o, c in zip(offset, counts))))


def parse_size(text: str) -> int:
    """``2GB``, ``512MiB``, ``1e9`` -> bytes (dask's parser: decimal and binary units)."""
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(str(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {text!r} as a size (e.g. 2GB, 512MiB): {exc}") from None
    if n <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return int(n)


def parse_dims(text: str | None, option: str) -> dict[str, int]:
    """``time=-1,y=250,x=250`` -> {"time": -1, "y": 250, "x": 250} (-1: the whole axis)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        dim, sep, value = part.partition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if not sep or not dim.strip() or (n < 1 and n != -1):
            raise ConfigError(f"{option}: {part!r} is not DIM=N (N a positive size or -1)")
        out[dim.strip()] = n
    return out


def _fmt(n: int) -> str:
    from dask.utils import format_bytes

    return format_bytes(n)
