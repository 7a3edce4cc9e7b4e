"""Copies of one published version of a cube: the data-store API (``access``), rechunked
copies (``rechunk``) and GeoTIFF/netCDF extracts (``export``); DESIGN.md §10."""
