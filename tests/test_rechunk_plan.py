"""The rechunk planner is pure: every stage fits in --max-mem, reads are whole source chunks,
writes whole target chunks (hypothesis)."""
from __future__ import annotations

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
