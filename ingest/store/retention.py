"""Retention of versions: which versions a store keeps, and deleting what only expired
versions reference (``s2ingest versions expire``; DESIGN.md §5).

A version is retained while it is one of the newest ``keep`` versions or younger than
``max_age``; the published version always is. A version leaves retention at a known time
(when the version ``keep`` places after it was created, or when it grows older than
``max_age``, whichever is later), and is expired only once it has been out of retention for
``grace``: a reader that opened it before may still be reading.

DESIGN CHOICE: expiring costs what it deletes (and the retained versions' array lists, one
entry per time chunk). A commit C lists the digests of the old bytes it kept (needed only by
versions older than C); with E the oldest retained version, the kept objects to delete are
those listed by commits up to E that no commit after E lists again. A piece or list is deleted
when an expired root names it and no retained root does (the pieces of every retained list,
whatever its array: arrays with equal chunks share pieces). Roots are deleted first, so a crash
leaves only unreferenced objects, never a listed version with missing bookkeeping.

DESIGN CHOICE (``sweep``): objects nothing names at all, written by a commit that died before
its journal or by a writer whose lease was taken over, are found only by listing: under the
lock (no writer is staging) every key of the content-addressed folders is compared with what
the retained versions reference (their snapshots, array lists, the pieces those lists name,
changes, kept lists and the kept objects). That costs the retained versions' bookkeeping and a
listing, so it is an explicit housekeeping option, never part of a commit.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ingest.errors import StoreError
from ingest.store.backends import Backend
from ingest.store.bookkeeping.codec import (
    LIST_DIR, OBJECT_DIR, PIECE_DIR, SNAP_DIR, CorruptError, decode_kept, decode_list, decode_root,
    list_key, object_key, piece_key, root_key, snapshot_key,
)
from ingest.store.layout import manifest_key, metadata_key

log = logging.getLogger(__name__)

SWEPT_DIRS = (PIECE_DIR, LIST_DIR, SNAP_DIR, OBJECT_DIR)  # content-addressed; roots are versions


@dataclass
class ExpireReport:
    retained: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # out of retention, inside the grace period
    objects_deleted: int = 0  # kept chunk bytes
    bookkeeping_deleted: int = 0  # pieces, lists, snapshots, roots, manifests
    swept: dict[str, int] = field(default_factory=dict)  # folder -> unreferenced objects (sweep)
    swept_bytes: int = 0


def _created(root: dict) -> datetime:
    try:
        t = datetime.fromisoformat(str(root.get("created")))
    except ValueError:
        return datetime.fromtimestamp(0, timezone.utc)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _root(backend: Backend, version: int) -> dict | None:
    raw = backend.get(root_key(version))
    if raw is not None:
        try:
            return decode_root(raw)
        except CorruptError as exc:
            raise StoreError(f"{backend.url}: {root_key(version)}: {exc}") from None
    raw = backend.get(manifest_key(version))
    if raw is None:
        return None
    m = json.loads(raw)
    return {"format": 1, "version": version, "created": m.get("created"), "arrays": {}}


def plan(versions: list[int], roots: dict[int, dict], published: int, *, keep: int,
         max_age: timedelta | None, grace: timedelta, now: datetime) -> tuple[list[int], list[int], list[int]]:
    """(expired, waiting, retained): expired is always a run of the oldest versions."""
    versions = sorted(versions)
    expired, waiting = [], []
    for i, v in enumerate(versions):
        created = _created(roots[v])
        young = max_age is not None and now - created < max_age
        in_count = i >= len(versions) - max(keep, 1)
        if v == published or young or in_count:
            break
        left = _created(roots[versions[i + keep]]) if i + keep < len(versions) else now
        if max_age is not None:
            left = max(left, created + max_age)
        if now - left < grace:
            waiting.append(v)
            break  # keep the run contiguous: nothing newer expires before it
        expired.append(v)
    retained = [v for v in versions if v not in expired]
    return expired, waiting, retained


def expire(backend: Backend, versions: list[int], published: int, *, keep: int,
           max_age: timedelta | None = None, grace: timedelta = timedelta(hours=1),
           now: datetime | None = None, dry_run: bool = False, sweep: bool = False) -> ExpireReport:
    """Drop the versions out of retention (and out of it for ``grace``) and delete what only
    they reference; ``sweep``: then also delete every bookkeeping object no retained version
    references (see the module docstring). Call with the writer lock held."""
    if sweep and not backend.supports_listing:
        raise StoreError(f"{backend.url}: cannot sweep, this backend cannot list keys; "
                         "expire without --sweep")
    now = now or datetime.now(timezone.utc)
    roots = {v: r for v in versions if (r := _root(backend, v)) is not None}
    expired, waiting, retained = plan(sorted(roots), roots, published, keep=keep, max_age=max_age,
                                      grace=grace, now=now)
    report = ExpireReport(retained, expired, waiting)
    if expired and not dry_run:
        _drop(backend, roots, expired, retained, published, report)
    if sweep:  # a dry run has not dropped the expired versions: what they name is not swept
        _sweep(backend, roots, sorted(roots) if dry_run else retained, report, dry_run)
    return report


def _drop(backend: Backend, roots: dict[int, dict], expired: list[int], retained: list[int],
          published: int, report: ExpireReport) -> None:
    oldest = retained[0] if retained else published
    kept_later: set[str] = set()
    for v in retained:
        if v > oldest and roots[v].get("kept"):
            kept_later |= set(_kept(backend, roots[v]["kept"]))
    drop_objects: set[str] = set()
    for v in [*expired, oldest]:
        if v in roots and roots[v].get("kept"):
            drop_objects |= set(_kept(backend, roots[v]["kept"])) - kept_later
    # bookkeeping named by expired roots and by no retained root
    keep_named = _named(retained, roots)
    drop_named = _named(expired, roots) - keep_named
    retained_lists = {h for v in retained for h in roots[v].get("arrays", {}).values()}
    retained_pieces: set[str] | None = None  # of every array: equal pieces are shared across arrays
    drop_pieces: set[str] = set()
    for v in expired:
        for lh in roots[v].get("arrays", {}).values():
            if lh in retained_lists or list_key(lh) not in drop_named:
                continue
            if retained_pieces is None:
                retained_pieces = {ph for h in retained_lists for ph in _list(backend, h).values()}
            raw = backend.get(list_key(lh))
            if raw is not None:
                drop_pieces |= set(decode_list(raw).values()) - retained_pieces
    for v in expired:  # the versions go first: a crash leaves only unreferenced objects
        for key in (root_key(v), manifest_key(v), metadata_key(v)):
            if backend.exists(key):
                backend.delete(key)
                report.bookkeeping_deleted += 1
    for key in sorted(drop_named | {piece_key(h) for h in drop_pieces}):
        backend.delete(key)
        report.bookkeeping_deleted += 1
    for h in sorted(drop_objects):
        backend.delete(object_key(h))
        report.objects_deleted += 1
    log.info("expired versions %s of %s", expired, backend.url)


def referenced(backend: Backend, roots: dict[int, dict], versions: list[int]) -> set[str]:
    """Every key under ``SWEPT_DIRS`` that ``versions`` (the retained ones) need. Refuses
    (StoreError) when a list or kept list is missing or damaged: what it names is unknown."""
    out = _named(versions, roots)
    lists = {h for v in versions for h in roots[v].get("arrays", {}).values()}
    for h in sorted(lists):
        out.update(piece_key(p) for p in _need(backend, list_key(h), decode_list).values())
    oldest = min(versions, default=0)
    for v in versions:  # a commit keeps bytes for the versions before it only
        if v > oldest and roots[v].get("kept"):
            out.update(object_key(h) for h in _need(backend, piece_key(roots[v]["kept"]), decode_kept))
    return out


def _sweep(backend: Backend, roots: dict[int, dict], versions: list[int], report: ExpireReport,
           dry_run: bool) -> None:
    refs = referenced(backend, roots, versions)
    for folder in SWEPT_DIRS:
        name = folder.rsplit("/", 1)[1]
        for key in sorted(backend.list(folder)):
            if key in refs:
                continue
            report.swept[name] = report.swept.get(name, 0) + 1
            report.swept_bytes += backend.size(key) or 0
            if not dry_run:
                backend.delete(key)
    if report.swept and not dry_run:
        log.info("swept %s unreferenced objects (%d bytes) of %s", report.swept, report.swept_bytes,
                 backend.url)


def _need(backend: Backend, key: str, decode):
    raw = backend.get(key)
    if raw is None:
        raise StoreError(f"{backend.url}: {key}: missing, named by a retained version; "
                         "nothing swept (run verify)")
    try:
        return decode(raw)
    except CorruptError as exc:
        raise StoreError(f"{backend.url}: {key}: {exc}; nothing swept (run verify)") from None


def _named(versions: list[int], roots: dict[int, dict]) -> set[str]:
    out: set[str] = set()
    for v in versions:
        r = roots[v]
        if r.get("format") != 2:
            continue
        out.add(snapshot_key(r["metadata"]))
        out.update(list_key(h) for h in r.get("arrays", {}).values())
        if (r.get("changes") or {}).get("hash"):
            out.add(piece_key(r["changes"]["hash"]))
        if r.get("kept"):
            out.add(piece_key(r["kept"]))
    return out


def _kept(backend: Backend, h: str) -> list[str]:
    raw = backend.get(piece_key(h))
    return decode_kept(raw) if raw is not None else []


def _list(backend: Backend, h: str) -> dict[int, str]:
    raw = backend.get(list_key(h))
    return decode_list(raw) if raw is not None else {}
