"""``make_product(..., format=)``: one synthetic product of a scene, as SAFE or as EOPF Zarr.

Both writers render the same scene (``scene.render``) with the same arguments, so the two
formats of one scene hold the same digital numbers (DESIGN.md §7, "EOPF Zarr products").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ingest.errors import ConfigError
from ingest.synth.eopf_writer import make_eopf_product
from ingest.synth.safe_writer import make_product as make_safe_product

FORMATS = ("safe", "eopf")


def make_product(out_dir: str | os.PathLike, *, format: str = "safe", **kwargs: Any) -> Path:
    """A SAFE product (``safe_writer.make_product``) or an EOPF one (``eopf_writer.make_eopf_product``,
    which also takes ``layout``, ``name_style`` and ``zip_root``)."""
    fmt = format.lower()
    if fmt == "safe":
        return make_safe_product(out_dir, **kwargs)
    if fmt == "eopf":
        return make_eopf_product(out_dir, **kwargs)
    raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
