"""Every third-party module that ``ingest/``, ``catalog/`` and ``s2ingest/`` import is declared
in pyproject.toml (issue 21), and what is installed satisfies the declared floors."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTION = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "rio_tiler": "rio-tiler", "PIL": "pillow",
                "psycopg": "psycopg", "dateutil": "python-dateutil", "odc": "odc-stac"}
OWN = {"ingest", "catalog", "s2ingest"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return {_norm(r.name): r for r in reqs}


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (lazy imports included)."""
    found: dict[str, set[str]] = {}
    for base in OWN:
        for path in (ROOT / base).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in OWN and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


# optional extras whose libraries the code imports (lazily, refusing the options that need
# them with one line naming the extra when they are missing)
IMPORTED_EXTRAS = ("cluster", "bench")


def test_every_import_is_declared():
    deps = declared(*IMPORTED_EXTRAS)
    missing = {m: sorted(files)[:3] for m, files in imported_modules().items()
               if _norm(DISTRIBUTION.get(m, m)) not in deps}
    assert not missing, f"imported but not declared in [project.dependencies]: {missing}"


def test_distributed_is_an_extra_and_its_options_say_so(tmp_path):
    # installed without the cluster extra: sync and rechunk on a cluster are refused before any work
    import subprocess

    assert "distributed" not in declared() and "distributed" in declared("cluster")
    (tmp_path / "products").mkdir()
    probe = ("import sys; sys.modules['distributed'] = None\n"
             "from ingest.cli.main import cli\n"
             "cli.main(args=sys.argv[1:], prog_name='s2ingest')\n")
    for argv in (["sync", "--store", "cube.zarr", "--orbit", "51", "--source", "products",
                  "--local-cluster", "2", "--no-progress"],
                 ["sync", "--store", "cube.zarr", "--orbit", "51", "--source", "products",
                  "--scheduler", "tcp://127.0.0.1:1", "--no-progress"],
                 ["rechunk", "cube.zarr", "copy.zarr", "--chunks", "time=-1",
                  "--scheduler", "tcp://127.0.0.1:1"]):
        r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                           cwd=tmp_path, env={**__import__("os").environ, "HOME": str(tmp_path)})
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 3 and len(lines) == 1, r.stderr
        assert 's2ingest[cluster]' in lines[0] and "distributed" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["products"]  # nothing created


def test_the_driver_of_postgresql_urls_is_the_declared_one():
    from catalog.urls import normalize_url

    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert "psycopg" in declared("postgres")


@pytest.mark.parametrize("name,req", sorted(declared("test", "postgres").items()))
def test_installed_versions_satisfy_the_floors(name, req):
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{req} does not apply here")
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{req} is declared but not installed")
    assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {req}"
