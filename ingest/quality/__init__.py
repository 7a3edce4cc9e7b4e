"""The quality atlas: per (time step, H3 cell) scene statistics beside the imagery.

- ``cells``: the H3 cell axis of a grid and the exact, cached pixel -> cell map per chunk;
- ``stats``: class counts and means per cell from SCL/CLD/SNW chunks;
- ``group``: the ``quality`` group, staged inside the imagery commit (``update_quality``);
- ``select``: dates whose area-weighted cloud fraction over an AOI is below a threshold;
- ``report``: per-date QA report and maps.
"""
from ingest.quality.cells import DEFAULT_RESOLUTION
from ingest.quality.group import QUALITY, atlas_sums, quality_path, update_quality

__all__ = ["DEFAULT_RESOLUTION", "QUALITY", "atlas_sums", "quality_path", "update_quality"]
