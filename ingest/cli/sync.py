"""``s2ingest sync``: bring the cube up to date with a product source."""
from __future__ import annotations

import click

from ingest.cli.exits import EXIT_PARTIAL
from ingest.cli.options import compute_options, cube_options, orbit_option, parse_when, progress_option


def _date(ctx, param, value):
    """--since/--until: the shared date parser (``parse_when``); a bad date is exit 3."""
    return None if value is None else parse_when(value, option=f"--{param.name}")


@click.command("sync")
@cube_options
@orbit_option
@click.option("--hub", type=click.Choice(["local", "dhus", "cdse"]), default=None,
              help="Where products come from [default local, or [hub] name in the config].")
@click.option("--source", "source_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="With --hub local: folder of .SAFE or .zarr (EOPF) folders or .zip files.")
@click.option("--url", default=None,
              help="Hub base URL (dhus: the DHuS root; cdse: catalogue URL). Other hub options go in "
                   "the config file's [hub] section (cdse: catalogue_url, token_url, download_url); "
                   "credentials in S2INGEST_DHUS_USER/_PASSWORD or S2INGEST_CDSE_USER/_PASSWORD.")
@click.option("--since", callback=_date, default=None, help="Only datatakes from this date (UTC).")
@click.option("--until", callback=_date, default=None, help="Only datatakes before this date (UTC).")
@click.option("--tiles", default=None, help="Comma-separated MGRS tiles, e.g. 31UET,31UFT.")
@click.option("--max-cloud", type=click.FloatRange(0, 100), default=None,
              help="Skip products whose cloud cover (%) is above this.")
@click.option("--dry-run", is_flag=True, help="List what would be downloaded and ingested; change nothing.")
@click.option("--keep-products/--delete-products", default=True, show_default=True,
              help="Keep downloaded zips in the cache after a successful ingest.")
@click.option("--resampling", "resampling", multiple=True, metavar="VAR=METHOD",
              help="Resampling per variable, e.g. B04=cubic or '*=nearest' (SCL is always "
                   "best left nearest). Default: bilinear, nearest for SCL.")
@click.option("--max-downloads", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Parallel downloads.")
@click.option("--settle", "settle", type=click.FloatRange(0), default=None, metavar="HOURS",
              help="Hold datatakes sensed less than HOURS ago, so that all their tiles arrive "
                   "first and are published in one commit (0: publish at once) [default 6].")
@click.option("--grid", default=None,
              help="Grid name (NL) or a JSON grid file, for a new cube; an existing cube uses its "
                   "own (a different one is refused) [default: the store's grid, NL if new].")
@click.option("--lock-timeout", type=click.FloatRange(0), default=None, metavar="SECONDS",
              help="How long to wait for another process writing the same store [default 3600].")
@compute_options
@progress_option
def command(settings, orbit, hub, source_dir, url, since, until, tiles, max_cloud, dry_run,
            keep_products, resampling, max_downloads, settle, grid, lock_timeout, compute, progress) -> None:
    """Find new products of one relative orbit, download and verify them, and publish them
    into the cube, one time step per datatake.

    Interrupted or crashed runs resume where they stopped when run again; a run with
    nothing new writes nothing. Exit status 0: all good (products offline at the hub were
    ordered from its archive and are retried later; that is not a failure); 10: the run
    completed but some products were rejected or failed (see `s2ingest status`); 5: hub
    unreachable or credentials refused; other codes: see README.

    \b
    Examples:
      s2ingest sync --orbit 51 --source products/
      s2ingest sync --orbit 51 --hub cdse --since 2024-03-01 --tiles 31UFT,31UFU
      s2ingest sync --orbit 51 --hub dhus --url https://dhus.example.org/ --dry-run
      s2ingest sync --orbit 51 --source products/ --workers 2
      s2ingest sync --orbit 51 --source products/ --scheduler tcp://scheduler:8786
    """
    from dataclasses import replace

    from ingest.errors import ConfigError
    from ingest.sources import make_source
    from ingest.publish.sync import SyncOptions, sync

    extra = {}
    for item in resampling:
        if "=" not in item:
            raise ConfigError(f"--resampling wants VAR=METHOD, not {item!r}")
        k, v = item.split("=", 1)
        extra[k.strip()] = v.strip()
    settings = replace(settings, resampling={**settings.resampling, **extra},
                       grid=grid or settings.grid)
    hub_cfg = dict(settings.hub)
    hub = hub or hub_cfg.pop("name", "local")
    hub_cfg.pop("name", None)
    if hub == "local":
        if source_dir is None:
            source_dir = hub_cfg.pop("directory", None)
        if source_dir is None:
            raise ConfigError("--hub local needs --source DIR (a folder of .SAFE or .zarr folders or .zip files)")
        source = make_source("local", directory=source_dir)
    else:
        if url:
            hub_cfg["url"] = url
        source = make_source(hub, **hub_cfg)
    opts = SyncOptions(orbit=orbit or settings.orbit, since=since, until=until,
                       tiles=[t.strip() for t in tiles.split(",")] if tiles else None,
                       max_cloud=max_cloud, dry_run=dry_run, keep_products=keep_products,
                       progress=progress, max_downloads=max_downloads, compute=compute)
    if settle is not None:
        opts = replace(opts, settle_hours=settle)
    if lock_timeout is not None:
        opts = replace(opts, lock_timeout=lock_timeout)
    from ingest.publish.preflight import no_litter
    from ingest.publish.sync import worker_name

    # A failed first run leaves nothing behind; any way out gives back this process's leases.
    with no_litter(settings, worker=None if dry_run else worker_name()):
        report = sync(settings, source, opts, echo=click.echo)
    _print(report, dry_run)
    _skipped(source)
    if report.has_problems:
        raise SystemExit(EXIT_PARTIAL)


def _skipped(source) -> None:
    """What a folder source left out: one line; with -v also each file and why."""
    summary = getattr(source, "skipped_summary", lambda: None)()
    if not summary:
        return
    verbose = click.get_current_context().find_root().params.get("verbose", 0)
    click.echo(summary + ("" if verbose else " (-v lists them)"))
    if verbose:
        for path, why in source.skipped:
            click.echo(f"  skipped {path}: {why}")


def _print(r, dry_run: bool) -> None:
    if dry_run:
        click.echo(f"dry run: {r.found} products found; nothing was changed")
        for n in r.would_fetch:
            click.echo(f"  would download  {n}")
        for n in r.would_ingest:
            click.echo(f"  would ingest    {n}")
        if not r.would_ingest:
            click.echo("  the cube is up to date")
        return
    click.echo(f"found {r.found}, new {len(r.new)}, downloaded {len(r.downloaded)}, "
               f"published {len(r.published)}, offline {len(r.offline)}, "
               f"failed {len(r.failed)}, rejected {len(r.rejected)}")
    for name, reason in r.rejected:
        click.echo(f"  rejected {name}: {reason}", err=True)
    for name, reason in r.failed:
        click.echo(f"  failed   {name}: {reason} (will be retried)", err=True)
    for name in r.superseded:
        click.echo(f"  superseded {name}")
    for name in r.deleted_from_hub:
        click.echo(f"  deleted from hub {name}")
    if r.held:
        click.echo(f"  held {len(r.held)} products of datatakes inside the settling window (--settle)")
    if r.version is not None:
        click.echo(f"cube version {r.version}: {r.time_steps} time steps")
    elif not r.published:
        click.echo("nothing new to publish")
