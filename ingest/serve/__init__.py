"""``s2ingest serve``: tiles, time series, chips and a web viewer over a published cube
(read only). ``create_app`` builds the FastAPI application; ``ingest/serve/static`` holds the
viewer (Leaflet bundled, no CDN)."""
from ingest.serve.reader import CubeReader, NotFound, RequestError

__all__ = ["CubeReader", "NotFound", "RequestError", "create_app"]


def create_app(location: str):
    from ingest.serve.app import create_app as make

    return make(location)
