"""``s2ingest serve``: a read-only HTTP server (tiles, series, chips, viewer) over a cube."""
from __future__ import annotations

import click

from ingest.cli.options import cube_options


@click.command("serve")
@cube_options
@click.argument("location", required=False, metavar="[STORE]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port; the chosen one is printed).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port (each with its own cache of decoded "
                   "chunks); about one per core serves concurrent clients in parallel.")
def command(settings, location, host, port, workers) -> None:
    """Serve the cube at STORE (default --store; a path or http(s) URL) read only: a web
    viewer at /, XYZ tiles at /tiles/{z}/{x}/{y}.png, time series at /api/series, chips at
    /api/chips and the metadata at /api/meta (OpenAPI docs at /docs). Never writes to the store.
    """
    import warnings

    import uvicorn

    from ingest.store import check_location

    store = location or str(settings.store)
    if location:
        check_location(location)  # as --store is: a file or a folder of other files is refused

    # DESIGN CHOICE: a long-running server logs requests' problems, not library deprecation
    # notes repeated per tile (affine's `*`, rasterio's in-memory PNGs without georeference)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")

    from ingest.serve import create_app
    from ingest.serve.app import STORE_ENV

    app = create_app(store)  # opens the cube now: a bad STORE fails before listening
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    click.echo(f"serving {store} at http://{host}:{bound}/ (Ctrl-C stops)", err=True)
    from ingest.serve.limits import MAX_HEAD_BYTES, LimitedH11Protocol

    # a too-long URL gets a JSON 414 (from the app, or from the protocol beyond what it buffers)
    limits = dict(http=LimitedH11Protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    if workers == 1:
        config = uvicorn.Config(app, log_level="warning", access_log=False, **limits)
        uvicorn.Server(config).run(sockets=[sock])
        return
    import os

    from uvicorn.supervisors import Multiprocess

    os.environ[STORE_ENV] = store  # the worker processes open the same cube
    config = uvicorn.Config("ingest.serve.app:app_from_env", factory=True, workers=workers,
                            log_level="warning", access_log=False, **limits)
    Multiprocess(config, sockets=[sock]).run()


def listening_socket(host: str, port: int):
    """The server's socket, bound to ``host``:``port`` (a ConfigError when it cannot be).

    DESIGN CHOICE: the socket says it is TCP (its protocol number), so asyncio sets
    TCP_NODELAY on every connection it accepts from it, as it does on sockets it makes itself;
    with protocol 0 it does not, and each response (headers and body written separately)
    waited for the client's delayed ACK: 44 ms for an answer that takes 1 ms (measured on
    keep-alive connections)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        from ingest.errors import ConfigError

        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
