"""The HTTP API and the viewer (FastAPI): read only, bounded work per request, 4xx for bad
parameters. ``create_app(store)`` is what ``s2ingest serve`` runs under uvicorn."""
from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ingest.errors import S2IngestError
import ingest.serve.chips as chips_mod
from ingest.serve.limits import url_too_long
from ingest.serve.reader import MAX_AREA_PIXELS, CubeReader, RequestError
from ingest.serve.stac import COLLECTION_KEY, key_media_type, read_key, stac_for_http
from ingest.serve.tiles import TILESIZE, TMS, check_tile, empty_png, tile_png
from ingest.serve.versions import add_version_routes

PNG = "image/png"
SWITCH_WAIT = 2.0  # seconds a request waits for a commit's switch to end
MAX_LAYER_CHUNKS = 64  # an outline tile reads at most this many layer chunks (bounded work)
STORE_ENV = "S2INGEST_SERVE_STORE"  # the cube a worker process of `serve --workers N` opens
TILE_THREADS = 4  # threads rendering tiles in one server process (requests beyond wait their turn)


def app_from_env() -> FastAPI:
    """The app of one worker process of ``s2ingest serve --workers N`` (uvicorn's factory)."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    return create_app(os.environ[STORE_ENV])


def create_app(location: str) -> FastAPI:
    reader = CubeReader(str(location))
    # DESIGN CHOICE: tiles render on a few threads of their own that live as long as the
    # process. FastAPI's pool (anyio) ends a thread idle for 10 s and starts new ones under
    # load, and every new thread makes its own PROJ transformers (pyproj keeps them per
    # thread): ~100 ms of CPU on its first tile, where a tile costs ~20 ms. A few threads
    # overlap one tile's reads and GIL-free work (decoding, PNG encoding) with another's;
    # tiles are CPU work, so many more would only make each one slower.
    tile_threads = ThreadPoolExecutor(TILE_THREADS, thread_name_prefix="tiles")
    app = FastAPI(title="s2ingest cube server", version="1",
                  description="Tiles, time series, chips and metadata of one s2ingest cube (read only).")
    static = resources.files("ingest.serve") / "static"

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(S2IngestError)
    async def _store_error(request: Request, exc: S2IngestError):
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.middleware("http")
    async def _refresh(request: Request, call_next):
        too_long = url_too_long(request.url.path, request.url.query)
        if too_long:  # checked first: nothing is parsed or read for it
            return JSONResponse({"error": too_long}, status_code=414)
        # DESIGN CHOICE: never serve from a half-switched store: while a commit's keys are
        # being switched (milliseconds, or until a writer completes a commit a crash left
        # unfinished) data requests wait up to SWITCH_WAIT s, then get 503 saying so.
        path = request.url.path
        if path != "/" and not path.startswith("/static"):
            for _ in range(int(SWITCH_WAIT / 0.1)):
                if reader.store.switching() is None:
                    break
                await asyncio.sleep(0.1)
            else:
                pending = reader.store.switching()
                if pending is not None:
                    return JSONResponse(
                        {"error": f"{location}: the commit of version {pending} is not finished "
                                  "(its keys are half switched); retry later; `s2ingest sync` "
                                  "completes it"}, status_code=503, headers={"Retry-After": "30"})
        reader.refresh()  # a new published version replaces the cached datasets
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(str(static / "index.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    add_version_routes(app, str(location))

    @app.get("/stac/collection.json")
    def stac_collection(request: Request):
        """The cube's STAC Collection (store key ``stac/collection.json``) with a self link and
        its hrefs made absolute under ``/store/``, where the groups it describes are served."""
        doc = stac_for_http(reader.store.read(COLLECTION_KEY), str(request.base_url))
        return JSONResponse(doc, headers={"Cache-Control": "no-cache"})

    @app.api_route("/store/{key:path}", methods=["GET", "HEAD"])
    def store_key(key: str):
        """One key of the store as stored (Zarr over HTTP, read only): 404 when absent."""
        return Response(read_key(reader.store, key), media_type=key_media_type(key),
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/meta")
    def meta():
        """Variables, composites, groups with their time steps and overview levels, versions."""
        return reader.metadata()

    @app.get("/tiles/{z}/{x}/{y}.png")
    async def tile(z: int, x: int, y: int, orbit: int | None = None, time: str | None = None,
                   variable: str | None = None, composite: str | None = None,
                   vmin: float | None = None, vmax: float | None = None, colormap: str | None = None,
                   overviews: bool = True):
        """One 256 px Web Mercator tile: ``variable`` with ``colormap`` over ``vmin..vmax`` or a
        ``composite`` (true_color, false_color, ndvi), at time step ``time`` (index or date)."""
        def render() -> tuple[bytes, int]:
            return tile_png(reader, reader.group(orbit), z, x, y, time=time, variable=variable,
                            composite=composite, vmin=vmin, vmax=vmax, colormap=colormap,
                            overviews=overviews)

        png, factor = await asyncio.get_running_loop().run_in_executor(tile_threads, render)
        return Response(png, media_type=PNG, headers={"X-Overview-Level": str(factor),
                                                       "Cache-Control": "max-age=60"})

    @app.get("/tiles/layer/{z}/{x}/{y}.png")
    def layer_tile(z: int, x: int, y: int, layer: str = "NL/BRP/parcel"):
        """Outlines of a reference layer's zones (pixels whose right or lower neighbour differs)."""
        return Response(_outline_tile(reader, layer, z, x, y), media_type=PNG)

    def _area(lon, lat, parcel, polygon, size=None):
        if parcel is not None:
            return reader.parcel_area(parcel)
        if polygon is not None:
            try:
                geom = json.loads(polygon)
            except ValueError:
                raise RequestError("polygon must be a GeoJSON geometry (lon/lat)") from None
            return reader.polygon_area(geom)
        if lon is None or lat is None:
            raise RequestError("give lon and lat, a parcel id, or a polygon")
        row, col = reader.cell(lon, lat)
        if size is None:
            return slice(row, row + 1), slice(col, col + 1), np.ones((1, 1), bool)
        if not 1 <= size <= int(math.sqrt(MAX_AREA_PIXELS)):
            raise RequestError(f"size must be 1..{int(math.sqrt(MAX_AREA_PIXELS))} pixels")
        ny, nx = reader.grid.shape
        r0, c0 = max(0, row - size // 2), max(0, col - size // 2)
        rows, cols = slice(r0, min(ny, r0 + size)), slice(c0, min(nx, c0 + size))
        return rows, cols, np.ones((rows.stop - rows.start, cols.stop - cols.start), bool)

    @app.get("/api/series")
    def series(lon: float | None = None, lat: float | None = None, parcel: int | None = None,
               polygon: str | None = None, variable: str = "NDVI", orbit: int | None = None,
               clear: bool = False, format: str = Query("json", pattern="^(json|csv)$")):
        """Time series of a pixel (lon/lat), a parcel (mean of its pixels) or a GeoJSON polygon;
        ``clear`` keeps only clear-sky pixels (SCL 4, 5, 6, 7, 11)."""
        group = reader.group(orbit)
        if parcel is None and polygon is None:
            if lon is None or lat is None:
                raise RequestError("give lon and lat, a parcel id, or a polygon")
            df = reader.point_series(group, variable, lon, lat, clear)
            row, col = reader.cell(lon, lat)
            where = {"lon": lon, "lat": lat, "row_col": [row, col]}
            rows, cols, mask = slice(row, row + 1), slice(col, col + 1), np.ones((1, 1), bool)
            what = f"point {lon}, {lat}"
        else:
            rows, cols, mask = _area(lon, lat, parcel, polygon)
            df = reader.area_series(group, variable, rows, cols, mask, clear)
            where = {"parcel": parcel} if parcel is not None else {"polygon": json.loads(polygon)}
            what = f"parcel {parcel}" if parcel is not None else "the polygon"
        reason = reader.no_data_reason(group, rows, cols, mask, what)
        if format == "csv":
            return Response(df.to_csv(index=False), media_type="text/csv",
                            headers={"X-Reason": reason} if reason else None)
        records = json.loads(df.to_json(orient="records"))
        out = {"group": group, "variable": variable, "clear": clear, **where, "series": records}
        if reason:
            out["reason"] = reason  # an empty answer says why
        return out

    @app.get("/api/parcel")
    def parcel_at(lon: float, lat: float):
        """The BRP parcel id at a point (0: none)."""
        row, col = reader.cell(lon, lat)
        if "NL/BRP/parcel" not in reader.layers():
            raise RequestError("this cube has no parcel layer /NL/BRP/parcel")
        v = int(reader.dataset("NL/BRP")["parcel"].isel(edition=-1, y=row, x=col).values)
        if v == 0:
            return {"parcel": 0, "reason": f"no parcel of /NL/BRP/parcel (newest edition) at {lon}, {lat}"}
        return {"parcel": v}

    @app.get("/api/chips")
    def chips(lon: float | None = None, lat: float | None = None, parcel: int | None = None,
              size: int = 64, start: str | None = None, end: str | None = None,
              orbit: int | None = None, format: str = Query("zip", pattern="^(zip|png|json)$")):
        """Chips of a parcel (its bounding box) or of ``size`` x ``size`` pixels around a point,
        for the dates in ``start..end``: a zip of GeoTIFFs (+ histograms.json), a PNG gallery,
        or the SCL class histograms per date as JSON."""
        group = reader.group(orbit)
        sel = chips_mod.select(reader, group, _area(lon, lat, parcel, None, size), start, end)
        what = f"parcel {parcel}" if parcel is not None else f"the chips around {lon}, {lat}"
        reason = reader.no_data_reason(group, sel.rows, sel.cols, sel.mask, what, sel.times)
        if format == "json":
            out = {"group": group, "parcel": parcel, "histograms": chips_mod.histograms(reader, sel)}
            return {**out, "reason": reason} if reason else out
        said = {"X-Reason": reason} if reason else {}
        if format == "png":
            return Response(chips_mod.gallery_png(reader, sel), media_type=PNG, headers=said or None)
        name = f"chips_{'parcel' + str(parcel) if parcel is not None else 'point'}.zip"
        return Response(chips_mod.geotiff_zip(reader, sel), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', **said})

    app.state.reader = reader
    app.state.tile_threads = tile_threads
    return app


def _lat(xy) -> float:
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        (xy.left + xy.right) / 2, (xy.top + xy.bottom) / 2)[1]


def _outline_tile(reader: CubeReader, layer: str, z: int, x: int, y: int) -> bytes:
    import morecantile
    from rio_tiler.utils import render

    check_tile(z, x, y)
    if layer not in reader.layers():
        raise RequestError(f"no layer {layer}; the cube has {', '.join(reader.layers()) or 'none'}")
    group, var = layer.rsplit("/", 1)
    ds = reader.dataset(group)
    xy = TMS.xy_bounds(morecantile.Tile(x, y, z))
    left, bottom, right, top = reader.to_grid_from_mercator.transform_bounds(xy.left, xy.bottom, xy.right, xy.top)
    gl, _, _, gt = reader.grid.bounds
    r = reader.grid.resolution
    ny, nx = reader.grid.shape
    r0, r1 = max(0, math.floor((gt - top) / r)), min(ny, math.ceil((gt - bottom) / r))
    c0, c1 = max(0, math.floor((left - gl) / r)), min(nx, math.ceil((right - gl) / r))
    if r1 <= r0 or c1 <= c0:
        return empty_png()
    # bounded work: at most MAX_LAYER_CHUNKS stored chunks under the tile, read with a stride
    # of about one tile pixel (outlines of large zones stay visible at low zooms)
    cy, cx = reader.grid.chunk_shape
    if ((r1 - 1) // cy - r0 // cy + 1) * ((c1 - 1) // cx - c0 // cx + 1) > MAX_LAYER_CHUNKS:
        return empty_png()
    step = max(1, int((xy.right - xy.left) * math.cos(math.radians(_lat(xy))) / TILESIZE / r))
    zones = ds[var].isel(edition=-1, y=slice(r0, r1, step), x=slice(c0, c1, step)).values
    edge = np.zeros(zones.shape, bool)
    edge[:-1] |= zones[:-1] != zones[1:]
    edge[:, :-1] |= zones[:, :-1] != zones[:, 1:]
    # nearest resampling of the edge mask onto the tile's pixels
    xs = np.linspace(xy.left, xy.right, TILESIZE, endpoint=False) + (xy.right - xy.left) / TILESIZE / 2
    ys = np.linspace(xy.top, xy.bottom, TILESIZE, endpoint=False) - (xy.top - xy.bottom) / TILESIZE / 2
    gx, gy = np.meshgrid(xs, ys)
    px, py = reader.to_grid_from_mercator.transform(gx, gy)
    rows = (np.floor((gt - py) / r).astype(int) - r0) // step
    cols = (np.floor((px - gl) / r).astype(int) - c0) // step
    inside = (rows >= 0) & (rows < edge.shape[0]) & (cols >= 0) & (cols < edge.shape[1])
    mask = np.zeros((TILESIZE, TILESIZE), bool)
    mask[inside] = edge[rows[inside], cols[inside]]
    rgb = np.zeros((3, TILESIZE, TILESIZE), "uint8")
    rgb[0], rgb[1], rgb[2] = 255, 255, 0
    return render(rgb, mask=(mask * 255).astype("uint8"), img_format="PNG")

