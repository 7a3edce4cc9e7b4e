"""A fake Copernicus Data Space Ecosystem: OIDC token, OData catalogue, zipper download.

EOPF Zarr products (``<SAFE-style name>.zarr.zip`` in the product folder) are served in the form
we ASSUME CDSE will use (nothing verifies it yet, DESIGN.md §7 "EOPF Zarr products"): the same
``Products`` entity and zipper ``$value`` (a zip of the store), ``Name`` = ``<SAFE-style
name>.zarr``, ``productType`` = ``S02MSIL2A`` (the product type the products themselves state),
``ContentType`` ``application/zip`` and the same ``Checksum`` list as for SAFE.

Two servers, like the real thing: the *catalogue* server (``/odata/v1/Products``,
``/odata/v1/DeletedProducts``, the Keycloak token endpoint and a ``Products(<id>)/$value`` that
redirects) and a *download* server on another port that only serves with a valid Bearer token.
Because the redirect changes host:port, ``requests`` drops ``Authorization`` when following it
itself: a client must re-send it by hand, which is the point of the test.

The ``$filter`` forms of reference/hub-apis.md §5 are parsed (and/or, parentheses) and applied;
an unknown form is a 400, so a client typo fails loudly instead of matching everything.
``$skip`` above ``skip_cap`` is a 422; ``@odata.nextLink`` uses ``$skip`` up to the cap and an
opaque ``$skiptoken`` beyond it, so only clients that follow nextLink can page past the cap.
"""
from __future__ import annotations

import re
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ingest.testing.fakehub.common import (
    FakeHandler, FakeProduct, FaultPlan, ProductStore, RequestRecord, ServerThread, bbox_intersects,
    iso_z, parse_iso, parse_wkt_ring, ring_bbox, wkt,
)

TOKEN_PATH = "/auth/realms/CDSE/protocol/openid-connect/token"
Pred = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    pass


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
}
_VALUE = r"('(?:[^']|'')*'|[-+0-9.:TZ]+|true|false)"
_ATOMS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Pred]]] = []


def _atom(pattern: str):
    def register(fn: Callable[[re.Match[str]], Pred]) -> Callable[[re.Match[str]], Pred]:
        _ATOMS.append((re.compile(pattern, re.I), fn))
        return fn
    return register


def _literal(text: str) -> Any:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)?", text):
        return parse_iso(text)
    return float(text)


@_atom(r"Collection/Name\s+eq\s+'([^']*)'")
def _collection(m: re.Match[str]) -> Pred:
    return lambda item: item["_collection"] == m.group(1)


@_atom(r"(contains|startswith|endswith)\(Name,\s*'([^']*)'\)")
def _name_fn(m: re.Match[str]) -> Pred:
    fn, text = m.group(1).lower(), m.group(2)
    return {"contains": lambda i: text in i["Name"], "startswith": lambda i: i["Name"].startswith(text),
            "endswith": lambda i: i["Name"].endswith(text)}[fn]


@_atom(r"Name\s+(eq|ne)\s+'([^']*)'")
def _name_eq(m: re.Match[str]) -> Pred:
    op, text = _OPS[m.group(1)], m.group(2)
    return lambda i: op(i["Name"], text)


@_atom(r"(ContentDate/Start|ContentDate/End|PublicationDate|ModificationDate|DeletionDate)\s+(eq|ne|gt|ge|lt|le)\s+"
       + _VALUE)
def _date(m: re.Match[str]) -> Pred:
    key, op, value = m.group(1), _OPS[m.group(2)], _literal(m.group(3))
    if not isinstance(value, datetime):
        raise FilterError(f"{key} needs a date, got {m.group(3)}")
    return lambda i: op(i["_dates"][key], value)


@_atom(r"Online\s+eq\s+(true|false)")
def _online(m: re.Match[str]) -> Pred:
    want = m.group(1).lower() == "true"
    return lambda i: i["Online"] == want


@_atom(r"OData\.CSC\.Intersects\(area=geography'SRID=4326;(POLYGON\s*\(\([^)]*\)\))'\)")
def _intersects(m: re.Match[str]) -> Pred:
    area = ring_bbox(parse_wkt_ring(m.group(1)))
    return lambda i: bbox_intersects(i["_bbox"], area)


@_atom(r"Attributes/OData\.CSC\.(\w+)Attribute/any\(att:att/Name\s+eq\s+'(\w+)'\s+and\s+"
       r"att/OData\.CSC\.(\w+)Attribute/Value\s+(eq|ne|gt|ge|lt|le)\s+" + _VALUE + r"\)")
def _attribute(m: re.Match[str]) -> Pred:
    kind, name, kind2, op, value = m.group(1), m.group(2), m.group(3), _OPS[m.group(4)], _literal(m.group(5))
    if kind != kind2:
        raise FilterError(f"attribute type mismatch: {kind}Attribute vs {kind2}Attribute")

    def pred(item: dict[str, Any]) -> bool:
        attr = item["_attributes"].get(name)
        if attr is None or attr[0] != kind:  # the wrong type never matches, as on the real hub
            return False
        try:
            return op(attr[1], value)
        except TypeError:
            return False
    return pred


def compile_filter(text: str) -> Pred:
    """Parse an OData ``$filter`` of the supported forms into a predicate over catalogue items."""
    pos = 0

    def skip_ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def term() -> Pred:
        nonlocal pos
        skip_ws()
        for pattern, build in _ATOMS:
            m = pattern.match(text, pos)
            if m:
                pos = m.end()
                return build(m)
        if text.startswith("(", pos):
            pos += 1
            inner = expr()
            skip_ws()
            if not text.startswith(")", pos):
                raise FilterError(f"missing ')' at {pos}")
            pos += 1
            return inner
        raise FilterError(f"unsupported filter near {text[pos:pos + 40]!r}")

    def expr() -> Pred:
        nonlocal pos
        left = term()
        while True:
            skip_ws()
            m = re.compile(r"(and|or)\s", re.I).match(text, pos)
            if not m:
                return left
            pos = m.end()
            right = term()
            if m.group(1).lower() == "and":
                left = (lambda a, b: lambda i: a(i) and b(i))(left, right)
            else:
                left = (lambda a, b: lambda i: a(i) or b(i))(left, right)

    result = expr()
    skip_ws()
    if pos != len(text):
        raise FilterError(f"unexpected text at {pos}: {text[pos:pos + 40]!r}")
    return result


class _CdseHandler(FakeHandler):
    hub: "FakeCDSE"

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if self.maybe_status_fault("token") or self.maybe_status_fault("any"):
            return
        if urlsplit(self.path).path != TOKEN_PATH:
            return self.reply(404, "not found")
        self._token(form)

    def _error(self, status: int, message: str) -> None:
        self.reply_json(status, {"detail": {"message": message}})

    # -- routing --------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._record()
        if self.maybe_status_fault("any"):
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        m = re.fullmatch(r"/odata/v1/Products\(([^)]*)\)(/\$value)?", path)
        if self.app_role == "download":
            if m and m.group(2):
                return self._serve(m.group(1).strip("'"), redirect=False)
            return self.reply(404, "not found")
        if path == "/odata/v1/Products":
            return self._search(query, deleted=False)
        if path == "/odata/v1/DeletedProducts":
            return self._search(query, deleted=True)
        if m and m.group(2):
            return self._serve(m.group(1).strip("'"), redirect=self.hub.redirect)
        if m:
            return self._one(m.group(1).strip("'"))
        self.reply(404, "not found")

    # -- token ----------------------------------------------------------------------------------
    def _token(self, form: dict[str, str]) -> None:
        hub = self.hub
        if form.get("client_id") != "cdse-public":
            return self.reply_json(401, {"error": "invalid_client", "error_description": "Invalid client"})
        grant = form.get("grant_type")
        if grant == "password":
            if (form.get("username"), form.get("password")) != (hub.user, hub.password):
                return self.reply_json(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
        elif grant == "refresh_token":
            expiry = hub.refresh_tokens.get(form.get("refresh_token", ""))
            if expiry is None or expiry < hub.clock():
                return self.reply_json(400, {"error": "invalid_grant", "error_description": "Token is not active"})
        else:
            return self.reply_json(400, {"error": "unsupported_grant_type"})
        self.reply_json(200, hub.issue_token(grant))

    def _bearer_ok(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        expiry = self.hub.tokens.get(header[7:])
        return expiry is not None and expiry >= self.hub.clock()

    # -- catalogue ------------------------------------------------------------------------------
    def _search(self, query: dict[str, str], deleted: bool) -> None:
        hub = self.hub
        if self.maybe_status_fault("search"):
            return
        try:
            pred = compile_filter(query["$filter"]) if query.get("$filter") else (lambda i: True)
        except FilterError as exc:
            return self._error(400, f"Invalid filter: {exc}")
        top = int(query.get("$top", str(min(20, hub.max_top))))
        if top > hub.max_top or top < 0:
            return self._error(400, f"$top must be between 0 and {hub.max_top}")
        if "$skiptoken" in query:
            skip = int(query["$skiptoken"].lstrip("o"))
        else:
            skip = int(query.get("$skip", "0"))
            if skip > hub.skip_cap:
                return self._error(422, f"$skip must be at most {hub.skip_cap}; use @odata.nextLink to page further")
        expand = "Attributes" in query.get("$expand", "")
        items = hub.deleted_items() if deleted else [hub.item(p) for p in hub.store.all()]
        found = [i for i in items if pred(i)]
        key, _, direction = query.get("$orderby", "ContentDate/Start asc").partition(" ")
        found.sort(key=lambda i: (i["_dates"].get(key, i["_dates"]["ContentDate/Start"]), i["Name"]),
                   reverse=direction.strip().lower() == "desc")
        page = found[skip:skip + top]
        body: dict[str, Any] = {"@odata.context": "$metadata#Products(Attributes())" if expand else "$metadata#Products"}
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = len(found)
        body["value"] = [hub.public(i, expand) for i in page]
        if skip + top < len(found) and top > 0:
            nxt = {k: v for k, v in query.items() if k not in ("$skip", "$skiptoken")}
            if skip + top <= hub.skip_cap:
                nxt["$skip"] = str(skip + top)
            else:
                nxt["$skiptoken"] = f"o{skip + top}"
            body["@odata.nextLink"] = f"{hub.url}{urlsplit(self.path).path}?{urlencode(nxt)}"
        self.reply_json(200, body)

    def _one(self, pid: str) -> None:
        if self.maybe_status_fault("product"):
            return
        product = self.hub.store.by_id(pid)
        if product is None:
            return self._error(404, f"Product {pid} not found")
        self.reply_json(200, self.hub.public(self.hub.item(product), expand=True))

    # -- download -------------------------------------------------------------------------------
    def _serve(self, pid: str, redirect: bool) -> None:
        hub = self.hub
        if self.maybe_status_fault("download"):
            return
        if not self._bearer_ok():
            return self.reply_json(401, {"detail": "Expired signature!" if self.headers.get("Authorization")
                                         else "Not authenticated"}, {"WWW-Authenticate": "Bearer"})
        product = hub.store.by_id(pid)
        if product is None:
            return self._error(404, f"Product {pid} not found")
        if not product.online or hub.faults.is_offline(product.name):
            if self.command == "GET":
                hub.faults.note_retrieval_request(product.name)
                hub.retrieval_requests.append(product.name)
            return self.reply_json(202, {"detail": "Product is offline; retrieval from the archive was ordered"})
        if redirect:
            target = f"{hub.download.url}/odata/v1/Products({pid})/$value"
            return self.reply(hub.redirect_status, "", headers={"Location": target})
        self.send_product(product)


class FakeCDSE:
    """CDSE on 127.0.0.1: ``catalogue_url``, ``token_url``, ``download_url`` for ``CdseSource``."""

    def __init__(
        self, products: str | Path | ProductStore | None = None, *, user: str = "user", password: str = "password",
        faults: FaultPlan | None = None, skip_cap: int = 10_000, max_top: int = 1000, redirect: bool = True,
        redirect_status: int = 307, token_lifetime: float = 600.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = products if isinstance(products, ProductStore) else ProductStore(products)
        self.user, self.password = user, password
        self.faults = faults or FaultPlan()
        self.skip_cap, self.max_top = skip_cap, max_top
        self.redirect, self.redirect_status = redirect, redirect_status
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.tokens: dict[str, float] = {}
        self.refresh_tokens: dict[str, float] = {}
        self.token_grants: list[str] = []
        self.requests: list[RequestRecord] = []
        self.retrieval_requests: list[str] = []
        attrs = {"app": self, "hub": self}
        self.catalogue = ServerThread(type("CdseHandler", (_CdseHandler,), attrs), role="catalogue")
        self.download = ServerThread(type("CdseDownloadHandler", (_CdseHandler,), attrs), role="download")

    # -- URLs -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.catalogue.url

    @property
    def catalogue_url(self) -> str:
        return f"{self.catalogue.url}/odata/v1"

    @property
    def token_url(self) -> str:
        return f"{self.catalogue.url}{TOKEN_PATH}"

    @property
    def download_url(self) -> str:
        """Where clients send ``$value`` requests (redirected to the download server)."""
        return f"{self.catalogue.url}/odata/v1"

    def source_options(self) -> dict[str, str]:
        """Keyword arguments for ``CdseSource``/``make_source("cdse", ...)``."""
        return dict(catalogue_url=self.catalogue_url, token_url=self.token_url, download_url=self.download_url,
                    user=self.user, password=self.password)

    # -- tokens ---------------------------------------------------------------------------------
    def issue_token(self, grant: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        now = self.clock()
        self.tokens[access] = now + self.token_lifetime
        self.refresh_tokens[refresh] = now + 3600
        self.token_grants.append(grant)
        return {"access_token": access, "expires_in": int(self.token_lifetime), "refresh_token": refresh,
                "refresh_expires_in": 3600, "token_type": "Bearer", "scope": "AUDIENCE_PUBLIC openid email profile"}

    def expire_tokens(self) -> None:
        """Make every access token invalid now (the client still believes in it)."""
        self.tokens.clear()

    # -- products -------------------------------------------------------------------------------
    def add_product(self, path: str | Path, **overrides: Any) -> FakeProduct:
        return self.store.add(path, **overrides)

    def delete_product(self, name: str, cause: str = "Corrupted product", when: datetime | None = None) -> FakeProduct:
        return self.store.delete(name, cause, when)

    def uuid_of(self, name: str) -> str:
        product = self.store.by_name(name)
        if product is None:
            raise KeyError(name)
        return product.uuid

    def item(self, p: FakeProduct) -> dict[str, Any]:
        pn = p.pn
        fault = self.faults.checksum_fault(p.name)
        checksums = [] if fault == "missing" else [
            {"Value": "0" * 32 if fault == "wrong" else p.md5, "Algorithm": "MD5", "ChecksumDate": iso_z(p.ingestion)},
            {"Value": "0" * 64, "Algorithm": "BLAKE3", "ChecksumDate": iso_z(p.ingestion)},
        ]
        eopf = pn.format == "EOPF"
        attributes = {
            "productType": ("String", "S02MSIL2A" if eopf else f"S2MSI{pn.level[1:]}"), "tileId": ("String", pn.tile),
            "relativeOrbitNumber": ("Integer", pn.relative_orbit), "cloudCover": ("Double", float(p.cloud_cover)),
            "processingBaseline": ("String", pn.baseline), "platformShortName": ("String", "SENTINEL-2"),
            "platformSerialIdentifier": ("String", pn.platform[2:]), "orbitDirection": ("String", "DESCENDING"),
            "beginningDateTime": ("DateTimeOffset", pn.datatake_start), "endingDateTime": ("DateTimeOffset", p.end),
        }
        online = p.online and not self.faults.is_offline(p.name)
        return {
            "@odata.mediaContentType": "application/octet-stream", "Id": p.uuid,
            "Name": p.name if eopf else f"{p.name}.SAFE",
            "ContentType": "application/zip" if eopf else "application/octet-stream", "ContentLength": p.size,
            "OriginDate": iso_z(p.ingestion), "PublicationDate": iso_z(p.ingestion),
            "ModificationDate": iso_z(p.ingestion), "Online": online, "EvictionDate": "",
            "S3Path": f"/eodata/Sentinel-2/MSI/L2A/{pn.datatake_start:%Y/%m/%d}/{p.name if eopf else p.name + '.SAFE'}",
            "Checksum": checksums,
            "ContentDate": {"Start": iso_z(pn.datatake_start), "End": iso_z(p.end)},
            "Footprint": f"geography'SRID=4326;{wkt(p.footprint)}'",
            "GeoFootprint": {"type": "Polygon", "coordinates": [[list(pt) for pt in p.footprint]]},
            "_collection": "SENTINEL-2", "_bbox": p.bbox, "_attributes": attributes,
            "_dates": {"ContentDate/Start": pn.datatake_start, "ContentDate/End": p.end,
                       "PublicationDate": p.ingestion, "ModificationDate": p.ingestion},
        }

    def deleted_items(self) -> list[dict[str, Any]]:
        out = []
        for d in list(self.store.deleted):
            item = self.item(d["product"])
            item.update({"DeletionDate": iso_z(d["when"]), "DeletionCause": d["cause"]})
            item["_dates"]["DeletionDate"] = d["when"]
            out.append(item)
        return out

    @staticmethod
    def public(item: dict[str, Any], expand: bool) -> dict[str, Any]:
        out = {k: v for k, v in item.items() if not k.startswith("_")}
        if expand:
            out["Attributes"] = [
                {"@odata.type": f"#OData.CSC.{kind}Attribute", "Name": name,
                 "Value": iso_z(value) if isinstance(value, datetime) else value,
                 "ValueType": {"String": "String", "Integer": "Int64", "Double": "Double"}.get(kind, kind)}
                for name, (kind, value) in item["_attributes"].items()
            ]
        return out

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "FakeCDSE":
        self.catalogue.start()
        self.download.start()
        return self

    def stop(self) -> None:
        self.catalogue.stop()
        self.download.stop()

    def __enter__(self) -> "FakeCDSE":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
