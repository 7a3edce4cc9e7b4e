"""``s2ingest layers add|list`` and ``s2ingest stats``: reference layers and zonal statistics.

Thin shells over ``ingest.layers``; the main CLI maps LayerError etc. to exit codes.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ingest import holders
from ingest.errors import CatalogError, ConfigError
from ingest.grid import get_grid
from ingest.layers import add_layer, list_layers
from ingest.layers.codes import GROUPS
from ingest.layers.publish import LayerRecord
from ingest.layers.stats import cube_stats, write_table
from ingest.cli.options import cube_options, progress_option


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
@click.option("--group", type=click.Choice(GROUPS), required=True, help="Layer group.")
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
    """Rasterise vector FILE (GeoPackage, Shapefile, GeoJSON; any CRS) into GROUP."""
    records = add_layer(settings.store, group, file, edition=edition, attribute=attribute,
                        variable=variable, force=force, grid=get_grid(settings.grid),
                        name_attribute=name_attribute, progress=progress)
    if all(r.unchanged for r in records):
        for r in records:
            click.echo(f"/{r.group}/{r.variable} edition {r.edition} is already published from "
                       f"{r.source_name} (same sha256); nothing to do (--force rewrites it)")
        _record(settings.db_url, records)
        return
    for r in records:
        verb = "replaced" if r.replaced else "added"
        click.echo(f"{verb} /{r.group}/{r.variable} edition {r.edition}: {r.n_features} features, "
                   f"{r.n_pixels} pixels in {r.n_chunks} chunks from {r.source_name}")
    _record(settings.db_url, records)


def _record(db_url: str, records: list[LayerRecord]) -> None:
    """The catalog side: one cube version for this publish, one row per layer variable."""
    try:
        from sqlalchemy import select

        from catalog import Publish, open_catalog, record_layer, record_publish, session_scope
    except ImportError:  # pragma: no cover - catalog not installed
        return
    try:
        engine = open_catalog(db_url)
        with session_scope(engine) as s:
            version = records[0].version  # the store's version of this commit
            if s.scalar(select(Publish).where(Publish.version == version)) is None:
                record_publish(s, group=f"/{records[0].group}", version=version, product_ids=[],
                               worker=f"layers@{holders.me()}",
                               n_chunks_written=sum(r.n_chunks for r in records))
            for r in records:
                record_layer(s, group=r.group, name=r.variable, edition=str(r.edition),
                             source_name=r.source_name, sha256=r.sha256, version=version,
                             attribute=r.attribute)
    except CatalogError as exc:
        raise CatalogError(f"{exc} (the layer is in the store; rerun with --force to record it)") from exc


@layers.command("list")
@cube_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(settings, as_json: bool) -> None:
    """Published layers: group, variable, edition, source and checksum."""
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
@click.option("--orbit", type=click.IntRange(1, 143), default=None, help="Relative orbit [config, 51].")
@click.option("--valid-scl", default=None, metavar="CLASSES",
              help="Only pixels whose SCL is one of these, e.g. 4,5 (vegetation, bare).")
@click.option("--bbox", nargs=4, type=float, default=None, metavar="LEFT BOTTOM RIGHT TOP",
              help="Only this area (grid CRS) [default: where the zone layer has data].")
@click.option("--start", default=None, help="First date (inclusive), e.g. 2023-04-01.")
@click.option("--end", default=None, help="Last date (inclusive).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output table: .csv or .parquet.")
@progress_option
def stats(settings, by, edition, variable, kind, orbit, valid_scl, bbox, start, end, out, progress) -> None:
    """Per-zone statistics of a cube variable per date (e.g. mean NDVI per municipality).

    \b
    --stat mean:    zone, [name], time, sum, count, mean
    --stat classes: zone, time, class, count (e.g. --variable SCL: pixels per scene class)
    """
    layer_group, _, layer = by.strip("/").rpartition("/")
    if not layer_group:
        raise ConfigError(f"--by {by!r}: give GROUP/VARIABLE, e.g. NL/municipality")
    orbit = orbit or settings.orbit
    df = cube_stats(settings.store, group=f"S2/R{orbit:03d}", variable=variable,
                    layer_group=layer_group, layer=layer, edition=edition, kind=kind,
                    bounds=tuple(bbox) if bbox else None, start=start, end=end,
                    valid_scl=_ints(valid_scl), grid=get_grid(settings.grid), progress=progress)
    write_table(df, out)
    click.echo(f"wrote {len(df)} rows to {out}")
