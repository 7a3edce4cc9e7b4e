"""``s2ingest retry``: make rejected or failed products work again."""
from __future__ import annotations

import click

from ingest.cli.options import cube_options


@click.command("retry")
@cube_options
@click.option("--rejected", is_flag=True, help="Every rejected product.")
@click.option("--failed", is_flag=True, help="Every failed product (due now instead of after its back-off).")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def command(settings, rejected, failed, names) -> None:
    """Re-queue rejected or failed products for the next `s2ingest sync`.

    A rejected product is otherwise final (a changed file, another size, checksum or
    modification time, is taken up by the next sync by itself); a failed one waits for its
    back-off. NAME is a product name (with or without .SAFE/.zip).

    \b
    Examples:
      s2ingest retry --rejected
      s2ingest retry S2A_MSIL2A_20230614T105621_N0509_R051_T31UFT_20230614T134821
    """
    from catalog import retry_products, session_scope

    from ingest.errors import ConfigError
    from ingest.cli.options import open_existing_catalog

    if not (names or rejected or failed):
        raise ConfigError("name the products to retry, or give --rejected and/or --failed")
    engine = open_existing_catalog(settings)
    with session_scope(engine) as s:
        done = retry_products(s, names, rejected=rejected, failed=failed)
    for name, state in done:
        click.echo(f"re-queued {name} (was {state})")
    click.echo(f"{len(done)} products re-queued; run `s2ingest sync` to process them" if done
               else "nothing to retry")
