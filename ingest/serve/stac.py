"""The store over HTTP for STAC clients: ``/store/<key>`` serves the keys as stored (read only),
``/stac/collection.json`` the cube's Collection with absolute hrefs under ``/store/``."""
from __future__ import annotations

import json

from ingest.serve.reader import NotFound
from ingest.store.stac import COLLECTION_KEY

__all__ = ["COLLECTION_KEY", "key_media_type", "read_key", "stac_for_http"]

_PRIVATE = (".s2ingest/lock", ".s2ingest/txn")  # the writer's lock and staging: not for readers


def read_key(store, key: str) -> bytes:
    """The bytes of ``key``; NotFound for a missing key or one that is no store key."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or key.startswith(_PRIVATE):
        raise NotFound(f"no key {key!r} in the store")
    data = store.read(key)
    if data is None:
        raise NotFound(f"no key {key!r} in the store")
    return data


def key_media_type(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if name.endswith(".json") or name in (".zarray", ".zattrs", ".zgroup", ".zmetadata"):
        return "application/json"
    return "application/octet-stream"


def stac_for_http(raw: bytes | None, base_url: str) -> dict:
    """The stored Collection with a self link and every relative href resolved to ``base_url``."""
    if raw is None:
        raise NotFound(f"the store has no {COLLECTION_KEY} yet (it is written by every commit)")
    doc = json.loads(raw)
    base = base_url.rstrip("/") + "/"
    store_base = base + "store/"

    def absolute(href: str) -> str:
        if href.startswith("../"):
            return store_base + href[3:]
        if href.startswith("./"):
            return base + "stac/" + href[2:]
        return href

    for asset in doc.get("assets", {}).values():
        asset["href"] = absolute(asset["href"])
    links = [dict(ln, href=absolute(ln["href"])) for ln in doc.get("links", []) if ln.get("rel") != "self"]
    doc["links"] = [{"rel": "self", "href": base + "stac/collection.json", "type": "application/json"}, *links]
    return doc
