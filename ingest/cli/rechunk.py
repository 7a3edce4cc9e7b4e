"""``s2ingest rechunk``: a rechunked (or sharded) copy of one version of a cube."""
from __future__ import annotations

import click

from ingest.cli.options import copy_options, progress_option


@click.command("rechunk")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST", type=click.Path())
@click.option("--chunks", required=True, metavar="DIM=N,...",
              help="Chunk length per dimension, -1 for the whole axis, e.g. time=-1,y=125,x=100 "
                   "(dimensions not named keep the source's chunks).")
@click.option("--shards", default=None, metavar="DIM=N,...",
              help="Shard length per dimension (with --zarr-format 3), e.g. time=5: inner chunks "
                   "of --chunks inside shards of this size.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="Zarr format of the copy.")
@click.option("--max-mem", default="2GB", show_default=True, metavar="SIZE",
              help="Most memory the copy's values may take at once, all threads together (plus "
                   "a stated overhead, see README); with --scheduler: what one task may hold.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, metavar="N",
              help="Local threads copying at once [default: the cores, at most 4]; each holds "
                   "at most --max-mem / N.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on this dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 "
                   "[default: local threads].")
@copy_options
@progress_option
def command(source: str, destination: str, chunks: str, shards: str | None, zarr_format: str,
            max_mem: str, threads: int | None, scheduler: str | None, selection: dict,
            progress: bool) -> None:
    """Copy one version of the cube at SRC (path, http(s):// or s3:// URL), or a subset of it,
    to a new local Zarr store DST, rechunked: e.g. --chunks time=-1,y=125,x=100 for fast pixel
    time series, or --zarr-format 3 --chunks time=1 --shards time=5 for cheap single dates.
    Values, attributes, encodings, coordinates and the grid mapping are kept; the source URL
    and version are recorded in the attributes. Written under a temporary name and renamed at
    the end: DST appears only complete.
    """
    from ingest.copies.plan import parse_size
    from ingest.copies.rechunk import rechunk

    report = rechunk(source, destination, chunks=chunks, shards=shards,
                     zarr_format=int(zarr_format), max_mem=parse_size(max_mem),
                     scheduler=scheduler, threads=threads, progress=progress, **selection)
    layout = ",".join(f"{d}={n}" for d, n in report.chunks.items())
    if report.shards:
        layout += " in shards " + ",".join(f"{d}={n}" for d, n in report.shards.items())
    click.echo(f"rechunked version {report.version} of {report.source} /{report.group} "
               f"({len(report.plans)} variable{'' if len(report.plans) == 1 else 's'}, "
               f"{report.nbytes / 1e6:.1f} MB) to "
               f"{report.destination} (Zarr format {report.zarr_format}, chunks {layout})")
