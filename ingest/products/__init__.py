"""Products: the model of one Level-2A product and the readers of its formats.

- ``names``: product names (identity parsed from the name; the catalog uses this alone).
- ``model``: ``Product`` and its tile geocoding (what planning and warping need).
- ``formats``: ``read_product``, ``verify_product``, ``check_rasters`` for either format (the
  format recognised by the product's content): what sync, the engine and the sources call.
- ``safe``: the SAFE reader (folder or zip, bounded XML reads) and the raster checks.
- ``eopf``: the EOPF Zarr reader (folder or zip, bounded metadata reads, chunk decoding for the
  warp, structural verification).
- ``checksums``: hub checksums and the ``manifest.safe`` per-file checksums.
"""
