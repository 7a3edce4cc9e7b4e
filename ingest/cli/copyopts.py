"""Options shared by the commands that copy one version of a cube (rechunk, export):
which version, which group, and the subset (bbox, time, variables)."""
from __future__ import annotations

import functools
from typing import Callable

import click

from ingest.errors import ConfigError


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"{option} {text!r}: give LEFT,BOTTOM,RIGHT,TOP (four numbers)")
    return values


def parse_time_option(text: str | None) -> tuple | None:
    """``2024-05-01`` (that day) or ``2024-05-01/2024-06-30`` (inclusive; either side may be
    empty) -> (start, end)."""
    if not text:
        return None
    start, sep, end = text.partition("/")
    if not sep:
        return (start, start)
    return (start or None, end or None)


def selection_options(func: Callable) -> Callable:
    """--version, --group/--orbit, --bbox, --bbox-crs, --time, --variables; passes
    ``selection`` (keyword arguments of ``open_cube``)."""

    @click.option("--version", "version", type=int, default=None,
                  help="Version of the source to copy [default: the one readers see now].")
    @click.option("--orbit", type=click.IntRange(1, 143), default=None,
                  help="Relative orbit (group /S2/R{orbit:03d}) [default: the only imagery group].")
    @click.option("--group", default=None, help="Group to copy, e.g. /S2/R051 (instead of --orbit).")
    @click.option("--bbox", default=None, metavar="L,B,R,T",
                  help="Area: left,bottom,right,top in the grid CRS (RD New), or in --bbox-crs; "
                       "expanded to whole pixels.")
    @click.option("--bbox-crs", default=None, metavar="CRS",
                  help="CRS of --bbox, e.g. EPSG:4326 for lon/lat [default: the grid's].")
    @click.option("--time", "time_text", default=None, metavar="START[/END]",
                  help="A date (that day) or an inclusive range START/END (ISO dates or times).")
    @click.option("--variables", default=None, metavar="A,B,...",
                  help="Variables to copy, e.g. B02,B03,B04,SCL [default: all].")
    @functools.wraps(func)
    def wrapper(*args, version, orbit, group, bbox, bbox_crs, time_text, variables, **kwargs):
        selection = {
            "version": version, "orbit": orbit, "group": group,
            "bbox": _floats(bbox, "--bbox"), "crs": bbox_crs,
            "time_range": parse_time_option(time_text),
            "variables": [v.strip() for v in variables.split(",") if v.strip()] if variables else None,
        }
        if bbox_crs and not bbox:
            raise ConfigError("--bbox-crs needs --bbox")
        return func(*args, selection=selection, **kwargs)

    return wrapper
