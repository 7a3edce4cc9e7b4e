"""Products: the model of one Level-2A product and the readers of its formats.

- ``names``: product names (identity parsed from the name; the catalog uses this alone).
- ``model``: ``Product`` and its tile geocoding (what planning and warping need).
- ``safe``: the SAFE reader (folder or zip, bounded XML reads) and the raster checks.
- ``checksums``: hub checksums and the ``manifest.safe`` per-file checksums.
"""
