"""Check a cube against itself: its axis, its open transactions, its bookkeeping (``verify``).

Works through any backend (a local path, or read only over HTTP: the bookkeeping names every
key, so nothing needs listing). The catalog side of ``s2ingest verify`` is in ``ingest.publish.audit``.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from ingest.errors import StoreError
from ingest.store.cube import CubeStore
from ingest.store.journal import JOURNAL
from ingest.store.bookkeeping.codec import POINTER_KEYS, CorruptError, is_pointer, object_key, root_key, strip_pointer
from ingest.store.bookkeeping.codec import sha as codec_sha
from ingest.store.bookkeeping.index import VersionIndex
from ingest.store.layout import META_DIR, TXN_DIR
from ingest.store.manifests import digest


def imagery_groups(store: CubeStore) -> list[str]:
    """Paths of the groups that hold a time axis with provenance (``S2/R051``, …).

    DESIGN CHOICE: a ``products`` column is required too, so the quality group
    (``S2/R051/quality``, a copy of the time axis but no provenance) is not one of them; its
    arrays are still checked against its parent's axis (``check_structure``)."""
    meta = store.consolidated("") or {}
    return sorted({g for k in meta if k.endswith("/time/.zarray")
                   and f"{(g := k.rsplit('/', 2)[0])}/products/.zarray" in meta})


def check_structure(store: CubeStore) -> Iterator[str]:
    """Problems a reader would meet: unfinished commit, axis order, lengths, consolidation."""
    backend = store.backend
    if backend.get(JOURNAL) is not None:
        yield (f"{store.url}: an unfinished commit ({JOURNAL}); the next writer completes it "
               "(run `s2ingest sync` or any write)")
    elif backend.supports_listing and backend.has_prefix(TXN_DIR):
        yield f"{store.url}: a staging area left by a crashed writer ({TXN_DIR}); the next writer discards it"
    root = store.consolidated("")
    if root is None:
        yield f"{store.url}: no root .zmetadata"
        return
    for group in imagery_groups(store):
        state = store.published(group)
        times = list(state.times)
        if times != sorted(times):
            yield f"/{group}: the time axis is not sorted"
        if len(set(times)) != len(times):
            yield f"/{group}: the time axis has repeated steps"
        gmeta = store.consolidated(group) or {}
        for key, doc in sorted(gmeta.items()):
            if key.endswith("/.zarray") and doc.get("shape") and \
                    gmeta.get(key.replace(".zarray", ".zattrs"), {}).get("_ARRAY_DIMENSIONS", [None])[0] == "time" \
                    and doc["shape"][0] != len(times):
                yield f"/{group}/{key.rsplit('/', 1)[0]}: {doc['shape'][0]} time steps, the axis has {len(times)}"
        for key, doc in gmeta.items():  # the group's .zmetadata agrees with the root's
            if root.get(f"{group}/{key}") != doc:
                yield f"/{group}/.zmetadata disagrees with the root .zmetadata on {key}"
                break


def check_manifest(store: CubeStore, *, deep: bool, workers: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> Iterator[str]:
    """Every key of the published version against its records (size and sha256 with
    ``deep``; presence otherwise), streamed piece by piece in bounded memory, and, where keys
    can be listed (not over HTTP), keys the version does not know. With ``deep`` (format 2)
    also every bookkeeping object of every kept version against the hash chain that starts
    at the root attributes (``check_chain``)."""
    version = store.version()
    try:
        index = store.index(version)
    except StoreError as exc:
        yield str(exc)
        return
    if index.root.get("version") != version:
        yield f"version {version}: its bookkeeping names version {index.root.get('version')}"
    if deep and isinstance(index, VersionIndex):
        yield from check_chain(store, index)

    def check(item: tuple[str, tuple[int, str]]) -> str | None:
        key, (size, sha) = item
        try:
            data = store.backend.get(key) if deep else None
            stored = len(data) if data is not None else (None if deep else store.backend.size(key))
        except StoreError as exc:
            return f"{key}: cannot read ({exc})"
        if stored is None:
            return f"{key}: missing (version {version} lists it)"
        if not deep:
            return None if stored == size else f"{key}: {stored} bytes, the manifest says {size}"
        got = digest(data)
        if got[0] != size:
            return f"{key}: {got[0]} bytes, the manifest says {size}"
        if got[1] != sha:
            return f"{key}: sha256 differs from the manifest (damaged or changed after version {version})"
        return None

    total, done = index.n_keys, 0
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in _batches(index.items(), 512):  # bounded: one batch in flight
                for problem in pool.map(check, batch):
                    done += 1
                    if progress is not None:
                        progress(done, max(total, done))
                    if problem:
                        yield problem
    except CorruptError as exc:
        yield f"version {version}: {exc}"
        return
    if store.supports_listing:
        # DESIGN CHOICE: a listing comes array by array: the names of one array at a time
        current, names = None, set()
        for key in store.backend.list(""):
            if key.startswith(META_DIR + "/") or is_pointer(key):
                continue
            array, _, name = key.rpartition("/")
            if array != current:
                current = array
                try:
                    names = set(index.names(array)) if isinstance(index, VersionIndex) else None
                except CorruptError as exc:
                    yield f"version {version}: {exc}"
                    return
            known = name in names if names is not None else index.record(key) is not None
            if not known:
                yield f"{key}: in the store but not in the manifest of version {version}"


def _batches(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def check_chain(store: CubeStore, index: VersionIndex) -> Iterator[str]:
    """Every kept version's root, snapshot, change list, kept list, array lists and pieces
    against the hashes that name them, from the published root (named by the root
    attributes) down the ``parent_root`` chain, each object once; the root documents against
    the snapshot; and every kept object against its name."""
    seen: set[str] = set()
    url = store.url
    live = {k: store.backend.get(k) or b"" for k in POINTER_KEYS}
    snap_docs = None
    idx: VersionIndex | None = index
    while idx is not None:
        v = idx.version
        try:
            docs = idx.snapshot()
            if snap_docs is None:
                snap_docs = docs
            idx.changes()
            # the bytes a commit kept serve the versions before it: checked while one is kept
            parent_kept = idx.root.get("parent") is not None and \
                store.backend.exists(root_key(int(idx.root["parent"])))
            for h in idx.kept() if parent_kept else ():
                if h in seen:
                    continue
                seen.add(h)
                data = store.backend.get(object_key(h))
                if data is None:
                    yield f"{object_key(h)}: missing (kept by version {v})"
                elif codec_sha(data) != h:
                    yield f"{object_key(h)}: sha256 differs from its name (damaged)"
            for array in idx.arrays():
                lh = idx.root["arrays"][array]
                if lh in seen:
                    continue
                seen.add(lh)
                for pid, ph in idx.array_list(array).items():
                    if ph not in seen:
                        seen.add(ph)
                        idx.piece(ph)
        except CorruptError as exc:
            yield f"{url}: version {v}: {exc}"
        parent, parent_root = idx.root.get("parent"), idx.root.get("parent_root")
        idx = None
        if parent is not None and parent_root:
            try:
                idx = VersionIndex.load(store.backend.get, int(parent), expect_sha=parent_root)
            except CorruptError as exc:
                yield f"{url}: version {parent}: {exc}"
    if snap_docs is not None:
        stripped = strip_pointer(live)
        for key in POINTER_KEYS:
            if stripped.get(key) != snap_docs.get(key):
                yield (f"{key}: differs from the metadata snapshot of version {index.version} "
                       "(damaged or changed outside a commit)")


def verify_store(store: CubeStore, *, deep: bool = False, progress=None) -> list[str]:
    return [*check_structure(store), *check_manifest(store, deep=deep, progress=progress)]
