"""``s2ingest db``: catalog schema migrations."""
from __future__ import annotations

import click

from ingest.cli.options import cube_options


@click.group("db")
def command() -> None:
    """Manage the catalog database schema (alembic migrations shipped in the package)."""


@command.command("upgrade")
@cube_options
@click.option("--revision", default="head", show_default=True)
def upgrade_cmd(settings, revision) -> None:
    """Upgrade the catalog schema (creates the database tables on first use)."""
    from catalog.db import display_url, upgrade

    rev = upgrade(settings.db_url, revision)
    click.echo(f"catalog {display_url(settings.db_url)} at revision {rev}")


@command.command("current")
@cube_options
def current_cmd(settings) -> None:
    """Show the catalog's schema revision and the one this s2ingest needs (creates nothing)."""
    from catalog.db import current_revision, display_url, head_revision, sqlite_file

    path = sqlite_file(settings.db_url)
    if path is not None and not path.exists():
        click.echo(f"catalog {display_url(settings.db_url)}: revision None (this s2ingest: {head_revision()}); "
                   "no such file yet: `s2ingest db upgrade` or `s2ingest init` creates it")
        return
    click.echo(f"catalog {display_url(settings.db_url)}: revision {current_revision(settings.db_url)} "
               f"(this s2ingest: {head_revision()})")


@command.command("rebuild")
@cube_options
def rebuild_cmd(settings) -> None:
    """Make a lost or deleted catalog again from what the store records: its identity, the
    versions it keeps, the time steps and products of every imagery group (from their
    provenance coordinates) and the reference-layer editions. Writes a new catalog (--db, or
    the SQLite file beside the store); an existing catalog with rows is refused.

    \b
    Example:
      s2ingest db rebuild --store nl.zarr --db sqlite:///nl.catalog.sqlite
    """
    from catalog.urls import display_url

    from ingest.publish.rebuild import rebuild_catalog

    r = rebuild_catalog(settings.store, settings.db_url)
    kept = f"{r.versions[0]}..{r.versions[-1]}" if r.versions else "none"
    click.echo(f"catalog {display_url(settings.db_url)} rebuilt from {settings.store}: "
               f"store {r.store_id or '(no identity yet)'}, versions kept {kept}, "
               f"{r.time_steps} time steps, {r.products} products, {r.layers} layer editions")
