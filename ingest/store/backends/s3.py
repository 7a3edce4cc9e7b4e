"""A cube in an S3 bucket (AWS or any S3-compatible server): ``s3://bucket/prefix/nl.zarr``.

Keys are objects under the prefix. What the commit protocol needs from a backend maps onto
single S3 requests: ``put`` is one PUT (S3 replaces an object atomically: a reader gets the
old or the new bytes, never a mix), ``move`` one server-side ``CopyObject`` then a
``DeleteObject`` of the staged key (the roll-forward journal tolerates a repeat: a staged key
already gone whose target holds the journal's sha256 counts as moved), ``list_dir`` one
paginated ``ListObjectsV2`` with a delimiter. Nothing is renamed or hard-linked.

The writer lock is a lease object, ``.s2ingest/lock`` (``S3Lease``): taken with a conditional
PUT (``If-None-Match: *``), renewed by a heartbeat thread with ``If-Match`` on its own ETag,
taken over only when expired (conditional on the expired object's ETag), and checked again at
the commit point (``fence``). Credentials and endpoint come from boto3's usual chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``, instance roles;
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for S3-compatible servers, which the CLI's
``--s3-endpoint`` sets).

DESIGN CHOICE: boto3 (botocore), not obstore or s3fs: the lease needs conditional PUTs and
deletes with ``If-None-Match``/``If-Match`` and the returned ETags, which boto3 exposes as plain
request parameters on every S3-compatible server that implements them; it reads the standard
AWS configuration (profiles, endpoint variables) exactly as the AWS CLI does; its client is
thread-safe, so the store's writer threads share one; and s3fs (which xarray uses to read the
cube) runs on the same botocore, so writer and readers resolve credentials and endpoints alike.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from ingest import holders
from ingest.errors import StoreBusyError, StoreError, StoreLeaseLostError
from ingest.store.backends.base import Backend, Fence

log = logging.getLogger(__name__)

LOCK_KEY = ".s2ingest/lock"
LEASE_SECONDS = 60.0  # a lease not renewed for this long may be taken over
POLL_SECONDS = 0.5


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of ``s3://bucket/prefix``."""
    rest = url[len("s3://"):] if url.startswith("s3://") else url
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{url}: no bucket in the S3 URL (s3://bucket/prefix/nl.zarr)")
    return bucket, prefix.strip("/")


def make_client():
    """A boto3 S3 client from the standard AWS configuration (thread-safe; shared)."""
    import boto3
    from botocore.config import Config

    # DESIGN CHOICE: enough pooled connections for the store's writer threads and verify's
    # readers; retries in boto3's "standard" mode (throttling, 5xx) before an error surfaces.
    config = Config(max_pool_connections=32, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.session.Session().client("s3", config=config)


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3Backend(Backend):
    """Keys as objects under ``s3://bucket/prefix``."""

    parallel_moves = 16  # the switch moves the keys of one rank with this many threads

    def __init__(self, url: str, client=None, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.lease_seconds = lease_seconds
        self._client = client

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = make_client()
        return self._client

    def full(self, key: str) -> str:
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def _dir(self, prefix: str) -> str:
        """The object-name prefix of everything below ``prefix`` (with a trailing slash)."""
        p = self.full(prefix.strip("/"))
        return f"{p}/" if p else ""

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            why = ("no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                   "AWS_PROFILE)")
        elif isinstance(exc, ClientError):
            why = f"{_code(exc) or 'error'} (HTTP {_status(exc)})"
            if _code(exc) == "NoSuchBucket":
                why = "no such bucket"
        else:
            why = f"{exc.__class__.__name__}: {exc}"
        return StoreError(f"cannot {what} {self.url}/{key}: {why}")

    def _call(self, what: str, key: str, fn: Callable, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(what, key, exc) from exc

    # -- bytes under keys -----------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.full(key))
            return r["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def put(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self.full(key),
                   Body=data)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self.full(key))

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.full(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        h = self._head(key)
        return None if h is None else int(h["ContentLength"])

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        kw = {"Bucket": self.bucket, "Prefix": self._dir(prefix)}
        if delimiter:
            kw["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**kw)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._dir("")
        for page in self._pages(prefix, None):
            for obj in page.get("Contents", ()):
                yield obj["Key"][len(base):]

    def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        base = self._dir(prefix)
        keys, dirs = [], []
        for page in self._pages(prefix, "/"):
            keys += [o["Key"][len(base):] for o in page.get("Contents", ())]
            dirs += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", ())]
        return [k for k in keys if k], dirs

    def move(self, src: str, dst: str) -> None:
        # DESIGN CHOICE: one server-side CopyObject (atomic for the reader of ``dst``; our keys
        # are far below its 5 GB limit), then the staged key is deleted. A crash in between
        # leaves both; roll-forward copies again (same bytes) or finds the key in place.
        self._call("write", dst, self.client.copy_object, Bucket=self.bucket, Key=self.full(dst),
                   CopySource={"Bucket": self.bucket, "Key": self.full(src)})
        self.delete(src)

    def move_if_present(self, src: str, dst: str) -> bool:
        """One CopyObject (a missing source answers 404: no HEAD first), then the delete."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.copy_object(Bucket=self.bucket, Key=self.full(dst),
                                    CopySource={"Bucket": self.bucket, "Key": self.full(src)})
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return False
            raise self._fail("write", dst, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("write", dst, exc) from exc
        self.delete(src)
        return True

    def sync(self, key: str) -> None:
        """A PUT that returned is durable on S3: nothing to do."""

    def delete_prefix(self, prefix: str) -> None:
        self._delete_many([self.full(k) for k in self.list(prefix)], prefix)

    def remove_all(self) -> None:
        """Everything under the prefix but the lease (its holder deletes that on release)."""
        self._delete_many([self.full(k) for k in self.list("") if k != LOCK_KEY], "")

    def _delete_many(self, keys: list[str], prefix: str) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self._call("delete", prefix, self.client.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})

    # -- the writer lock ------------------------------------------------------------------------
    @contextmanager
    def lock(self, timeout: float, on_wait: Callable[[str], None] | None = None):
        lease = S3Lease(self, ttl=self.lease_seconds)
        lease.acquire(timeout, on_wait)
        try:
            yield lease
        finally:
            lease.release()


class S3Lease(Fence):
    """The writer lease of one S3 store: the object ``.s2ingest/lock``.

    - **take**: ``PUT If-None-Match: *``; exactly one of several writers succeeds.
    - **hold**: a heartbeat thread re-PUTs it every ``ttl / 4`` s with ``If-Match`` on the
      ETag of its own last write (each body differs, so every renewal changes the ETag).
    - **take over**: only an expired lease, and only with ``If-Match`` on the expired
      object's ETag, so two waiters cannot both take it. A lease is expired when its ETag has
      not changed for ``ttl`` seconds of the waiter's own clock (DESIGN CHOICE: no comparison
      of clocks of different machines), or at once when its holder ran on this host and that
      process is gone (a crashed writer on this machine does not block its rerun).
    - **fence** (commit point): one more ``If-Match`` re-PUT; a 412 means another writer took
      the lease, and the commit is refused with ``StoreLeaseLostError``.
    - **release**: ``DELETE If-Match`` own ETag (never someone else's lease).
    - **lost answers**: every write carries a fresh random token in its body; a conditional
      PUT that fails (412/409) reads the lease back, and when it holds the token of that very
      write (S3 applied it, its answer was lost, the client's retry failed the condition) the
      lease is ours, with that object's ETag.
    """

    def __init__(self, backend: S3Backend, *, ttl: float = LEASE_SECONDS,
                 holder: str | None = None) -> None:
        self.backend = backend
        self.ttl = ttl
        self.holder = holder or holders.me()
        self.etag: str | None = None
        self._lost = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewals = 0

    @property
    def url(self) -> str:
        return f"{self.backend.url}/{LOCK_KEY}"

    @property
    def lost(self) -> bool:
        return self._lost

    def _body(self, token: str) -> bytes:
        self._renewals += 1
        return json.dumps({"holder": self.holder, "ttl": self.ttl, "renewal": self._renewals,
                           "nonce": token, "expires": time.time() + self.ttl}).encode()

    def _put(self, **cond) -> str | None:
        """PUT the lease with a condition; its new ETag, or None when the condition failed."""
        from botocore.exceptions import BotoCoreError, ClientError

        b = self.backend
        token = uuid.uuid4().hex  # this write's own mark, in its body
        try:
            r = b.client.put_object(Bucket=b.bucket, Key=b.full(LOCK_KEY), Body=self._body(token),
                                    **cond)
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write won the race
            if _status(exc) in (409, 412) or _code(exc) in ("PreconditionFailed",
                                                             "ConditionalRequestConflict"):
                return self._own_write(token)
            raise b._fail("lock", LOCK_KEY, exc) from exc
        except BotoCoreError as exc:
            raise b._fail("lock", LOCK_KEY, exc) from exc
        return r["ETag"]

    def _own_write(self, token: str) -> str | None:
        """The ETag of the lease object when it holds our write ``token``, else None.

        A conditional PUT that S3 applied but whose answer was lost is retried by the client
        and then fails its own condition (412): the object it finds is our write, not another
        writer's. Its body's token tells the two apart (DESIGN CHOICE: a fresh random token
        per write, never reused, so no other writer's body can carry it).
        """
        current, body = self._current()
        if current is not None and body.get("nonce") == token:
            log.info("the writer lease of %s holds this writer's own write (its answer was lost)",
                     self.backend.url)
            return current
        return None

    def _current(self) -> tuple[str | None, dict]:
        """(ETag, body) of the lease object now; (None, {}) when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        b = self.backend
        try:
            r = b.client.get_object(Bucket=b.bucket, Key=b.full(LOCK_KEY))
            raw = r["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404:
                return None, {}
            raise b._fail("read the lock", LOCK_KEY, exc) from exc
        except BotoCoreError as exc:
            raise b._fail("read the lock", LOCK_KEY, exc) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return r["ETag"], body if isinstance(body, dict) else {}

    def acquire(self, timeout: float, on_wait: Callable[[str], None] | None = None) -> None:
        seen: tuple[str, float] | None = None  # (ETag, when first seen) of another's lease

        def take() -> tuple[bool, str | None]:
            nonlocal seen
            etag = self._put(IfNoneMatch="*")
            current, body = None, {}
            if etag is None:
                current, body = self._current()
                if current is not None:
                    now = time.monotonic()
                    if seen is None or seen[0] != current:
                        seen = (current, now)
                    holder = str(body.get("holder", ""))
                    if now - seen[1] >= self.ttl or holders.alive(holder) is False:
                        etag = self._put(IfMatch=current)  # take over the expired lease
                        if etag is not None:
                            log.warning("took over the expired writer lease of %s on %s",
                                        body.get("holder", "?"), self.backend.url)
            if etag is not None:
                self.etag = etag
                return True, None
            return False, str(body["holder"]) if current is not None and body.get("holder") else None

        holders.wait_as_writer(take, where=self.backend.url, timeout=timeout, poll=POLL_SECONDS,
                               error=StoreBusyError, on_wait=on_wait)
        self._thread = threading.Thread(target=self._heartbeat, name="s3-lease", daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Re-PUT the lease conditional on our ETag; False (and ``lost``) if it is not ours."""
        with self._mutex:
            if self._lost or self.etag is None:
                return False
            etag = self._put(IfMatch=self.etag)
            if etag is None:
                self._lost = True
                log.warning("the writer lease of %s was taken over by another writer", self.backend.url)
                return False
            self.etag = etag
            return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.renew():
                    return
            except StoreError as exc:  # a network blip: try again next beat (fence decides)
                log.warning("could not renew the writer lease of %s: %s", self.backend.url, exc)

    @contextmanager
    def fence(self):
        if not self.renew():
            raise StoreLeaseLostError(
                f"{self.backend.url}: another writer took over this writer's lease "
                f"({LOCK_KEY}); nothing was published")
        yield

    def release(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            if self._lost or self.etag is None:
                return
            b = self.backend
            try:
                b.client.delete_object(Bucket=b.bucket, Key=b.full(LOCK_KEY), IfMatch=self.etag)
            except ClientError as exc:
                if _status(exc) in (404, 409, 412):
                    return  # no longer ours (or our delete applied and its answer lost): leave it
                if _status(exc) in (400, 501):  # a server without conditional deletes
                    current, _ = self._current()
                    if current == self.etag:
                        b.delete(LOCK_KEY)
                    return
                log.warning("could not release the writer lease of %s: %s", b.url, exc)
            except BotoCoreError as exc:
                log.warning("could not release the writer lease of %s: %s", b.url, exc)
            self.etag = None
