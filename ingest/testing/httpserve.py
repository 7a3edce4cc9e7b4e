"""A plain static file server for tests and the bench: HTTP range requests, byte counting.

Stands in for the public cube's web server: GET and HEAD of files, ``Range: bytes=a-b`` /
``a-`` / ``-n`` (one range, 206), 404 for anything missing. ``served_bytes`` counts the body
bytes sent, so tests and ``ingest/benchmarks/`` measure what a reader really downloads.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def send_head(self):  # one range at most, like the object stores readers talk to
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        m = _RANGE.match(self.headers.get("Range", "").strip())
        if not m:
            return super().send_head()
        size = os.path.getsize(path)
        a, b = m.groups()
        if a == "" and b == "":
            return super().send_head()
        if a == "":
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), min(size - 1, int(b)) if b else size - 1
        if start >= size or end < start:
            self.send_error(416)
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        n = getattr(self, "_remaining", None)
        data = source.read() if n is None else source.read(n)
        outputfile.write(data)
        self.server.count(len(data))


class CountingServer(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # readers fetch chunks concurrently: the default backlog (5) drops SYNs
    daemon_threads = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
        self._lock = threading.Lock()
        self.served_bytes = 0
        self.requests = 0

    def count(self, n: int) -> None:
        with self._lock:
            self.served_bytes += n
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.served_bytes = 0
            self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(directory: str | Path) -> Iterator[CountingServer]:
    """Serve ``directory`` on a free local port in a thread until the block ends."""
    server = CountingServer(directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
