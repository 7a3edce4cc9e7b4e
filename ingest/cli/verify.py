"""``s2ingest verify``: is the cube what its catalog and manifest say? (read only)"""
from __future__ import annotations

import sys

import click

from ingest.cli.exits import EXIT_MISMATCH
from ingest.cli.options import closed_with_command, cube_options


@click.command("verify")
@cube_options
@click.option("--deep", is_flag=True,
              help="Read every key and check its size and sha256 against the version's manifest.")
@click.option("--no-catalog", is_flag=True, help="Check the store only (default for an http(s):// store).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@click.argument("location", required=False, metavar="[STORE]")
def command(settings, deep: bool, no_catalog: bool, progress: bool | None, location: str | None) -> None:
    """Check the published cube, read only: no unfinished commit, every time axis sorted and
    unique, array lengths, consolidated metadata, every key of the published version present
    (with --deep: size and sha256 as in its manifest), and the catalog in agreement with the
    store (every published product in a time step, the same time steps, the version's
    publish row). STORE (default --store) may be a local path or the http(s):// URL of a
    served cube (then read only, and the catalog is checked only with an explicit --db).

    Exit 0 when all agrees, 9 with one line per mismatch otherwise.
    """
    from tqdm.auto import tqdm

    from ingest.publish.audit import verify
    from ingest.store import CubeStore

    where = location or str(settings.store)
    store = CubeStore.open(where)
    engine = None
    remote = where.startswith(("http://", "https://"))
    if not no_catalog and (settings.db is not None or not remote):
        from catalog import default_url_for_store, open_catalog

        from ingest.publish.record import existing_catalog

        from ingest.publish.identity import check_catalog_url

        check_catalog_url(where, settings.db or default_url_for_store(where))
        if settings.db is not None:
            engine = open_catalog(settings.db, create=False)
        else:
            engine = existing_catalog(default_url_for_store(where))
        closed_with_command(engine)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=0, unit="key", desc="verify", disable=not show)

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    problems = verify(store, engine, deep=deep, progress=tick)
    bar.close()
    version = store.version()
    for p in problems:
        click.echo(f"MISMATCH {p}")
    checked = "store, manifest" + (" (deep)" if deep else "") + (", catalog" if engine is not None else "")
    if problems:
        click.echo(f"{len(problems)} problem(s) in {store.url} at version {version} ({checked})", err=True)
        sys.exit(EXIT_MISMATCH)
    click.echo(f"ok: {store.url} at version {version} ({checked})")
