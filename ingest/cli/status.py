"""``s2ingest status``: what the catalog and the cube say."""
from __future__ import annotations

import click

from ingest.cli.options import cube_options, open_existing_catalog, orbit_option


@click.command("status")
@cube_options
@orbit_option
@click.option("--limit", type=int, default=20, show_default=True, help="Rows of each problem list.")
def command(settings, orbit, limit) -> None:
    """Products per state, published time steps, the last publish, and every failure,
    rejection, supersede and hub deletion with its reason.

    Versions: every publish (imagery or reference layer) gets the next cube version; the
    cube line shows the version that last wrote the imagery group, "last publish" the newest
    version of any group. Read-only: creates nothing.
    """
    from catalog import session_scope, status

    from ingest.errors import NotACubeError
    from ingest.store import CubeStore, group_path

    copy_of = _copy_of(settings.store)
    if copy_of is not None:  # a copy made by `s2ingest mirror` has no catalog of its own
        _copy_status(settings.store, copy_of, group_path(orbit or settings.orbit))
        return
    engine = open_existing_catalog(settings)
    with session_scope(engine) as s:
        st = status(s, limit=limit)
    click.echo(f"store   {settings.store}")
    group = group_path(orbit or settings.orbit)
    try:
        store = CubeStore.open(settings.store)
    except NotACubeError:  # not created yet
        store = None
    if store is not None and store.group_exists(group):
        pub = store.published(group)
        span = f" ({pub.times[0]:%Y-%m-%d} .. {pub.times[-1]:%Y-%m-%d})" if pub.length else ""
        written = (store.consolidated(group) or {}).get(".zattrs", {}).get("s2ingest_cube_version")
        click.echo(f"cube    /{group}: {pub.length} time steps{span}, store version {pub.version} "
                   f"(this group last written in version {written})")
    else:
        click.echo(f"cube    /{group}: not created yet")
    click.echo("products " + ", ".join(f"{k} {v}" for k, v in st.counts.items()))
    click.echo(f"due now  {st.due}")
    for g, n in sorted(st.time_steps.items()):
        click.echo(f"time steps in catalog {g}: {n}")
    if st.last_publish:
        lp = st.last_publish
        click.echo(f"last publish: cube version {lp.version} ({lp.group}) at {lp.published_at:%Y-%m-%d %H:%M:%S} UTC, "
                   f"{lp.n_products} products, {lp.n_chunks_written} chunks")
    for p in st.problems:
        when = f", next attempt {p.next_attempt_at:%Y-%m-%d %H:%M}" if p.next_attempt_at else ""
        click.echo(f"{p.state:9} {p.name}: {p.reason} (attempts {p.attempts}{when})")
    for p in st.superseded:
        click.echo(f"superseded {p.name} by {p.superseded_by}" + (" (was published)" if p.was_published else ""))
    for d in st.deleted_from_hub:
        click.echo(f"deleted from hub {d.name} (seen {d.seen_at:%Y-%m-%d}, state {d.state})")
    for lease in st.leases:
        click.echo(f"lease    {lease.name} {lease.state} by {lease.owner}" + (" (expired)" if lease.expired else ""))


def _copy_of(location) -> dict | None:
    """What a copy made by ``s2ingest mirror`` is a copy of (None: not a copy, or no cube)."""
    from ingest.copies.mirror import copy_of
    from ingest.store import CubeStore

    try:
        return copy_of(CubeStore.open(location))
    except (OSError, ValueError):  # StoreError (no cube, unreadable) is an OSError
        return None


def _copy_status(location, copy_of: dict, group: str) -> None:
    from ingest.store import CubeStore

    store = CubeStore.open(location)
    click.echo(f"store   {location}")
    subset = {k: v for k, v in copy_of.items() if k not in ("url", "version", "manifest_sha256")}
    click.echo(f"copy of {copy_of['url']} version {copy_of['version']}"
               + (f" (subset: {subset})" if subset else "") + f"; store version {store.version()}")
    if store.group_exists(group):
        pub = store.published(group)
        span = f" ({pub.times[0]:%Y-%m-%d} .. {pub.times[-1]:%Y-%m-%d})" if pub.length else ""
        click.echo(f"cube    /{group}: {pub.length} time steps{span}")
    click.echo("update it with `s2ingest mirror SRC DST` again; check it with `s2ingest verify --deep`")
