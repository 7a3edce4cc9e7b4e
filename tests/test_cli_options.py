"""The shared options of the command line (``ingest.cli.options``) and its exit codes
(``ingest.cli.exits``): every command that takes --bbox, --bbox-crs, --time, --variables or
--store parses and checks them the same way, and a bad value ends the same way everywhere:
exit 3 and one line ``s2ingest: error: ...`` on stderr, before anything is opened or computed.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hub_fixtures import isolated_env, run

__all__ = ["isolated_env"]  # autouse fixture

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[1]


def commands_with_bbox(tmp: Path) -> dict[str, list[str]]:
    """Each command that takes --bbox, with its other required arguments (nothing exists)."""
    store = str(tmp / "none.zarr")
    return {
        "mirror": ["mirror", store, str(tmp / "copy.zarr")],
        "rechunk": ["rechunk", store, str(tmp / "r.zarr"), "--chunks", "time=1"],
        "export": ["export", store, str(tmp / "x.tif"), "--time", "2023-06-14"],
        "quality": ["quality", "--store", store],
        "stats": ["stats", "--store", store, "--by", "NL/municipality", "--edition", "2023",
                  "--out", str(tmp / "s.csv")],
    }


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s2ingest: error: "), lines[0]
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["mirror", "rechunk", "export", "quality", "stats"])
def test_bad_bbox_and_crs_are_one_line_and_exit_3_everywhere(tmp_path, command):
    args = commands_with_bbox(tmp_path)[command]
    unknown_crs = run(*args, "--bbox-crs", "EPSG:99999", "--bbox", "1,2,3,4")
    malformed = run(*args, "--bbox", "1,2,3")
    assert unknown_crs.exit_code == malformed.exit_code == 3
    assert "--bbox-crs 'EPSG:99999'" in one_line(unknown_crs)
    assert "--bbox '1,2,3'" in one_line(malformed)
    for bad in ("4,2,3,5", "1,2,3,x", "1,2,3,4,5"):  # left >= right, not numbers, five numbers
        r = run(*args, "--bbox", bad)
        assert r.exit_code == 3 and f"--bbox '{bad}'" in one_line(r)
    r = run(*args, "--bbox-crs", "EPSG:4326")
    assert r.exit_code == 3 and "--bbox-crs needs --bbox" in one_line(r)
    assert not any(p.name != "home" for p in tmp_path.iterdir()), "nothing may be created"


@pytest.mark.parametrize("command", ["mirror", "rechunk", "export", "quality", "stats", "report"])
def test_bad_time_is_one_line_and_exit_3_everywhere(tmp_path, command):
    args = {**commands_with_bbox(tmp_path), "report": ["report", "--store", str(tmp_path / "none.zarr")]}[command]
    args = [a for a in args if a not in ("--time", "2023-06-14")]
    for bad in ("2023-13-01", "14/06/2023", "2023-06-30/2023-06-01"):
        r = run(*args, "--time", bad)
        assert r.exit_code == 3 and f"--time '{bad}'" in one_line(r)


@pytest.mark.parametrize("command", ["mirror", "rechunk", "export"])
def test_bad_variables_are_one_line_and_exit_3_everywhere(tmp_path, command):
    args = commands_with_bbox(tmp_path)[command]
    for bad in (",", "B04;B08"):
        r = run(*args, "--variables", bad)
        assert r.exit_code == 3 and f"--variables '{bad}'" in one_line(r)


def test_stats_takes_the_shared_area_and_time_options():
    r = run("stats", "--help")
    assert r.exit_code == 0
    for option in ("--bbox L,B,R,T", "--bbox-crs CRS", "--time START/END"):
        assert option in r.output
    assert "--start" not in r.output and "--end" not in r.output


def test_stats_refuses_a_bad_output_before_computing(tmp_path, monkeypatch):
    """#20 item 12: `stats --out s.xlsx` fails at once, before any cube is read."""
    import ingest.layers.stats as stats_mod

    def must_not_run(*args, **kwargs):
        raise AssertionError("the statistics were computed before the output was checked")

    monkeypatch.setattr(stats_mod, "cube_stats", must_not_run)
    monkeypatch.setattr(stats_mod, "open_layer", must_not_run)
    base = ["stats", "--store", str(tmp_path / "cube.zarr"), "--by", "NL/municipality", "--edition", "2023"]
    r = run(*base, "--out", str(tmp_path / "s.xlsx"))
    assert r.exit_code == 3 and "s.xlsx" in one_line(r)
    r = run(*base, "--out", str(tmp_path / "no-such-folder" / "s.csv"))
    assert r.exit_code == 3 and "no-such-folder" in one_line(r)


def test_serve_takes_store_as_option_or_argument(tmp_path, monkeypatch):
    import ingest.serve as serve_mod
    from ingest.errors import ConfigError

    served = []

    def fake_app(location):
        served.append(location)
        raise ConfigError(f"stopping before listening on {location}")

    monkeypatch.setattr(serve_mod, "create_app", fake_app)
    where = str(tmp_path / "cube.zarr")
    assert run("serve", "--store", where, "--port", "0").exit_code == 3
    assert run("serve", where, "--port", "0").exit_code == 3  # the positional, as before
    monkeypatch.setenv("S2INGEST_STORE", where)
    assert run("serve", "--port", "0").exit_code == 3
    assert served == [where, where, where]
    (tmp_path / "file.zarr").write_text("not a cube")
    r = run("serve", "--store", str(tmp_path / "file.zarr"))
    assert r.exit_code == 6 and "is a file" in one_line(r)


def test_one_time_parser():
    from ingest.cli.options import parse_time_range, parse_when

    day = (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=UTC))
    assert parse_time_range("2024-05-01") == day
    assert parse_time_range("2024-05-01/2024-05-01") == day
    assert parse_time_range("2024-04-01/") == (datetime(2024, 4, 1, tzinfo=UTC), None)
    assert parse_time_range("/2024-04-30")[0] is None
    assert parse_time_range("/2024-04-30")[1].date().isoformat() == "2024-04-30"
    t = datetime(2024, 5, 1, 10, 56, 21, tzinfo=UTC)
    assert parse_time_range("2024-05-01T10:56:21") == (t, t)
    assert parse_when("2024-05-01T12:56:21+02:00") == t  # an offset is converted to UTC
    assert parse_when("2024-05-01T10:56:21Z") == t
    assert parse_when("2024-05-01", end=True) == day[1]


def test_exit_codes_have_one_table_and_sync_does_not_import_main():
    from ingest.cli import exits
    from ingest.errors import (
        CatalogError, ConfigError, GridMismatchError, HubError, LayerError, ProductError, S2IngestError,
        StoreError, UnknownVariableError,
    )

    want = {ConfigError: 3, UnknownVariableError: 3, ProductError: 4, HubError: 5, GridMismatchError: 6,
            StoreError: 6, CatalogError: 7, LayerError: 8, S2IngestError: 1}
    for kind, code in want.items():
        assert exits.exit_code_for(kind.__new__(kind)) == code
    assert (exits.EXIT_MISMATCH, exits.EXIT_PARTIAL, exits.EXIT_INTERRUPTED) == (9, 10, 130)
    code = "import sys, ingest.cli.sync, ingest.cli.verify; assert 'ingest.cli.main' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_command_line():
    """Commits are recorded by the library (ingest.publish.record), the CLI only composes:
    nothing outside ingest/cli (the demo included) imports from it."""
    for path in (ROOT / "ingest").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "ingest").parts[:1] or "benchmarks" in path.parts:
            continue
        bad = {m for m in _imports(path) if m == "ingest.cli" or m.startswith("ingest.cli.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    assert (ROOT / "ingest" / "cli" / "exits.py").exists()
    assert not (ROOT / "ingest" / "cli" / "copyopts.py").exists()
