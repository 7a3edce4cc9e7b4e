"""Entry point of ``s2ingest``: the only place that maps errors to exit codes (``ingest.cli.exits``)."""
from __future__ import annotations

import logging
import sys
import warnings

import click

from ingest import __version__
from ingest.cli.exits import EXIT_INTERRUPTED, exit_code_for
from ingest.errors import S2IngestError


class S2Group(click.Group):
    """Turns s2ingest errors into one clear line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except S2IngestError as exc:
            logging.getLogger("s2ingest").debug("error", exc_info=True)
            click.echo(f"s2ingest: error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("s2ingest: interrupted; rerun the same command to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=S2Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="s2ingest")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", count=True, help="Less log output.")
def cli(verbose: int, quiet: int) -> None:
    """Build and keep current a Sentinel-2 L2A data cube on a national grid.

    Products of one relative orbit are found on a hub or in a folder, verified, warped onto
    one fixed grid (default: Dutch RD New, EPSG:28992, 10 m), mosaicked per datatake and
    appended to one consolidated Zarr store that any xarray client opens:

    \b
        xr.open_zarr(STORE, group="/S2/R051", consolidated=True)

    Every command takes --store and --db (or S2INGEST_STORE / S2INGEST_DB_URL, or a
    config file), so several cubes can live side by side.
    """
    # rasterio's threaded in-memory warps sometimes emit a spurious NotGeoreferencedWarning
    # (every call passes explicit transforms; results are verified identical across thread
    # counts). Silenced for the CLI's own process only; library users keep their filters.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform", module="rasterio")
    level = logging.WARNING - 10 * verbose + 10 * quiet
    logging.basicConfig(level=max(logging.DEBUG, min(level, logging.CRITICAL)),
                        format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from ingest.cli import (
        db, demo, export, init, layers, mirror, overviews, quality, rechunk, report, retry, serve,
        status, sync, synth, verify, versions,
    )

    for module in (init, sync, status, verify, mirror, rechunk, export, quality, report, overviews,
                   serve, retry, synth, demo, db):
        cli.add_command(module.command)
    cli.add_command(layers.layers)
    cli.add_command(layers.stats)
    cli.add_command(versions.versions)
    cli.add_command(versions.upgrade)


_register()
