"""HTTP download machinery shared by the sources we speak HTTP for ourselves (CDSE).

The sentinelsat habit (STYLE.md): download to a temporary name, resume with ``Range``, verify,
then rename. Decisions, each enforced below:

* DESIGN CHOICE: the temp name is ``<cache>/<name>.zip.part`` and the final name is only ever
  produced by ``os.replace`` after verification, so a file under the final name is always
  complete and verified (a crash leaves at most a ``.part`` that the next run resumes).
* DESIGN CHOICE: a resume appends only to a 206 whose ``Content-Range`` starts exactly at our
  offset. A 200 (server ignored Range) truncates and restarts from zero; a 206 at any other
  offset is discarded. sentinelsat appends to whatever comes back; we do not.
* DESIGN CHOICE: retries are bounded, exponential with jitter (so parallel workers do not retry in
  lock-step); 429/503 wait exactly ``Retry-After`` (capped) because the hub told us how long;
  ``sleep`` is injectable so tests record waits instead of sleeping.
* DESIGN CHOICE: redirects are followed by hand, re-sending ``Authorization``: CDSE answers
  ``$value`` with a 301/302/307 to another host, and ``requests`` strips the header on a
  cross-host redirect (a correct browser rule that makes the download fail with 401).
* DESIGN CHOICE: a product that keeps failing verification is moved to ``<cache>/quarantine/``
  with a ``.reason.txt``, never deleted silently: it is evidence for a bug report to the hub.
  When the hub checksum matched but manifest.safe did not, the hub itself serves a bad product and
  downloading it again cannot help, so it is quarantined at once.
* DESIGN CHOICE: an offline (LTA) product raises ``ProductOfflineError`` right after retrieval is
  requested; the caller revisits it on a later run. No busy-waiting inside a sync.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence
from urllib.parse import urljoin, urlsplit

import requests
from tqdm.auto import tqdm

from ingest.errors import (
    AuthenticationError, ChecksumError, CorruptProductError, HubError, HubUnreachableError,
    ProductError, ProductOfflineError, S2IngestError,
)
from ingest.products.checksums import verify_file_checksum
from ingest.products.formats import verify_product
from ingest.sources.base import FetchOutcome, ProductQuarantinedError, ProductRecord, Source

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # small enough that a drop loses little: requests discards a partial chunk
PART_SUFFIX = ".part"
QUARANTINE = "quarantine"
REDIRECTS = (301, 302, 303, 307, 308)
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass
class RetryPolicy:
    """Bounded exponential backoff with jitter; ``sleep`` and ``rng`` injectable for tests."""

    attempts: int = 5
    base_delay: float = 2.0
    max_delay: float = 120.0
    jitter: float = 0.5  # +/- fraction of the delay
    max_retry_after: float = 900.0  # never wait longer than this on a hub's say-so
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, failures: int) -> float:
        """Delay after the ``failures``-th consecutive failure (1-based)."""
        delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        return max(0.0, delay * (1 + self.jitter * (2 * self.rng.random() - 1)))

    def wait(self, failures: int, retry_after: float | None = None) -> float:
        delay = min(retry_after, self.max_retry_after) if retry_after is not None else self.backoff(failures)
        self.sleep(delay)
        return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class AuthProvider(Protocol):
    """Supplies request auth and can refresh it once after a 401."""

    hint: str  # what the user should check: env vars, .netrc host

    def apply(self, request: requests.PreparedRequest) -> requests.PreparedRequest: ...

    def refresh(self) -> None: ...


class Http:
    """A requests session with retries, hand-followed redirects and one auth refresh on 401."""

    def __init__(
        self, session: requests.Session | None = None, policy: RetryPolicy | None = None,
        auth: AuthProvider | None = None, timeout: float | tuple[float, float] = (10, 120),
        hub: str = "hub",
    ) -> None:
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "s2ingest")
        self.policy = policy or RetryPolicy()
        self.auth = auth
        self.timeout = timeout
        self.hub = hub

    def _send_once(self, method: str, url: str, headers: Mapping[str, str], use_auth: bool, **kw) -> requests.Response:
        # DESIGN CHOICE: passing an auth callable (never None when authenticating) keeps requests
        # from replacing our Bearer header with Basic credentials from ~/.netrc.
        auth = self.auth.apply if (use_auth and self.auth is not None) else None
        return self.session.request(
            method, url, headers=dict(headers), auth=auth, timeout=self.timeout, allow_redirects=False, **kw
        )

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, use_auth: bool = False,
        stream: bool = False, params: Mapping[str, str] | None = None, data: Mapping[str, str] | None = None,
        ok_statuses: Sequence[int] = (),
    ) -> requests.Response:
        """One logical request: transient failures retried, redirects followed with auth re-sent.

        Returns the final response for any status the caller handles (2xx, 404, ``ok_statuses``);
        raises AuthenticationError (401/403 after one refresh), HubUnreachableError, HubError.
        """
        headers = dict(headers or {})
        failures = 0
        refreshed = False
        hops = 0
        current = url
        while True:
            try:
                resp = self._send_once(method, current, headers, use_auth, stream=stream, params=params, data=data)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures += 1
                cause, transient = connection_cause(exc)
                if not transient:
                    raise HubUnreachableError(f"{self.hub} at {_origin(current)} did not answer: {cause}") from None
                if failures >= self.policy.attempts:
                    raise HubUnreachableError(
                        f"{self.hub} at {_origin(current)} did not answer after {failures} attempts: {cause}"
                    ) from None
                log.info("%s unreachable (%s), retry %d", _origin(current), cause, failures)
                self.policy.wait(failures)
                continue
            status = resp.status_code
            if status in REDIRECTS and "Location" in resp.headers:
                resp.close()
                hops += 1
                if hops > 10:
                    raise HubError(f"{self.hub}: too many redirects from {url}")
                current = urljoin(current, resp.headers["Location"])
                params = None  # the Location carries its own query
                if status == 303:
                    method = "GET"
                continue
            if status in (401, 403) and status not in ok_statuses:
                resp.close()
                if status == 401 and use_auth and self.auth is not None and not refreshed:
                    refreshed = True
                    self.auth.refresh()
                    continue
                hint = self.auth.hint if self.auth is not None else "check the hub credentials"
                raise AuthenticationError(f"{self.hub} refused access (HTTP {status}) to {_origin(current)}: {hint}")
            if status in RETRY_STATUSES and status not in ok_statuses:
                failures += 1
                retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
                resp.close()
                if failures >= self.policy.attempts:
                    raise HubError(f"{self.hub}: HTTP {status} from {_origin(current)} after {failures} attempts")
                waited = self.policy.wait(failures, retry_after)
                log.warning("%s: HTTP %d, waited %.1f s (retry %d)", _origin(current), status, waited, failures)
                continue
            return resp


def connection_cause(exc: BaseException) -> tuple[str, bool]:
    """A short cause for a failed connection and whether retrying can help.

    DESIGN CHOICE: a name that does not resolve or a host that cannot be routed to does not
    heal within a run's retry budget (minutes): fail at once with one line, and let the next
    run (cron) try again. Refused connections (a hub restarting), timeouts and dropped
    connections are retried; each retry is logged at INFO (-v), the final error is one line.
    """
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        nxt = e.__cause__ or e.__context__
        for arg in getattr(e, "args", ()):  # urllib3 wraps its reason in MaxRetryError.reason
            if isinstance(arg, BaseException) and arg not in seen:
                nxt = nxt or arg
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException) and reason not in seen:
            nxt = reason
        e = nxt
    text = " ".join(f"{type(x).__name__} {x}" for x in seen)
    low = text.lower()
    if ("nameresolution" in low or "name or service not known" in low or "failed to resolve" in low
            or "nodename nor servname" in low or "temporary failure in name resolution" in low
            or "no address associated" in low or "getaddrinfo failed" in low):
        return "the host name does not resolve (DNS)", False
    if "no route to host" in low or "network is unreachable" in low:
        return "no route to the host", False
    if "connectionrefused" in low or "connection refused" in low or "errno 111" in low:
        return "connection refused", True  # a hub restarting refuses for a while: retried
    if any(isinstance(x, (requests.Timeout, TimeoutError)) for x in seen) or "timed out" in low:
        return "timed out", True
    if "reset by peer" in low or "connection aborted" in low or "remotedisconnected" in low:
        return "connection dropped", True
    return type(exc).__name__, True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


def _content_range_start(value: str | None) -> int | None:
    """Start offset of ``Content-Range: bytes N-M/T``."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def part_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.zip{PART_SUFFIX}"


def download_to_part(
    http: Http, url: str, part: Path, *, expected_size: int | None = None, use_auth: bool = True,
    product: str = "", progress: bool = True,
) -> Path:
    """Fill ``part`` with the body at ``url``, resuming what is there. Does not verify.

    Raises ProductOfflineError on 202 (the hub accepted a retrieval order), HubError on other
    unexpected statuses or when the connection keeps dropping.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    label = product or part.name
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if expected_size is not None and offset > expected_size:
            log.warning("%s: partial file larger than the product, restarting", label)
            part.unlink()
            offset = 0
        if expected_size is not None and offset == expected_size and offset > 0:
            return part
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = http.request("GET", url, headers=headers, use_auth=use_auth, stream=True)
        try:
            mode = _open_mode(resp, offset, label)
            if mode is None:  # a 206 at the wrong offset: discard what we have, start over
                part.unlink(missing_ok=True)
                failures += 1
                if failures >= http.policy.attempts:
                    raise HubError(f"{label}: the hub keeps answering Range requests at the wrong offset")
                continue
            start = offset if mode == "ab" else 0
            total = expected_size or _total_size(resp, start)
            try:
                _stream(resp, part, mode, start, total, label, progress)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout) as exc:
                failures += 1
                if failures >= http.policy.attempts:
                    raise HubError(f"{label}: download kept breaking off ({_short(exc)})") from None
                log.warning("%s: connection lost at %d bytes (%s), resuming", label, _size(part), _short(exc))
                http.policy.wait(failures)
                continue
        finally:
            resp.close()
        got = _size(part)
        if expected_size is not None and got < expected_size:
            failures += 1
            if failures >= http.policy.attempts:
                raise HubError(f"{label}: got {got} of {expected_size} bytes after {failures} attempts")
            http.policy.wait(failures)
            continue
        return part


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _total_size(resp: requests.Response, start: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _open_mode(resp: requests.Response, offset: int, label: str) -> str | None:
    """'ab' to append, 'wb' to restart, None to discard; raises for statuses we cannot use."""
    status = resp.status_code
    if status == 202:
        raise ProductOfflineError(f"{label}: offline; the hub accepted a retrieval request (HTTP 202), try later")
    if status == 206:
        if offset and _content_range_start(resp.headers.get("Content-Range")) == offset:
            return "ab"
        log.warning("%s: 206 with Content-Range %r, wanted offset %d", label, resp.headers.get("Content-Range"), offset)
        return None
    if status == 200:
        if offset:
            log.info("%s: the hub ignored Range, restarting from zero", label)
        return "wb"
    if status == 416:
        return None
    if status == 404:
        raise HubError(f"{label}: the hub has no such product (HTTP 404)")
    raise HubError(f"{label}: unexpected HTTP {status} from the download server")


def _stream(resp: requests.Response, part: Path, mode: str, start: int, total: int | None,
            label: str, progress: bool) -> None:
    with open(part, mode) as f, tqdm(
        desc=label[:60], total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        leave=False, disable=not progress,
    ) as bar:
        for chunk in resp.iter_content(chunk_size=CHUNK):
            if chunk:
                f.write(chunk)
                bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def quarantine(path: Path, cache_dir: Path, name: str, reason: str) -> Path:
    """Move a bad download to ``<cache>/quarantine/`` beside a ``<name>.reason.txt``."""
    qdir = Path(cache_dir) / QUARANTINE
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / (f"{name}.SAFE" if path.is_dir() else f"{name}.zip")
    if dest.exists():
        dest = dest.with_name(f"{dest.stem}.{time.strftime('%Y%m%dT%H%M%S')}{dest.suffix}")
    os.replace(path, dest)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (qdir / f"{name}.reason.txt").write_text(f"{stamp}\n{dest.name}\n{reason}\n", encoding="utf-8")
    log.error("%s quarantined at %s: %s", name, dest, reason)
    return dest


def fetch_with_verification(
    record: ProductRecord, cache_dir: str | Path, download: Callable[[Path], Path],
    *, verify_attempts: int = 3,
) -> Path:
    """Download (via ``download(part) -> path``), verify, rename; quarantine after repeated failures.

    ``download`` may return another path than ``part`` (sentinelsat names its own file); that
    file is verified and renamed into place the same way.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / record.zip_name
    if final.exists():  # only ever created by os.replace after verification
        return final
    part = part_path(cache, record.name)
    last: Exception | None = None
    for attempt in range(1, verify_attempts + 1):
        got = download(part)
        hub_ok = False
        try:
            if record.checksum is not None:
                verify_file_checksum(got, *record.checksum)
                hub_ok = True
            verify_product(got, None, product=record.name)
            os.replace(got, final)
            return final
        except (ChecksumError, CorruptProductError) as exc:
            last = exc
            log.warning("%s: verification failed (attempt %d/%d): %s", record.name, attempt, verify_attempts, exc)
            if hub_ok or attempt == verify_attempts:
                why = "the hub checksum matched, so the hub's own copy is bad" if hub_ok else \
                    f"verification failed {attempt} times"
                dest = quarantine(got, cache, record.name, f"{why}: {exc}")
                raise ProductQuarantinedError(record.name, f"{why}: {exc}", dest) from exc
            got.unlink(missing_ok=True)
    raise AssertionError(f"unreachable: {last}")


def fetch_many(
    source: Source, records: Sequence[ProductRecord], cache_dir: str | Path, max_workers: int = 2,
    progress: bool = True,
) -> list[FetchOutcome]:
    """Fetch records with bounded parallelism; one outcome per record, in input order.

    One bad product never aborts the run. An AuthenticationError does stop *new* fetches (every
    one would fail the same way and hammer the hub with bad credentials); those are reported
    as failed with the same error.
    """
    stop: list[BaseException] = []
    lock = threading.Lock()

    def one(record: ProductRecord) -> FetchOutcome:
        with lock:
            if stop:
                return FetchOutcome(record, "failed", error=stop[0])
        try:
            return FetchOutcome(record, "fetched", path=source.fetch(record, cache_dir, progress=progress))
        except ProductOfflineError as exc:
            return FetchOutcome(record, "offline", error=exc)
        except ProductQuarantinedError as exc:
            return FetchOutcome(record, "quarantined", path=exc.path, error=exc)
        except ProductError as exc:  # permanent (e.g. a corrupt zip in a local folder): no retry helps
            return FetchOutcome(record, "rejected", error=exc)
        except AuthenticationError as exc:
            with lock:
                stop.append(exc)
            return FetchOutcome(record, "failed", error=exc)
        except (S2IngestError, OSError) as exc:
            return FetchOutcome(record, "failed", error=exc)
        except Exception as exc:  # a bug must not lose the other products' results
            log.exception("%s: unexpected error while fetching", record.name)
            return FetchOutcome(record, "failed", error=exc)

    outcomes: dict[int, FetchOutcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool, tqdm(
        total=len(records), desc="products", unit="product", disable=not progress,
    ) as bar:
        futures = {pool.submit(one, r): i for i, r in enumerate(records)}
        for fut in as_completed(futures):
            outcomes[futures[fut]] = fut.result()
            bar.update(1)
    return [outcomes[i] for i in range(len(records))]
