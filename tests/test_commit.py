"""Crash safety of the commit protocol as a tested property (DESIGN.md §5).

Each sync runs as a real ``s2ingest`` process with ``S2INGEST_FAULT`` naming one point of the
commit (``ingest.store.faults``): the process SIGKILLs itself there, exactly as ``kill -9``
would. For appends, insertions, supersedes and late tiles we check what readers see after
the crash, then rerun the same sync and compare cube *and* catalog with one uninterrupted run.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from catalog import default_url_for_store, open_catalog, session_scope
from catalog.models import Product as Row
from catalog.models import Publish, TimeStep
from conftest import D1, D2, D3, GROUP, cli_env, assert_cubes_equal, cube_arrays, written_window
from ingest.store import META_DIR, read_published

S2INGEST = str(Path(sys.executable).with_name("s2ingest"))
pytestmark = pytest.mark.slow

# points before the journal: nothing published changed, readers see the previous version
BEFORE_JOURNAL = ["txn.locked", "stage.chunk", "stage.done", "stage.metadata"]
# the journal is durable (the commit point), no published key switched yet
AT_JOURNAL = ["journal.written"]
# points during the switch: data switched in place; the rerun rolls forward
DURING_SWITCH = ["switch.data", "switch.coords", "switch.metadata"]
# points after a consolidated metadata document is out: the new version is published
# (switch.group-zmetadata@2: the imagery group's; the first one switched, deepest first, is
# that of its quality subgroup /S2/R051/quality)
AFTER_FLIP = ["switch.group-zmetadata@2", "switch.root-zmetadata", "commit.marked",
              "catalog.before-commit"]


def _cli(*args: str, fault: str | None = None, config: Path) -> subprocess.CompletedProcess:
    env = cli_env(**({"S2INGEST_FAULT": fault} if fault else {}))
    return subprocess.run([S2INGEST, *args, "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=600)


def _sync(store: Path, source: Path, config: Path, fault: str | None = None):
    store.parent.mkdir(parents=True, exist_ok=True)
    return _cli("sync", "--store", str(store), "--source", str(source), "--no-progress",
                fault=fault, config=config)


def _folder(paths, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / p.name).symlink_to(p)
    return folder


def catalog_rows(store: Path) -> dict:
    """What the catalog says, without ids, times and worker names (they differ run to run)."""
    engine = open_catalog(default_url_for_store(store), create=False)
    with session_scope(engine) as s:
        products = sorted((r.name, r.state) for r in s.scalars(select(Row)))
        steps = sorted((t.group_path, t.time.replace(tzinfo=None), t.platform, t.datatake_id)
                       for t in s.scalars(select(TimeStep)))
        publishes = sorted((p.group_path, p.version) for p in s.scalars(select(Publish)))
        leases = [r.name for r in s.scalars(select(Row).where(Row.lease_owner.is_not(None)))]
    engine.dispose()
    return {"products": products, "time_steps": steps, "publishes": publishes, "leases": leases}


SCENARIOS = {
    # name: (published before, arriving)
    "append": ([(D1, "31UET"), (D1, "31UFT")], [(D3, "31UET"), (D3, "31UFT")]),
    "insertion": ([(D1, "31UET"), (D1, "31UFT"), (D3, "31UET"), (D3, "31UFT")],
                  [(D2, "31UET"), (D2, "31UFT")]),
    "late-tile": ([(D1, "31UET"), (D3, "31UET")], [(D1, "31UFT")]),
}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory, products, empty_config):
    """Per scenario: the base cube (with catalog) and the result of one uninterrupted sync."""
    out = {}
    for name, (before, arriving) in SCENARIOS.items():
        root = tmp_path_factory.mktemp(name)
        base_src = _folder([products.scene[k] for k in before], root / "before")
        new_src = _folder([products.scene[k] for k in arriving], root / "arriving")
        base = root / "base" / "cube.zarr"
        assert _sync(base, base_src, empty_config).returncode == 0
        done = root / "done" / "cube.zarr"
        shutil.copytree(base.parent, done.parent, symlinks=True)
        r = _sync(done, new_src, empty_config)
        assert r.returncode == 0, r.stderr
        out[name] = (base, new_src, done)
    sup_root = tmp_path_factory.mktemp("supersede")
    old_twin, new_twin = products.twins
    base_src = _folder([old_twin, products.scene[(D1, "31UET")]], sup_root / "before")
    new_src = _folder([new_twin], sup_root / "arriving")
    base = sup_root / "base" / "cube.zarr"
    assert _sync(base, base_src, empty_config).returncode == 0
    done = sup_root / "done" / "cube.zarr"
    shutil.copytree(base.parent, done.parent, symlinks=True)
    assert _sync(done, new_src, empty_config).returncode == 0
    out["supersede"] = (base, new_src, done)
    return out


def _crash_and_rerun(tmp_path: Path, scenario, point: str, config: Path):
    base, source, done = scenario
    store = tmp_path / "cube" / "cube.zarr"
    shutil.copytree(base.parent, store.parent, symlinks=True)
    window = written_window(base, done)
    r = _sync(store, source, config, fault=point)
    assert r.returncode == -9, f"not killed at {point}: rc {r.returncode}\n{r.stderr}"
    view = cube_arrays(store, window)
    state = read_published(store, GROUP)
    r = _sync(store, source, config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (store / META_DIR / "txn").exists()
    assert_cubes_equal(store, done)
    assert read_published(store, GROUP).times == read_published(done, GROUP).times
    assert read_published(store, GROUP).version == read_published(done, GROUP).version
    assert catalog_rows(store) == catalog_rows(done)
    return view, state, window


@pytest.mark.parametrize("point", BEFORE_JOURNAL + AT_JOURNAL + DURING_SWITCH + AFTER_FLIP)
def test_insertion_killed_at_every_step(tmp_path, scenarios, point, empty_config):
    base, _, done = scenarios["insertion"]
    view, state, window = _crash_and_rerun(tmp_path, scenarios["insertion"], point, empty_config)
    if point in BEFORE_JOURNAL + AT_JOURNAL:  # readers see exactly the previous version
        before = cube_arrays(base, window)
        assert state == read_published(base, GROUP)
        for name in before:
            assert np.array_equal(view[name], before[name]), f"{name} changed before the commit"
    if point in AFTER_FLIP:  # the new version is out and stays out
        assert state.times == read_published(done, GROUP).times
        after = cube_arrays(done, window)
        for name in after:
            assert np.array_equal(view[name], after[name]), f"{name}: the published version is incomplete"


@pytest.mark.parametrize("scenario", ["append", "late-tile", "supersede"])
@pytest.mark.parametrize("point", ["stage.chunk", "journal.written", "switch.data", "switch.metadata",
                                   "switch.root-zmetadata", "catalog.before-commit"])
def test_other_writes_killed_at_the_main_steps(tmp_path, scenarios, scenario, point, empty_config):
    base, _, done = scenarios[scenario]
    view, state, window = _crash_and_rerun(tmp_path, scenarios[scenario], point, empty_config)
    if point in BEFORE_JOURNAL + AT_JOURNAL or (scenario == "append" and point in DURING_SWITCH):
        # an append changes nothing readers of the previous metadata can see, even mid-switch
        before = cube_arrays(base, window)
        assert state.times == read_published(base, GROUP).times
        for name in before:
            want, got = before[name], view[name]
            if got.ndim == 3 or name in ("x", "y", "spatial_ref"):
                got = got[: want.shape[0]] if got.ndim else got
            assert np.array_equal(got, want), f"{name} changed for readers of the previous version"


@pytest.mark.parametrize("fault", ["stage.chunk=enospc", "stage.chunk@40=enospc",
                                   "stage.metadata=enospc", "journal.write=enospc"])
def test_a_full_disk_at_any_write_rolls_back(tmp_path, scenarios, fault, empty_config):
    """A disk that fills up while chunks, metadata or the journal are written: exit 6 with
    one message, nothing published changed, nothing left staged, claims given back."""
    base, source, done = scenarios["insertion"]
    store = tmp_path / "cube" / "cube.zarr"
    shutil.copytree(base.parent, store.parent, symlinks=True)
    window = written_window(base, done)
    before_files = {p.relative_to(store) for p in store.rglob("*") if META_DIR not in p.parts}
    r = _sync(store, source, empty_config, fault=fault)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "No space left on device" in r.stderr and "nothing was published" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (store / META_DIR / "txn").exists(), "the staged writes were left behind"
    assert {p.relative_to(store) for p in store.rglob("*") if META_DIR not in p.parts} == before_files
    before = cube_arrays(base, window)
    view = cube_arrays(store, window)
    for name in before:
        assert np.array_equal(view[name], before[name]), name
    assert catalog_rows(store)["leases"] == []
    r = _sync(store, source, empty_config)
    assert r.returncode == 0, r.stderr
    assert_cubes_equal(store, done)
    assert catalog_rows(store) == catalog_rows(done)


@pytest.fixture(scope="module")
def layer_case(tmp_path_factory, scenarios, empty_config):
    """A cube, a municipalities file, and the cube after one uninterrupted `layers add`."""
    from ingest.layers import synth

    root = tmp_path_factory.mktemp("layer")
    g, f = synth.municipalities((80_000, 425_000, 100_000, 445_000))
    vec = synth.write_vector(root / "gemeenten.gpkg", g, f)
    base = scenarios["append"][0]
    done = root / "done" / "cube.zarr"
    shutil.copytree(base.parent, done.parent, symlinks=True)
    r = _cli("layers", "add", "--store", str(done), "--group", "NL", "--edition", "2023",
             "--attribute", "statcode", str(vec), config=empty_config)
    assert r.returncode == 0, r.stderr
    return base, vec, done


def _layer_view(store: Path) -> dict:
    import xarray as xr

    ds = xr.open_zarr(store, group="/NL", consolidated=True, mask_and_scale=False)
    return {k: v.values for k, v in ds.data_vars.items()} | {"edition": ds.edition.values}


@pytest.mark.parametrize("point", ["stage.chunk", "journal.written", "switch.data",
                                   "switch.group-zmetadata", "switch.root-zmetadata"])
def test_layers_add_killed_at_the_main_steps(tmp_path, layer_case, point, empty_config):
    base, vec, done = layer_case
    store = tmp_path / "cube" / "cube.zarr"
    shutil.copytree(base.parent, store.parent, symlinks=True)
    args = ("layers", "add", "--store", str(store), "--group", "NL", "--edition", "2023",
            "--attribute", "statcode", str(vec))
    r = _cli(*args, fault=point, config=empty_config)
    assert r.returncode == -9, r.stderr
    if point in ("stage.chunk", "journal.written"):  # nothing published yet
        meta = (store / ".zmetadata").read_text()
        assert '"NL/.zgroup"' not in meta
    r = _cli(*args, config=empty_config)  # completes (or finds it done), whatever the crash point
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (store / META_DIR / "txn").exists()
    got, want = _layer_view(store), _layer_view(done)
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    assert_cubes_equal(store, done)  # the imagery is untouched
