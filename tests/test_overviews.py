"""Multiscale overviews: levels equal a coarsening computed by hand, through build, append and
insertion; the multiscales attributes; one commit per publish (the manifest covers them)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from conftest import D1, D2, D3, GROUP, cli_env, ingest, new_cube, open_group
from ingest.overviews import halve, level_factors
from ingest.store import CubeStore
from ingest.variables import VARIABLES

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
CHECKED = ("B04", "B08", "SCL", "CLD", "AOT")


# -- the reduction itself, against a per-pixel reference ----------------------------------------
def _ref_mean(a: np.ndarray, fill) -> np.ndarray:
    """Mean of valid values per 2 x 2 block, rounded half up (numpy masked arrays)."""
    h, w = a.shape[-2:]
    a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)], constant_values=fill)
    lead = a.shape[:-2]
    m = np.ma.masked_equal(a.astype("f8"), fill).reshape(*lead, a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)
    mean = m.mean(axis=(-3, -1))
    return np.where(np.ma.getmaskarray(mean), fill, np.floor(mean.filled(0) + 0.5)).astype(a.dtype)


def _ref_mode(a: np.ndarray, fill, n: int = 3000, seed: int = 0):
    """(sample positions, expected values): the most frequent valid class, lowest on ties."""
    h, w = a.shape[-2:]
    rng = np.random.default_rng(seed)
    t = rng.integers(0, a.shape[0], n)
    r = rng.integers(0, -(-h // 2), n)
    c = rng.integers(0, -(-w // 2), n)
    exp = []
    for ti, ri, ci in zip(t, r, c):
        vals = [int(v) for v in a[ti, 2 * ri:2 * ri + 2, 2 * ci:2 * ci + 2].ravel() if v != fill]
        if not vals:
            exp.append(fill)
            continue
        counts = Counter(vals)
        top = max(counts.values())
        exp.append(min(v for v, k in counts.items() if k == top))
    return (t, r, c), np.array(exp)


def test_halve_matches_a_per_pixel_reference():
    rng = np.random.default_rng(1)
    refl = rng.integers(0, 6, (2, 7, 9)).astype("u2")  # many zeros (fill), ragged edges
    assert np.array_equal(halve(refl, "mean", 0), _ref_mean(refl, 0))
    cld = rng.choice(np.array([0, 3, 100, 255], dtype="u1"), (2, 6, 5))
    assert np.array_equal(halve(cld, "mean", 255), _ref_mean(cld, 255))
    scl = rng.integers(0, 5, (3, 9, 8)).astype("u1")
    (t, r, c), exp = _ref_mode(scl, 0, n=500)
    assert np.array_equal(halve(scl, "mode", 0)[t, r, c], exp)
    # a tie goes to the lowest class, fill never wins, an all-fill block stays fill
    block = np.array([[[4, 8], [8, 4]]], dtype="u1")
    assert halve(block, "mode", 0)[0, 0, 0] == 4
    assert halve(np.array([[[0, 0], [0, 9]]], dtype="u1"), "mode", 0)[0, 0, 0] == 9
    assert halve(np.zeros((1, 2, 2), "u2"), "mean", 0)[0, 0, 0] == 0


# -- on a real cube ---------------------------------------------------------------------------
def _data_window(store, native: zarr.Group, align: int) -> tuple[slice, slice]:
    """Native rows/cols covering every stored B04 chunk, widened to multiples of ``align``."""
    cy, cx = native["B04"].chunks[1:]
    rows, cols = set(), set()
    for p in (store / GROUP / "B04").iterdir():
        if not p.name.startswith("."):
            _, iy, ix = (int(v) for v in p.name.split("."))
            rows.add(iy)
            cols.add(ix)
    r0 = (min(rows) * cy) // align * align
    r1 = -(-((max(rows) + 1) * cy) // align) * align
    c0 = (min(cols) * cx) // align * align
    c1 = -(-((max(cols) + 1) * cx) // align) * align
    return slice(r0, r1), slice(c0, c1)


def assert_levels_equal_coarsening(store) -> None:
    native = open_group(store)
    shape = native["B04"].shape[1:]
    factors = level_factors(shape)
    rows, cols = _data_window(store, native, factors[-1])
    times = native["time"][:]
    for var in CHECKED:
        fill = VARIABLES[var].fill_value
        ref = native[var][:, rows, cols]
        for f in factors:
            ds = xr.open_zarr(store, group=f"{GROUP}/overviews/{f}", consolidated=True,
                              mask_and_scale=False)
            assert ds[var].dims == ("time", "y", "x")
            assert np.array_equal(ds["time"].values.astype("datetime64[ms]").astype("i8"), times)
            lev = ds[var][:, rows.start // f:rows.stop // f, cols.start // f:cols.stop // f].values
            if VARIABLES[var].kind == "classes":
                prev = ref
                (t, r, c), exp = _ref_mode(prev, fill)
                ref = halve(prev, "mode", fill)  # the chain goes on from the checked level
                assert np.array_equal(lev[t, r, c], exp), f"{var} level {f}"
                assert np.array_equal(lev, ref), f"{var} level {f}"
            else:
                ref = _ref_mean(ref, fill)
                assert np.array_equal(lev, ref), f"{var} level {f}"
            # the level stores no chunk outside the data window
            cy, cx = ds[var].encoding["chunks"][1:]
            for p in (store / GROUP / "overviews" / str(f) / var).iterdir():
                if not p.name.startswith("."):
                    _, iy, ix = (int(v) for v in p.name.split("."))
                    assert rows.start // f < (iy + 1) * cy and iy * cy < rows.stop // f
                    assert cols.start // f < (ix + 1) * cx and ix * cx < cols.stop // f
            x0 = ds["x"].values[0]
            assert x0 == pytest.approx(native["x"][0] - 5 + 5 * f)


@pytest.fixture(scope="module")
def cube_with_overviews(tmp_path_factory, products):
    cube = new_cube(tmp_path_factory.mktemp("ov") / "cube.zarr")
    ingest(cube, [products.scene[(D2, "31UFT")]], products)
    r = subprocess.run([S2INGEST, "overviews", "--store", str(cube.path),
                        "--no-progress"], env=cli_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "store version 2" in r.stdout
    return cube


def test_overviews_command_builds_levels_that_equal_a_hand_coarsening(cube_with_overviews):
    store = cube_with_overviews.path
    attrs = json.loads((store / GROUP / "overviews" / ".zattrs").read_text())
    layout = attrs["multiscales"]["layout"]
    factors = level_factors(open_group(store)["B04"].shape[1:])
    assert [e["asset"] for e in layout] == [str(f) for f in factors]
    assert factors[-1] == 128  # NL: 34375 x 30000 -> 269 x 235
    assert layout[1]["derived_from"] == "2" and layout[1]["transform"]["scale"] == [2.0, 2.0]
    assert layout[0]["spatial:transform"] == [20.0, 0.0, 0.0, 0.0, -20.0, 643750.0]
    assert any(c["name"] == "multiscales" for c in attrs["zarr_conventions"])
    assert_levels_equal_coarsening(store)
    # the levels are part of the version: the manifest lists their keys
    manifest = CubeStore.open(store).manifest()
    assert any(k.startswith(f"{GROUP}/overviews/2/B04/") for k in manifest["changes"])


@pytest.mark.slow
def test_levels_follow_an_append_and_an_insertion_in_the_same_commit(cube_with_overviews, products):
    cube = cube_with_overviews
    _, report = ingest(cube, [products.scene[(D3, "31UFT")]], products)
    changed = report.commit.changes
    assert any(k.startswith(f"{GROUP}/overviews/128/") for k in changed)
    assert_levels_equal_coarsening(cube.path)
    # an older datatake: every published step moves one place later, levels included
    _, report = ingest(cube, [products.scene[(D1, "31UFT")]], products)
    assert open_group(cube.path)["time"].shape == (3,)
    assert_levels_equal_coarsening(cube.path)
    ds = xr.open_zarr(cube.path, group=f"{GROUP}/overviews/4", consolidated=True)
    assert ds.sizes["time"] == 3


def test_a_cube_without_overviews_gets_none_at_publish(tmp_path, products):
    cube = new_cube(tmp_path / "plain.zarr")
    ingest(cube, [products.scene[(D2, "31UFT")]], products)
    assert not (cube.path / GROUP / "overviews").exists()
