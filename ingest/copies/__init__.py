"""Copies of one published version of a cube: consistent mirrors (``mirror``, planned by
``subset``), the data-store API (``access``), rechunked copies (``rechunk``) and GeoTIFF/netCDF
extracts (``export``); DESIGN.md §5 (metadata snapshots and copies) and §10."""
