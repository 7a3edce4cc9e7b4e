"""Options shared by every command (the rasterio ``rio/options.py`` habit)."""
from __future__ import annotations

import functools
from typing import Callable

import click

from ..config import Settings, load_settings


def cube_options(func: Callable) -> Callable:
    """Add --store, --db and --config; pass the merged ``Settings`` as ``settings``."""

    @click.option("--store", type=click.Path(file_okay=False), default=None,
                  help="Zarr store of the cube [env S2INGEST_STORE; default ./s2ingest-cube.zarr].")
    @click.option("--db", "db", default=None, metavar="URL",
                  help="Catalog database URL, e.g. postgresql://user@host/db "
                       "[env S2INGEST_DB_URL; default: SQLite file next to the store].")
    @click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                  help="TOML config file [env S2INGEST_CONFIG; default ./s2ingest.toml].")
    @functools.wraps(func)
    def wrapper(*args, store, db, config, **kwargs):
        settings = load_settings({"store": store, "db": db}, config)
        return func(*args, settings=settings, **kwargs)

    return wrapper


def orbit_option(func: Callable) -> Callable:
    return click.option("--orbit", type=click.IntRange(1, 143), default=None,
                        help="Relative orbit of the cube (group /S2/R{orbit:03d}) [default 51].")(func)


def progress_option(func: Callable) -> Callable:
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars on long work.")(func)
