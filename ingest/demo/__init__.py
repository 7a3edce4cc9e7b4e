"""The demo cube: synthetic products of two tiles, reference layers, overviews and a quick-look."""
from ingest.demo.build import (
    DEMO_BOUNDS, DEMO_DATATAKES, DEMO_POINT, DEMO_TILES, DemoPaths, make_demo_products, run_demo,
)

__all__ = ["DEMO_BOUNDS", "DEMO_DATATAKES", "DEMO_POINT", "DEMO_TILES", "DemoPaths",
           "make_demo_products", "run_demo"]
