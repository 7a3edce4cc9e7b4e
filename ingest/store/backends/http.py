"""A cube served over plain HTTP(S) by any static web server: read only (``HTTPBackend``).

Every read is bounded in time and size: ``stream`` yields a body in blocks and gives up when
its deadline passes (the deadline counts the whole transfer, not each read: a server that
trickles one byte at a time is cut off as surely as a silent one), and ``get`` refuses a
body larger than ``MAX_GET`` (a server that never ends its body cannot fill the memory).
"""
from __future__ import annotations

import time
from typing import Iterator

from ingest.errors import StoreError, TransferTimeoutError
from ingest.store.backends.base import Backend

BLOCK = 1 << 20  # bytes read from the socket at most at once
DEFAULT_TIMEOUT = 300.0  # seconds one read of one key may take, all of it
MAX_GET = 256 << 20  # a whole key read into memory (metadata, manifests) is never larger
CONNECT_TIMEOUT = 30.0


def _socket_of(raw):
    """The socket under a urllib3 response (None where it cannot be found)."""
    conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


class HTTPBackend(Backend):
    """A cube served over plain HTTP(S) by a static file server: read only."""

    supports_writes = False
    supports_listing = False  # a static server lists nothing: the manifest names every key

    def __init__(self, url: str, session=None, timeout: float = DEFAULT_TIMEOUT) -> None:
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session or requests.Session()

    def _request(self, method: str, key: str, *, deadline: float, stream: bool = False):
        """The response, None for 404; any other failure is one StoreError naming the URL."""
        import requests

        left = deadline - time.monotonic()
        if left <= 0:
            raise TransferTimeoutError(f"cannot read {self.url}/{key}: no time left")
        try:
            r = self._session.request(method, f"{self.url}/{key}", allow_redirects=True,
                                      stream=stream, timeout=(min(CONNECT_TIMEOUT, left), left))
        except requests.Timeout as exc:
            raise TransferTimeoutError(f"cannot read {self.url}/{key}: no answer within "
                                  f"{left:.0f} s") from exc
        except requests.RequestException as exc:
            raise StoreError(f"cannot read {self.url}/{key}: {exc.__class__.__name__}") from exc
        if r.status_code == 404:
            r.close()
            return None
        if r.status_code != 200:
            r.close()
            raise StoreError(f"cannot read {self.url}/{key}: HTTP {r.status_code}")
        return r

    def stream(self, key: str, *, deadline: float | None = None, block: int = BLOCK) -> Iterator[bytes] | None:
        """The body of ``key`` in blocks of at most ``block`` bytes, None for a missing key;
        a ``TransferTimeoutError`` once ``deadline`` (``time.monotonic()``; default: ``timeout``
        from now) passes, however the server spreads its bytes. Close the iterator to stop."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        r = self._request("GET", key, deadline=deadline, stream=True)
        if r is None:
            return None
        return self._blocks(r, key, deadline, block)

    def _blocks(self, r, key: str, deadline: float, block: int) -> Iterator[bytes]:
        raw = r.raw
        read = getattr(raw, "read1", None) or raw.read  # read1: at most one read of the socket
        sock = _socket_of(raw)
        got = 0
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransferTimeoutError(f"{self.url}/{key}: transfer not finished in time "
                                          f"({got} bytes received)")
                if sock is not None:
                    try:
                        sock.settimeout(left)  # one read waits at most until the deadline
                    except OSError:  # the body is complete and its connection closed
                        sock = None
                try:
                    data = read(block, decode_content=True)
                except Exception as exc:  # urllib3's ReadTimeoutError / ProtocolError, OSError
                    if time.monotonic() >= deadline or "timed out" in str(exc).lower():
                        raise TransferTimeoutError(f"{self.url}/{key}: transfer not finished in time "
                                              f"({got} bytes received)") from exc
                    raise StoreError(f"cannot read {self.url}/{key}: {exc.__class__.__name__} "
                                     f"after {got} bytes") from exc
                if not data:
                    return
                got += len(data)
                yield data
        finally:
            r.close()

    def get(self, key: str) -> bytes | None:
        blocks = self.stream(key)
        if blocks is None:
            return None
        out = bytearray()
        for data in blocks:
            out += data
            if len(out) > MAX_GET:
                blocks.close()
                raise StoreError(f"cannot read {self.url}/{key}: more than {MAX_GET >> 20} MiB "
                                 "(no key of a cube is that large)")
        return bytes(out)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        r = self._request("HEAD", key, deadline=time.monotonic() + self.timeout)
        if r is None:
            return None
        length = r.headers.get("Content-Length")
        r.close()
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
