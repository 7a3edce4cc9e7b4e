"""``s2ingest synth``: write synthetic, structurally faithful L2A products."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from ingest.errors import ConfigError


def _when(value: str) -> datetime:
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y%m%dT%H%M%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise ConfigError(f"bad datatake time {value!r}; use e.g. 2023-06-14T10:56:21")


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tile", "tiles", multiple=True, default=["31UET"], show_default=True,
              help="MGRS tile on the real Sentinel-2 grid (repeatable), e.g. 31UET, 32ULC.")
@click.option("--time", "times", multiple=True, default=["2023-06-14T10:56:21"], show_default=True,
              help="Datatake sensing start, UTC (repeatable).")
@click.option("--platform", type=click.Choice(["S2A", "S2B", "S2C"]), default="S2A", show_default=True)
@click.option("--baseline", default="05.09", show_default=True,
              help="Processing baseline, e.g. 02.14 (no BOA_ADD_OFFSET) or 04.00/05.09 (offset -1000).")
@click.option("--orbit", type=int, default=51, show_default=True, help="Relative orbit.")
@click.option("--window", nargs=4, type=int, default=None, metavar="ROW COL HEIGHT WIDTH",
              help="Only this window of the 10980x10980 tile, in 10 m pixels (multiples of 6). "
                   "Default: the full tile.")
@click.option("--content", type=click.Choice(["scene", "coords"]), default="scene", show_default=True,
              help="scene: fields, water, towns, clouds; coords: pixel values encode their position.")
@click.option("--format", "fmt", type=click.Choice(["safe", "eopf"]), default="safe", show_default=True,
              help="safe: a .SAFE product (JPEG 2000); eopf: an EOPF Zarr product (<name>.zarr) of the same "
                   "scene, with the same pixel values.")
@click.option("--zip/--safe", "as_zip", default=False, show_default=True,
              help="Write <name>.zip (as hubs deliver; EOPF: <name>.zarr.zip) instead of a folder.")
@click.option("--overwrite", is_flag=True, help="Replace products of the same name already in OUT_DIR.")
def command(out_dir: Path, tiles, times, platform, baseline, orbit, window, content, fmt, as_zip,
            overwrite) -> None:
    """Write synthetic Sentinel-2 L2A products (SAFE or EOPF Zarr) into OUT_DIR.

    The products follow the real format on the real tile grid. SAFE: names, folders,
    MTD_MSIL2A.xml, MTD_TL.xml, manifest.safe with checksums, lossless JP2 for every band and for
    SCL, CLD, SNW, WVP, AOT, so GDAL's SENTINEL2 driver and s2ingest read them like real ones.
    EOPF (--format eopf): a Zarr v2 store with consolidated metadata, the real group tree,
    attributes, chunking (1830/915/305) and Blosc zstd encodings, holding the same scene.

    \b
    Example: two tiles of one datatake, a 1200x1200 px window each, zipped:
        s2ingest synth products/ --tile 31UET --tile 31UFT --window 4800 4800 1200 1200 --zip
    The same scene as EOPF Zarr products:
        s2ingest synth products/ --tile 31UET --window 4800 4800 1200 1200 --format eopf
    """
    from ingest.synth import make_product

    out_dir.mkdir(parents=True, exist_ok=True)
    for t in times:
        for tile in tiles:
            path = make_product(out_dir, tile=tile, datatake_start=_when(t), platform=platform,
                                baseline=baseline, relative_orbit=orbit,
                                window=tuple(window) if window else None, content=content,
                                as_zip=as_zip, overwrite=overwrite, format=fmt)
            click.echo(str(path))
