"""The demo: a small real cube from synthetic products, built on this machine in minutes.

Two adjacent tiles of relative orbit 51 (31UET and 31UFT, both UTM 31N) cut to the area
around Delft and the Hoeksche Waard, a handful of datatakes of one season from two
platforms and both baseline families (PB 02.14 without and 05.09 with BOA_ADD_OFFSET), the
reference layers of that area, and a PNG quick-look.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pyproj import Transformer

from .config import Settings
from .grid import NL_GRID
from .synth import make_product
from .synth.tiles import get_tile

# RD bounds of the demo area (left, bottom, right, top): Delft in the north, the Hoeksche
# Waard in the south; the 31UET/31UFT overlap runs through it.
DEMO_BOUNDS = (80_000.0, 412_000.0, 96_000.0, 450_000.0)
DEMO_POINT = (94_005.0, 420_245.0)  # a field in the Hoeksche Waard: green-up, harvest
DEMO_TILES = ("31UET", "31UFT")
UTC = timezone.utc
# (datatake sensing start, platform, processing baseline)
DEMO_DATATAKES = (
    (datetime(2021, 3, 22, 10, 56, 31, tzinfo=UTC), "S2A", "02.14"),
    (datetime(2021, 4, 26, 10, 56, 19, tzinfo=UTC), "S2B", "05.00"),
    (datetime(2021, 5, 21, 10, 56, 21, tzinfo=UTC), "S2A", "02.14"),
    (datetime(2021, 6, 20, 10, 56, 21, tzinfo=UTC), "S2B", "05.00"),
    (datetime(2021, 7, 25, 10, 56, 19, tzinfo=UTC), "S2A", "05.00"),
    (datetime(2021, 9, 3, 10, 56, 19, tzinfo=UTC), "S2B", "02.14"),
)


def tile_window(tile: str, bounds_rd: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """The window (row, col, height, width; multiples of 6 px) of ``tile`` covering RD bounds."""
    info = get_tile(tile)
    t = Transformer.from_crs("EPSG:28992", f"EPSG:{info.epsg}", always_xy=True)
    left, bottom, right, top = bounds_rd
    xs, ys = t.transform([left, right, right, left], [top, top, bottom, bottom])
    c0 = max(0, math.floor((min(xs) - info.ulx) / 60) * 6)
    c1 = min(10980, math.ceil((max(xs) - info.ulx) / 60) * 6)
    r0 = max(0, math.floor((info.uly - max(ys)) / 60) * 6)
    r1 = min(10980, math.ceil((info.uly - min(ys)) / 60) * 6)
    if c1 <= c0 or r1 <= r0:
        return None
    return (r0, c0, r1 - r0, c1 - c0)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def products(self) -> Path:
        return self.root / "products"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def store(self) -> Path:
        return self.root / "cube.zarr"

    @property
    def quicklook(self) -> Path:
        return self.root / "quicklook.png"


def make_demo_products(directory: Path, echo: Callable[[str], None] = print) -> list[Path]:
    """Write the demo products (skips those already there, so a rerun is quick)."""
    out = []
    for when, platform, baseline in DEMO_DATATAKES:
        for tile in DEMO_TILES:
            window = tile_window(tile, DEMO_BOUNDS)
            if window is None:
                continue
            echo(f"  synth {platform} {when:%Y-%m-%d} {tile} PB {baseline}")
            out.append(make_product(directory, tile=tile, datatake_start=when, platform=platform,
                                    baseline=baseline, window=window, overwrite=False))
    return out


def publish_demo_layers(paths: DemoPaths, settings: Settings, echo: Callable[[str], None] = print) -> None:
    """Rasterise the synthetic reference layers into /NL, /NL/BBG and /NL/BRP."""
    from .cli.layers import _record
    from .layers import add_layer
    from .layers.synth import make_demo_files

    files = make_demo_files(paths.layers)
    jobs = [
        ("NL", files["gemeenten"], 2023, "statcode", "municipality"),
        ("NL", files["provincies"], 2023, "statcode", "province"),
        ("NL", files["nederland"], 2023, None, "border"),
        ("NL/BBG", files["bbg"], 2015, "BG2015", None),
    ] + [("NL/BRP", path, int(name[3:]), "gewascode", None)
         for name, path in files.items() if name.startswith("brp")]
    for group, path, edition, attribute, variable in jobs:
        records = add_layer(settings.store, group, path, edition=edition, attribute=attribute,
                            variable=variable, force=True, grid=NL_GRID)
        _record(settings.db_url, records)
        echo(f"  layer /{group} {', '.join(r.variable for r in records)} {edition} from {path.name}")


def run_demo(root: str | Path, *, progress: bool = True, echo: Callable[[str], None] = print) -> DemoPaths:
    """Build the demo cube under ``root``; returns where everything went."""
    from catalog.db import upgrade

    from .engine import Cube
    from .quicklook import write_quicklook
    from .sources import make_source
    from .sync import SyncOptions, sync

    paths = DemoPaths(Path(root))
    paths.root.mkdir(parents=True, exist_ok=True)
    settings = Settings(store=paths.store)
    echo(f"1/4 synthetic products -> {paths.products}")
    make_demo_products(paths.products, echo)
    echo(f"2/4 cube -> {paths.store}")
    Cube(paths.store, NL_GRID, 51).ensure()
    upgrade(settings.db_url)
    report = sync(settings, make_source("local", directory=paths.products),
                  SyncOptions(orbit=51, progress=progress), echo=echo)
    echo(f"  published {len(report.published)} products, {report.time_steps} time steps, "
         f"version {report.version}")
    echo("3/4 reference layers")
    publish_demo_layers(paths, settings, echo)
    echo(f"4/4 quick-look -> {paths.quicklook}")
    write_quicklook(paths.store, paths.quicklook, DEMO_BOUNDS, DEMO_POINT,
                    title="s2ingest demo: synthetic Sentinel-2 L2A, relative orbit 51, RD New 10 m")
    return paths
