"""``s2ingest overviews``: build the multiscale overviews of an existing cube."""
from __future__ import annotations

import click

from ingest.cli.options import (
    commit_catalog, complete_unfinished, cube_options, orbit_option, progress_option,
)


@click.command("overviews")
@cube_options
@orbit_option
@progress_option
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads decoding and encoding chunks.")
def command(settings, orbit, progress, threads) -> None:
    """Build the overview levels (factors 2, 4, 8, … down to a few hundred pixels) of every
    orbit group (or only --orbit), one commit per group: a new cube version whose manifest
    lists them, recorded in the catalog. Levels live in /S2/R{orbit}/overviews/{factor}
    (zarr-conventions multiscales); every later `sync` keeps them up to date in its own
    commit. A group whose levels are already current gets no new version.
    """
    from ingest.publish.commits import publish_overviews

    complete_unfinished(settings.store)
    for p in publish_overviews(settings.store, orbit=orbit, catalog=commit_catalog(settings),
                               progress=progress, threads=threads):
        if p.changed:
            click.echo(f"overviews of /{p.group}: {p.count} level chunks, store version {p.version}")
        else:
            click.echo(f"overviews of /{p.group} are current (last written in version {p.version}); "
                       "nothing to publish")
