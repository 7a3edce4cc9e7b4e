"""``s2ingest mirror``: copy one published version of a cube, verified and incremental."""
from __future__ import annotations

import json
import time

import click

from ingest.cli.options import progress_option, s3_endpoint_option, selection_options


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Progress:
    """A bar with rate and ETA on a terminal; a plain line every 10 s in a log."""

    def __init__(self, bar: bool) -> None:
        self.bar = None
        self.use_bar = bar
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.use_bar:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="mirror")
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done < total and now - self.last < 10:
            return
        self.last = now
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0
        eta = f", ETA {(total - done) / rate:.0f} s" if rate > 0 and done < total else ""
        click.echo(f"mirror: {_size(done)} of {_size(total)} "
                   f"({100 * done / total if total else 100:.0f}%){eta}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("mirror")
@click.argument("source", metavar="SRC")
@click.argument("copy", metavar="DST")
@selection_options
@click.option("--version", "version", type=click.IntRange(1), default=None,
              help="The version to copy [default: the newest, followed if it changes meanwhile].")
@click.option("--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Parallel connections to the source.")
@click.option("--retries", type=click.IntRange(0, 20), default=4, show_default=True,
              help="Retries of a failed or damaged read, with backoff.")
@click.option("--quick", is_flag=True,
              help="Check keys already in the copy by size only (default: size and sha256).")
@click.option("--force", is_flag=True, help="Replace a cube at DST that is not a copy.")
@click.option("--lock-timeout", type=click.FloatRange(0), default=3600, show_default=True,
              help="Seconds to wait for another writer of DST.")
@click.option("--transfer-timeout", type=click.FloatRange(0, min_open=True), default=600,
              show_default=True, metavar="SECONDS",
              help="Give up (exit 6) when one key takes longer than this to arrive, retries "
                   "included: a stalled or too slow source.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@progress_option
@s3_endpoint_option
def command(source: str, copy: str, selection, version, jobs, retries, quick, force,
            lock_timeout, transfer_timeout, as_json, progress) -> None:
    """Make DST a copy of exactly one published version of the cube at SRC.

    SRC is a local path, an s3:// URL or the http(s):// URL of a cube on any static web
    server; DST a local path or an s3:// URL. Every key is checked against the version's manifest (size, sha256). A rerun
    copies only what changed, deletes what is gone, fetches again any key damaged in the
    copy, and resumes an interrupted run. If SRC publishes a newer version during the copy,
    the copy moves to it (with --version it stops instead). The copy's consolidated metadata
    and manifest are written last: it is itself a cube (`s2ingest verify --deep DST`).

    With --bbox/--time/--variables/--groups the copy is a smaller cube: the area grows to
    whole chunks of the grid and the time range to whole time chunks, so every chunk of the
    copy is a source chunk byte for byte.
    """
    from ingest.publish.copy import publish_copy

    bar = _Progress(progress)
    try:
        report = publish_copy(source, copy, selection=selection, version=version, jobs=jobs,
                        retries=retries, quick=quick, force=force, lock_timeout=lock_timeout,
                        transfer_timeout=transfer_timeout, progress=bar,
                        on_wait=lambda msg: click.echo(msg, err=True))
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.__dict__, indent=1))
        return
    for v in report.moves:
        click.echo(f"the source moved on from version {v} during the copy")
    if not report.changed:
        click.echo(f"{report.copy} is already version {report.version} of {report.source} "
                   f"({report.keys} keys checked)")
        return
    extra = []
    if report.resumed:
        extra.append(f"{report.resumed} from an interrupted run")
    if report.repaired:
        extra.append(f"{report.repaired} repaired")
    if report.deleted:
        extra.append(f"{report.deleted} deleted")
    click.echo(f"{report.copy} is now version {report.version} of {report.source}: "
               f"{report.fetched} keys fetched ({_size(report.fetched_bytes)}), {report.kept} kept"
               + (", " + ", ".join(extra) if extra else "") + f" in {report.seconds:.1f} s")
