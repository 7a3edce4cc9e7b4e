"""Installing s2ingest beside the newest xarray, zarr, numcodecs and dask changes none of them
(issue: the current Zarr stack). Needs the package index; skips when it cannot be reached."""
from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STACK = ("zarr", "xarray", "numcodecs", "dask", "numpy")


@pytest.mark.slow
def test_install_beside_the_newest_zarr_stack_changes_none_of_it(tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = str(env / "bin" / "python")
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run([*pip, "install", "--upgrade", *STACK], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"cannot install the newest {', '.join(STACK)} (offline?): {r.stderr[-300:]}")
    freeze = subprocess.run([py, "-m", "pip", "list", "--format", "json"], capture_output=True,
                            text=True, check=True).stdout
    before = {p["name"].lower(): p["version"] for p in json.loads(freeze)}
    report = tmp_path / "report.json"
    r = subprocess.run([*pip, "install", "--dry-run", "--report", str(report), str(REPO)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "s2ingest" in planned
    for name in STACK:
        assert name not in planned, f"installing s2ingest would change {name} " \
                                    f"{before.get(name)} -> {planned[name]}"
