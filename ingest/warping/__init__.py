"""From a product's rasters to the cube grid: decode each JP2 once (``warp``), resample through
exact lattice geometry and OpenCV (``remap``) or GDAL's warper, mosaic first-valid-wins (``mosaic``)."""
