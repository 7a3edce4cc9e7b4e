"""``s2ingest demo``: build a small cube from synthetic products and show how to use it."""
from __future__ import annotations

from pathlib import Path

import click

from ingest.cli.options import progress_option

HOW_TO = """
Done. Open the cube with xarray (locally, or served over HTTP with any static file server):

    import xarray as xr
    cube = xr.open_zarr("{store}", group="/S2/R051", consolidated=True)
    ndvi = (cube.B08 - cube.B04) / (cube.B08 + cube.B04)
    ndvi.sel(x={x:.0f}, y={y:.0f}, method="nearest").compute()
    nl = xr.open_zarr("{store}", group="/NL", consolidated=True)

Quick-look: {png}
Status:     s2ingest status --store {store}
"""


@click.command("demo")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="s2ingest-demo")
@progress_option
def command(directory: Path, progress: bool) -> None:
    """Build a demo cube under DIRECTORY (default ./s2ingest-demo) in a few minutes.

    Synthetic L2A products of two adjacent tiles (31UET, 31UFT) over Delft and the Hoeksche
    Waard, six datatakes of 2021 from S2A and S2B in both processing-baseline families, are
    ingested into DIRECTORY/cube.zarr with its catalog; the reference layers /NL, /NL/BBG and
    /NL/BRP are published beside them; DIRECTORY/quicklook.png shows a true-colour scene and
    an NDVI time series. Running it again reuses what is there.
    """
    from ingest.demo import DEMO_POINT, run_demo

    paths = run_demo(directory, progress=progress, echo=click.echo)
    click.echo(HOW_TO.format(store=paths.store, png=paths.quicklook, x=DEMO_POINT[0], y=DEMO_POINT[1]))
