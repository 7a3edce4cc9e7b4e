"""A cube served over plain HTTP(S) by any static web server: read only (``HTTPBackend``)."""
from __future__ import annotations

from typing import Iterator

from ingest.errors import StoreError
from ingest.store.backends.base import Backend


class HTTPBackend(Backend):
    """A cube served over plain HTTP(S) by a static file server: read only."""

    supports_writes = False
    supports_listing = False  # a static server lists nothing: the manifest names every key

    def __init__(self, url: str, session=None) -> None:
        import requests

        self.url = url.rstrip("/")
        self._session = session or requests.Session()

    def _request(self, method: str, key: str):
        """The response, None for 404; any other failure is one StoreError naming the URL."""
        import requests

        try:
            r = self._session.request(method, f"{self.url}/{key}", timeout=60, allow_redirects=True)
        except requests.RequestException as exc:
            raise StoreError(f"cannot read {self.url}/{key}: {exc.__class__.__name__}") from exc
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise StoreError(f"cannot read {self.url}/{key}: HTTP {r.status_code}")
        return r

    def get(self, key: str) -> bytes | None:
        r = self._request("GET", key)
        return None if r is None else r.content

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        r = self._request("HEAD", key)
        if r is None:
            return None
        length = r.headers.get("Content-Length")
        return int(length) if length is not None else len(self.get(key) or b"")

    def _read_only(self, *_a, **_k):
        raise StoreError(f"{self.url} is read only (HTTP)")

    put = delete = move = sync = _read_only  # type: ignore[assignment]

    def list(self, prefix: str = "") -> Iterator[str]:
        raise StoreError(f"{self.url}: a static HTTP server cannot list keys; use the manifest")

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        raise StoreError(f"{self.url}: a static HTTP server cannot list keys; use the manifest")

    def lock(self, timeout: float, on_wait=None):
        self._read_only()
