"""Options shared by every command (the rasterio ``rio/options.py`` habit)."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import click

from ingest.config import Settings, load_settings


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
        from ingest.store import check_location

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


# -- what part of a cube (mirror; the same flags as the other copy commands) --------------------
def _bbox(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.replace(" ", ",").split(",") if v)
    except ValueError:
        parts = ()
    if len(parts) != 4 or parts[0] >= parts[2] or parts[1] >= parts[3]:
        raise click.BadParameter("give LEFT,BOTTOM,RIGHT,TOP with LEFT < RIGHT and BOTTOM < TOP")
    return parts


def parse_when(value: str, *, end: bool = False):
    """A UTC instant from YYYY-MM-DD (the whole day with ``end``) or YYYY-MM-DDTHH:MM:SS."""
    from datetime import datetime, timedelta, timezone

    for fmt, day in (("%Y-%m-%dT%H:%M:%S", False), ("%Y-%m-%d", True)):
        try:
            t = datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        return t + timedelta(days=1, milliseconds=-1) if (day and end) else t
    raise click.BadParameter(f"{value!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)")


def _time_range(ctx, param, value):
    """START/END (either side may be empty), inclusive; one date alone is that day."""
    if value is None:
        return None
    start, sep, stop = value.partition("/")
    if not sep:
        stop = start
    lo = parse_when(start) if start else None
    hi = parse_when(stop, end=True) if stop else None
    if lo and hi and lo > hi:
        raise click.BadParameter(f"{value!r}: the start is after the end")
    return (lo, hi)


def _names(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def selection_options(func: Callable) -> Callable:
    """--bbox, --bbox-crs, --time, --variables, --groups; passes a ``Selection`` as ``selection``."""

    @click.option("--bbox", callback=_bbox, default=None, metavar="L,B,R,T",
                  help="Area, in the grid's CRS (RD New for the NL grid) or in --bbox-crs.")
    @click.option("--bbox-crs", default=None, metavar="CRS",
                  help="CRS of --bbox, e.g. EPSG:4326 for lon/lat [default: the grid's].")
    @click.option("--time", "time_range", callback=_time_range, default=None, metavar="START/END",
                  help="Time range, inclusive, e.g. 2024-04-01/2024-09-30 (either side may be empty).")
    @click.option("--variables", callback=_names, default=None, metavar="B04,B08,…",
                  help="Variables to keep (coordinates are always kept).")
    @click.option("--groups", callback=_names, default=None, metavar="S2/R051,NL,…",
                  help="Groups to keep (a group keeps its subgroups).")
    @functools.wraps(func)
    def wrapper(*args, bbox, bbox_crs, time_range, variables, groups, **kwargs):
        from ingest.copies.subset import Selection

        if bbox_crs is not None and bbox is None:
            raise click.BadParameter("--bbox-crs needs --bbox", param_hint="--bbox-crs")
        selection = Selection(bbox=bbox, bbox_crs=bbox_crs, time=time_range,
                              variables=variables, groups=groups)
        return func(*args, selection=selection, **kwargs)

    return wrapper


def s3_endpoint_option(func: Callable) -> Callable:
    """--s3-endpoint for commands that name their stores as arguments (mirror, rechunk, …)."""

    @click.option("--s3-endpoint", "s3_endpoint", default=None, metavar="URL",
                  envvar="S2INGEST_S3_ENDPOINT",
                  help="S3-compatible server of s3:// stores, e.g. http://minio:9000 "
                       "[env S2INGEST_S3_ENDPOINT or AWS_ENDPOINT_URL; default: AWS].")
    @functools.wraps(func)
    def wrapper(*args, s3_endpoint, **kwargs):
        if s3_endpoint:
            os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint  # as cube_options does
        return func(*args, **kwargs)

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
        from ingest.compute import ComputeOptions
        from ingest.errors import ConfigError

        if sum(x is not None for x in (workers, scheduler, local_cluster)) > 1:
            raise ConfigError("--workers, --scheduler and --local-cluster exclude each other; give one")
        compute = ComputeOptions(workers=workers, scheduler=scheduler, local_cluster=local_cluster)
        return func(*args, compute=compute, **kwargs)

    return wrapper
