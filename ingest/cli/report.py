"""``s2ingest report``: per-date QA of the cube from its quality atlas (read only)."""
from __future__ import annotations

import json

import click

from ingest.cli.options import cube_options, orbit_option, time_option


@click.command("report")
@cube_options
@orbit_option
@time_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML report (table and maps) to this file.")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Write the H3 map of clear-sky frequency over the period to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def command(settings, orbit, time_range, html_path, map_path, as_json) -> None:
    """Per time step: platform, contributing tiles and baselines, the valid share of the
    cube's footprint and the clear and cloud fractions of the valid pixels; with --html a
    small cloud map per step and the clear-sky frequency per H3 cell over the period.
    Reads the quality atlas and the provenance columns only."""
    from ingest.quality.report import build_report, clear_sky_png, format_table, write_html
    from ingest.store import CubeStore, group_path

    store = CubeStore.open(settings.store)
    report = build_report(store, group_path(orbit or settings.orbit), time_range)
    if html_path:
        write_html(report, html_path)
    if map_path:
        with open(map_path, "wb") as f:
            f.write(clear_sky_png(report))
    if as_json:
        click.echo(json.dumps({"group": f"/{report.group}", "version": report.version,
                               "h3_resolution": report.resolution,
                               "steps": [s.to_json() for s in report.steps]}, indent=1))
    else:
        click.echo(format_table(report))
