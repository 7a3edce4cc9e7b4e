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
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from ingest.errors import ConfigError, EmptySelectionError, NotACubeError, StoreError
from ingest.store.bookkeeping.index import LazyKeys, SharedKeys, VersionIndex
from ingest.store import DEFAULT_LOCK_TIMEOUT, CubeStore, digest, faults
from ingest.store.layout import META_DIR, join
from ingest.store.zarrdocs import ArrayMeta, read_array
from ingest.copies.checks import SourceMovedOn, refuse_places, source_bookkeeping
from ingest.copies.fetch import DEFAULT_TRANSFER_TIMEOUT, Fetcher, SourceMoved
from ingest.copies.subset import CopyPlan, FromSource, Rewritten, Selection, plan_copy

log = logging.getLogger(__name__)

MIRROR_DIR = f"{META_DIR}/mirror"
FETCHED = f"{MIRROR_DIR}/fetched"  # downloads kept across interrupted runs
STATE = f"{MIRROR_DIR}/source.json"  # what this copy is a copy of
TRUSTED = f"{MIRROR_DIR}/verified.json"  # key -> size, mtime, inode, sha256 when last verified
DEFAULT_JOBS = 8
DEFAULT_RETRIES = 4
MAX_MOVES = 5  # times a copy follows the source to a newer version before giving up


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
           transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT,
           progress: Progress | None = None, on_wait: Callable[[str], None] | None = None) -> MirrorReport:
    """Make ``copy`` a copy of one published version of ``source`` (default: its newest)."""
    t0 = time.perf_counter()
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if not transfer_timeout > 0:
        raise ConfigError("--transfer-timeout must be more than 0 seconds")
    src = CubeStore.open(source)
    refuse_places(src.url, copy)
    moved: list[int] = []
    while True:
        target = version if version is not None else src.version()
        if target < 1:
            raise StoreError(f"{src.url} has no published version yet")
        try:
            report = _mirror_version(src, copy, target, selection, jobs=jobs, retries=retries,
                                     quick=quick, force=force, lock_timeout=lock_timeout,
                                     transfer_timeout=transfer_timeout, progress=progress, on_wait=on_wait)
        except OSError as exc:  # a full disk, a folder we may not write: one line, exit 6
            if isinstance(exc, StoreError):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            raise StoreError(f"cannot write the copy {copy}: {exc.strerror or exc}{where}; readers "
                             "still see its last complete version; free the space (or fix the "
                             "cause) and rerun to resume, what was fetched is kept") from exc
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


def _mirror_version(src: CubeStore, copy: str, version: int, selection: Selection, *, jobs: int,
                    retries: int, quick: bool, force: bool, lock_timeout: float,
                    transfer_timeout: float, progress: Progress | None, on_wait) -> MirrorReport:
    try:
        keys, docs = source_bookkeeping(src, version, keys=_source_keys(src, version, copy))
    except SourceMovedOn as exc:
        raise SourceMoved(exc.key, exc.newer) from None
    fetcher = Fetcher(src, version, retries, transfer_timeout)

    def small_array(path: str):
        meta = ArrayMeta(json.loads(docs[join(path, ".zarray")]))

        def get(chunk: str) -> bytes | None:
            entry = keys.get(f"{path}/{chunk}")
            return None if entry is None else fetcher.get(f"{path}/{chunk}", entry["size"], entry["sha256"])
        return read_array(meta, get)

    plan = plan_copy(version, keys, docs, src.grid, selection, small_array, source_url=src.url)
    _refuse_empty(plan, selection, src.url, docs)
    dst = CubeStore.for_writing(copy, plan.grid)
    _check_is_copy(dst, src, force)
    dst.make_location()  # an interrupted first copy keeps its downloads for the rerun
    report = MirrorReport(src.url, dst.url, version, keys=len(plan.keys))
    with dst.transaction(timeout=lock_timeout, on_wait=on_wait) as tx:
        if tx.base_version > version:
            raise StoreError(f"the copy {dst.url} is at version {tx.base_version}, newer than "
                             f"version {version} of the source; mirror into a new folder")
        have = _copy_manifest(dst, tx.base_version)
        size_only: set[str] = set()  # kept by --quick on their size alone: not verified
        todo = _compare(dst, plan, have, quick, jobs, report, size_only)
        _fetch(dst, fetcher, plan, todo, jobs, report, progress)
        for key in todo:
            entry = plan.keys[key]
            if isinstance(entry, Rewritten):
                tx.put(key, entry.data)
            else:
                tx.adopt(key, f"{FETCHED}/{key}", (entry.size, entry.sha256))
        gone = sorted(k for k in have if k not in plan.keys and not k.endswith(".zmetadata"))
        for key in gone:
            tx.delete(key)
        report.deleted = len(gone)
        source_doc = {"url": src.url, "version": version,
                      "manifest_sha256": src.manifest_sha256(version), **selection.describe()}
        tx.put_json(STATE, source_doc)
        report.changed = bool(todo or gone or tx.base_version != version)
        if report.changed:
            tx.commit(version=version, source=source_doc)
        _record_verified(dst, plan, size_only)
    dst.delete_private(FETCHED)
    return report


def _refuse_empty(plan: CopyPlan, selection: Selection, url: str, docs: dict[str, bytes]) -> None:
    """A time range or bbox that holds no data chunk of the version: an error, not an empty copy."""
    if selection.time is None and selection.bbox is None:
        return
    dims: dict[str, tuple] = {}

    def holds_data(key: str) -> bool:  # a chunk of a gridded array (of a time series with --time)
        path = key.rsplit("/", 1)[0]
        if path not in dims:
            attrs = json.loads(docs.get(join(path, ".zattrs"), b"{}"))
            dims[path] = tuple(attrs.get("_ARRAY_DIMENSIONS", ()))
        d = dims[path]
        return {"y", "x"} <= set(d) and ("time" in d or selection.time is None)

    if any(isinstance(e, FromSource) and holds_data(e.key) for e in plan.keys.values()):
        return
    what = " and ".join(
        w for w, on in ((f"--time {'/'.join(t.date().isoformat() if t else '' for t in selection.time or ())}",
                         selection.time is not None),
                        (f"--bbox {','.join(f'{v:g}' for v in selection.bbox or ())}",
                         selection.bbox is not None)) if on)
    raise EmptySelectionError(f"version {plan.version} of {url} holds no data in {what}; "
                              "nothing was copied (`s2ingest status` shows its dates)")


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


def _file_stat(dst: CubeStore, key: str) -> list[int] | None:
    """(size, mtime in ns, inode) of a key of a copy on this machine; None elsewhere."""
    root = dst.local_path
    if root is None:
        return None
    try:
        st = os.stat(os.path.join(root, key))
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _record_verified(dst: CubeStore, plan: CopyPlan, size_only: set[str]) -> None:
    """Remember, per key of a copy on this machine, the file it was verified as (size, mtime,
    inode) with its sha256: a rerun trusts a key whose file is still that one.

    DESIGN CHOICE: as rsync and make do, an unchanged file (same size, modification time and
    inode) is not read again: a rerun of a large copy costs a stat per key, not a read of every
    byte. Whatever rewrites a file changes its time; `s2ingest verify --deep` still reads
    every byte of the copy against its manifest.
    """
    if dst.local_path is None:
        return
    record = {}
    for key, entry in plan.keys.items():
        st = _file_stat(dst, key)
        if st is None or key in size_only:
            continue
        if isinstance(entry, FromSource):  # hashed while it was copied, or by _compare
            record[key] = [*st, entry.sha256]
        elif dst.read(key) == entry.data:  # small documents: checked as they are now
            record[key] = [*st, digest(entry.data)[1]]
    dst.write_private(TRUSTED, json.dumps(record, separators=(",", ":")).encode())


def _trusted(dst: CubeStore) -> dict[str, list]:
    raw = dst.read(TRUSTED) if dst.local_path is not None else None
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _compare(dst: CubeStore, plan: CopyPlan, have: dict[str, dict], quick: bool, jobs: int,
             report: MirrorReport, size_only: set[str]) -> list[str]:
    """Keys of the plan the copy does not hold right (checked in the copy itself: its manifest
    may say a key is right while the file was damaged since; a key whose file is the one the
    last run verified is trusted)."""
    if not have:  # a first copy: nothing to compare with
        return list(plan.keys)
    trusted = _trusted(dst)

    def check(item) -> tuple[str, str]:
        key, entry = item
        want = (entry.size, entry.sha256) if isinstance(entry, FromSource) else digest(entry.data)
        listed = have.get(key)
        if listed is None or listed["sha256"] != want[1]:
            return key, "new"
        known = trusted.get(key)
        if known is not None and known[3:] == [want[1]] and _file_stat(dst, key) == known[:3]:
            return key, "kept"
        if quick:
            return key, "sized" if dst.size(key) == want[0] else "repair"
        data = dst.read(key)
        return key, "kept" if data is not None and digest(data) == want else "repair"

    todo: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for key, verdict in pool.map(check, plan.keys.items()):
            if verdict in ("kept", "sized"):
                report.kept += 1
                if verdict == "sized":
                    size_only.add(key)
            else:
                if verdict == "repair":
                    report.repaired += 1
                    log.warning("%s/%s does not hold the bytes of its manifest; fetching it again",
                                dst.url, key)
                todo.append(key)
    return todo


def _fetch(dst: CubeStore, fetcher: Fetcher, plan: CopyPlan, todo: list[str], jobs: int,
           report: MirrorReport, progress: Progress | None) -> None:
    """Every key of ``todo`` that comes from the source, under ``FETCHED`` of the copy (kept
    where an earlier, interrupted run left it with the right bytes)."""
    wanted = [(k, plan.keys[k]) for k in todo if isinstance(plan.keys[k], FromSource)]
    total = sum(e.size for _, e in wanted)
    done = 0
    lock = threading.Lock()

    resuming = dst.local_path is None or (dst.local_path / FETCHED).is_dir()

    def one(item) -> tuple[int, bool]:
        key, entry = item
        staged = f"{FETCHED}/{key}"
        if resuming and dst.size(staged) == entry.size:
            old = dst.read(staged)
            if old is not None and hashlib.sha256(old).hexdigest() == entry.sha256:
                return entry.size, True
        fetcher.fetch(entry.key, entry.size, entry.sha256,
                      lambda blocks: dst.write_private_from(staged, blocks))
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
            fetcher.cancel()
            for fut in futures:
                fut.cancel()
            raise
