"""``s2ingest layers add|list`` and ``s2ingest stats``: reference layers and zonal statistics.

Thin shells over ``ingest.layers`` and ``ingest.publish.commits``; the main CLI maps
LayerError etc. to exit codes.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ingest.errors import ConfigError
from ingest.cli.options import (
    LazyChoice, bbox_options, commit_catalog, complete_unfinished, cube_options, orbit_option,
    progress_option, time_option,
)


def _groups() -> tuple[str, ...]:
    from ingest.layers.codes import GROUPS

    return tuple(GROUPS)


@click.group("layers")
def layers() -> None:
    """Reference layers (/NL, /NL/BBG, /NL/BRP) rasterised onto the cube grid.

    \b
    Pixel-centre rule: a pixel takes a polygon's code when its centre lies inside
    the polygon (GDAL all_touched=False); where polygons overlap, the later one wins.
    Codes: 0 = no feature (the fill value). Open with
        xr.open_zarr(STORE, group="/NL/BRP", consolidated=True)
    """


@layers.command("add")
@cube_options
@click.option("--group", type=LazyChoice(_groups), required=True, help="Layer group.")
@click.option("--edition", type=int, required=True, help="Edition / reference year, e.g. 2023.")
@click.option("--attribute", default=None,
              help="Field with the codes: statcode (CBS), BG2015 (BBG), gewascode (BRP). "
                   "Not needed for --variable border.")
@click.option("--variable", default=None,
              help="Layer variable. Default: landuse (NL/BBG), crop + parcel (NL/BRP); in NL "
                   "municipality/province from GM/PV codes, or border (1 = inside).")
@click.option("--name-attribute", default=None,
              help="Field with the class names [statnaam for NL, gewas for NL/BRP].")
@click.option("--force", is_flag=True, help="Replace an edition that is already published.")
@progress_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def add(settings, group, edition, attribute, variable, name_attribute, force, progress, file) -> None:
    """Rasterise vector FILE (GeoPackage, Shapefile, GeoJSON; any CRS) into GROUP, in one
    commit recorded in the catalog."""
    from ingest.store.location import grid_for
    from ingest.publish.commits import publish_layer

    complete_unfinished(settings.store)
    records = publish_layer(settings.store, group, file, catalog=commit_catalog(settings), edition=edition,
                            attribute=attribute, variable=variable, force=force,
                            grid=grid_for(settings.store, settings.grid), name_attribute=name_attribute, progress=progress)
    for r in records:
        if r.unchanged:
            click.echo(f"/{r.group}/{r.variable} edition {r.edition} is already published from "
                       f"{r.source_name} (same sha256); nothing to do (--force rewrites it)")
        else:
            verb = "replaced" if r.replaced else "added"
            click.echo(f"{verb} /{r.group}/{r.variable} edition {r.edition}: {r.n_features} features, "
                       f"{r.n_pixels} pixels in {r.n_chunks} chunks from {r.source_name}")


@layers.command("list")
@cube_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(settings, as_json: bool) -> None:
    """Published layers: group, variable, edition, source and checksum."""
    from ingest.layers import list_layers

    for row in list_layers(settings.store):
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
        else:
            click.echo(f"/{row['group']}/{row['variable']}\t{row['edition']}\t{row['source']}\t"
                       f"{row['sha256'][:12]}\t{row['n_pixels']} px\t{row['added_at']}")


def _ints(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {value!r}") from None


@click.command("stats")
@cube_options
@click.option("--by", "by", required=True, metavar="GROUP/VARIABLE",
              help="Zones: a layer, e.g. NL/municipality, NL/province, NL/BRP/parcel.")
@click.option("--edition", type=int, required=True, help="Edition of the zone layer.")
@click.option("--variable", default="NDVI", show_default=True,
              help="Cube variable (B04, SCL, ...) or NDVI.")
@click.option("--stat", "kind", type=click.Choice(["mean", "classes"]), default="mean", show_default=True,
              help="mean: mean/sum/count of valid pixels; classes: pixel count per class (e.g. SCL).")
@orbit_option
@click.option("--valid-scl", default=None, metavar="CLASSES",
              help="Only pixels whose SCL is one of these, e.g. 4,5 (vegetation, bare).")
@bbox_options
@time_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output table: .csv or .parquet.")
@progress_option
def stats(settings, by, edition, variable, kind, orbit, valid_scl, bbox, bbox_crs, time_range, out,
          progress) -> None:
    """Per-zone statistics of a cube variable per date (e.g. mean NDVI per municipality),
    over --bbox [default: where the zone layer has data] and --time [default: every date].

    \b
    --stat mean:    zone, [name], time, sum, count, mean
    --stat classes: zone, time, class, count (e.g. --variable SCL: pixels per scene class;
                    a row only where a class occurs in the zone on that date, no zero counts)
    """
    from ingest.store.location import grid_for
    from ingest.layers.stats import check_table_path, cube_stats, write_table

    check_table_path(out)  # a bad --out fails now, not after the computation
    layer_group, _, layer = by.strip("/").rpartition("/")
    if not layer_group:
        raise ConfigError(f"--by {by!r}: give GROUP/VARIABLE, e.g. NL/municipality")
    orbit = orbit or settings.orbit
    start, end = time_range or (None, None)
    df = cube_stats(settings.store, group=f"S2/R{orbit:03d}", variable=variable,
                    layer_group=layer_group, layer=layer, edition=edition, kind=kind,
                    bounds=bbox, bounds_crs=bbox_crs, start=start, end=end,
                    valid_scl=_ints(valid_scl), grid=grid_for(settings.store, settings.grid), progress=progress)
    write_table(df, out)
    click.echo(f"wrote {len(df)} rows to {out}")
