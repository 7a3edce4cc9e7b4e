"""The EOPF Zarr reader: a Sentinel-2 L2A product in ESA's EOPF format (S02MSIL2A) -> ``Product``.

An EOPF product is a Zarr v2 store (a ``.zarr`` folder, or a zip of one) with consolidated
metadata; its facts, with their sources, are in DESIGN.md §7 ("EOPF Zarr products"). It gives
the same ``Product`` as the SAFE reader, so planning, warping and the catalog are format-blind;
only the pixels are read differently (from Zarr chunks, not JPEG 2000).

- ``reader``: ``read_eopf(path)``, ``parse_eopf_metadata(bytes)``, ``identify(path)``; array paths.
- ``container``: the folder or zip, key by key, bounded; zip slip and symbolic links refused.
- ``zmeta``: ``.zmetadata`` parsed with limits (size, depth, string length), array layouts.
- ``identity``: the L2A check and the identity from ``stac_discovery``/``other_metadata``.
- ``arrays``: ``ZarrRaster``, chunk decoding (Blosc via numcodecs) for the warp.
- ``verify``: ``verify_eopf`` (structure), ``check_arrays`` (chunks present).
"""
from ingest.products.eopf.arrays import ZarrRaster, open_raster
from ingest.products.eopf.identity import PRODUCT_TYPE
from ingest.products.eopf.reader import ARRAY_PATHS, identify, parse_eopf_metadata, read_eopf
from ingest.products.eopf.verify import check_arrays, verify_eopf

__all__ = ["ARRAY_PATHS", "PRODUCT_TYPE", "ZarrRaster", "check_arrays", "identify", "open_raster", "parse_eopf_metadata",
           "read_eopf", "verify_eopf"]
