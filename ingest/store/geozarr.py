"""GeoZarr attributes of the cube's groups (a contract, DESIGN.md §3): the zarr-conventions
``proj``, ``spatial`` and ``multiscales`` conventions, and ``dggs`` for the quality atlas.

They are written beside the CF attributes (``grid_mapping``, ``spatial_ref``, ``_CRS``), which
stay: GDAL and rioxarray read either. Each convention is declared in the node's
``zarr_conventions`` list by its convention metadata object (uuid, schema and spec URLs of the
published revision: the ones zarr-cm, the conventions' reference implementation, writes).

* ``proj:code``; ``spatial:dimensions`` ``["y", "x"]``, ``spatial:transform`` (the affine
  ``[a, b, c, d, e, f]``: x = a·col + b·row + c, y = d·col + e·row + f, pixel corners),
  ``spatial:shape`` ``[rows, columns]``, ``spatial:bbox`` ``[xmin, ymin, xmax, ymax]`` and
  ``spatial:registration`` ``"pixel"`` on the imagery group, the ``overviews`` group and every
  level group;
* ``multiscales`` (``layout``: one entry per level, ``derived_from`` the previous level,
  ``transform.scale`` relative to it, ``spatial:transform``/``spatial:shape`` absolute) on the
  ``overviews`` group (assets ``"2"``, ``"4"``, …) and on the imagery group (assets
  ``"overviews/2"``, …) once overviews exist;
* ``dggs`` on the quality group: H3 at the atlas' resolution over the ``cell`` dimension.
"""
from __future__ import annotations

import math

from ingest.grid import CubeGrid

MULTISCALES = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}
PROJ = {
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL = {
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
DGGS = {
    "uuid": "7b255807-140c-42ca-97f6-7a1cfecdbc38",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/dggs/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/dggs/blob/v1/README.md",
    "name": "dggs",
    "description": "Discrete Global Grid Systems convention for zarr",
}


def level_shape(grid: CubeGrid, factor: int) -> list[int]:
    return [math.ceil(n / factor) for n in grid.shape]


def affine(grid: CubeGrid, factor: int = 1) -> list[float]:
    """``spatial:transform`` of a level ``factor`` times coarser (same upper-left corner)."""
    left, _, _, top = grid.bounds
    r = grid.resolution * factor
    return [r, 0.0, left, 0.0, -r, top]


def bbox(grid: CubeGrid, factor: int = 1) -> list[float]:
    """``spatial:bbox`` of a level (its last row and column may reach past the grid)."""
    left, _, _, top = grid.bounds
    rows, cols = level_shape(grid, factor)
    r = grid.resolution * factor
    return [left, top - rows * r, left + cols * r, top]


def spatial_attrs(grid: CubeGrid, factor: int = 1) -> dict:
    """``proj:`` and ``spatial:`` attributes of a raster group (level ``factor``)."""
    return {"proj:code": grid.crs, "spatial:dimensions": ["y", "x"],
            "spatial:transform": affine(grid, factor), "spatial:shape": level_shape(grid, factor),
            "spatial:bbox": bbox(grid, factor), "spatial:registration": "pixel"}


def conventions(*cmos: dict) -> dict:
    return {"zarr_conventions": [dict(c) for c in cmos]}


def raster_group_attrs(grid: CubeGrid, factor: int = 1) -> dict:
    """The declared ``proj``/``spatial`` conventions of a raster group."""
    return {**conventions(PROJ, SPATIAL), **spatial_attrs(grid, factor)}


def multiscales_layout(grid: CubeGrid, factors: list[int], prefix: str = "") -> list[dict]:
    """One layout entry per level: asset ``prefix + str(f)``, derived from the previous one."""
    layout, prev = [], None
    for f in factors:
        entry = {"asset": f"{prefix}{f}",
                 "transform": {"scale": [float(f // prev), float(f // prev)] if prev else [float(f), float(f)],
                               "translation": [0.0, 0.0]},
                 "resampling_method": "average",
                 "spatial:transform": affine(grid, f), "spatial:shape": level_shape(grid, f)}
        if prev is not None:
            entry["derived_from"] = f"{prefix}{prev}"
        layout.append(entry)
        prev = f
    return layout


def imagery_group_attrs(grid: CubeGrid, factors: list[int] | None = None) -> dict:
    """GeoZarr attributes of an imagery group; ``multiscales`` when it has overview levels."""
    if not factors:
        return raster_group_attrs(grid)
    return {**conventions(MULTISCALES, PROJ, SPATIAL), **spatial_attrs(grid),
            "multiscales": {"layout": multiscales_layout(grid, factors, "overviews/"),
                            "resampling_method": "average"}}


def dggs_attrs(resolution: int, dimension: str = "cell", coordinate: str = "cell") -> dict:
    """The ``dggs`` convention of the quality atlas: H3 cells at ``resolution``."""
    return {**conventions(DGGS),
            "dggs": {"name": "h3", "refinement_level": int(resolution), "spatial_dimension": dimension,
                     "coordinate": coordinate, "compression": "none"}}
