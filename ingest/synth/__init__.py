"""Synthetic Sentinel-2 L2A products, SAFE or EOPF Zarr, for tests, demos and benchmarks (a test kit).

    >>> from datetime import datetime
    >>> from ingest.synth import make_product
    >>> safe = make_product(tmp_path, tile="31UFU", datatake_start=datetime(2023, 7, 14, 10, 56, 19),
    ...                     window=(3000, 3000, 600, 600))            # doctest: +SKIP

Products are structurally faithful to real ones across processing baselines (names, folders,
band files per resolution, QI masks, MTD_MSIL2A.xml, MTD_TL.xml, manifest.safe with checksums),
georeferenced on the real tile grid, and open in GDAL's SENTINEL2 driver. Content is either a
plausible landscape (``content="scene"``), a deterministic function of geographic position and
datatake, or pixels that encode their own coordinates (``content="coords"``); see
``ingest.synth.scene``. ``make_twins`` writes a PB<04.00 / PB>=04.00 pair with identical
physical reflectance. ``make_product(..., format="eopf")`` writes the same scene as an EOPF Zarr
product (``eopf_writer``: the real layout, chunking and encodings; the same digital numbers).
"""
from ingest.synth.eopf_writer import make_eopf_product
from ingest.synth.products import FORMATS, make_product
from ingest.synth.safe_writer import (
    SUPPORTED_BASELINES,
    absolute_orbit_for,
    checksum_algorithm,
    default_generation_time,
    image_variables,
    make_twins,
    product_name,
    relative_orbit_of,
    swath_edge_across,
)
from ingest.synth.scene import X_VARIABLES, Y_VARIABLES, SceneParams, coords_value, decode_coords, render, weather
from ingest.synth.tiles import TILES, TileInfo, get_tile

__all__ = [
    "FORMATS", "SUPPORTED_BASELINES", "TILES", "TileInfo", "X_VARIABLES", "Y_VARIABLES", "SceneParams",
    "absolute_orbit_for", "checksum_algorithm", "coords_value", "decode_coords", "default_generation_time",
    "get_tile", "image_variables", "make_eopf_product", "make_product", "make_twins", "product_name", "relative_orbit_of",
    "render", "swath_edge_across", "weather",
]
