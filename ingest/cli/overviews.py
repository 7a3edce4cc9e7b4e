"""``s2ingest overviews``: build the multiscale overviews of an existing cube (one commit)."""
from __future__ import annotations

import click

from ingest.cli.options import cube_options, orbit_option, progress_option


@click.command("overviews")
@cube_options
@orbit_option
@progress_option
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Threads decoding and encoding chunks.")
def command(settings, orbit, progress, threads) -> None:
    """Build the overview levels (factors 2, 4, 8, … down to a few hundred pixels) of every
    orbit group (or only --orbit) in ONE commit: a new cube version whose manifest lists
    them. Levels live in /S2/R{orbit}/overviews/{factor} (zarr-conventions multiscales);
    every later `sync` keeps them up to date in its own commit.
    """
    from ingest.overviews import add_overviews
    from ingest.store import CubeStore, group_path
    from ingest.errors import StoreError

    store = CubeStore.open(settings.store)
    with store.transaction() as tx:
        if orbit is not None:
            groups = [group_path(orbit)]
            if not tx.is_group(groups[0]):
                raise StoreError(f"{store.url} has no group /{groups[0]}")
        else:
            groups = [f"S2/{name}" for name in tx.children("S2")] if tx.is_group("S2") else []
        if not groups:
            raise StoreError(f"{store.url} has no imagery group yet; run `s2ingest sync` first")
        n = 0
        for group in groups:
            n += add_overviews(tx, store.grid, group, progress=progress, threads=threads)
        report = tx.commit()
    click.echo(f"overviews of {', '.join('/' + g for g in groups)}: {n} level chunks, "
               f"store version {report.version}")
