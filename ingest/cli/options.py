"""Options shared by the commands: each defined once, here (the rasterio ``rio/options.py`` habit).

Every command that takes one of these options takes it through the same decorator, with the
same parser and checks: a bad value is a ``ConfigError`` raised while the command line is
read, so it ends the same way everywhere: one line ``s2ingest: error: ...`` and exit 3
(``ingest.cli.exits``), before anything is opened or computed.

- the cube: ``cube_options`` (--store, --db, --s3-endpoint, --config), ``orbit_option``;
- what part of it: ``bbox_options`` (--bbox L,B,R,T, --bbox-crs), ``time_option``
  (--time START/END), ``variables_option`` (--variables A,B,...), and their bundles
  ``selection_options`` (mirror) and ``copy_options`` (rechunk, export);
- how: ``progress_option``, ``compute_options``, ``s3_endpoint_option``.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Callable

import click

from ingest.config import Settings, load_settings
from ingest.errors import ConfigError

UTC = timezone.utc


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are loaded when first needed (parsing the option or
    showing its help), so a command module can be imported without the library that lists them."""

    def __init__(self, load: Callable[[], tuple[str, ...]], case_sensitive: bool = True) -> None:
        self._load = load
        self._loaded: tuple[str, ...] | None = None
        super().__init__((), case_sensitive=case_sensitive)

    @property
    def choices(self) -> tuple[str, ...]:
        if self._loaded is None:
            self._loaded = tuple(self._load())
        return self._loaded

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns the (empty) placeholder
        pass


# -- the cube ----------------------------------------------------------------------------------
def cube_options(func: Callable) -> Callable:
    """Add --store, --db, --s3-endpoint and --config; pass the merged ``Settings`` as ``settings``.

    The store path is checked the same way whatever set it (option, environment, config
    file): a file or a folder of other files is refused (exit 6) before anything is created.
    """

    @click.option("--store", type=click.Path(), default=None,
                  help="Zarr store of the cube: a folder or s3://bucket/prefix/nl.zarr "
                       "[env S2INGEST_STORE; config store; default ./s2ingest-cube.zarr].")
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


def check_catalog(settings: Settings) -> None:
    """Refuse (exit 3, one line) a catalog that belongs to another store, before any work."""
    from ingest.publish.identity import check_catalog_url

    check_catalog_url(settings.store, settings.db_url)


def closed_with_command(engine):
    """``engine``, disposed when the running command ends (its pooled connections closed, a
    SQLite catalog's -wal and -shm files with them), also when the command is one call of many
    in one process."""
    ctx = click.get_current_context(silent=True)
    if engine is not None and ctx is not None:
        ctx.call_on_close(engine.dispose)
    return engine


def open_existing_catalog(settings: Settings):
    """The cube's catalog for a read-only command; never creates one (points at ``init``);
    a catalog of another store is refused."""
    from catalog import open_existing_catalog as open_existing

    check_catalog(settings)
    return closed_with_command(open_existing(
        settings.db_url, hint=f"; create the cube with `s2ingest init --store {settings.store}`"))


def commit_catalog(settings: Settings):
    """The catalog that records a command's commit (``ingest.publish.record``): the one named
    by --db / S2INGEST_DB_URL / the config, created at the current schema if new (as ``sync``
    does); else the URL of the SQLite file beside the store, used only if it exists (a copy
    made by ``mirror`` has none, and gets no catalog). A catalog of another store is refused."""
    check_catalog(settings)
    if settings.db is not None:
        from catalog import open_catalog

        return closed_with_command(open_catalog(settings.db))
    return settings.db_url


def complete_unfinished(location) -> None:
    """Finish a commit a crashed writer left half switched in the cube at ``location``, before
    a command that writes plans anything from it (nothing to do for a new or clean store)."""
    from ingest.errors import NotACubeError
    from ingest.store import CubeStore

    try:
        store = CubeStore.open(str(location))
    except NotACubeError:
        return
    if store.switching() is not None and store.complete_unfinished():
        click.echo(f"completed the unfinished commit in {store.url}; readers see version "
                   f"{store.version()}", err=True)


def orbit_option(func: Callable) -> Callable:
    return click.option("--orbit", type=click.IntRange(1, 143), default=None,
                        help="Relative orbit of the cube (group /S2/R{orbit:03d}) [default 51].")(func)


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


# -- values: one parser each -------------------------------------------------------------------
def parse_bbox(text: str, option: str = "--bbox") -> tuple[float, float, float, float]:
    """``L,B,R,T``: four numbers with L < R and B < T."""
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or not all(map(_finite, parts)) or parts[0] >= parts[2] or parts[1] >= parts[3]:
        raise ConfigError(f"{option} {text!r}: give LEFT,BOTTOM,RIGHT,TOP, four numbers with "
                          "LEFT < RIGHT and BOTTOM < TOP")
    return parts  # type: ignore[return-value]


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def parse_crs(text: str, option: str = "--bbox-crs") -> str:
    """A CRS pyproj knows (EPSG:4326, an authority code, WKT, PROJ); returned as given."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else "not a CRS"
        raise ConfigError(f"{option} {text!r}: unknown CRS ({why})") from None
    return text


_WHEN = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")


def parse_when(text: str, *, end: bool = False, option: str = "--time") -> datetime:
    """A UTC instant from YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC unless an offset is given).
    A date alone is that day: its first instant, or with ``end`` its last millisecond."""
    value = text.strip()
    try:
        if not _WHEN.match(value):
            raise ValueError(value)
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)") from None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    if end and len(value) == 10:
        t += timedelta(days=1, milliseconds=-1)
    return t


def parse_time_range(text: str, option: str = "--time") -> tuple[datetime | None, datetime | None]:
    """``START/END``, inclusive; either side may be empty; one date alone is that day."""
    start, sep, stop = text.partition("/")
    if not sep:
        stop = start
    try:
        lo = parse_when(start, option=option) if start.strip() else None
        hi = parse_when(stop, end=True, option=option) if stop.strip() else None
    except ConfigError:
        raise ConfigError(f"{option} {text!r}: give START/END, each YYYY-MM-DD or "
                          "YYYY-MM-DDTHH:MM:SS (UTC); either may be empty") from None
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{option} {text!r}: the start is after the end")
    return (lo, hi)


def parse_names(text: str, option: str = "--variables") -> tuple[str, ...]:
    """``A,B,...``: comma-separated names (spaces around them ignored), at least one."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_./-]+", n)]
    if not names or bad:
        raise ConfigError(f"{option} {text!r}: give comma-separated names, e.g. B04,B08,SCL")
    return names


def _callback(parse: Callable, option: str) -> Callable:
    """A click callback around ``parse``: None stays None; a bad value is a ConfigError."""

    def callback(ctx, param, value):
        return None if value is None else parse(value, option=option)

    return callback


# -- what part of a cube -----------------------------------------------------------------------
def bbox_options(func: Callable) -> Callable:
    """--bbox L,B,R,T and --bbox-crs CRS; passes ``bbox`` (four floats or None) and
    ``bbox_crs`` (None: the grid's CRS)."""

    @click.option("--bbox", callback=_callback(parse_bbox, "--bbox"), default=None, metavar="L,B,R,T",
                  help="Area: left,bottom,right,top in the grid's CRS (RD New for the NL grid) "
                       "or in --bbox-crs; expanded to whole pixels.")
    @click.option("--bbox-crs", callback=_callback(parse_crs, "--bbox-crs"), default=None, metavar="CRS",
                  help="CRS of --bbox, e.g. EPSG:4326 for lon/lat [default: the grid's].")
    @functools.wraps(func)
    def wrapper(*args, bbox, bbox_crs, **kwargs):
        if bbox_crs is not None and bbox is None:
            raise ConfigError("--bbox-crs needs --bbox")
        return func(*args, bbox=bbox, bbox_crs=bbox_crs, **kwargs)

    return wrapper


def time_option(func: Callable) -> Callable:
    """--time START/END; passes ``time_range``: (start, end) UTC datetimes, inclusive, either
    None for an open side; None without the option."""
    return click.option(
        "--time", "time_range", callback=_callback(parse_time_range, "--time"), default=None,
        metavar="START/END",
        help="Time range, inclusive, e.g. 2024-04-01/2024-09-30; either side may be empty; "
             "a date alone is that day (dates or YYYY-MM-DDTHH:MM:SS, UTC).")(func)


def variables_option(func: Callable) -> Callable:
    """--variables A,B,...; passes ``variables`` (a tuple of names, or None: all)."""
    return click.option(
        "--variables", callback=_callback(parse_names, "--variables"), default=None,
        metavar="A,B,...", help="Variables to keep, e.g. B02,B03,B04,SCL [default: all].")(func)


def selection_options(func: Callable) -> Callable:
    """--bbox, --bbox-crs, --time, --variables, --groups (mirror); passes a ``Selection``
    as ``selection``."""

    @bbox_options
    @time_option
    @variables_option
    @click.option("--groups", callback=_callback(parse_names, "--groups"), default=None,
                  metavar="S2/R051,NL,…", help="Groups to keep (a group keeps its subgroups).")
    @functools.wraps(func)
    def wrapper(*args, bbox, bbox_crs, time_range, variables, groups, **kwargs):
        from ingest.copies.subset import Selection

        selection = Selection(bbox=bbox, bbox_crs=bbox_crs, time=time_range,
                              variables=variables, groups=groups)
        return func(*args, selection=selection, **kwargs)

    return wrapper


def copy_options(func: Callable) -> Callable:
    """--version, --orbit/--group, --bbox, --bbox-crs, --time, --variables (rechunk, export);
    passes ``selection``: keyword arguments of ``open_cube`` (version, orbit, group, bbox,
    crs, time_range, variables)."""

    @click.option("--version", "version", type=click.IntRange(1), default=None,
                  help="Version of the source to copy [default: the one readers see now].")
    @click.option("--orbit", type=click.IntRange(1, 143), default=None,
                  help="Relative orbit (group /S2/R{orbit:03d}) [default: the only imagery group].")
    @click.option("--group", default=None, help="Group to copy, e.g. /S2/R051 (instead of --orbit).")
    @bbox_options
    @time_option
    @variables_option
    @functools.wraps(func)
    def wrapper(*args, version, orbit, group, bbox, bbox_crs, time_range, variables, **kwargs):
        selection = {"version": version, "orbit": orbit, "group": group, "bbox": bbox,
                     "crs": bbox_crs, "time_range": time_range,
                     "variables": list(variables) if variables else None}
        return func(*args, selection=selection, **kwargs)

    return wrapper


# -- how -----------------------------------------------------------------------------------------
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
        from ingest.compute import ComputeOptions

        if sum(x is not None for x in (workers, scheduler, local_cluster)) > 1:
            raise ConfigError("--workers, --scheduler and --local-cluster exclude each other; give one")
        compute = ComputeOptions(workers=workers, scheduler=scheduler, local_cluster=local_cluster)
        return func(*args, compute=compute, **kwargs)

    return wrapper
