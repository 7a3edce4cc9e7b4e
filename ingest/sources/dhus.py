"""DHuS hubs through sentinelsat 1.2.1, used as it is (never patched or subclassed).

DESIGN CHOICE: sentinelsat does the talking (search paging, OData, LTA trigger, its own
``.incomplete`` temp file and Range resume) because it is what DHuS users already trust and
configure (.netrc, api_url). We wrap it for what it does not do the way we need:

* its exceptions become our typed errors (UnauthorizedError -> AuthenticationError with the env
  vars to set, LTATriggered/LTAError -> ProductOfflineError, connection errors ->
  HubUnreachableError after bounded retries with backoff, 429/503 honour Retry-After);
* we call ``download(..., checksum=False)`` and verify ourselves (hub checksum from the OData
  entry, then manifest.safe): sentinelsat deletes a file whose checksum failed, and we want to
  retry a bounded number of times and then *quarantine* it, not lose the evidence;
* sentinelsat downloads into ``<cache>/.dhus/`` and only our verification renames into
  ``<cache>/<name>.zip``, so the final name always means "verified".
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import requests
from sentinelsat import SentinelAPI
from sentinelsat.exceptions import (
    InvalidChecksumError, InvalidKeyError, LTAError, LTATriggered, QuerySyntaxError, SentinelAPIError,
    UnauthorizedError,
)

from ingest.errors import AuthenticationError, HubError, HubUnreachableError, MetadataError, ProductOfflineError
from ingest.products.checksums import supported_algorithm
from ingest.sources.base import AreaLike, ProductRecord, Source, area_polygon, polygon_wkt, record_matches, sort_records
from ingest.sources.download import RetryPolicy, _origin, connection_cause, fetch_with_verification, parse_retry_after

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_USER = "S2INGEST_DHUS_USER"
ENV_PASSWORD = "S2INGEST_DHUS_PASSWORD"
ENV_URL = "S2INGEST_DHUS_URL"
# sentinelsat's own variables, which every sentinelsat user already has; ours win.
SENTINELSAT_USER = "DHUS_USER"
SENTINELSAT_PASSWORD = "DHUS_PASSWORD"
SENTINELSAT_URL = "DHUS_URL"
DEFAULT_URL = "https://apihub.copernicus.eu/apihub/"


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None
_UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def parse_size(text: str | None) -> int | None:
    """DHuS ``size`` ("233.95 MB") in bytes (approximate; the OData ContentLength is exact)."""
    try:
        value, unit = str(text).split()
        return int(float(value) * _UNITS[unit.upper()])
    except (ValueError, KeyError, AttributeError):
        return None


class DhusSource(Source):
    """A DHuS hub (the closed SciHub, national mirrors/collaborative hubs)."""

    hub = "dhus"

    def __init__(
        self, url: str | None = None, user: str | None = None,
        password: str | None = None, *, timeout: float = 60, progress: bool = True,
        policy: RetryPolicy | None = None, verify_attempts: int = 3, api: SentinelAPI | None = None,
    ) -> None:
        # Order: arguments (--url, config [hub]), S2INGEST_DHUS_*, sentinelsat's DHUS_*; None
        # credentials let sentinelsat/requests fall back to ~/.netrc, as its users expect.
        url = url or _env(ENV_URL, SENTINELSAT_URL) or DEFAULT_URL
        user = user if user is not None else _env(ENV_USER, SENTINELSAT_USER)
        password = password if password is not None else _env(ENV_PASSWORD, SENTINELSAT_PASSWORD)
        self.url = url
        self.user = user
        self.api = api or SentinelAPI(user, password, url, show_progressbars=progress, timeout=timeout)
        self.policy = policy or RetryPolicy()
        self.verify_attempts = verify_attempts

    # -- error mapping ------------------------------------------------------------------------
    def _auth_hint(self) -> str:
        host = requests.utils.urlparse(self.url).hostname
        who = f"user {self.user!r}" if self.user else "no user given (so ~/.netrc was used)"
        return (f"{who}; set {ENV_USER} and {ENV_PASSWORD} (or sentinelsat's {SENTINELSAT_USER} and "
                f"{SENTINELSAT_PASSWORD}), or put a 'machine {host}' entry in ~/.netrc")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a sentinelsat call with bounded retries and our typed errors."""
        failures = 0
        while True:
            retry_after = None
            try:
                return fn()
            except UnauthorizedError:
                raise AuthenticationError(f"DHuS at {self.url} refused the credentials ({self._auth_hint()})") from None
            except LTATriggered:
                raise ProductOfflineError(f"{what}: offline at the DHuS; retrieval from the LTA was requested") from None
            except LTAError as exc:
                raise ProductOfflineError(f"{what}: offline and the LTA did not accept a retrieval: {exc.msg}") from None
            except (InvalidKeyError, QuerySyntaxError) as exc:
                raise HubError(f"{what}: {exc.msg}") from None
            except InvalidChecksumError:  # only if someone asked sentinelsat to check
                raise
            except SentinelAPIError as exc:  # ServerError and friends: maybe transient
                resp = exc.response
                status = getattr(resp, "status_code", None)
                if status in (401, 403):
                    raise AuthenticationError(f"DHuS at {self.url}: HTTP {status} ({self._auth_hint()})") from None
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                error: Exception = HubError(f"{what}: DHuS error {status}: {exc.msg}")
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                # One short line (never the whole footprint query of the failed URL).
                cause, transient = connection_cause(exc)
                error = HubUnreachableError(f"{what}: the DHuS at {_origin(self.url)} did not answer: {cause}")
                if not transient:
                    raise error from None
            failures += 1
            if failures >= self.policy.attempts:
                raise error
            log.info("%s (retry %d)", error, failures)
            self.policy.wait(failures, retry_after)

    # -- search ---------------------------------------------------------------------------------
    def search(
        self, orbit: int, area: AreaLike = None, since: datetime | None = None,
        until: datetime | None = None, tiles: Sequence[str] | None = None,
        max_cloud: float | None = None, product_type: str = "S2MSI2A",
    ) -> list[ProductRecord]:
        keywords: dict[str, Any] = dict(platformname="Sentinel-2", producttype=product_type,
                                        relativeorbitnumber=int(orbit))
        if max_cloud is not None:
            keywords["cloudcoverpercentage"] = (0, max_cloud)
        if tiles:
            # DHuS has no tileid for L2A on many nodes; the filename always carries it.
            keywords["filename"] = {f"S2*_T{t.upper().lstrip('T')}_*" for t in tiles}
        date = (since, until) if (since or until) else None
        wkt = polygon_wkt(area_polygon(area))
        found = self._call("search", lambda: self.api.query(area=wkt, date=date, **keywords))
        records = []
        for uuid, props in found.items():
            record = self._record(uuid, props, product_type)
            if record is not None and record_matches(record, orbit, since, until, tiles, max_cloud):
                records.append(record)
        return sort_records(records)

    def _record(self, uuid: str, props: dict[str, Any], product_type: str) -> ProductRecord | None:
        name = props.get("identifier") or props.get("title") or ""
        try:
            return ProductRecord.from_name(
                name, hub=self.hub, hub_id=uuid, size=parse_size(props.get("size")),
                online=str(props.get("ondemand", "false")).lower() != "true",
                cloud_cover=props.get("cloudcoverpercentage"), product_type=product_type,
            )
        except MetadataError:
            log.warning("DHuS listed %r, which is not a product name; skipped", name)
            return None

    # -- fetch ----------------------------------------------------------------------------------
    def _with_hub_facts(self, record: ProductRecord) -> ProductRecord:
        """The record with the exact size, checksum and online flag from the OData entry."""
        info = self._call(record.name, lambda: self.api.get_product_odata(record.hub_id))
        checksum = None
        for key in ("sha3-256", "md5"):
            value = info.get(key)
            if value and supported_algorithm(key):
                checksum = (key.upper(), str(value))
                break
        return replace(record, checksum=checksum, size=int(info["size"]), online=bool(info.get("Online", True)))

    def fetch(self, record: ProductRecord, cache_dir: str | Path, progress: bool = True) -> Path:
        cache = Path(cache_dir)
        final = cache / record.zip_name
        if final.exists():
            return final
        staging = cache / ".dhus"
        staging.mkdir(parents=True, exist_ok=True)
        record = self._with_hub_facts(record)
        self.api.show_progressbars = progress

        def download(_part: Path) -> Path:
            info = self._call(record.name, lambda: self.api.download(record.hub_id, str(staging), checksum=False))
            return Path(info["path"])

        return fetch_with_verification(record, cache, download, verify_attempts=self.verify_attempts)
