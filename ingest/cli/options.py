"""Options shared by every command (the rasterio ``rio/options.py`` habit)."""
from __future__ import annotations

import functools
import sys
from typing import Callable

import click

from ..config import Settings, load_settings


def cube_options(func: Callable) -> Callable:
    """Add --store, --db and --config; pass the merged ``Settings`` as ``settings``.

    The store path is checked the same way whatever set it (option, environment, config
    file): a file or a folder of other files is refused (exit 6) before anything is created.
    """

    @click.option("--store", type=click.Path(), default=None,
                  help="Zarr store of the cube [env S2INGEST_STORE; default ./s2ingest-cube.zarr].")
    @click.option("--db", "db", default=None, metavar="URL",
                  help="Catalog database URL, e.g. postgresql://user@host/db "
                       "[env S2INGEST_DB_URL; default: SQLite file next to the store].")
    @click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                  help="TOML config file [env S2INGEST_CONFIG; default ./s2ingest.toml].")
    @functools.wraps(func)
    def wrapper(*args, store, db, config, **kwargs):
        from ..store.cube import check_location

        settings = load_settings({"store": store, "db": db}, config)
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


def compute_options(func: Callable) -> Callable:
    """--workers / --scheduler / --local-cluster: where decoding, warping and encoding run.
    Passes an ``ingest.compute.ComputeOptions`` as ``compute``."""

    @click.option("--workers", type=click.IntRange(1, 256), default=None, metavar="N",
                  help="Decode, warp and mosaic in N worker processes on this machine (one core "
                       "each); this process only writes the store [default: in this process].")
    @click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                  help="Run that work on a dask.distributed cluster (its workers must read the "
                       "product cache at the same path).")
    @click.option("--local-cluster", type=click.IntRange(1, 256), default=None, metavar="N",
                  help="Run that work on a dask LocalCluster of N worker processes started here.")
    @functools.wraps(func)
    def wrapper(*args, workers, scheduler, local_cluster, **kwargs):
        from ..compute import ComputeOptions
        from ..errors import ConfigError

        if sum(x is not None for x in (workers, scheduler, local_cluster)) > 1:
            raise ConfigError("--workers, --scheduler and --local-cluster exclude each other; give one")
        compute = ComputeOptions(workers=workers, scheduler=scheduler, local_cluster=local_cluster)
        return func(*args, compute=compute, **kwargs)

    return wrapper
