"""An HTTP proxy in front of an S3 server (tests): it can apply a request and lose its answer.

``S3Proxy(upstream)`` forwards every request byte for byte (headers included, so signatures
still match) to ``upstream`` and relays the answer. ``drop_answer(...)`` arms a rule: the next
``times`` requests that match it are forwarded and applied by the server, then the client's
connection is closed without an answer, as when a network path fails after S3 applied a PUT.
The client (botocore) then retries the same request, which is what the store's S3 lease must
survive: a conditional PUT that was applied answers 412 on its retry.
"""
from __future__ import annotations

import http.client
import http.server
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}


@dataclass
class _Rule:
    method: str
    key: str  # a substring of the request path
    header: str | None  # the rule matches only requests that carry this header
    times: int
    dropped: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _relay(self) -> None:
        server: S3Proxy = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        up = http.client.HTTPConnection(server.upstream_host, server.upstream_port, timeout=120)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP and name.lower() != "expect":
                    up.putheader(name, value)
            up.endheaders(body if body else None)
            resp = up.getresponse()
            data = resp.read()
            status, reason, headers = resp.status, resp.reason, resp.getheaders()
        finally:
            up.close()
        if server.take(self.command, self.path, self.headers):
            self.close_connection = True  # applied upstream; the answer is lost
            return
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


class S3Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname or "127.0.0.1", u.port or 80
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def drop_answer(self, method: str, key: str, *, header: str | None = None,
                    times: int = 1) -> _Rule:
        """Lose the answers of the next ``times`` requests ``method`` whose path holds ``key``
        (and that carry ``header``, when given); the server applies them."""
        rule = _Rule(method.upper(), key, header.lower() if header else None, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def take(self, method: str, path: str, headers) -> bool:
        names = {n.lower() for n in headers.keys()}
        with self._lock:
            for rule in self._rules:
                if (rule.dropped < rule.times and rule.method == method and rule.key in path
                        and (rule.header is None or rule.header in names)):
                    rule.dropped += 1
                    return True
        return False


@contextmanager
def proxy(upstream: str) -> Iterator[S3Proxy]:
    """An ``S3Proxy`` to ``upstream`` on a free local port until the block ends."""
    server = S3Proxy(upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
