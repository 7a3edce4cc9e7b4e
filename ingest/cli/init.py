"""``s2ingest init``: create the store and the catalog (idempotent)."""
from __future__ import annotations

import click

from ingest.cli.options import check_catalog, cube_options, orbit_option


@click.command("init")
@cube_options
@orbit_option
@click.option("--grid", default=None, help="Grid name (NL) or a JSON grid file [default: the store's own; NL for a new store].")
def command(settings, orbit, grid) -> None:
    """Create an empty cube: the Zarr store with its grid and the catalog database.

    Safe to run again: an existing store is checked against the grid (a store is never
    written with a different grid), the catalog is upgraded to the current schema and
    records any store version it misses.
    """
    from catalog.db import display_url, upgrade
    from ingest.store.location import grid_for
    from ingest.publish.commits import create_cube
    from ingest.publish.engine import Cube

    g = grid_for(settings.store, grid or settings.grid)  # an existing store keeps its own
    cube = Cube(settings.store, g, orbit or settings.orbit)
    cube.open()  # a store of another grid is refused (exit 6) before the catalog is created
    check_catalog(settings)  # so is a catalog of another store (exit 3)
    revision = upgrade(settings.db_url)
    create_cube(cube, catalog=settings.db_url)  # the store's commit is recorded in the catalog
    click.echo(f"store   {cube.path} (grid {g.name}, {g.crs}, {g.resolution:g} m, "
               f"{g.shape[1]}x{g.shape[0]} px), group /{cube.group}")
    click.echo(f"catalog {display_url(settings.db_url)} at revision {revision}")
