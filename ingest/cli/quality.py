"""``s2ingest quality``: select dates by cloud over an area (read only); ``quality rebuild``."""
from __future__ import annotations

import click

from ingest.cli.options import _bbox, _time_range, cube_options, orbit_option, progress_option


@click.group("quality", invoke_without_command=True)
@cube_options
@orbit_option
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Area of interest: a vector file (GeoPackage, GeoJSON, shapefile); all its polygons.")
@click.option("--bbox", callback=_bbox, default=None, metavar="L,B,R,T",
              help="Area of interest as a box, in the grid's CRS or in --bbox-crs.")
@click.option("--bbox-crs", default=None, metavar="CRS", help="CRS of --bbox, e.g. EPSG:4326.")
@click.option("--max-cloud", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Keep dates whose cloud fraction (SCL 8, 9, 10 of the valid pixels) is below this.")
@click.option("--min-valid", type=click.FloatRange(0, 100), default=None, metavar="PERCENT",
              help="Keep dates with at least this share of the area holding data.")
@click.option("--time", "time_range", callback=_time_range, default=None, metavar="START/END",
              help="Only dates in this range, inclusive (either side may be empty).")
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
    if bbox_crs and not bbox:
        raise click.BadParameter("--bbox-crs needs --bbox", param_hint="--bbox-crs")
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
    commit (a new store version)."""
    from tqdm.auto import tqdm

    from ingest.quality.group import rebuild_quality
    from ingest.store import CubeStore, group_path

    group = group_path(orbit or settings.orbit)
    store = CubeStore.open(settings.store)
    bar = tqdm(total=0, unit="chunk", desc="quality", disable=not progress)

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = rebuild_quality(store, group, resolution=h3_resolution, progress=tick)
    bar.close()
    _record_version(settings, store, report, group)
    click.echo(f"quality atlas of /{group} rebuilt: version {report.version}")


def _record_version(settings, store, report, group: str) -> None:
    """The catalog's row for the new version (``s2ingest verify`` expects one), if a catalog exists."""
    from catalog import record_version, session_scope

    from ingest.errors import CatalogError
    from ingest.cli.options import open_existing_catalog

    try:
        engine = open_existing_catalog(settings)
    except CatalogError:
        return  # a cube without a catalog (e.g. a copy): nothing to record
    m = store.manifest(report.version)
    with session_scope(engine) as s:
        record_version(s, report.version, m.get("parent"), report.manifest_sha256, len(m["keys"]),
                       m["changes"], f"/{group}", worker="quality rebuild")
