"""Apply a ``WritePlan`` to the store: resize, move, warp + mosaic, write, commit.

Everything happens inside one ``commit.Transaction``: either the whole plan is published
(consolidated metadata written last) or the store is rolled back to what it was.
"""
from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import rasterio
import zarr
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm.auto import tqdm

from .commit import Transaction
from .errors import ProductError, StoreError
from .grid import ChunkIndex, CubeGrid
from .mosaic import fill_gaps
from .plan import SlotWrite, WritePlan
from .product import Product
from .store import META_DIR, PROVENANCE, PublishedState, _store, read_published, to_ms
from .variables import VARIABLES
from .warp import GDAL_ENV, OpenRasters, WarpTarget, warp_product_part

log = logging.getLogger(__name__)

Digest = tuple[int, str] | None  # (size, sha256 hex) of a stored key; None: no such key


@dataclass
class WriteReport:
    version: int
    time_steps: int
    slots_written: int
    chunks_written: int
    superseded: tuple[str, ...] = ()
    changed_keys: list[str] = field(default_factory=list, repr=False)


def _chunk_key(group: str, var: str, t: int, c: ChunkIndex) -> str:
    return f"{group}/{var}/{t}.{c[0]}.{c[1]}"


def _blocks(grid: CubeGrid, chunks: Iterable[ChunkIndex]) -> list[tuple[Window, set[ChunkIndex]]]:
    """Group chunks into row bands: one window per chunk row, spanning its chunks."""
    rows: dict[int, set[ChunkIndex]] = {}
    for c in chunks:
        rows.setdefault(c[0], set()).add(c)
    blocks = []
    for iy in sorted(rows):
        cols = sorted(ix for _, ix in rows[iy])
        first = grid.chunk_window((iy, cols[0]))
        last = grid.chunk_window((iy, cols[-1]))
        width = last.col_off + last.width - first.col_off
        blocks.append((Window(first.col_off, first.row_off, width, first.height), rows[iy]))
    return blocks


def _slot_block(
    slot: SlotWrite, products: dict[str, Product], target: WarpTarget,
    resampling: dict[str, Resampling], pool: ThreadPoolExecutor, rasters: OpenRasters,
) -> dict[str, np.ndarray]:
    """Mosaic every variable of one time step over one block window."""
    out: dict[str, np.ndarray] = {}
    h, w = target.shape
    for var in VARIABLES:
        spec = VARIABLES[var]
        out[var] = np.full((h, w), spec.fill_value, dtype=spec.dtype)
    untouched = set(VARIABLES)  # nothing merged yet: ``out`` holds only fill values
    for planned in slot.products:  # highest priority first
        if not _touches(planned.chunks, target):
            continue
        # DESIGN CHOICE: variable groups go to a thread pool (GDAL releases the GIL while it
        # decodes and warps), so both cores stay busy.
        part = warp_product_part(products[planned.name], target, resampling, rasters, pool)
        if part is None:
            continue
        inner, warped = part
        for var, data in warped.items():
            if var in untouched:  # the first product here: a plain copy is the same, and cheaper
                out[var][inner] = data
            else:
                fill_gaps(out[var][inner], data, VARIABLES[var].fill_value)
        untouched.clear()
    return out


def _block_keys(group: str, k: int, block_chunks: set[ChunkIndex]) -> list[str]:
    """The chunk keys one block writes in time chunk ``k``."""
    return [_chunk_key(group, var, k, c) for var in VARIABLES for c in block_chunks]


def _write_var_block(arr: zarr.Array, grid: CubeGrid, var: str, k: int,
                     block_chunks: set[ChunkIndex], slots: list[SlotWrite],
                     computed: dict[int, dict[str, np.ndarray]], window: Window) -> dict[str, Digest]:
    """Merge the computed time steps of one variable into time chunk ``k`` over one block;
    returns each chunk key's (size, sha256) after the write, None where no chunk is stored.

    DESIGN CHOICE: chunk by chunk through the array's own codec, not ``arr[...] = data``.
    zarr 2 re-reads and re-decodes every chunk that a write does not cover whole, and a time
    chunk that is not yet full (5 steps) never is: with our own read of the old content,
    each chunk was decoded twice. Here each chunk is read and decoded once, merged in place,
    encoded once; an all-fill result deletes the key, as ``write_empty_chunks=False`` does.
    """
    digests: dict[str, Digest] = {}
    for c in block_chunks:
        key = f"{arr.path}/{k}.{c[0]}.{c[1]}"
        try:
            digests[key] = _merge_chunk(arr, grid, var, k, c, key, slots, computed, window)
        except OSError as exc:  # full disk, lost mount, permissions: name the key and the cause
            raise StoreError(f"cannot write chunk {key}: {exc.strerror or exc}; "
                             "nothing was published") from exc
    return digests


def _merge_chunk(arr: zarr.Array, grid: CubeGrid, var: str, k: int, c: ChunkIndex, key: str,
                 slots: list[SlotWrite], computed: dict[int, dict[str, np.ndarray]],
                 window: Window) -> Digest:
    """Read, merge, encode and store one chunk (see ``_write_var_block``)."""
    tc = grid.time_chunk
    fill = arr.fill_value
    old = arr.store.get(key)
    chunk = np.empty(arr.chunks, dtype=arr.dtype)
    if old is None:
        chunk.fill(fill)
    else:
        try:
            arr.compressor.decode(old, out=chunk)
        except (RuntimeError, ValueError) as exc:  # numcodecs' errors for a damaged chunk
            raise StoreError(f"store chunk {key} is damaged ({exc}); restore it from a mirror "
                             "or backup, nothing was written") from exc
    cw = grid.chunk_window(c)
    r0, c0 = int(cw.row_off - window.row_off), int(cw.col_off - window.col_off)
    h, w = int(cw.height), int(cw.width)
    has_data = False
    for s in slots:
        if s.index in computed and c in s.chunks:
            part = computed[s.index][var][r0:r0 + h, c0:c0 + w]
            chunk[s.index - k * tc, :h, :w] = part
            has_data = has_data or bool((part != fill).any())
    if has_data or not (chunk == fill).all():
        encoded = arr.compressor.encode(chunk)
        arr.store[key] = encoded
        return len(encoded), hashlib.sha256(encoded).hexdigest()
    if old is not None:
        del arr.store[key]
    return None


def _release_finished(slots: list[SlotWrite], window: Window, grid: CubeGrid,
                      rasters: OpenRasters) -> None:
    """Drop decoded strips of products whose last chunk row is behind us (bounded memory)."""
    row = int(window.row_off) // grid.chunk_shape[0]
    for slot in slots:
        for p in slot.products:
            if p.chunks and max(c[0] for c in p.chunks) < row:
                rasters.release(p.name)


def _touches(chunks: frozenset[ChunkIndex], target: WarpTarget) -> bool:
    return any(c in chunks for c in target.grid.chunks_in_window(target.window))


def _write_provenance(g: zarr.Group, plan: WritePlan, old: PublishedState,
                      products: dict[str, Product]) -> None:
    n = len(plan.axis)
    cols: dict[str, list[str]] = {k: [""] * n for k in PROVENANCE}
    times = [0] * n
    for i, key in enumerate(plan.axis):
        times[i] = to_ms(key[0])
        cols["platform"][i] = key[1]
    for old_i, new_i in plan.old_to_new.items():
        cols["datatake_id"][new_i] = old.datatake_ids[old_i]
        cols["products"][new_i] = ",".join(old.products[old_i])
        cols["tiles"][new_i] = old_tiles(old.products[old_i])
        cols["baselines"][new_i] = old_baselines(old.products[old_i])
    for slot in plan.slots:
        names = sorted(p.name for p in slot.products)
        cols["products"][slot.index] = ",".join(names)
        cols["tiles"][slot.index] = ",".join(sorted({p.tile for p in slot.products}))
        cols["baselines"][slot.index] = ",".join(sorted({p.baseline for p in slot.products}))
        first = products[slot.products[0].name]
        cols["datatake_id"][slot.index] = first.datatake_id
    g["time"][:] = np.array(times, dtype="i8")
    for name, (width, _) in PROVENANCE.items():
        too_long = [v for v in cols[name] if len(v) > width]
        if too_long:
            raise StoreError(f"provenance {name!r} longer than {width} characters: {too_long[0][:80]}...")
        g[name][:] = np.array(cols[name], dtype=f"<U{width}")


def old_tiles(names: Iterable[str]) -> str:
    return ",".join(sorted({n.split("_")[5][1:] for n in names if n.count("_") >= 6}))


def old_baselines(names: Iterable[str]) -> str:
    return ",".join(sorted({f"{n.split('_')[3][1:3]}.{n.split('_')[3][3:5]}" for n in names if n.count("_") >= 6}))


def _move_published(tx: Transaction, g: zarr.Group, group: str, plan: WritePlan,
                    t_old: int, t_new: int, tc: int) -> None:
    """Insert gaps for late datatakes: move published time steps to their new indices."""
    first_moved = min(o for o, n in plan.old_to_new.items() if o != n)
    t_lo = (first_moved // tc) * tc
    for var in VARIABLES:
        arr = g[var]
        spatial = sorted({tuple(int(v) for v in p.name.split(".")[1:])
                          for p in (tx.root / group / var).glob("*.*.*")
                          if int(p.name.split(".")[0]) >= t_lo // tc})
        for c in spatial:
            keys = [_chunk_key(group, var, t, c) for t in range(t_lo // tc, -(-t_new // tc))]
            tx.protect(keys)
            win = g_grid_window(arr, c)
            try:
                old = arr[t_lo:t_old, win[0], win[1]]
            except (RuntimeError, ValueError) as exc:  # numcodecs' errors for a damaged chunk
                raise StoreError(f"a store chunk of {group}/{var} at {c[0]}.{c[1]} (time chunks "
                                 f"{t_lo // tc}..) is damaged ({exc}); restore it from a mirror "
                                 "or backup, nothing was written") from exc
            new = np.full((t_new - t_lo,) + old.shape[1:], arr.fill_value, dtype=arr.dtype)
            for o, n in plan.old_to_new.items():
                if o >= t_lo:
                    new[n - t_lo] = old[o - t_lo]
            arr[t_lo:t_new, win[0], win[1]] = new


def g_grid_window(arr: zarr.Array, c: ChunkIndex) -> tuple[slice, slice]:
    cy, cx = arr.chunks[1:]
    ny, nx = arr.shape[1:]
    return (slice(c[0] * cy, min((c[0] + 1) * cy, ny)), slice(c[1] * cx, min((c[1] + 1) * cx, nx)))


def apply_plan(
    store_path: str | Path, grid: CubeGrid, group: str, plan: WritePlan,
    products: dict[str, Product], resampling: dict[str, Resampling],
    *, threads: int = 2, progress: bool = True,
    before_commit: Callable[[], None] | None = None, version: int | None = None,
) -> WriteReport:
    """Write ``plan`` into the store in one transaction and publish it as ``version``
    (default: the store's version + 1; the catalog passes its cube-wide counter).

    A failing write (full disk, lost mount) rolls the transaction back and raises one
    ``StoreError`` that names the cause: the published cube is left as it was.
    """
    try:
        return _apply_plan(store_path, grid, group, plan, products, resampling, threads=threads,
                           progress=progress, before_commit=before_commit, version=version)
    except StoreError:  # already says what and why (StoreError is an OSError too)
        raise
    except ProductError:  # a bad product found while warping (CorruptProductError is an OSError)
        raise
    except OSError as exc:
        raise StoreError(f"cannot write to {store_path}: {exc.strerror or exc}; "
                         "nothing was published") from exc


def _apply_plan(
    store_path: str | Path, grid: CubeGrid, group: str, plan: WritePlan,
    products: dict[str, Product], resampling: dict[str, Resampling],
    *, threads: int, progress: bool,
    before_commit: Callable[[], None] | None, version: int | None,
) -> WriteReport:
    group = group.strip("/")
    tc = grid.time_chunk
    with (Transaction(store_path, group) as tx, rasterio.Env(**GDAL_ENV), OpenRasters() as rasters,
          ThreadPoolExecutor(max_workers=max(1, threads)) as pool):
        old = read_published(store_path, group)
        g = zarr.open_group(_store(store_path), path=group, mode="r+")
        t_old, t_new = old.length, len(plan.axis)
        tx.protect_metadata()
        for name in ["time", *PROVENANCE]:
            tx.protect_tree(f"{group}/{name}")
        for var in VARIABLES:
            g[var].resize(t_new, *grid.shape)
        for name in ["time", *PROVENANCE]:
            g[name].resize(t_new)
        if plan.shifts:
            _move_published(tx, g, group, plan, t_old, t_new, tc)
        _write_provenance(g, plan, old, products)

        arrays = {var: zarr.open_array(_store(store_path), path=f"{group}/{var}", mode="r+",
                                       write_empty_chunks=False) for var in VARIABLES}
        for var, arr in arrays.items():  # what _write_var_block's own chunk codec assumes
            if arr.filters or arr.order != "C" or arr.compressor is None:
                raise StoreError(f"{group}/{var}: unexpected array encoding (filters, order or compressor)")
        changed: list[str] = []
        by_tchunk: dict[int, list[SlotWrite]] = {}
        for slot in plan.slots:
            by_tchunk.setdefault(slot.index // tc, []).append(slot)
        work = [(k, block) for k, slots in sorted(by_tchunk.items())
                for block in _blocks(grid, set().union(*(s.chunks for s in slots)))]
        # DESIGN CHOICE: writer threads compress and write the variables of block k while the
        # pool warps block k+1; at most two blocks are in flight (bounded memory). The undo log
        # is written here, before a block's writes are submitted; blocks own disjoint chunks.
        in_flight: list[list] = []
        digests: dict[str, Digest] = {}
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="write") as writer:
            for k, (window, block_chunks) in tqdm(work, desc="warp+write", unit="block",
                                                  disable=not progress):
                slots = by_tchunk[k]
                target = WarpTarget(grid, window)
                computed = {s.index: _slot_block(s, products, target, resampling, pool, rasters)
                            for s in slots if s.chunks & block_chunks}
                _release_finished(slots, window, grid, rasters)
                while len(in_flight) >= 2:
                    for f in in_flight.pop(0):
                        digests.update(f.result())
                keys = _block_keys(group, k, block_chunks)
                tx.protect(keys)  # one undo-log sync for the whole block
                changed += keys
                in_flight.append([writer.submit(_write_var_block, arrays[var], grid, var, k,
                                                block_chunks, slots, computed, window)
                                  for var in VARIABLES])
            for futures in in_flight:
                for f in futures:
                    digests.update(f.result())
        version = max(version or 0, old.version + 1)
        g.attrs["s2ingest_cube_version"] = version
        _write_change_list(tx, version, group, digests)
        if before_commit is not None:
            before_commit()
        tx.commit()
    return WriteReport(version, t_new, len(plan.slots), len(changed), plan.superseded, changed)


METADATA_NAMES = (".zmetadata", ".zattrs", ".zarray", ".zgroup")


def file_digest(path: Path) -> Digest:
    """(size, sha256) of a file, None if it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return len(data), hashlib.sha256(data).hexdigest()


def _write_change_list(tx: Transaction, version: int, group: str, digests: dict[str, Digest]) -> None:
    """Record what this version changed: every data key with its size and sha256 (null: no
    longer stored), and the metadata files, which are rewritten by the commit itself.

    Mirrors copy only these keys, verify them by hash, and copy the metadata last
    (DESIGN.md §5: each publish records a manifest of chunk key -> size, hash).
    """
    rel = f"{META_DIR}/versions/{group.replace('/', '_')}-v{version:06d}.json"
    tx.protect([rel])
    chunks: dict[str, dict | None] = {}
    metadata: list[str] = []
    for key in sorted(tx.logged_keys):
        if key.startswith(META_DIR + "/"):
            continue
        if key.rsplit("/", 1)[-1] in METADATA_NAMES:
            metadata.append(key)
            continue
        d = digests[key] if key in digests else file_digest(tx.root / key)
        chunks[key] = None if d is None else {"size": d[0], "sha256": d[1]}
    path = tx.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "group": group, "chunks": chunks,
                                "metadata": metadata}, indent=0))
