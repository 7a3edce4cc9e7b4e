"""A fake DHuS (Data Hub Service) that sentinelsat 1.2.1 talks to as to a real one.

Routes (reference/hub-apis.md §4): ``search`` (JSON feed, Solr-like query parsed and applied),
``odata/v1/Products('<uuid>')`` (+ ``$expand=Attributes``), ``/Online/$value``, ``/$value``
(GET/HEAD, Range/206, Content-Disposition, LTA trigger with ``Range: bytes=0-1`` -> 202),
``/Attributes('Filename')/Value/$value``, ``/Nodes(...)`` (node download of single files),
``api/stub/version``. HTTP Basic auth with 401 + ``WWW-Authenticate``; unknown ids give 404 with
the ``cause-message`` sentinelsat turns into ``InvalidKeyError``.

Usage::

    with FakeDHuS(products_dir, user="u", password="p") as hub:
        api = SentinelAPI("u", "p", hub.url)
"""
from __future__ import annotations

import base64
import fnmatch
import re
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ingest.testing.fakehub.common import (
    FakeHandler, FakeProduct, FaultPlan, ProductStore, RequestRecord, ServerThread, bbox_intersects,
    iso_z, parse_iso, parse_wkt_ring, ring_bbox, wkt,
)

_TERM = re.compile(
    r'\s*(?:(?P<group>\((?P<inner>[^()]*(?:\([^()]*\)[^()]*)*)\))'
    r'|(?P<key>\w+):(?P<value>"[^"]*"|\[[^\]]*\]|\{[^}]*\}|\S+))'
)
# Fields a DHuS query may use, with how to read them from a product.
_FIELDS: dict[str, Callable[[FakeProduct], Any]] = {
    "platformname": lambda p: "Sentinel-2",
    "producttype": lambda p: f"S2MSI{p.pn.level[1:]}",
    "processinglevel": lambda p: f"Level-{p.pn.level[1:]}",
    "relativeorbitnumber": lambda p: p.pn.relative_orbit,
    "orbitnumber": lambda p: 0,
    "beginposition": lambda p: p.pn.datatake_start,
    "endposition": lambda p: p.end,
    "ingestiondate": lambda p: p.ingestion,
    "cloudcoverpercentage": lambda p: p.cloud_cover,
    "filename": lambda p: f"{p.name}.SAFE",
    "identifier": lambda p: p.name,
    "uuid": lambda p: p.uuid,
    "tileid": lambda p: p.pn.tile,
    "processingbaseline": lambda p: p.pn.baseline,
    "platformserialidentifier": lambda p: f"Sentinel-{p.pn.platform[1:]}",
}


class QueryError(ValueError):
    pass


def _date_ms(dt: datetime) -> str:
    return f"/Date({int(dt.timestamp() * 1000)})/"


def _match_value(actual: Any, raw: str) -> bool:
    """One ``key:value`` term: quoted string, wildcard, number or ``[a TO b]`` range (inclusive)."""
    raw = raw.strip()
    if raw.startswith("[") or raw.startswith("{"):
        lo, hi = [v.strip().strip('"') for v in raw[1:-1].split(" TO ")]
        return _cmp(actual, lo, ge=True) and _cmp(actual, hi, ge=False)
    value = raw.strip('"')
    if isinstance(actual, (int, float)):
        return float(actual) == float(value)
    if isinstance(actual, datetime):
        return actual == parse_iso(value)
    if "*" in value or "?" in value:
        return fnmatch.fnmatchcase(str(actual), value)
    return str(actual).lower() == value.lower()


def _cmp(actual: Any, bound: str, ge: bool) -> bool:
    if bound in ("*", ""):
        return True
    if isinstance(actual, datetime):
        if bound.startswith("NOW"):
            return True
        b: Any = parse_iso(bound)
    elif isinstance(actual, (int, float)):
        b = float(bound)
    else:
        b = bound
    return actual >= b if ge else actual <= b


def compile_query(q: str) -> Callable[[FakeProduct], bool]:
    """A predicate for a sentinelsat query string (terms ANDed, parenthesised ORs, footprint)."""
    q = q.strip()
    area = None
    m = re.search(r'footprint:"(\w+)\((.*)\)"\s*$', q)
    if m:
        area = ring_bbox(parse_wkt_ring(m.group(2)))
        q = q[: m.start()]
    preds: list[Callable[[FakeProduct], bool]] = []
    pos = 0
    while pos < len(q.rstrip()):
        t = _TERM.match(q, pos)
        if not t:
            raise QueryError(f"cannot parse query near {q[pos:pos + 30]!r}")
        pos = t.end()
        if t.group("group") is not None:
            alternatives = [a.strip() for a in re.split(r"\s+OR\s+", t.group("inner"))]
            subs = [compile_query(a) for a in alternatives]
            preds.append(lambda p, subs=subs: any(s(p) for s in subs))
            continue
        key = t.group("key").lower()
        if key not in _FIELDS:
            raise QueryError(f"undefined field {t.group('key')}")
        getter, raw = _FIELDS[key], t.group("value")
        preds.append(lambda p, g=getter, r=raw: _match_value(g(p), r))
    if area is not None:
        preds.append(lambda p: bbox_intersects(p.bbox, area))
    return lambda p: all(f(p) for f in preds)


def _entry(p: FakeProduct, base: str) -> dict[str, Any]:
    pn = p.pn
    link = f"{base}odata/v1/Products('{p.uuid}')/$value"
    size_mb = f"{p.size / 2**20:.2f} MB"
    fp = wkt(p.footprint)
    gml = ("<gml:Polygon srsName=\"http://www.opengis.net/gml/srs/epsg.xml#4326\" "
           "xmlns:gml=\"http://www.opengis.net/gml\"><gml:outerBoundaryIs><gml:LinearRing><gml:coordinates>"
           + " ".join(f"{lat},{lon}" for lon, lat in p.footprint)
           + "</gml:coordinates></gml:LinearRing></gml:outerBoundaryIs></gml:Polygon>")
    strs = {
        "filename": f"{p.name}.SAFE", "identifier": p.name, "format": "SAFE",
        "processingbaseline": pn.baseline, "processinglevel": "Level-2A", "producttype": "S2MSI2A",
        "platformname": "Sentinel-2", "platformserialidentifier": f"Sentinel-{pn.platform[1:]}",
        "instrumentshortname": "MSI", "orbitdirection": "DESCENDING", "size": size_mb,
        "tileid": pn.tile, "s2datatakeid": f"G{pn.platform}_{pn.datatake_start:%Y%m%dT%H%M%S}_000000_N{pn.baseline}",
        "uuid": p.uuid, "level1cpdiidentifier": "n/a", "footprint": fp, "gmlfootprint": gml,
    }
    return {
        "title": p.name,
        "link": [{"href": link}, {"rel": "alternative", "href": f"{base}odata/v1/Products('{p.uuid}')/"},
                 {"rel": "icon", "href": f"{base}odata/v1/Products('{p.uuid}')/Products('Quicklook')/$value"}],
        "id": p.uuid,
        "summary": f"Date: {iso_z(pn.datatake_start)}, Instrument: MSI, Satellite: Sentinel-2, Size: {size_mb}",
        "ondemand": "false" if p.online else "true",
        "date": [{"name": "beginposition", "content": iso_z(pn.datatake_start)},
                 {"name": "endposition", "content": iso_z(p.end)},
                 {"name": "ingestiondate", "content": iso_z(p.ingestion)},
                 {"name": "datatakesensingstart", "content": iso_z(pn.datatake_start)}],
        "int": [{"name": "orbitnumber", "content": "0"},
                {"name": "relativeorbitnumber", "content": str(pn.relative_orbit)}],
        "double": {"name": "cloudcoverpercentage", "content": str(p.cloud_cover)},
        "str": [{"name": k, "content": v} for k, v in strs.items()],
    }


class _DHuSHandler(FakeHandler):
    hub: "FakeDHuS"

    # -- plumbing -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _authorised(self) -> bool:
        if self.hub.user is None:
            return True
        header = self.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.hub.user}:{self.hub.password}".encode()).decode()
        return header == f"Basic {expected}"

    def _unauthorised(self) -> None:
        self.reply(401, "<html><body><h1>HTTP Status 401 - Full authentication is required</h1></body></html>",
                   "text/html", {"WWW-Authenticate": 'Basic realm="OData service"'})

    def _dispatch(self) -> None:
        self._record()
        if self.maybe_status_fault("any"):
            return
        if not self._authorised():
            self._unauthorised()
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        base = self.hub.prefix
        if not path.startswith(base):
            return self.reply(404, "not found")
        rest = path[len(base):]
        if rest == "search":
            return self._search(query)
        if rest == "api/stub/version":
            return self.reply_json(200, {"value": "3.0.0-fake"})
        m = re.fullmatch(r"odata/v1/Products\('([^']*)'\)(.*)", rest)
        if m:
            return self._product(m.group(1), m.group(2), query)
        self.reply(404, "not found")

    # -- search -------------------------------------------------------------------------------
    def _search(self, query: dict[str, str]) -> None:
        if self.maybe_status_fault("search"):
            return
        try:
            pred = compile_query(query.get("q", "*") if query.get("q", "*") != "*" else "")
        except QueryError as exc:
            return self.reply_json(200, {"feed": {"error": {"code": "400", "message": str(exc)}}})
        rows = min(int(query.get("rows", "10")), 100)
        start = int(query.get("start", "0"))
        found = [p for p in self.hub.store.all() if pred(p)]
        order = query.get("orderby", "beginposition asc").split()
        found.sort(key=lambda p: (p.pn.datatake_start, p.name), reverse=len(order) > 1 and order[1] == "desc")
        page = found[start:start + rows]
        feed: dict[str, Any] = {
            "opensearch:Query": {"searchTerms": query.get("q", ""), "startPage": "1"},
            "opensearch:totalResults": str(len(found)),
            "opensearch:startIndex": str(start),
            "opensearch:itemsPerPage": str(rows),
        }
        base = self.hub.url
        if len(page) == 1:
            feed["entry"] = _entry(page[0], base)
        elif page:
            feed["entry"] = [_entry(p, base) for p in page]
        self.reply_json(200, {"feed": feed})

    # -- products -----------------------------------------------------------------------------
    def _invalid_key(self, pid: str) -> None:
        msg = f"Invalid key ({pid}) to access Products"
        self.reply_json(404, {"error": {"code": None, "message": {"lang": "en", "value": msg}}},
                        {"cause-message": f"InvalidKeyException : {msg}"})

    def _product(self, pid: str, rest: str, query: dict[str, str]) -> None:
        product = self.hub.store.by_id(pid)
        if product is None:
            return self._invalid_key(pid)
        if rest == "":
            if self.maybe_status_fault("product"):
                return
            return self.reply_json(200, {"d": self._odata(product, "$expand" in query)})
        if rest == "/Online/$value":
            online = not self.hub.faults.is_offline(product.name) and product.online
            return self.reply(200, "true" if online else "false")
        if rest == "/$value":
            return self._value(product)
        if rest == "/Attributes('Filename')/Value/$value":
            return self.reply(200, f"{product.name}.SAFE")
        if rest.startswith("/Nodes("):
            return self._node(product, rest)
        self.reply(404, "not found")

    def _odata(self, p: FakeProduct, expand: bool) -> dict[str, Any]:
        fault = self.hub.faults.checksum_fault(p.name)
        value = p.md5 if fault is None else ("0" * 32 if fault == "wrong" else "")
        media = f"{self.hub.url}odata/v1/Products('{p.uuid}')/$value"
        coords = " ".join(f"{lat},{lon}" for lon, lat in p.footprint)
        attrs = [
            {"Id": "filename", "Name": "Filename", "Value": f"{p.name}.SAFE", "ContentType": "text/plain",
             "Category": "summary"},
            {"Id": "cloudcoverpercentage", "Name": "Cloud cover percentage", "Value": str(p.cloud_cover),
             "ContentType": "text/plain", "Category": "summary"},
            {"Id": "relativeorbitnumber", "Name": "Relative orbit (start)", "Value": str(p.pn.relative_orbit),
             "ContentType": "text/plain", "Category": "summary"},
        ]
        return {
            "__metadata": {"id": media[:-7], "uri": media[:-7], "type": "DHuS.Product",
                           "content_type": "application/octet-stream", "media_src": media,
                           "edit_media": media},
            "Id": p.uuid, "Name": p.name, "ContentType": "application/octet-stream",
            "ContentLength": str(p.size), "ChildrenNumber": "0", "Value": None,
            "CreationDate": _date_ms(p.ingestion), "IngestionDate": _date_ms(p.ingestion),
            "EvictionDate": None, "Online": p.online and not self.hub.faults.is_offline(p.name),
            "OnDemand": not p.online,
            "ContentDate": {"Start": _date_ms(p.pn.datatake_start), "End": _date_ms(p.end)},
            "Checksum": {"Algorithm": "MD5", "Value": value},
            "ContentGeometry": (
                "<gml:Polygon srsName=\"http://www.opengis.net/gml/srs/epsg.xml#4326\" "
                "xmlns:gml=\"http://www.opengis.net/gml\"><gml:outerBoundaryIs><gml:LinearRing>"
                f"<gml:coordinates>{coords}</gml:coordinates></gml:LinearRing></gml:outerBoundaryIs></gml:Polygon>"
            ),
            "Attributes": {"results": attrs} if expand else {"__deferred": {"uri": f"{media[:-7]}/Attributes"}},
        }

    def _value(self, product: FakeProduct) -> None:
        if self.maybe_status_fault("download"):
            return
        offline = self.hub.faults.is_offline(product.name) or not product.online
        if offline:
            if self.command == "GET":
                self.hub.faults.note_retrieval_request(product.name)
                self.hub.retrieval_requests.append(product.name)
            return self.reply(202, "", headers={"cause-message": "Product retrieval accepted"})
        self.send_product(product)

    def _node(self, product: FakeProduct, rest: str) -> None:
        """Single files of the product (sentinelsat's node download)."""
        names = re.findall(r"Nodes\('([^']*)'\)", rest)
        tail = rest.rsplit(")", 1)[-1]
        member = "/".join(names)
        with zipfile.ZipFile(product.path) as zf:
            try:
                data = zf.read(member)
            except KeyError:
                return self.reply(404, "no such node")
        if tail == "/$value":
            return self.reply(200, data, "application/octet-stream")
        self.reply_json(200, {"d": {"Id": names[-1], "Name": names[-1], "ContentLength": str(len(data))}})


class FakeDHuS:
    """A DHuS on 127.0.0.1. ``user=None`` disables authentication."""

    def __init__(self, products: str | Path | ProductStore | None = None, *, user: str | None = "user",
                 password: str | None = "password", faults: FaultPlan | None = None, prefix: str = "/") -> None:
        self.store = products if isinstance(products, ProductStore) else ProductStore(products)
        self.user, self.password = user, password
        self.faults = faults or FaultPlan()
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.requests: list[RequestRecord] = []
        self.retrieval_requests: list[str] = []
        handler = type("DHuSHandler", (_DHuSHandler,), {"app": self, "hub": self})
        self.server = ServerThread(handler, role="dhus")

    @property
    def url(self) -> str:
        """The api_url to give sentinelsat (with a trailing slash)."""
        return self.server.url + self.prefix

    def add_product(self, path: str | Path, **overrides: Any) -> FakeProduct:
        return self.store.add(path, **overrides)

    def uuid_of(self, name: str) -> str:
        product = self.store.by_name(name)
        if product is None:
            raise KeyError(name)
        return product.uuid

    def start(self) -> "FakeDHuS":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> "FakeDHuS":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
