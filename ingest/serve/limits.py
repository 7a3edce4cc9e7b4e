"""Request-size limits of ``s2ingest serve``: a too-long URL or header block gets a 4xx with a
JSON message, never a reset connection.

Two layers (DESIGN CHOICE: the application answers what it can read; the protocol answers what
it must refuse to buffer):

- the application (``check_url``, a middleware of ``create_app``) refuses a URL longer than
  ``MAX_URL_BYTES`` with 414 ``{"error": ...}`` (a polygon of a few thousand vertices fits);
- uvicorn's h11 protocol buffers at most ``MAX_HEAD_BYTES`` of request head; beyond it h11
  gives up, and uvicorn's own answer is a plain-text 400 followed by an immediate close, which
  the client (still sending its URL) sees as a connection reset. ``LimitedH11Protocol`` answers
  414 (the request line itself is too long) or 431 (the header fields are) with a JSON message,
  then stops sending, reads and discards what the client still sends, and closes once the
  client has finished (or after ``DRAIN_SECONDS``), so the client reads the answer.
"""
from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_URL_BYTES = 256 * 1024
MAX_HEAD_BYTES = 1024 * 1024  # what the protocol buffers of a request head
DRAIN_SECONDS = 30.0


def url_too_long(path: str, query: str) -> str | None:
    """The message for a URL longer than ``MAX_URL_BYTES``; None when it is not."""
    n = len(path.encode()) + len(query.encode())
    if n <= MAX_URL_BYTES:
        return None
    return (f"the URL is {n} bytes long, longer than the {MAX_URL_BYTES} this server reads; "
            "simplify the polygon (fewer vertices) or ask for a parcel id")


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose answer to an oversized request head is a JSON 414/431."""

    _draining = False

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # the answer is sent: what the client still sends is read and dropped
        super().data_received(data)

    def eof_received(self) -> None:
        if self._draining:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        if len(buffered) <= MAX_HEAD_BYTES:
            return super().send_400_response(msg)
        line_done = b"\r\n" in buffered or b"\n" in buffered
        status = 431 if line_done else 414
        what = "header fields" if line_done else "URL (request line)"
        body = json.dumps({"error": f"the request's {what} is longer than the {MAX_HEAD_BYTES} "
                                    "bytes this server reads; simplify the polygon (fewer "
                                    "vertices) or ask for a parcel id"}).encode()
        reason = b"URI Too Long" if status == 414 else b"Request Header Fields Too Large"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers,
                                                             reason=reason)))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 would not send an answer now: the plain one
            return super().send_400_response(msg)
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)
