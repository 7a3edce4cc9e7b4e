"""Check a cube against itself: its axis, its open transactions, its manifest (``verify``).

Works through any backend (a local path, or read only over HTTP: the manifest names every
key, so nothing needs listing). The catalog side of ``s2ingest verify`` is in ``ingest.publish.audit``.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from ingest.errors import StoreError
from ingest.store.cube import CubeStore
from ingest.store.journal import JOURNAL
from ingest.store.layout import META_DIR, TXN_DIR, manifest_key
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
    """Every key of the published version against its manifest (size and sha256 with
    ``deep``; presence otherwise), and, where keys can be listed (not over HTTP), keys the
    manifest does not know."""
    version = store.version()
    raw = store.backend.get(manifest_key(version))
    if raw is None:
        yield f"{store.url}: no manifest of the published version {version} ({manifest_key(version)})"
        return
    try:
        manifest = json.loads(raw)
        keys: dict[str, dict] = manifest["keys"]
    except (ValueError, KeyError) as exc:
        yield f"{manifest_key(version)}: unreadable manifest ({exc})"
        return
    if manifest.get("version") != version:
        yield f"{manifest_key(version)}: names version {manifest.get('version')}, not {version}"

    def check(item: tuple[str, dict]) -> str | None:
        key, entry = item
        size, sha = entry["size"], entry["sha256"]
        try:
            data = store.backend.get(key) if deep else None
            stored = len(data) if data is not None else (None if deep else store.backend.size(key))
        except StoreError as exc:
            return f"{key}: cannot read ({exc})"
        if stored is None:
            return f"{key}: missing (the manifest of version {version} lists it)"
        if not deep:
            return None if stored == size else f"{key}: {stored} bytes, the manifest says {size}"
        got = digest(data)
        if got[0] != size:
            return f"{key}: {got[0]} bytes, the manifest says {size}"
        if got[1] != sha:
            return f"{key}: sha256 differs from the manifest (damaged or changed after version {version})"
        return None

    items = sorted(keys.items())
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for problem in pool.map(check, items):
            done += 1
            if progress is not None:
                progress(done, len(items))
            if problem:
                yield problem
    if store.supports_listing:
        for key in sorted(store.backend.list("")):
            if key.startswith(META_DIR + "/") or key in keys:
                continue
            yield f"{key}: in the store but not in the manifest of version {version}"


def verify_store(store: CubeStore, *, deep: bool = False, progress=None) -> list[str]:
    return [*check_structure(store), *check_manifest(store, deep=deep, progress=progress)]
