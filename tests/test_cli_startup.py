"""The command line starts without the heavy libraries (issue 21): commands are loaded on first
use (``ingest.cli.main.COMMANDS``) and import numpy, xarray, zarr, rasterio, dask, ... inside
their functions. Checked on the modules a fresh interpreter has loaded, not on a timing (the
time and memory are measured by ``python -m ingest.benchmarks.startup``)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "pandas", "xarray", "zarr", "numcodecs", "rasterio", "pyproj", "dask", "distributed",
         "cv2", "sqlalchemy", "alembic", "matplotlib", "pyarrow", "h3", "fastapi", "uvicorn", "boto3",
         "rio_tiler", "morecantile", "rioxarray", "shapely", "pyogrio", "netCDF4", "requests", "tqdm",
         "pystac", "affine", "sentinelsat", "psycopg", "psycopg2")

PROBE = """
import json, sys
from ingest.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="s2ingest", standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def loaded_by(*argv: str, cwd=None) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True,
                         cwd=cwd)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


# what reading a cube's catalog, bookkeeping and time coordinates needs; nothing else
READ_ONLY_MAY_LOAD = {"sqlalchemy", "numpy", "numcodecs", "affine", "tqdm"}


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    """A cube with one published time step and its SQLite catalog beside it."""
    from click.testing import CliRunner

    from hub_fixtures import T1, make_products
    from ingest.cli.main import cli

    tmp = tmp_path_factory.mktemp("startup")
    make_products(tmp / "products", times=(T1,), tiles=("31UET",))
    store = tmp / "cube.zarr"
    r = CliRunner().invoke(cli, ["sync", "--store", str(store), "--orbit", "51", "--no-progress",
                                 "--source", str(tmp / "products")], env={"HOME": str(tmp)})
    assert r.exit_code == 0, r.output
    return store


@pytest.mark.parametrize("command", ["status", "verify"])
def test_read_only_commands_on_a_cube_load_no_writer_library(small_cube, command):
    loaded = loaded_by(command, "--store", str(small_cube), cwd=small_cube.parent)
    assert "ingest" in loaded
    heavy = loaded & set(HEAVY) - READ_ONLY_MAY_LOAD
    assert not heavy, f"s2ingest {command} of a small cube imported {sorted(heavy)}"


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["verify", "--help"],
                                  ["sync", "--help"], ["--version"]])
def test_help_imports_no_heavy_library(argv):
    heavy = loaded_by(*argv) & set(HEAVY)
    assert not heavy, f"s2ingest {' '.join(argv)} imported {sorted(heavy)}"


def test_every_registered_command_loads_and_is_listed():
    from ingest.cli.main import COMMANDS, cli

    assert cli.list_commands(None) == list(COMMANDS)
    for name in COMMANDS:
        assert cli.get_command(None, name).name == name


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("Usage: s2ingest")


# a whole copy reads bookkeeping and copies bytes: no array library, no pipeline, and no
# database library when the copy has no catalog beside it
MIRROR_MAY_LOAD = READ_ONLY_MAY_LOAD - {"sqlalchemy"}


def test_a_whole_mirror_loads_no_array_library_and_no_catalog_it_does_not_need(small_cube, tmp_path):
    copy = tmp_path / "copy.zarr"
    loaded = loaded_by("mirror", str(small_cube), str(copy), "--no-progress", cwd=tmp_path)
    assert (copy / ".zmetadata").is_file()
    heavy = loaded & set(HEAVY) - MIRROR_MAY_LOAD
    assert not heavy, f"s2ingest mirror of a small cube imported {sorted(heavy)}"
