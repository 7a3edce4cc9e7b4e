"""Multiscale overviews of the imagery groups, stored inside the cube (DESIGN.md "Overviews").

``build_overviews`` creates them for an existing cube (``s2ingest overviews``);
``update_overviews`` is the one publish hook (``ingest.engine``) that keeps them equal to a
coarsening of the native data, inside the same commit.
"""
from .aggregate import halve, reduction
from .pyramid import (
    OVERVIEWS, build_overviews, has_overviews, level_factors, level_path, level_shape,
    level_transform, levels_of, multiscales_attrs, update_overviews,
)

__all__ = [
    "OVERVIEWS", "build_overviews", "halve", "has_overviews", "level_factors", "level_path",
    "level_shape", "level_transform", "levels_of", "multiscales_attrs", "reduction",
    "update_overviews",
]
