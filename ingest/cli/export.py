"""``s2ingest export``: one time step, or a reduced time range, to a COG or netCDF file."""
from __future__ import annotations

import click

from ingest.errors import ConfigError
from ingest.cli.options import copy_options, progress_option


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--clear-classes {text!r}: give SCL classes, e.g. 4,5,6,11") from None


@click.command("export")
@click.argument("source", metavar="SRC")
@click.argument("output", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--reduce", type=click.Choice(["median", "mean", "max", "min"]), default=None,
              help="Reduce a --time range per pixel over the clear observations.")
@click.option("--clear-classes", default="4,5,6,11", show_default=True, metavar="N,...",
              help="SCL classes that count as clear for --reduce.")
@click.option("--max-cld", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="With --reduce: also require a cloud probability (CLD) of at most this.")
@click.option("--max-cloud", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Skip dates whose cloud fraction over --bbox (quality atlas) is this or more.")
@click.option("--format", "fmt", type=click.Choice(["cog", "netcdf"]), default=None,
              help="Output format [default: by suffix, .tif COG, .nc netCDF].")
@copy_options
@progress_option
def command(source: str, output: str, reduce: str | None, clear_classes: str,
            max_cld: float | None, max_cloud: float | None, fmt: str | None, selection: dict,
            progress: bool) -> None:
    """Export one time step (--time 2024-05-01) or a time range reduced per pixel
    (--time 2024-04-01/2024-06-30 --reduce median, over clear observations only) of one
    version of the cube at SRC (path or URL), for --bbox and --variables, to OUT: a
    Cloud-Optimized GeoTIFF (.tif: one band per variable, named, with scale/offset,
    EPSG:28992, internal overviews) or a CF netCDF file (.nc, with the grid mapping).
    """
    from ingest.copies.export import export

    time_range = selection.pop("time_range")
    report = export(source, output, time_range=time_range, reduce=reduce,
                    clear_classes=_ints(clear_classes), max_cld=max_cld, max_cloud=max_cloud, fmt=fmt,
                    progress=progress, **selection)
    what = (f"{report.reduce} of {len(report.times)} time steps" if report.reduce
            else f"time step {report.times[0]}")
    click.echo(f"exported {what} of version {report.version} of {report.source} "
               f"({', '.join(report.variables)}; {report.shape[0]} x {report.shape[1]} px) "
               f"to {report.path} ({report.format})")
