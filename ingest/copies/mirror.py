"""``s2ingest mirror``: a verified, incremental, resumable copy of exactly one published version.

The source is any cube the store reads (a local path, a plain static HTTP server, an
object store); nothing is listed there: the version's manifest names every key with its
size and sha256, and its metadata snapshot holds the metadata documents as published.

1. **Plan** (``subset.plan_copy``): the keys of the copy, from the version's manifest.
2. **Compare** with the copy: a key whose bytes in the copy already match (sha256; sizes
   only with ``quick``) is kept; every other key is fetched, and keys the copy has but the
   plan does not are deleted. A corrupt or truncated key in the copy is therefore fetched
   again by the next run.
3. **Fetch** in parallel (bounded connections, retries with backoff): each key is checked
   against the manifest (size, sha256) and written under ``.s2ingest/mirror/`` of the copy,
   where an interrupted run finds it again (a rerun resumes; nothing a reader sees changed).
4. **Commit** through the copy's own ``Transaction``: the fetched keys are moved into place,
   the copy's consolidated metadata and manifest go last (DESIGN.md §5). The copy publishes
   the source's version number, and its manifest names the source.

A key whose bytes no longer match the manifest at the source was rewritten by a newer
version published meanwhile: the copy moves to the newest version (keys fetched so far are
kept where they still match) and never mixes two versions. With a pinned ``version`` it
stops with an error instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ingest.errors import ConfigError, NotACubeError, StoreError
from ingest.store.bookkeeping.codec import object_key
from ingest.store.bookkeeping.index import LazyKeys, SharedKeys, VersionIndex
from ingest.store import DEFAULT_LOCK_TIMEOUT, CubeStore, digest, faults
from ingest.store.layout import META_DIR, is_metadata, join
from ingest.store.zarrdocs import ArrayMeta, read_array
from ingest.copies.subset import CopyPlan, FromSource, Rewritten, Selection, plan_copy

log = logging.getLogger(__name__)

MIRROR_DIR = f"{META_DIR}/mirror"
FETCHED = f"{MIRROR_DIR}/fetched"  # downloads kept across interrupted runs
STATE = f"{MIRROR_DIR}/source.json"  # what this copy is a copy of
DEFAULT_JOBS = 8
DEFAULT_RETRIES = 4
MAX_MOVES = 5  # times a copy follows the source to a newer version before giving up


class SourceMoved(Exception):
    """The source published a newer version that changed a key of the one being copied."""

    def __init__(self, key: str, newer: int) -> None:
        super().__init__(key)
        self.key = key
        self.newer = newer


@dataclass
class MirrorReport:
    source: str
    copy: str
    version: int
    keys: int = 0  # keys of the copy
    fetched: int = 0
    fetched_bytes: int = 0
    resumed: int = 0  # fetched by an interrupted earlier run
    kept: int = 0  # already right in the copy
    repaired: int = 0  # in the copy with the wrong bytes, fetched again
    deleted: int = 0
    moves: list[int] = field(default_factory=list)  # versions the copy moved away from
    seconds: float = 0.0
    changed: bool = False  # False: the copy already was this version, byte for byte


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def mirror(source: str, copy: str, *, selection: Selection = Selection(), version: int | None = None,
           jobs: int = DEFAULT_JOBS, retries: int = DEFAULT_RETRIES, quick: bool = False,
           force: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
           progress: Progress | None = None, on_wait: Callable[[str], None] | None = None) -> MirrorReport:
    """Make ``copy`` a copy of one published version of ``source`` (default: its newest)."""
    t0 = time.perf_counter()
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    src = CubeStore.open(source)
    _refuse_same(src, copy)
    moved: list[int] = []
    while True:
        target = version if version is not None else src.version()
        if target < 1:
            raise StoreError(f"{src.url} has no published version yet")
        try:
            report = _mirror_version(src, copy, target, selection, jobs=jobs, retries=retries,
                                     quick=quick, force=force, lock_timeout=lock_timeout,
                                     progress=progress, on_wait=on_wait)
        except SourceMoved as moved_exc:
            if version is not None:
                raise StoreError(
                    f"{src.url}: version {version} is gone at the source ({moved_exc.key} was "
                    f"rewritten by version {moved_exc.newer}); mirror the newest version instead") from None
            moved.append(target)
            if len(moved) > MAX_MOVES:
                raise StoreError(f"{src.url} changed {len(moved)} times during the copy; "
                                 "try again later (everything fetched so far is kept)") from None
            log.warning("%s published version %d during the copy of version %d; moving to it",
                        src.url, moved_exc.newer, target)
            continue
        report.moves = moved
        report.seconds = time.perf_counter() - t0
        return report


def _refuse_same(src: CubeStore, copy: str) -> None:
    if "://" in copy or "://" in src.url:
        if copy.rstrip("/") == src.url.rstrip("/"):
            raise ConfigError("the copy must not be the source")
        return
    if Path(copy).resolve() == Path(src.url).resolve():
        raise ConfigError("the copy must not be the source")


def _source_docs(src: CubeStore, version: int, keys: dict[str, dict]) -> dict[str, bytes]:
    """The metadata documents of ``version``: its snapshot, or (for a store written before
    snapshots, while that version is the newest) the documents themselves, checked."""
    try:
        return src.metadata_snapshot(version)
    except StoreError:
        if src.version() != version:
            raise
    docs = {}
    for key, entry in keys.items():
        if is_metadata(key):
            raw = src.read(key)
            if raw is None or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                raise SourceMoved(key, src.version())
            docs[key] = raw
    return docs


class _Fetcher:
    """Reads source keys in parallel threads (one reader per thread), checked, with retries."""

    def __init__(self, src: CubeStore, version: int, retries: int) -> None:
        self.src = src
        self.version = version
        self.retries = retries
        self._local = threading.local()

    def reader(self) -> Callable[[str], bytes | None]:
        read = getattr(self._local, "read", None)
        if read is None:
            read = self._local.read = self.src.key_reader()
        return read

    def get(self, key: str, size: int, sha: str) -> bytes:
        """The bytes of ``key`` as the version's manifest names them."""
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                data = self.reader()(key)
            except StoreError as exc:
                if attempt == self.retries:
                    raise StoreError(f"cannot read {self.src.url}/{key} after {attempt + 1} tries: {exc}") from exc
                data = False
            if data is not False:
                if data is not None and len(data) == size and hashlib.sha256(data).hexdigest() == sha:
                    return data
                kept = self.reader()(object_key(sha))  # rewritten since: the bytes the source kept
                if kept is not None and len(kept) == size and hashlib.sha256(kept).hexdigest() == sha:
                    return kept
                newer = self.src.version()
                if newer != self.version:
                    raise SourceMoved(key, newer)
                if attempt == self.retries:
                    what = "missing" if data is None else f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}…"
                    raise StoreError(f"{self.src.url}/{key} does not match the manifest of version "
                                     f"{self.version} ({what}; expected {size} bytes, sha256 {sha[:12]}…); "
                                     "the source is damaged (`s2ingest verify --deep` there)")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


def _mirror_version(src: CubeStore, copy: str, version: int, selection: Selection, *, jobs: int,
                    retries: int, quick: bool, force: bool, lock_timeout: float,
                    progress: Progress | None, on_wait) -> MirrorReport:
    keys = _source_keys(src, version, copy)
    docs = _source_docs(src, version, keys)
    fetcher = _Fetcher(src, version, retries)

    def small_array(path: str):
        meta = ArrayMeta(json.loads(docs[join(path, ".zarray")]))

        def get(chunk: str) -> bytes | None:
            entry = keys.get(f"{path}/{chunk}")
            return None if entry is None else fetcher.get(f"{path}/{chunk}", entry["size"], entry["sha256"])
        return read_array(meta, get)

    plan = plan_copy(version, keys, docs, src.grid, selection, small_array, source_url=src.url)
    dst = CubeStore.for_writing(copy, plan.grid)
    _check_is_copy(dst, src, force)
    dst.make_location()  # an interrupted first copy keeps its downloads for the rerun
    report = MirrorReport(src.url, dst.url, version, keys=len(plan.keys))
    with dst.transaction(timeout=lock_timeout, on_wait=on_wait) as tx:
        if tx.base_version > version:
            raise StoreError(f"the copy {dst.url} is at version {tx.base_version}, newer than "
                             f"version {version} of the source; mirror into a new folder")
        have = _copy_manifest(dst, tx.base_version)
        todo = _compare(dst, plan, have, quick, jobs, report)
        _fetch(dst, fetcher, plan, todo, jobs, report, progress)
        for key in todo:
            entry = plan.keys[key]
            if isinstance(entry, Rewritten):
                tx.put(key, entry.data)
            else:
                tx.adopt(key, f"{FETCHED}/{key}", (entry.size, entry.sha256))
        gone = sorted(set(have) - set(plan.keys) - {k for k in have if k.endswith(".zmetadata")})
        for key in gone:
            tx.delete(key)
        report.deleted = len(gone)
        source_doc = {"url": src.url, "version": version,
                      "manifest_sha256": src.manifest_sha256(version), **selection.describe()}
        tx.put_json(STATE, source_doc)
        report.changed = bool(todo or gone or tx.base_version != version)
        if report.changed:
            tx.commit(version=version, source=source_doc)
    dst.delete_private(FETCHED)
    return report


def _source_keys(src: CubeStore, version: int, copy: str):
    """The keys of ``version`` of the source (key -> size, sha256). DESIGN CHOICE: where the
    copy already holds a list or piece of the same hash (a whole copy of an earlier version
    shares every unchanged piece), it is read from the copy, so a rerun fetches bookkeeping
    in proportion to what changed at the source."""
    index = src.index(version)
    if not isinstance(index, VersionIndex):
        return src.manifest(version)["keys"]
    try:
        local = CubeStore.open(copy).index()
    except (StoreError, NotACubeError, OSError):  # no copy yet, or one without bookkeeping
        local = None
    if not isinstance(local, VersionIndex):
        return LazyKeys(index)
    return SharedKeys(index, local)


def copy_of(store: CubeStore) -> dict | None:
    """What the cube ``store`` is a copy of (the record the mirror's last commit wrote: url,
    version, manifest sha256, selection); None when it is no copy made by ``s2ingest mirror``."""
    raw = store.read(STATE)
    return None if raw is None else json.loads(raw)


def _check_is_copy(dst: CubeStore, src: CubeStore, force: bool) -> None:
    """Refuse to overwrite a cube that is not a copy (its own ingests would be lost)."""
    if dst.read(".zmetadata") is None or dst.read(STATE) is not None or force:
        return
    raise NotACubeError(f"{dst.url} is a cube of its own, not a copy made by `s2ingest mirror`; "
                        "mirror into a new folder (or pass --force to replace it)")


def _copy_manifest(dst: CubeStore, version: int) -> dict[str, dict]:
    if version == 0:
        return {}
    try:
        return dst.manifest(version)["keys"]
    except StoreError:
        return dst.full_listing()


def _compare(dst: CubeStore, plan: CopyPlan, have: dict[str, dict], quick: bool, jobs: int,
             report: MirrorReport) -> list[str]:
    """Keys of the plan the copy does not hold right (checked in the copy itself: its manifest
    may say a key is right while the file was damaged since)."""
    def check(item) -> tuple[str, str]:
        key, entry = item
        want = (entry.size, entry.sha256) if isinstance(entry, FromSource) else digest(entry.data)
        listed = have.get(key)
        if listed is None or listed["sha256"] != want[1]:
            return key, "new"
        if quick:
            return key, "kept" if dst.size(key) == want[0] else "repair"
        data = dst.read(key)
        return key, "kept" if data is not None and digest(data) == want else "repair"

    todo = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for key, verdict in pool.map(check, plan.keys.items()):
            if verdict == "kept":
                report.kept += 1
            else:
                if verdict == "repair":
                    report.repaired += 1
                    log.warning("%s/%s does not hold the bytes of its manifest; fetching it again",
                                dst.url, key)
                todo.append(key)
    return todo


def _fetch(dst: CubeStore, fetcher: _Fetcher, plan: CopyPlan, todo: list[str], jobs: int,
           report: MirrorReport, progress: Progress | None) -> None:
    """Every key of ``todo`` that comes from the source, under ``FETCHED`` of the copy (kept
    where an earlier, interrupted run left it with the right bytes)."""
    wanted = [(k, plan.keys[k]) for k in todo if isinstance(plan.keys[k], FromSource)]
    total = sum(e.size for _, e in wanted)
    done = 0
    lock = threading.Lock()

    def one(item) -> tuple[int, bool]:
        key, entry = item
        staged = f"{FETCHED}/{key}"
        if dst.size(staged) == entry.size:
            old = dst.read(staged)
            if old is not None and hashlib.sha256(old).hexdigest() == entry.sha256:
                return entry.size, True
        data = fetcher.get(entry.key, entry.size, entry.sha256)
        dst.write_private(staged, data)
        faults.point("mirror.fetched")
        return entry.size, False

    if progress:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, item) for item in wanted]
        try:
            for fut in as_completed(futures):
                size, resumed = fut.result()
                with lock:
                    done += size
                    if resumed:
                        report.resumed += 1
                    else:
                        report.fetched += 1
                        report.fetched_bytes += size
                if progress:
                    progress(done, total)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
