"""Where the bytes of a cube live (only the store owner, ``ingest.store``, uses these).

- ``base``: the ``Backend`` interface, what a backend declares it can do, and ``Fence``;
- ``local``: ``LocalBackend``, keys as files under a folder (``flock`` writer lock);
- ``http``: ``HTTPBackend``, a cube served by any static web server (read only);
- ``s3``: ``S3Backend``, keys as objects under ``s3://bucket/prefix`` (``move`` is a
  server-side copy + delete, which the roll-forward journal tolerates; the writer lock is a
  lease object taken with conditional PUTs).
"""
from __future__ import annotations

import os

from ingest.errors import StoreError
from ingest.store.backends.base import Backend, Fence
from ingest.store.backends.http import HTTPBackend
from ingest.store.backends.local import LocalBackend
from ingest.store.backends.s3 import S3Backend

__all__ = ["Backend", "Fence", "HTTPBackend", "LocalBackend", "S3Backend", "backend_for"]


def backend_for(location: str | os.PathLike[str]) -> Backend:
    """The backend of a store location: a local path, an s3:// or an http(s):// URL."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        return HTTPBackend(text)
    if text.startswith("s3://"):
        return S3Backend(text)
    if "://" in text:
        raise StoreError(f"{text}: unsupported store URL (a local path, s3:// or http(s):// URL)")
    return LocalBackend(text)
