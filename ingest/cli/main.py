"""Entry point of ``s2ingest``: the only place that maps errors to exit codes (``ingest.cli.exits``).

DESIGN CHOICE: commands are loaded on first use (click's "lazy group"): ``COMMANDS`` names the
module of each, and a command module imports the heavy libraries (numpy, xarray, zarr, rasterio,
dask, ...) inside its function only, so ``s2ingest --help``, ``status`` and ``verify`` start
without them (tests/test_cli_startup.py checks it; ``make bench`` measures it).
"""
from __future__ import annotations

import importlib
import logging
import sys
import warnings

import click

from ingest import __version__
from ingest.cli.exits import EXIT_INTERRUPTED, exit_code_for
from ingest.errors import S2IngestError


# command name -> "module:attribute", in the order ``--help`` lists them
COMMANDS: dict[str, str] = {
    "init": "ingest.cli.init:command",
    "sync": "ingest.cli.sync:command",
    "status": "ingest.cli.status:command",
    "verify": "ingest.cli.verify:command",
    "mirror": "ingest.cli.mirror:command",
    "rechunk": "ingest.cli.rechunk:command",
    "export": "ingest.cli.export:command",
    "quality": "ingest.cli.quality:command",
    "report": "ingest.cli.report:command",
    "overviews": "ingest.cli.overviews:command",
    "serve": "ingest.cli.serve:command",
    "retry": "ingest.cli.retry:command",
    "synth": "ingest.cli.synth:command",
    "demo": "ingest.cli.demo:command",
    "db": "ingest.cli.db:command",
    "layers": "ingest.cli.layers:layers",
    "stats": "ingest.cli.layers:stats",
    "versions": "ingest.cli.versions:versions",
    "upgrade": "ingest.cli.versions:upgrade",
}


class S2Group(click.Group):
    """Turns s2ingest errors into one clear line on stderr and a documented exit code; loads
    each command's module the first time the command is asked for (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *sorted(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, _, attr = COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if command.name != name:
                raise RuntimeError(f"{COMMANDS[name]} is the command {command.name!r}, not {name!r}")
            self.add_command(command, name)
        return self.commands.get(name)

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
