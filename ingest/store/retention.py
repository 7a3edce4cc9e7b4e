"""Retention of versions: which versions a store keeps, and deleting what only expired
versions reference (``s2ingest versions expire``; DESIGN.md §5).

A version is retained while it is one of the newest ``keep`` versions or younger than
``max_age``; the published version always is. A version leaves retention at a known time
(when the version ``keep`` places after it was created, or when it grows older than
``max_age``, whichever is later), and is expired only once it has been out of retention for
``grace``: a reader that opened it before may still be reading.

DESIGN CHOICE: expiring costs what it deletes. A commit C lists the digests of the old bytes
it kept (needed only by versions older than C); with E the oldest retained version, the kept
objects to delete are those listed by commits up to E that no commit after E lists again. A
piece or list is deleted when an expired root names it and no retained root does (compared
list by list: lists are one entry per time chunk). Roots are deleted first, so a crash leaves
only unreferenced objects, never a listed version with missing bookkeeping.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ingest.errors import StoreError
from ingest.store.backends import Backend
from ingest.store.bookkeeping.codec import (
    CorruptError, decode_kept, decode_list, decode_root, list_key, object_key, piece_key, root_key,
    snapshot_key,
)
from ingest.store.layout import manifest_key, metadata_key

log = logging.getLogger(__name__)


@dataclass
class ExpireReport:
    retained: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # out of retention, inside the grace period
    objects_deleted: int = 0  # kept chunk bytes
    bookkeeping_deleted: int = 0  # pieces, lists, snapshots, roots, manifests


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
           now: datetime | None = None, dry_run: bool = False) -> ExpireReport:
    """Drop the versions out of retention (and out of it for ``grace``) and delete what only
    they reference. Call with the writer lock held."""
    now = now or datetime.now(timezone.utc)
    roots = {v: r for v in versions if (r := _root(backend, v)) is not None}
    expired, waiting, retained = plan(sorted(roots), roots, published, keep=keep, max_age=max_age,
                                      grace=grace, now=now)
    report = ExpireReport(retained, expired, waiting)
    if not expired or dry_run:
        return report
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
    retained_lists = {(a, h) for v in retained for a, h in roots[v].get("arrays", {}).items()}
    retained_pieces: dict[str, set[str]] = {}
    drop_pieces: set[str] = set()
    for v in expired:
        for array, lh in roots[v].get("arrays", {}).items():
            if (array, lh) in retained_lists or list_key(lh) not in drop_named:
                continue
            if array not in retained_pieces:
                retained_pieces[array] = {ph for (a, h) in retained_lists if a == array
                                          for ph in _list(backend, h).values()}
            raw = backend.get(list_key(lh))
            if raw is not None:
                drop_pieces |= set(decode_list(raw).values()) - retained_pieces[array]
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
    return report


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
