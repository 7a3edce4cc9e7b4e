"""Product sources: where L2A products come from (DESIGN.md §7).

``make_source("local"|"dhus"|"cdse", **options)`` builds one; every source has
``search(orbit, area, since, until, tiles, max_cloud, product_type) -> list[ProductRecord]`` and
``fetch(record, cache_dir, progress) -> Path`` (a verified zip or .SAFE folder).
``fetch_many`` fetches many with bounded parallelism and per-record outcomes.
"""
from __future__ import annotations

from typing import Any

from ingest.errors import ConfigError
from ingest.sources.base import (
    AreaLike, DeletedProduct, FetchOutcome, ProductQuarantinedError, ProductRecord, Source, area_polygon,
    record_matches,
)
from ingest.sources.download import RetryPolicy, fetch_many, quarantine

__all__ = [
    "AreaLike", "DeletedProduct", "FetchOutcome", "ProductQuarantinedError", "ProductRecord", "RetryPolicy",
    "Source", "area_polygon", "fetch_many", "make_source", "quarantine", "record_matches", "HUBS",
]

HUBS = ("local", "dhus", "cdse")


def make_source(hub: str, **options: Any) -> Source:
    """A source by hub name; ``options`` go to its constructor.

    local: directory, recursive. dhus: url, user, password, timeout, progress, policy,
    verify_attempts. cdse: catalogue_url, token_url, download_url, user, password, page_size,
    policy, verify_attempts, timeout. ``url`` is accepted for cdse as the catalogue URL.
    Options that are None are dropped, so CLI defaults pass through untouched.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if hub == "local":
        from ingest.sources.local import LocalSource
        if "url" in options and "directory" not in options:
            options["directory"] = options.pop("url")
        return _build(LocalSource, hub, options)
    if hub == "dhus":
        from ingest.sources.dhus import DhusSource
        return _build(DhusSource, hub, options)
    if hub == "cdse":
        from ingest.sources.cdse import CdseSource
        if "url" in options:
            options["catalogue_url"] = options.pop("url")
        return _build(CdseSource, hub, options)
    raise ConfigError(f"unknown hub {hub!r}; choose one of {', '.join(HUBS)}")


def _build(cls: type[Source], hub: str, options: dict[str, Any]) -> Source:
    """``cls(**options)``, with a misspelt option (e.g. from a config [hub] section) a ConfigError."""
    import inspect

    known = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for hub {hub!r}; known: {', '.join(known)}")
    return cls(**options)
