"""The SAFE reader: a Sentinel-2 L2A product (folder or zip) -> ``Product``, metadata only.

Only XML is read (through defusedxml, bounded reads); the rasters are opened later by GDAL
through ``Product.gdal_path`` (``/vsizip/`` for zips), so a zip is never unpacked.

- ``reader``: ``read_product(path)``, the entry point.
- ``container``: the folder or zip, its metadata file names and their size limits.
- ``xml``: one parsed XML document (``_Doc``), indexed by local element name.
- ``identity``: the Level-2A check and the identity, name cross-checked against the XML.
- ``metadata``: ``parse_product_metadata`` (geocoding, files, radiometry, footprint, manifest).
- ``checks``: ``check_orbit``, ``check_overlaps``, ``product_bounds_in``, ``check_rasters``.
"""
from ingest.products.safe.checks import check_orbit, check_overlaps, check_rasters, product_bounds_in
from ingest.products.safe.container import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_PRODUCT_MTD_BYTES,
    MAX_TILE_MTD_BYTES,
    PRODUCT_MTD,
    TILE_MTD,
    check_metadata_size,
    metadata_size_limit,
)
from ingest.products.safe.metadata import parse_product_metadata
from ingest.products.safe.reader import read_product

__all__ = [
    "read_product",
    "parse_product_metadata",
    "check_orbit",
    "check_overlaps",
    "product_bounds_in",
    "check_rasters",
    "PRODUCT_MTD",
    "TILE_MTD",
    "MANIFEST",
    "MAX_PRODUCT_MTD_BYTES",
    "MAX_TILE_MTD_BYTES",
    "MAX_MANIFEST_BYTES",
    "metadata_size_limit",
    "check_metadata_size",
]
