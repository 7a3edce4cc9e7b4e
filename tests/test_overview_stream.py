"""The overview stream (``ingest.overviews.stream``): level chunks made from the arrays the
writer merges equal, byte for byte, the levels ``update_overviews`` computes from the store,
for odd and even chunk heights, ragged grid edges, untouched neighbours, chunks that become
empty, any delivery order and two writer threads; the pass after the writer then has nothing
left to do."""
from __future__ import annotations

import json
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ingest.publish.engine import Cube
from ingest.grid import CubeGrid
from ingest.overviews import build_overviews, level_factors, overview_stream, update_overviews
from ingest.overviews import pyramid
from ingest.store import CubeStore, join
from ingest.store.imagery import write_1d
from ingest.variables import VARIABLES

GROUP = "S2/R051"


def _grid(cy: int, cx: int) -> CubeGrid:
    # 2403 x 2998 px: three levels (2, 4, 8 -> 301 x 375 <= 512) and ragged edges everywhere
    return CubeGrid("t", "EPSG:28992", 10.0, (0.0, 300_000.0, 29_980.0, 324_030.0),
                    chunk_shape=(cy, cx), time_chunk=3)


def _random_chunk(rng: np.random.Generator, var: str, shape, nt: int, empty: bool) -> np.ndarray:
    spec = VARIABLES[var]
    a = np.full(shape, spec.fill_value, dtype=spec.dtype)
    if empty:
        return a
    hi = 12 if spec.kind == "classes" else 3000
    a[:nt] = rng.integers(1, hi, (nt, *shape[1:])).astype(spec.dtype)
    holes = rng.random(shape) < 0.3  # nodata the reductions must skip
    a[holes] = spec.fill_value
    if rng.random() < 0.5:  # data in a box only (odd and even offsets): the reduced box
        r0, c0 = rng.integers(0, shape[1]), rng.integers(0, shape[2])
        r1, c1 = rng.integers(r0 + 1, shape[1] + 1), rng.integers(c0 + 1, shape[2] + 1)
        box = a[:, r0:r1, c0:c1].copy()
        a[:] = spec.fill_value
        a[:, r0:r1, c0:c1] = box
    return a


@contextmanager
def _end_pass():
    """The level chunks (step, row, column) ``update_overviews`` computes itself, as a list."""
    done: list = []
    real = pyramid._level_var

    def spy(tx, grid_, src, shape, dst, var, todo, n):
        done.extend(todo)
        return real(tx, grid_, src, shape, dst, var, todo, n)

    pyramid._level_var = spy
    try:
        yield done
    finally:
        pyramid._level_var = real


def _write(store: CubeStore, grid: CubeGrid, length: int, chunks, seed: int, *, stream: bool,
           empty: frozenset = frozenset(), steps: set[int] | None = None) -> dict:
    """Stage random native chunks as the writer would (new values at ``steps`` only, None:
    all), feed the stream (if asked) from two threads in random order, let
    ``update_overviews`` finish, commit; what the end pass did."""
    rng = np.random.default_rng(seed)
    tc = grid.time_chunk
    with store.transaction() as tx:
        for var in VARIABLES:
            tx.resize(join(GROUP, var), (length, *grid.shape))
        write_1d(tx, join(GROUP, "time"), np.arange(length, dtype="i8") * 86_400_000)
        s = overview_stream(tx, grid, GROUP) if stream else None
        blocks: dict[tuple[int, int], set] = {}
        for k, iy, ix in chunks:
            blocks.setdefault((k, iy), set()).add((iy, ix))

        def block_steps(k):
            nt = min(tc, length - k * tc)
            return {t for t in range(k * tc, k * tc + nt) if steps is None or t in steps}

        if s is not None:
            for (k, _), cs in sorted(blocks.items()):
                s.expect(k, cs, block_steps(k))
        deliveries = []
        for (k, iy), cs in sorted(blocks.items()):
            nt = min(tc, length - k * tc)
            for var in VARIABLES:
                arrays = {}
                for c in sorted(cs):
                    meta = tx.array(join(GROUP, var))
                    a = _random_chunk(rng, var, meta.chunks, nt, (k, *c) in empty)
                    key = f"{GROUP}/{var}/{k}.{c[0]}.{c[1]}"
                    old = tx.get(key)
                    keep = [t - k * tc for t in range(k * tc, k * tc + tc) if t not in block_steps(k)]
                    a[keep] = (meta.decode(old) if old is not None else meta.empty_chunk())[keep]
                    if (a != meta.fill_value).any():
                        tx.put(key, meta.encode(a))
                    elif tx.get(key) is not None:
                        tx.delete(key)
                    arrays[c] = a
                deliveries.append((var, k, arrays))
        if s is not None:
            random.Random(seed).shuffle(deliveries)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda d: s.merged(*d), deliveries))
        with _end_pass() as end_pass:
            update_overviews(tx, grid, GROUP, threads=1, stream=s, steps=steps)
        tx.commit()
    return {"end_pass": end_pass, "end_pass_keys": [f"x/{t}.{jy}.{jx}" for t, jy, jx in end_pass],
            "stream_done": s.done(level_factors(grid.shape)[0]) if s else set()}


def _small_cube_with_overviews(path: Path):
    """A cube (odd chunk height) with 3 x 3 chunks of data in its corner and its levels;
    returns (grid, store, number of chunk rows and columns)."""
    grid = _grid(25, 30)
    ny, nx = -(-grid.shape[0] // 25), -(-grid.shape[1] // 30)
    Cube(path, grid, 51).ensure()
    store = CubeStore.open(path)
    _write(store, grid, 3, [(0, iy, ix) for iy in range(ny - 3, ny) for ix in range(nx - 3, nx)],
           seed=1, stream=False)
    with store.transaction() as tx:
        build_overviews(tx, grid, GROUP)
        tx.commit()
    return grid, store, (ny, nx)


def _overview_files(root: Path) -> dict[str, bytes]:
    base = root / GROUP / "overviews"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("cy,cx", [(25, 30), (24, 30)], ids=["odd-chunk-height", "even-chunk-height"])
def test_stream_levels_equal_the_levels_computed_from_the_store(tmp_path, cy, cx):
    grid = _grid(cy, cx)
    assert len(level_factors(grid.shape)) == 3
    ny, nx = -(-grid.shape[0] // cy), -(-grid.shape[1] // cx)
    base = tmp_path / "base.zarr"
    Cube(base, grid, 51).ensure()
    store = CubeStore.open(base)
    # version 1: data in time chunk 0 over a block of chunks reaching the ragged edges
    first = [(0, iy, ix) for iy in range(ny - 7, ny) for ix in range(nx - 9, nx)]
    _write(store, grid, 3, first, seed=1, stream=False)
    with store.transaction() as tx:
        build_overviews(tx, grid, GROUP)
        tx.commit()
    # the next commit: an append (step 3, time chunk 1) and a rewrite of step 1 of some
    # published chunks of time chunk 0 (steps 0 and 2 stay), over rows that start on odd and
    # even chunk rows, with untouched neighbours (published) and chunks that become empty
    second = ([(1, iy, ix) for iy in range(ny - 6, ny) for ix in range(nx - 5, nx - 1)]
              + [(0, iy, ix) for iy in range(ny - 5, ny - 2) for ix in range(nx - 8, nx - 3)])
    empty = frozenset({(0, ny - 4, nx - 6), (0, ny - 3, nx - 8)})
    copies = {}
    for stream in (True, False):
        path = tmp_path / f"{stream}.zarr"
        shutil.copytree(base, path)
        copies[stream] = _write(CubeStore.open(path), grid, 4, second, seed=2, stream=stream,
                                empty=empty, steps={1, 3})
    # the stream did the levels; the pass after the writer found nothing left
    assert copies[True]["stream_done"] and copies[True]["end_pass"] == []
    assert copies[False]["end_pass"]
    a, b = _overview_files(tmp_path / "True.zarr"), _overview_files(tmp_path / "False.zarr")
    assert a.keys() == b.keys() and any(k.startswith("8/B04/3.") for k in a)
    # only the changed steps were recomputed: one step per level chunk
    assert {int(t) for t, *_ in (k.split("/")[-1].split(".") for k in copies[False]["end_pass_keys"])} == {1, 3}
    assert [k for k in a if a[k] != b[k]] == []
    # and both equal a rebuild of every level from the native data
    with CubeStore.open(tmp_path / "False.zarr").transaction() as tx:
        build_overviews(tx, grid, GROUP)
        tx.commit()
    assert _overview_files(tmp_path / "False.zarr") == b


def test_steps_moved_outside_the_writer_are_redone_after_it(tmp_path):
    """Chunks staged outside the writer's merges (an insertion moves published steps) are
    not seen by the stream: their parents, and what lies above them, are computed after."""
    base = tmp_path / "base.zarr"
    grid, store, (ny, nx) = _small_cube_with_overviews(base)
    with store.transaction() as tx:
        s = overview_stream(tx, grid, GROUP)
        # "moved" by something else than the writer: chunk (0, ny-1, nx-1) of every variable
        for var in VARIABLES:
            meta = tx.array(join(GROUP, var))
            a = _random_chunk(np.random.default_rng(5), var, meta.chunks, 3, False)
            tx.put(f"{GROUP}/{var}/0.{ny - 1}.{nx - 1}", meta.encode(a))
        with _end_pass() as end_pass:
            update_overviews(tx, grid, GROUP, threads=1, stream=s)
        tx.commit()
    # level 2 chunks cover 4 x 4 native chunks, the others 2 x 2 of the level above; one step each
    assert sorted(set(end_pass)) == sorted({(t, (ny - 1) // 4 // d, (nx - 1) // 4 // d)
                                            for t in range(3) for d in (1, 2, 4)})
    before = _overview_files(base)
    with store.transaction() as tx:
        build_overviews(tx, grid, GROUP)
        tx.commit()
    assert _overview_files(base) == before


def test_levels_of_an_earlier_chunk_layout_are_rebuilt_in_the_next_commit(tmp_path, caplog):
    path = tmp_path / "cube.zarr"
    grid, store, (ny, nx) = _small_cube_with_overviews(path)
    expected = _overview_files(path)
    # as 0.2 wrote them: chunks (time_chunk, cy, cx), keyed by time chunk
    with store.transaction() as tx:
        for f in level_factors(grid.shape):
            for var in VARIABLES:
                p = join(GROUP, "overviews", str(f), var)
                for name in tx.chunk_keys(p):
                    tx.delete(join(p, name))
                doc = tx.get_json(join(p, ".zarray"))
                tx.put_json(join(p, ".zarray"), {**doc, "chunks": [3, 25, 30]})
        tx.commit()
    with store.transaction() as tx:  # a commit that touches the group
        key = f"{GROUP}/B04/0.{ny - 1}.{nx - 1}"
        tx.put(key, tx.get(key))
        assert overview_stream(tx, grid, GROUP) is None
        update_overviews(tx, grid, GROUP, threads=1)
        tx.commit()
    assert "rebuilt" in caplog.text
    for f in level_factors(grid.shape):
        doc = json.loads((path / GROUP / "overviews" / str(f) / "B04" / ".zarray").read_text())
        assert doc["chunks"] == [1, 50, 60]
    assert _overview_files(path) == expected
