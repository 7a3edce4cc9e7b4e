"""``s2ingest quality``: select dates by cloud over an area (read only); ``quality rebuild``."""
from __future__ import annotations

import click

from ingest.cli.options import (
    bbox_options, commit_catalog, complete_unfinished, cube_options, orbit_option, progress_option,
    time_option,
)


@click.group("quality", invoke_without_command=True)
@cube_options
@orbit_option
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Area of interest: a vector file (GeoPackage, GeoJSON, shapefile); all its polygons.")
@bbox_options
@click.option("--max-cloud", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Keep dates whose cloud fraction (SCL 8, 9, 10 of the valid pixels) is below this.")
@click.option("--min-valid", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Keep dates with at least this share of the area holding data.")
@time_option
@click.option("--all", "show_all", is_flag=True, help="List every date, with a 'selected' column.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (every date, with 'selected').")
@click.pass_context
def command(ctx, settings, orbit, aoi, bbox, bbox_crs, max_cloud, min_valid, time_range, show_all,
            as_json) -> None:
    """List the dates whose area-weighted cloud fraction over an area is below --max-cloud,
    from the cube's quality atlas only (no imagery is read; read only).

    Every H3 cell counts with the share of its area inside the area; exact when the area is
    a union of cells, otherwise 'uncertainty' is the share of the valid pixels in cells cut
    by the area's outline. Without --aoi/--bbox the whole grid is the area.

    \b
        s2ingest quality --store nl.zarr --bbox 4.30,51.97,4.42,52.03 --bbox-crs EPSG:4326 --max-cloud 20
        s2ingest quality rebuild --store nl.zarr
    """
    if ctx.invoked_subcommand is not None:
        return
    from ingest.errors import ConfigError
    from ingest.quality.select import aoi_from_bbox, aoi_from_file, dumps, select_dates
    from ingest.store import CubeStore, group_path

    if aoi and bbox:
        raise ConfigError("give --aoi or --bbox, not both")
    store = CubeStore.open(settings.store)
    area = None
    if aoi:
        area = aoi_from_file(aoi, store.grid)
    elif bbox:
        area = aoi_from_bbox(bbox, store.grid, bbox_crs)
    rows = select_dates(store, group=group_path(orbit or settings.orbit), aoi=area,
                        max_cloud=max_cloud, min_valid=min_valid, time_range=time_range)
    if as_json:
        click.echo(dumps(rows))
        return
    shown = rows if show_all else [r for r in rows if r.selected]
    click.echo(f"{'time (UTC)':19}  {'cloud':>7}  {'clear':>7}  {'valid':>7}  {'±':>6}"
               + ("  selected" if show_all else ""))
    for r in shown:
        def pct(v):
            return "      -" if v != v else f"{100 * v:6.2f}%"
        click.echo(f"{r.time:%Y-%m-%dT%H:%M:%S}  {pct(r.cloud)}  {pct(r.clear)}  {pct(r.valid)}  "
                   f"{pct(r.uncertainty)[1:]}" + (f"  {'yes' if r.selected else 'no'}" if show_all else ""))
    click.echo(f"{sum(r.selected for r in rows)} of {len(rows)} dates selected", err=True)


@command.command("rebuild")
@cube_options
@orbit_option
@click.option("--h3-resolution", type=click.IntRange(5, 11), default=None,
              help="H3 resolution of the cells [default: the stored one, else 7 (~5.2 km²)].")
@progress_option
def rebuild(settings, orbit, h3_resolution, progress) -> None:
    """Recompute the quality atlas of an existing cube from its SCL/CLD/SNW chunks, in one
    commit (a new store version, recorded in the catalog); none when it is already current."""
    from tqdm.auto import tqdm

    from ingest.publish.commits import publish_quality
    from ingest.store import group_path

    group = group_path(orbit or settings.orbit)
    bar = tqdm(total=0, unit="chunk", desc="quality", disable=not progress)

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    complete_unfinished(settings.store)
    try:
        p = publish_quality(settings.store, group, catalog=commit_catalog(settings),
                            resolution=h3_resolution, progress=tick)
    finally:
        bar.close()
    if p.changed:
        click.echo(f"quality atlas of /{group} rebuilt: version {p.version}")
    else:
        click.echo(f"quality atlas of /{group} is current (last written in version {p.version}); "
                   "nothing to publish")
