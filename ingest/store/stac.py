"""The STAC Collection of the cube, ``stac/collection.json`` at the store root (DESIGN.md §3).

Written by every commit (``Transaction.commit`` stages it just before the bookkeeping), so the
Collection a reader finds is always the one of the version it describes, listed and hashed in
that version's bookkeeping like any other key. It lies beside the Zarr groups, so whatever serves
the store over HTTP (``s2ingest serve`` at ``/store/``, a bucket behind nginx) serves it too, and
every href in it is relative to it (``../S2/R051``): a copy of the store carries a valid one.

It describes, after the STAC best practices for Zarr (one Collection, one asset per group):

* extents: the grid's bounds in WGS 84, the first and last time step of the imagery;
* ``cube:dimensions`` (``x``, ``y``, ``time`` with its values) and ``cube:variables`` (the
  imagery group's variables) of the datacube extension;
* ``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox`` (projection extension) on every
  raster asset;
* ``bands`` of the imagery asset: ``eo:center_wavelength``/``eo:common_name`` (eo extension),
  ``raster:scale``/``raster:offset``/``raster:spatial_resolution`` (raster extension), ``nodata``,
  ``unit``, ``data_type``;
* one asset per group: each imagery group, its overview levels, its quality atlas, each
  reference-layer group under ``/NL``; media type ``application/vnd+zarr`` and the zarr
  extension's ``zarr:node_type``, ``zarr:zarr_format``, ``zarr:consolidated``;
* the store version (``s2ingest:store_version``) and a link to that version's bookkeeping root.

Nothing in it depends on the clock: the same version of the same data gives the same bytes.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from ingest.grid import CubeGrid
from ingest.variables import VARIABLES
from ingest.store.bookkeeping.codec import root_key
from ingest.store.layout import GRID_FILE, MANIFEST_DIR, join
from ingest.store.zarrdocs import ArrayMeta, dumps, read_array

COLLECTION_KEY = "stac/collection.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
EXTENSIONS = {
    "datacube": "https://stac-extensions.github.io/datacube/v2.3.0/schema.json",
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "zarr": "https://stac-extensions.github.io/zarr/v1.1.0/schema.json",
}
# Sentinel-2 band name -> eo:common_name (the eo extension's list)
COMMON_NAMES = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge071",
                "B06": "rededge075", "B07": "rededge078", "B08": "nir", "B8A": "nir08", "B09": "nir09",
                "B11": "swir16", "B12": "swir22"}
_ORBIT_GROUP = re.compile(r"S2/R\d{3}")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _times(view, group: str) -> list[str]:
    path = join(group, "time")
    if not view.is_array(path):
        return []
    values = read_array(view.array(path), lambda name: view.get(join(path, name)))
    return [_iso(int(v)) for v in values if int(v) >= 0]


def _epsg(grid: CubeGrid) -> int | None:
    code = grid.crs.upper()
    return int(code.split(":", 1)[1]) if code.startswith("EPSG:") and code[5:].isdigit() else None


def _proj(grid: CubeGrid, attrs: dict) -> dict:
    """Projection fields of a raster group, from its ``spatial:`` attributes (the native grid's
    when it has none)."""
    a, b, c, d, e, f = attrs.get("spatial:transform") or [grid.resolution, 0.0, grid.bounds[0], 0.0,
                                                          -grid.resolution, grid.bounds[3]]
    shape = attrs.get("spatial:shape") or list(grid.shape)
    return {"proj:code": grid.crs, "proj:shape": list(shape), "proj:transform": [a, b, c, d, e, f],
            "proj:bbox": attrs.get("spatial:bbox") or list(grid.bounds)}


def _zarr_asset(href: str, title: str, roles: list[str], **fields) -> dict:
    return {"href": href, "type": ZARR_MEDIA_TYPE, "title": title, "roles": roles,
            "zarr:node_type": "group", "zarr:zarr_format": 2, "zarr:consolidated": True, **fields}


def _variables(view, group: str) -> dict[str, dict]:
    """The (time, y, x) arrays of an imagery group, in the order of ``VARIABLES``."""
    found = {}
    for name in view.children(group):
        attrs = view.attrs(join(group, name))
        if view.is_array(join(group, name)) and attrs.get("_ARRAY_DIMENSIONS") == ["time", "y", "x"]:
            found[name] = attrs
    order = list(VARIABLES)
    return dict(sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _band(view, group: str, name: str, attrs: dict, grid: CubeGrid) -> dict:
    meta = view.array(join(group, name))
    band = {"name": name, "description": attrs.get("long_name", name), "data_type": str(meta.dtype),
            "raster:spatial_resolution": grid.resolution}
    if meta.fill_value is not None:
        band["nodata"] = meta.fill_value.item() if hasattr(meta.fill_value, "item") else meta.fill_value
    if "units" in attrs:
        band["unit"] = attrs["units"]
    if "scale_factor" in attrs:
        band["raster:scale"] = attrs["scale_factor"]
        band["raster:offset"] = attrs.get("add_offset", 0.0)
    spec = VARIABLES.get(name)
    if spec is not None and spec.wavelength_nm is not None:
        band["eo:center_wavelength"] = round(spec.wavelength_nm / 1000, 4)
        band["eo:common_name"] = COMMON_NAMES[name]
    return band


def _cube(grid: CubeGrid, times: list[str], variables: dict[str, dict]) -> dict:
    left, bottom, right, top = grid.bounds
    r = grid.resolution
    ref = _epsg(grid) or grid.crs
    dims = {
        "time": {"type": "temporal", "extent": [times[0], times[-1]] if times else [None, None],
                 "values": times, "description": "time of the datatake (UTC)"},
        "y": {"type": "spatial", "axis": "y", "extent": [bottom + r / 2, top - r / 2], "step": -r,
              "reference_system": ref, "description": "y coordinate of pixel centre"},
        "x": {"type": "spatial", "axis": "x", "extent": [left + r / 2, right - r / 2], "step": r,
              "reference_system": ref, "description": "x coordinate of pixel centre"},
    }
    cube_vars = {}
    for name, attrs in variables.items():
        v = {"dimensions": ["time", "y", "x"], "type": "data", "description": attrs.get("long_name", name)}
        if "units" in attrs:
            v["unit"] = attrs["units"]
        cube_vars[name] = v
    return {"cube:dimensions": dims, "cube:variables": cube_vars}


def _wgs84_bbox(grid: CubeGrid) -> list[float]:
    from pyproj import Transformer

    t = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    w, s, e, n = t.transform_bounds(*grid.bounds, densify_pts=21)
    return [round(w, 6), round(s, 6), round(e, 6), round(n, 6)]


def groups_of(view) -> tuple[list[str], list[str]]:
    """(imagery groups ``S2/R…``, reference-layer groups under ``NL``) of a store view."""
    imagery = [join("S2", g) for g in view.children("S2") if view.is_group(join("S2", g))] \
        if view.is_group("S2") else []
    layers = [join("NL", g) for g in view.children("NL") if view.is_group(join("NL", g))] \
        if view.is_group("NL") else []
    return [g for g in imagery if _ORBIT_GROUP.fullmatch(g)], layers


def build_collection(view, grid: CubeGrid, version: int) -> dict:
    """The Collection (a dict) of what ``view`` (a ``ConsolidatedView`` of a transaction, or a
    ``Transaction`` itself: what it would publish) holds at store version ``version``."""
    import pystac

    imagery, layers = groups_of(view)
    times = sorted({t for g in imagery for t in _times(view, g)})
    assets: dict[str, dict] = {}
    cube: dict = {}
    for group in imagery:
        attrs = view.attrs(group)
        variables = _variables(view, group)
        if not cube:
            cube = _cube(grid, _times(view, group), variables)
        assets[group] = _zarr_asset(
            f"../{group}", attrs.get("title", group), ["data"], **_proj(grid, attrs),
            bands=[_band(view, group, n, a, grid) for n, a in variables.items()],
            description="xr.open_zarr(STORE, group=\"/" + group + "\", consolidated=True)")
        ov = join(group, "overviews")
        if view.is_group(ov):
            levels = sorted((int(n) for n in view.children(ov) if n.isdigit() and view.is_group(join(ov, n))))
            for f in levels:
                path = join(ov, str(f))
                assets[path] = _zarr_asset(f"../{path}", f"{group} overview level {f} ({grid.resolution * f:g} m)",
                                           ["data", "overview"], **_proj(grid, view.attrs(path)),
                                           **{"raster:spatial_resolution": grid.resolution * f})
        q = join(group, "quality")
        if view.is_group(q):
            qa = view.attrs(q)
            assets[q] = _zarr_asset(f"../{q}", f"{group} quality atlas (H3 cells, resolution "
                                    f"{qa.get('h3_resolution')})", ["metadata", "data"],
                                    description="per time step and H3 cell: valid pixels and scene-class fractions")
    for group in layers:
        attrs = view.attrs(group)
        assets[group] = _zarr_asset(f"../{group}", attrs.get("title", group), ["data"], **_proj(grid, attrs))
    if not cube:
        cube = _cube(grid, [], {})
    collection = pystac.Collection(
        id=f"s2ingest-{grid.name}".lower(),
        title=f"Sentinel-2 L2A data cube on the {grid.name} grid",
        description=("Sentinel-2 L2A surface reflectance, scene classification and quality "
                     f"warped onto one fixed grid ({grid.crs}, {grid.resolution:g} m) and "
                     "mosaicked per datatake, in one consolidated Zarr (format 2) store."),
        extent=pystac.Extent(
            pystac.SpatialExtent([_wgs84_bbox(grid)]),
            pystac.TemporalExtent([[_parse(times[0]) if times else None, _parse(times[-1]) if times else None]])),
        license="other",
        keywords=["Sentinel-2", "L2A", "Zarr", "datacube"],
        providers=[pystac.Provider("European Space Agency (Copernicus Sentinel data)", roles=["producer", "licensor"],
                                   url="https://sentinels.copernicus.eu"),
                   pystac.Provider("s2ingest", roles=["processor", "host"])],
        stac_extensions=list(EXTENSIONS.values()),
        extra_fields={**cube, "s2ingest:store_version": version, "s2ingest:grid": grid.to_dict()},
    )
    for key, asset in assets.items():
        collection.add_asset(key, pystac.Asset.from_dict(asset))
    collection.add_link(pystac.Link("describedby", f"../{root_key(version)}", "application/json",
                                    f"bookkeeping root of store version {version}: names its pieces (every key, size, sha256) by hash"))
    collection.add_link(pystac.Link("describedby", f"../{GRID_FILE}", "application/json", "the cube's grid"))
    collection.add_link(pystac.Link("license", "https://sentinels.copernicus.eu/documents/247904/690755/"
                                    "Sentinel_Data_Legal_Notice", "text/html", "Copernicus Sentinel data terms"))
    doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    doc["links"] = [{"rel": "root", "href": "./collection.json", "type": "application/json",
                     "title": doc["title"]},
                    *(ln for ln in doc["links"] if ln["rel"] not in ("root", "self"))]
    return doc


def _parse(iso: str) -> datetime:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class ConsolidatedView:
    """The tree as the root's consolidated metadata (``.zmetadata``) of a transaction lists it:
    every group and array document in one read (the commit has just staged it), chunks through
    the transaction."""

    def __init__(self, tx, root_doc: dict | None = None) -> None:
        self._tx = tx
        doc = root_doc if root_doc is not None else tx.get_json(".zmetadata")
        self._docs: dict[str, dict] = (doc or {}).get("metadata", {})

    def is_group(self, path: str) -> bool:
        return join(path, ".zgroup") in self._docs

    def is_array(self, path: str) -> bool:
        return join(path, ".zarray") in self._docs

    def attrs(self, path: str) -> dict:
        return self._docs.get(join(path, ".zattrs"), {})

    def array(self, path: str) -> ArrayMeta:
        return ArrayMeta.parse(dumps(self._docs[join(path, ".zarray")]), path)

    def children(self, path: str) -> list[str]:
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        names = set()
        for key in self._docs:
            rest = key[len(prefix):].split("/") if key.startswith(prefix) else []
            if len(rest) == 2 and rest[1] in (".zarray", ".zgroup"):
                names.add(rest[0])
        return sorted(names)

    def get(self, key: str) -> bytes | None:
        return self._tx.get(key)


def stage_collection(tx, version: int, root_doc: dict | None = None) -> None:
    """Stage ``stac/collection.json`` of ``version`` in ``tx``: called by ``Transaction.commit``
    with the root's consolidated metadata it is about to publish (``root_doc``; default: as
    staged), so no other read of the store is needed but the time axis."""
    doc = build_collection(ConsolidatedView(tx, root_doc), tx.store.grid, version)
    tx.put(COLLECTION_KEY, (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode())


__all__ = ["COLLECTION_KEY", "EXTENSIONS", "MANIFEST_DIR", "ZARR_MEDIA_TYPE", "build_collection",
           "groups_of", "stage_collection"]
