"""Every retained version of the cube as a read-only plain Zarr URL: ``/versions/V/<key>``
(DESIGN.md §5), so any Zarr client pins a version:

    xr.open_zarr(f"{server}/versions/{V}", group="/S2/R051", consolidated=True)

Metadata documents come from the version's snapshot, chunks through its pieces (the live key
when it still holds the version's bytes, else the bytes the store kept), so a reader that
keeps a version open across later commits keeps reading that version.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from ingest.errors import StoreError
from ingest.store.layout import is_metadata
from ingest.store.zarr_view import VersionStore

MAX_OPEN = 8  # versions whose views (root, snapshot, pieces read so far) stay cached


class VersionViews:
    def __init__(self, location: str) -> None:
        self.location = location
        self._views: OrderedDict[int, VersionStore] = OrderedDict()
        self._lock = threading.Lock()

    def view(self, version: int) -> VersionStore:
        with self._lock:
            got = self._views.get(version)
            if got is not None:
                self._views.move_to_end(version)
                return got
        got = VersionStore(self.location, version)
        with self._lock:
            self._views[version] = got
            while len(self._views) > MAX_OPEN:
                self._views.popitem(last=False)
        return got


def add_version_routes(app: FastAPI, location: str) -> None:
    views = VersionViews(location)

    @app.api_route("/versions/{version}/{key:path}", methods=["GET", "HEAD"])
    def version_key(version: int, key: str):
        """One key of version ``version`` exactly as that version published it (404: not in it)."""
        try:
            view = views.view(version)
        except StoreError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        key = key.strip("/")
        data = view.metadata(key) if is_metadata(key) else view.read_key(key)
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})
