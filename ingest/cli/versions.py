"""``s2ingest versions list|expire`` and ``s2ingest upgrade``: the versions a cube keeps."""
from __future__ import annotations

from datetime import timedelta

import click

from ingest.cli.options import cube_options


@click.group("versions")
def versions() -> None:
    """The versions a cube keeps (each readable with open_cube(version=V), served at
    /versions/V by `s2ingest serve`) and their retention."""


@versions.command("list")
@cube_options
@click.argument("location", required=False, metavar="[STORE]")
def list_command(settings, location: str | None) -> None:
    """One line per kept version: version, created, parent, keys, keys changed (read only;
    reads the versions' roots only)."""
    from ingest.store import list_versions

    for v in list_versions(location or str(settings.store)):
        click.echo(f"{v['version']:>8}  {v['created'] or '-':25}  parent {v['parent']}  "
                   f"{v['keys']} keys  {v['changed']} changed")


@versions.command("expire")
@cube_options
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Keep the newest N versions [config [versions] keep; default 20].")
@click.option("--max-age-days", type=click.FloatRange(min=0), default=None,
              help="Also keep every version younger than this [config [versions] max_age_days; default: none].")
@click.option("--grace-hours", type=click.FloatRange(min=0), default=None,
              help="Expire a version only once it has been out of retention this long, for readers "
                   "still reading it [config [versions] grace_hours; default 1].")
@click.option("--sweep", is_flag=True,
              help="Also delete every bookkeeping object (piece, list, snapshot, kept chunk) no "
                   "retained version references, e.g. left by a commit that died before its journal "
                   "or a writer whose lease was taken over. Lists those folders and reads the retained "
                   "versions' bookkeeping (a cost in proportion to them, not to the change): "
                   "occasional housekeeping. Needs a store whose keys can be listed.")
@click.option("--dry-run", is_flag=True, help="Say what would expire (and be swept); change nothing.")
def expire_command(settings, keep, max_age_days, grace_hours, sweep: bool, dry_run: bool) -> None:
    """Drop the versions out of retention and delete the bytes (kept chunks, pieces, lists,
    snapshots) only they reference. The published version is always kept."""
    from ingest.store import CubeStore
    from ingest.store.manifests import MANIFEST_HISTORY

    conf = settings.versions
    keep = keep if keep is not None else int(conf.get("keep", MANIFEST_HISTORY))
    age = max_age_days if max_age_days is not None else conf.get("max_age_days")
    grace = grace_hours if grace_hours is not None else conf.get("grace_hours", 1.0)
    store = CubeStore.open(settings.store)
    report = store.expire_versions(keep=keep, max_age=None if age is None else timedelta(days=age),
                                   grace=timedelta(hours=grace), dry_run=dry_run, sweep=sweep)
    verb = "would expire" if dry_run else "expired"
    click.echo(f"{verb} {len(report.expired)} version(s) {_span(report.expired)}; kept "
               f"{len(report.retained)} {_span(report.retained)}"
               + (f"; {len(report.waiting)} inside the grace period" if report.waiting else "")
               + ("" if dry_run else f"; deleted {report.objects_deleted} kept chunk(s) and "
                  f"{report.bookkeeping_deleted} bookkeeping file(s)"))
    if sweep:
        n = sum(report.swept.values())
        parts = ", ".join(f"{c} {name}" for name, c in sorted(report.swept.items())) or "nothing"
        click.echo(f"{'would sweep' if dry_run else 'swept'} {n} unreferenced object(s) "
                   f"({report.swept_bytes} bytes): {parts}")


def _span(vs: list[int]) -> str:
    return f"({vs[0]}..{vs[-1]})" if vs else ""


@click.command("upgrade")
@cube_options
def upgrade(settings) -> None:
    """Give a cube of an earlier release the bookkeeping of this one (format 2), in place and
    crash-safe (one commit through the journal; the version number and every Zarr key stay).
    A cube also upgrades itself on its next commit."""
    from ingest.store import CubeStore

    store = CubeStore.open(settings.store)
    if store.upgrade():
        click.echo(f"upgraded {store.url} (version {store.version()}) to bookkeeping format 2")
    else:
        click.echo(f"{store.url} already has bookkeeping format 2")
