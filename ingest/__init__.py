"""s2ingest: Sentinel-2 L2A SAFE products -> one consolidated Zarr cube on a national grid."""
__version__ = "0.1.0"
