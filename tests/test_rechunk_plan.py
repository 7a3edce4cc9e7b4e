"""The rechunk planner is pure: every stage fits in --max-mem, reads are whole source chunks,
writes whole target chunks (hypothesis)."""
from __future__ import annotations

from itertools import product
from math import prod

import pytest
from hypothesis import given, settings, strategies as st

from ingest.copies.plan import parse_dims, parse_size, plan_rechunk
from ingest.errors import ConfigError


@st.composite
def problems(draw):
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 5000), min_size=ndim, max_size=ndim))
    source = [draw(st.integers(1, n)) for n in shape]
    target = [draw(st.integers(1, n)) for n in shape]
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    need = itemsize * max(prod(source), prod(target))
    max_mem = draw(st.integers(need, need * 50))
    return shape, source, target, itemsize, max_mem


@settings(max_examples=150, deadline=None)
@given(problems())
def test_every_stage_fits_and_aligns(problem):
    shape, source, target, itemsize, max_mem = problem
    plan = plan_rechunk(shape, source, target, itemsize, max_mem)
    assert plan.nbytes(itemsize) <= max_mem
    assert plan.write == tuple(target)
    for n, s, t, r, i in zip(shape, source, target, plan.read, plan.intermediate):
        assert r % s == 0 or r == n, "reads are whole source chunks"
        assert s <= r <= max(s, t, n if r == n else 0), "reads grow only towards the target"
        assert i == min(r, t)


def test_reads_gather_the_time_axis_within_the_budget():
    # (time 60, 625, 500) uint16 source chunks (5, 625, 500) to a time series layout
    plan = plan_rechunk((60, 625, 2000), (5, 625, 500), (60, 125, 100), 2, 64 * 2**20)
    assert plan.read == (60, 625, 500) and plan.intermediate == (60, 125, 100)
    tight = plan_rechunk((60, 625, 2000), (5, 625, 500), (60, 125, 100), 2, 8 * 2**20)
    assert tight.read == (10, 625, 500) and tight.nbytes(2) <= 8 * 2**20


def test_refusals_and_parsing():
    with pytest.raises(ConfigError, match=r"one target chunk \(60, 625, 500\) holds 35.76 MiB, "
                                          r"more than --max-mem 8.00 MiB"):
        plan_rechunk((60, 625, 500), (5, 625, 500), (60, 625, 500), 2, 8 * 2**20, name="B04")
    assert parse_size("2GB") == 2 * 10**9 and parse_size("512MiB") == 512 * 2**20
    assert parse_dims("time=-1, y=125,x=100", "--chunks") == {"time": -1, "y": 125, "x": 100}
    for bad in ("time", "time=0", "y=a"):
        with pytest.raises(ConfigError, match="--chunks"):
            parse_dims(bad, "--chunks")
    with pytest.raises(ConfigError, match="as a size"):
        parse_size("lots")


# -- the planned copy: boxes of whole target chunks that meet stored source chunks ------------
@st.composite
def copy_problems(draw):
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 300), min_size=ndim, max_size=ndim))
    source = [draw(st.integers(1, n)) for n in shape]
    target = [draw(st.integers(1, n)) for n in shape]
    itemsize = draw(st.sampled_from([1, 2, 8]))
    budget = draw(st.integers(itemsize * prod(target), itemsize * prod(target) * 40))
    grid = [-(-n // c) for n, c in zip(shape, source)]
    cells = draw(st.sets(st.tuples(*(st.integers(0, g - 1) for g in grid)), max_size=6))
    return shape, source, target, itemsize, budget, cells


@settings(max_examples=200, deadline=None)
@given(copy_problems())
def test_copy_boxes_cover_the_stored_chunks_within_the_budget(problem):
    from ingest.copies.plan import plan_copy

    shape, source, target, itemsize, budget, cells = problem
    groups = plan_copy(shape, source, target, itemsize, budget, cells)
    covered = set()
    for g in groups:
        assert g.nbytes(itemsize) <= budget
        for a, b, n, t in zip(g.start, g.stop, shape, target):
            assert a % t == 0 and (b % t == 0 or b == n), "whole target chunks"
            assert 0 <= a < b <= n
        box = set(product(*(range(a, b) for a, b in zip(g.start, g.stop))))
        assert not box & covered, "boxes do not overlap"
        covered |= box
        # every box meets a stored chunk
        assert any(all(a < (i + 1) * s and i * s < b for a, b, i, s in zip(g.start, g.stop, c, source))
                   for c in cells)
    for c in cells:  # every stored value is copied
        for point in product(*(range(i * s, min((i + 1) * s, n)) for i, s, n in zip(c, source, shape))):
            assert point in covered


def test_copy_follows_the_data_not_the_grid():
    from ingest.copies.plan import copy_unit, plan_copy

    # the NL grid, 6 dates, data in 2 spatial chunks: 2 boxes (all dates, one source chunk each)
    shape, src, tgt = (6, 30000, 34375), (5, 625, 500), (6, 125, 100)
    cells = {(0, 10, 20), (1, 10, 20), (0, 11, 20)}
    groups = plan_copy(shape, src, tgt, 2, 2 * 10**9, cells)
    assert [(g.start, g.stop) for g in groups] == [((0, 6250, 10000), (6, 6875, 10500)),
                                                   ((0, 6875, 10000), (6, 7500, 10500))]
    assert len(plan_copy(shape, src, tgt, 2, 2 * 10**9, None)) == 48 * 69
    # a tight budget cuts the box into whole target chunks
    assert copy_unit(shape, src, tgt, 2, 1_000_000) == (6, 250, 200)
    with pytest.raises(ConfigError, match="one target chunk"):
        copy_unit(shape, src, tgt, 2, 100_000)
