"""Helpers shared by tests/test_cli.py and tests/test_sync_hubs.py (not a conftest: imported).

Small synthetic products (two tiles of two datatakes, 180x360 px windows that overlap by 2 km
between 31UET and 31UFT), a CliRunner wrapper that keeps stderr apart, and snapshots of the
store files and catalog rows for "no damage" assertions.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

UTC = timezone.utc
T1 = datetime(2023, 6, 14, 10, 56, 21, tzinfo=UTC)
T2 = datetime(2023, 6, 19, 10, 56, 21, tzinfo=UTC)
# DESIGN CHOICE: 180x360 px instead of 600x1200: a sync of four products then takes ~3 s, so
# the whole CLI + hub suite stays within its time budget; the windows still overlap (x 600..602 km
# in UTM 31N), so mosaicking across tiles is exercised.
WINDOWS = {"31UET": (5400, 9840, 180, 360), "31UFT": (5400, 0, 180, 360)}
GROUP = "S2/R051"


def make_products(out_dir: Path, times=(T1, T2), tiles=("31UET", "31UFT"), **kw) -> list[Path]:
    from ingest.synth import make_product

    out_dir.mkdir(parents=True, exist_ok=True)
    return [make_product(out_dir, tile=t, datatake_start=when, window=WINDOWS[t], as_zip=True, **kw)
            for when in times for t in tiles]


def name_of(path: Path) -> str:
    return path.name.removesuffix(".zip").removesuffix(".SAFE")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No config file, env var or ./s2ingest.toml of the developer leaks into a test."""
    import os

    for key in list(os.environ):
        if key.startswith("S2INGEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture()
def fast_retries(monkeypatch):
    """Hub retries keep their logic and count, but wait milliseconds instead of seconds."""
    from ingest.sources.download import RetryPolicy

    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, failures: 0.01)
    monkeypatch.setattr(RetryPolicy, "max_retry_after", 0.01)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """``s2ingest ARGS`` in-process; stdout and stderr kept apart."""
    from ingest.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def sync_args(store: Path, *more) -> list:
    return ["sync", "--store", store, "--orbit", "51", "--no-progress", *more]


def store_snapshot(store: Path) -> dict[str, str]:
    """Every file of the store with its sha256 (byte-identity of the store)."""
    if not store.exists():
        return {}
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def catalog_rows(db_url: str) -> dict[str, dict]:
    """name -> every column of the product row (for 'no rows changed' and state checks)."""
    from sqlalchemy import select

    from catalog import Product, open_catalog, session_scope

    engine = open_catalog(db_url, create=False)
    try:
        with session_scope(engine) as s:
            return {p.name: {c.name: getattr(p, c.name) for c in Product.__table__.columns}
                    for p in s.scalars(select(Product))}
    finally:
        engine.dispose()


def catalog_url(store: Path) -> str:
    from catalog import default_url_for_store

    return default_url_for_store(store)


def states(store: Path, db_url: str | None = None) -> dict[str, str]:
    return {n: r["state"] for n, r in catalog_rows(db_url or catalog_url(store)).items()}


def set_due_now(store: Path, db_url: str | None = None) -> None:
    """Time passes: every product waiting for a retry is due now."""
    from sqlalchemy import update

    from catalog import Product, open_catalog, session_scope

    engine = open_catalog(db_url or catalog_url(store), create=False)
    try:
        with session_scope(engine) as s:
            s.execute(update(Product).values(next_attempt_at=None))
    finally:
        engine.dispose()


@dataclass
class Written:
    """The cube as xarray decodes it, cut to the area any product wrote (chunk bounding box)."""

    ds: object  # xarray.Dataset (subset)
    chunk_keys: dict[str, set[str]]


def written_cube(store: Path, group: str = GROUP) -> Written:
    import xarray as xr

    ds = xr.open_zarr(store, group=group, consolidated=True)
    root = store / group
    keys = {v: {p.name for p in (root / v).iterdir() if not p.name.startswith(".")}
            for v in ds.data_vars}
    b02 = ds["B02"]
    cy, cx = b02.encoding["chunks"][1:]
    idx = np.array([[int(i) for i in k.split(".")[1:]] for k in keys["B02"]])
    assert len(idx), "no chunk written"
    ys = slice(idx[:, 0].min() * cy, (idx[:, 0].max() + 1) * cy)
    xs = slice(idx[:, 1].min() * cx, (idx[:, 1].max() + 1) * cx)
    return Written(ds.isel(y=ys, x=xs).load(), keys)


def assert_same_cube(a: Path, b: Path) -> None:
    """Same chunks written, same decoded values of every variable, same coordinates."""
    import xarray as xr

    wa, wb = written_cube(a), written_cube(b)
    assert wa.chunk_keys == wb.chunk_keys
    assert set(wa.ds.data_vars) == set(wb.ds.data_vars)
    assert set(wa.ds.coords) == set(wb.ds.coords)
    for name in wa.ds.coords:
        np.testing.assert_array_equal(wa.ds[name].values, wb.ds[name].values, err_msg=name)
    for name in wa.ds.data_vars:
        np.testing.assert_array_equal(wa.ds[name].values, wb.ds[name].values, err_msg=name)
        assert int(np.isfinite(wa.ds[name].values).sum()) > 0, f"{name}: nothing written"
    xr.testing.assert_identical(wa.ds, wb.ds)


def copy_products(paths, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy2(p, dest / p.name)
    return dest
