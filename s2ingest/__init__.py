"""``import s2ingest``: the data-store API of s2ingest cubes (re-exports only).

    import s2ingest
    ds = s2ingest.open_cube("nl.zarr", bbox=(4.3, 51.9, 4.4, 52.0), crs="EPSG:4326")
    s2ingest.list_versions("nl.zarr")

The library lives in ``ingest.copies`` and ``ingest.store``.
"""
from ingest import __version__
from ingest.copies.access import list_versions, open_cube
from ingest.errors import S2IngestError, StoreError
from ingest.store.zarr_view import VersionGoneError, VersionStore

__all__ = ["open_cube", "list_versions", "VersionStore", "VersionGoneError", "S2IngestError",
           "StoreError", "__version__"]
