"""Multiscale overviews of the imagery groups, stored inside the cube (DESIGN.md "Overviews").

``build_overviews`` creates them for an existing cube (``s2ingest overviews``);
``update_overviews`` is the one publish hook (``ingest.publish.engine``) that keeps them equal to a
coarsening of the native data, inside the same commit; ``overview_stream`` lets it compute
level rows while the writer is still warping (``ingest.publish.write.apply_plan``'s ``sink``).
"""
from ingest.overviews.aggregate import halve, reduction
from ingest.overviews.levels import (
    OVERVIEWS, has_overviews, level_factors, level_path, level_shape, level_transform, levels_of,
    multiscales_attrs,
)
from ingest.overviews.pyramid import add_overviews, build_overviews, update_overviews
from ingest.overviews.stream import OverviewStream, overview_stream

__all__ = [
    "OVERVIEWS", "OverviewStream", "add_overviews", "build_overviews", "halve", "has_overviews",
    "level_factors", "level_path", "level_shape", "level_transform", "levels_of", "multiscales_attrs", "overview_stream",
    "reduction", "update_overviews",
]
