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
