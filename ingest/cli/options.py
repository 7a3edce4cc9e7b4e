"""Options shared by every command (the rasterio ``rio/options.py`` habit)."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import click

from ..config import Settings, load_settings


def cube_options(func: Callable) -> Callable:
    """Add --store, --db, --s3-endpoint and --config; pass the merged ``Settings`` as ``settings``.

    The store path is checked the same way whatever set it (option, environment, config
    file): a file or a folder of other files is refused (exit 6) before anything is created.
    """

    @click.option("--store", type=click.Path(), default=None,
                  help="Zarr store of the cube: a folder or s3://bucket/prefix/nl.zarr "
                       "[env S2INGEST_STORE; default ./s2ingest-cube.zarr].")
    @click.option("--s3-endpoint", "s3_endpoint", default=None, metavar="URL",
                  help="S3-compatible server of an s3:// store, e.g. http://minio:9000 "
                       "[env S2INGEST_S3_ENDPOINT or AWS_ENDPOINT_URL; default: AWS].")
    @click.option("--db", "db", default=None, metavar="URL",
                  help="Catalog database URL, e.g. postgresql://user@host/db "
                       "[env S2INGEST_DB_URL; default: SQLite file next to the store].")
    @click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                  help="TOML config file [env S2INGEST_CONFIG; default ./s2ingest.toml].")
    @functools.wraps(func)
    def wrapper(*args, store, db, config, s3_endpoint, **kwargs):
        from ..store.cube import check_location

        settings = load_settings({"store": store, "db": db, "s3_endpoint": s3_endpoint}, config)
        if settings.s3_endpoint:
            # DESIGN CHOICE: exported for this process, so every S3 client in it (boto3 for
            # the store, s3fs under xarray for `stats`) talks to the same server.
            os.environ["AWS_ENDPOINT_URL_S3"] = settings.s3_endpoint
        check_location(settings.store)  # a file or a folder of other files: exit 6, nothing created
        return func(*args, settings=settings, **kwargs)

    return wrapper


def open_existing_catalog(settings: Settings):
    """The cube's catalog for a read-only command; never creates one (points at ``init``)."""
    from catalog import open_existing_catalog as open_existing

    return open_existing(settings.db_url,
                         hint=f"; create the cube with `s2ingest init --store {settings.store}`")


def orbit_option(func: Callable) -> Callable:
    return click.option("--orbit", type=click.IntRange(1, 143), default=None,
                        help="Relative orbit of the cube (group /S2/R{orbit:03d}) [default 51].")(func)


def progress_enabled(flag: bool | None = None) -> bool:
    """Progress bars only where someone watches: --progress/--no-progress when given, else
    whether stderr is a terminal (a piped log gets plain lines, not bars)."""
    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_option(func: Callable) -> Callable:
    """--progress/--no-progress; default: bars when stderr is a terminal. Passes a bool."""

    @click.option("--progress/--no-progress", default=None,
                  help="Show progress bars on long work [default: when stderr is a terminal].")
    @functools.wraps(func)
    def wrapper(*args, progress, **kwargs):
        return func(*args, progress=progress_enabled(progress), **kwargs)

    return wrapper
