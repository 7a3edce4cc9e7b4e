"""The quality group ``/S2/R{orbit}/quality``: written inside the imagery commit, read by selection.

Layout (Zarr format 2, consolidated like the rest of the cube):

- coordinates ``time`` (the imagery group's time axis, same values), ``cell`` (uint64 H3
  ids, sorted; ``h3.int_to_str`` gives the usual hex string), ``lat``/``lon`` (cell centres);
- ``valid`` (time, cell) uint32: pixels with a scene class (SCL != 0);
- fractions (time, cell) float32 of the valid pixels: ``clear``, ``cloud``, ``vegetation``,
  ``not_vegetated``, ``water``, ``cloud_shadow``, ``cloud_medium``, ``cloud_high``,
  ``thin_cirrus``, ``snow`` (``stats.FRACTIONS``); ``cld_mean``/``snw_mean``: mean cloud and
  snow probability (0..1) of the valid pixels. NaN where a cell has no valid pixel;
- chunks (time chunk of the grid, every cell): a commit rewrites only the time chunks it
  changes, and a chunk-aligned ``mirror --time`` subset stays aligned;
- group attributes ``h3_resolution`` and the class definitions.

DESIGN CHOICE: the quality arrays are a function of the imagery they sit beside, recomputed
inside the same ``Transaction`` as the imagery write (``update_quality``, called by
``engine._write`` just before the commit): one version holds both, the manifest covers both,
and a reader never sees statistics of another version's pixels. Rows are recomputed for every
time step the commit wrote (its slots: new steps, late tiles, supersedes) from the staged
SCL/CLD/SNW chunks; rows of steps an insertion only moved are moved, not recomputed. Only the
time chunks the commit changes (and the published ones their moved rows come from) are read
and encoded: the cost follows what the commit changes, not the archive's length. Any doubt
(no group yet, another resolution, a length that does not match the published axis) makes it
recompute every row, so the group's time axis always equals the imagery's.
"""
from __future__ import annotations

import logging
from typing import Callable

import h3
import numpy as np

from ingest.errors import StoreError
from ingest.grid import CubeGrid
from ingest.store import Transaction, join
from ingest.store.geozarr import dggs_attrs
from ingest.store.imagery import write_1d
from ingest.store.layout import COMPRESSOR, COORD_CHUNK, TIME_UNITS
from ingest.store.zarrdocs import ArrayMeta, read_array
from ingest.quality.cells import DEFAULT_RESOLUTION, CellIndex, cell_index, check_resolution
from ingest.quality.stats import FRACTIONS, MEANS, Rows, StepSums, add_chunk

log = logging.getLogger(__name__)

QUALITY = "quality"
RESOLUTION_ATTR = "h3_resolution"
FORMAT_ATTR = "s2ingest_quality_format"
ARRAYS = ("valid", *FRACTIONS, *MEANS)


def quality_path(group: str) -> str:
    return join(group, QUALITY)


def _array_attrs(name: str) -> dict:
    attrs = {"_ARRAY_DIMENSIONS": ["time", "cell"], "coordinates": "lat lon"}
    if name == "valid":
        attrs["long_name"] = "pixels with a scene class (SCL != 0) in the cell"
        attrs["units"] = "1"
    elif name in FRACTIONS:
        attrs["long_name"] = f"fraction of the valid pixels: {FRACTIONS[name][1]}"
        attrs["units"] = "1"
    else:
        attrs["long_name"] = f"mean {MEANS[name]} probability of the valid pixels"
        attrs["units"] = "1"
    return attrs


def _fill(name: str):
    return 0 if name == "valid" else np.nan


def _dtype(name: str) -> str:
    return "<u4" if name == "valid" else "<f4"


def _create(tx: Transaction, grid: CubeGrid, q: str, index: CellIndex) -> None:
    """A new, empty (time length 0) quality group; replaces any existing one's chunks."""
    classes = {name: list(cls) for name, (cls, _) in FRACTIONS.items()}
    tx.create_group(q, {
        "title": "per time step and H3 cell scene-classification statistics",
        RESOLUTION_ATTR: index.resolution, FORMAT_ATTR: 1, "scl_classes": classes,
        "valid_definition": "SCL != 0",
        "cell_assignment": "a pixel belongs to the H3 cell holding its centre (DESIGN.md, quality)",
        **dggs_attrs(index.resolution),  # the zarr-conventions DGGS description (xdggs reads it)
    })
    n = len(index)
    tx.create_array(join(q, "cell"), shape=(n,), chunks=(max(n, 1),), dtype="<u8", fill_value=None,
                    compressor=COMPRESSOR, data=index.cells, attrs={
                        "_ARRAY_DIMENSIONS": ["cell"], "long_name": f"H3 cell id (resolution {index.resolution})",
                        "comment": "uint64 H3 index; h3.int_to_str(id) gives the hex string"})
    ll = np.array([h3.cell_to_latlng(h3.int_to_str(int(c))) for c in index.cells]).reshape(-1, 2)
    for name, col, std in (("lat", 0, "latitude"), ("lon", 1, "longitude")):
        tx.create_array(join(q, name), shape=(n,), chunks=(max(n, 1),), dtype="<f8", fill_value=None,
                        compressor=COMPRESSOR, data=ll[:, col], attrs={
                            "_ARRAY_DIMENSIONS": ["cell"], "standard_name": std,
                            "units": "degrees_north" if col == 0 else "degrees_east",
                            "long_name": f"{std} of the cell centre (WGS 84)"})
    tx.create_array(join(q, "time"), shape=(0,), chunks=(COORD_CHUNK,), dtype="i8", fill_value=-1,
                    compressor=COMPRESSOR, attrs={
                        "_ARRAY_DIMENSIONS": ["time"], "standard_name": "time", "axis": "T",
                        "long_name": "datatake sensing start", "units": TIME_UNITS,
                        "calendar": "proleptic_gregorian"})
    for name in ARRAYS:
        # DESIGN CHOICE: ``valid`` has no fill value: 0 is a count, not "missing" (xarray
        # would mask it and turn the counts into floats); every chunk is written anyway
        tx.create_array(join(q, name), shape=(0, n), chunks=(grid.time_chunk, max(n, 1)),
                        dtype=_dtype(name), fill_value=None if name == "valid" else _fill(name),
                        compressor=COMPRESSOR,
                        attrs=_array_attrs(name))


def _time_values(tx: Transaction, group: str) -> np.ndarray:
    path = join(group, "time")
    return np.asarray(read_array(tx.array(path), lambda c: tx.get(join(path, c))), dtype="i8")


def _read_time_chunk(tx: Transaction, path: str, meta: ArrayMeta, k: int) -> np.ndarray:
    """Rows of time chunk ``k`` of the published (time, cell) array at ``path`` (``meta``: its
    ``.zarray`` as published), shape (rows in that chunk, cells), decoded as ``read_array``
    decodes the whole array (a missing chunk is fill, a damaged one a ``StoreError``)."""
    t, n = meta.shape
    tc = meta.chunks[0]
    rows = ArrayMeta({**meta.doc, "shape": [max(0, min(tc, t - k * tc)), n]})
    return np.asarray(read_array(rows, lambda c: tx.get(join(path, f"{k}.{c.partition('.')[2]}"))))


def compute_rows(tx: Transaction, grid: CubeGrid, group: str, index: CellIndex,
                 steps: list[int], progress: Callable[[int, int], None] | None = None,
                 chunks_of: dict[int, set] | None = None) -> Rows:
    """Exact sums for the time ``steps`` of ``group`` from the SCL/CLD/SNW chunks the
    transaction would publish (staged ones included). ``chunks_of`` (step -> spatial chunks
    that can hold its data, e.g. its products' chunks) spares listing the SCL array; without
    it every stored chunk of the steps' time chunks is read."""
    tc = grid.time_chunk
    rows = Rows.zeros(len(steps), len(index))
    row_of = {t: r for r, t in enumerate(steps)}
    kset = {t // tc for t in steps}
    metas = {v: tx.array(join(group, v)) for v in ("SCL", "CLD", "SNW")}
    if chunks_of is not None:
        work = sorted({(t // tc, int(c[0]), int(c[1])) for t in steps for c in chunks_of.get(t, ())})
    else:
        work = []
        for name in tx.chunk_keys(join(group, "SCL"), kset.__contains__):
            k, iy, ix = (int(p) for p in name.split("."))
            if k in kset:
                work.append((k, iy, ix))
    for i, (k, iy, ix) in enumerate(sorted(work)):
        chunks = {}
        for var, meta in metas.items():
            key = join(group, var, f"{k}.{iy}.{ix}")
            raw = tx.get(key)
            if raw is None:
                chunks[var] = None
                continue
            try:
                chunks[var] = meta.decode(raw)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise StoreError(f"store chunk {key} is damaged ({exc}); restore it from a mirror "
                                 "or backup, nothing was written") from exc
        if chunks["SCL"] is None:
            continue
        add_chunk(rows, row_of, index, (iy, ix), k, tc, chunks["SCL"],
                  {"CLD": chunks["CLD"], "SNW": chunks["SNW"]})
        if progress is not None:
            progress(i + 1, len(work))
    return rows


def _stage(tx: Transaction, q: str, name: str, shape: tuple[int, int],
           rows: Callable[[int, int], np.ndarray], chunks_to_write: set[int] | None, tc: int) -> None:
    """Stage the (time, cell) array ``name`` at its new ``shape``; only the time chunks in
    ``chunks_to_write`` (None: all) are encoded, each from ``rows(lo, hi)`` (the new array's
    rows lo..hi-1), and a chunk whose bytes are unchanged is not staged (DESIGN CHOICE: a
    commit's manifest lists what really changed). Chunks not written keep their bytes."""
    path = join(q, name)
    meta: ArrayMeta = tx.resize(path, shape)
    t, n = shape
    nk = -(-t // tc)
    for k in range(nk) if chunks_to_write is None else sorted(c for c in chunks_to_write if c < nk):
        lo, hi = k * tc, min((k + 1) * tc, t)
        chunk = np.full((tc, meta.chunks[1]), _fill(name), dtype=meta.dtype)
        chunk[:hi - lo, :n] = rows(lo, hi)
        key = join(path, str(k) + ".0")
        raw = meta.encode(chunk)
        if tx.get(key) != raw:
            tx.put(key, raw)
    for old in tx.chunk_keys(path, lambda k: k >= nk):  # time chunks past the new end
        if int(old.split(".")[0]) >= nk:
            tx.delete(join(path, old))


def atlas_sums(tx: Transaction, grid: CubeGrid, group: str, plan) -> StepSums | None:
    """Sums the writer fills while it writes ``plan`` (``StepSums``), for the steps whose
    every pixel it writes: slots that recompute every chunk their products touch (a new
    datatake always does; a late tile leaves the datatake's other chunks as published, so
    its row is computed from the store). None when no step qualifies."""
    group = group.strip("/")
    steps = [s.index for s in plan.slots
             if s.chunks.issuperset(set().union(*(p.chunks for p in s.products)))]
    if not steps:
        return None
    _, res = _resolutions(tx, quality_path(group), None)
    return StepSums(cell_index(grid, res), steps, grid.time_chunk)


def _resolutions(tx: Transaction, q: str, resolution: int | None) -> tuple[int | None, int]:
    """(the quality group's stored resolution, None without a group; the one to use)."""
    stored = int(tx.attrs(q).get(RESOLUTION_ATTR, DEFAULT_RESOLUTION)) if tx.is_group(q) else None
    return stored, check_resolution(resolution if resolution is not None else (stored or DEFAULT_RESOLUTION))


def update_quality(tx: Transaction, grid: CubeGrid, group: str, plan=None, *,
                   resolution: int | None = None, rebuild: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   sums: StepSums | None = None) -> int:
    """Stage the quality group of ``group`` for what ``tx`` is about to publish; returns the
    number of time steps recomputed.

    ``plan`` (a ``WritePlan`` applied in ``tx``): only its slots are recomputed and the rows
    of published steps follow ``plan.old_to_new``. Without a plan, or with ``rebuild``,
    every step is recomputed (``s2ingest quality rebuild``). A failing write (full disk,
    lost mount) raises one ``StoreError``; the transaction then discards what it staged.

    ``sums`` (``atlas_sums``, filled by the writer from the chunks it merged): the rows of its
    steps are taken from there instead of decoding their chunks again (same values).
    """
    try:
        return _update(tx, grid, group, plan, resolution=resolution, rebuild=rebuild,
                       progress=progress, sums=sums)
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot write to {tx.store.url}: {exc.strerror or exc}; "
                         "nothing was published") from exc


def _update(tx: Transaction, grid: CubeGrid, group: str, plan, *, resolution: int | None,
            rebuild: bool, progress, sums: StepSums | None = None) -> int:
    """``update_quality``'s work. With a group that matches the published axis, only the time
    chunks holding a recomputed or moved step are encoded, from the new rows and the old time
    chunks their moved rows come from: the cost follows the commit, not the archive."""
    group = group.strip("/")
    q = quality_path(group)
    tc = grid.time_chunk
    times = _time_values(tx, group)
    t_new = len(times)
    exists = tx.is_group(q)
    stored_res, res = _resolutions(tx, q, resolution)
    index = cell_index(grid, res)
    n_cells = len(index)
    metas = None  # the published quality arrays' metadata: rows are taken over from them
    if exists and not rebuild and plan is not None and res == stored_res:
        t_old = tx.array(join(q, "valid")).shape[0]
        metas = {name: tx.array(join(q, name)) for name in ARRAYS}
        if not (t_old == len(plan.old_to_new) and tx.array(join(q, "cell")).shape[0] == n_cells
                and all(m.shape == (t_old, n_cells) for m in metas.values())):
            log.warning("/%s: quality arrays do not match the published axis; recomputing them", q)
            metas = None
    chunks_of = None
    source: dict[int, int] = {}  # new step -> the published step whose row it keeps
    if metas is None:
        _create(tx, grid, q, index)
        steps = list(range(t_new))
        write_chunks = None
    else:
        steps = sorted(s.index for s in plan.slots)
        source = {n: o for o, n in plan.old_to_new.items()}
        write_chunks = {t // tc for t in plan.changed_steps()}
        # DESIGN CHOICE: a step's pixels lie only in its products' chunks (the plan knows
        # them), so only those are read, without listing the SCL array
        chunks_of = {s.index: set(s.chunks).union(*(p.chunks for p in s.products)) for s in plan.slots}
    if sums is not None and (sums.index.resolution != res or rebuild or plan is None
                             or not sums.complete()):
        sums = None  # made for another axis of cells, or incomplete: compute from the store
    row_of = {t: r for r, t in enumerate(sorted(set(steps)))}  # recomputed step -> row of ``fresh``
    fresh = {name: np.full((len(row_of), n_cells), _fill(name), dtype=_dtype(name)) for name in ARRAYS}
    given = [t for t in steps if sums is not None and t in sums.row_of]
    rest = sorted(set(steps) - set(given))
    if given:
        summed = sums.rows.fractions()
        for name in ARRAYS:
            fresh[name][[row_of[t] for t in given]] = summed[name][[sums.row_of[t] for t in given]]
    if rest:
        computed = compute_rows(tx, grid, group, index, rest, progress, chunks_of).fractions()
        for name in ARRAYS:
            fresh[name][[row_of[t] for t in rest]] = computed[name]
    # the published rows the written chunks keep: new step -> its published step
    kept = {t: o for t, o in source.items() if t not in row_of and t // tc in write_chunks}
    write_1d(tx, join(q, "time"), times)
    for name in ARRAYS:
        # DESIGN CHOICE: the old time chunks an array's written chunks need are read and
        # decoded (once each) before any of its chunks is staged: staging an insertion's
        # chunk would otherwise hide the published rows a later chunk still takes over
        otc = metas[name].chunks[0] if kept else 1
        old = {k: _read_time_chunk(tx, join(q, name), metas[name], k)
               for k in sorted({o // otc for o in kept.values()})}

        def rows(lo: int, hi: int, name=name, old=old, otc=otc) -> np.ndarray:
            out = np.full((hi - lo, n_cells), _fill(name), dtype=_dtype(name))
            for t in range(lo, hi):
                if t in row_of:
                    out[t - lo] = fresh[name][row_of[t]]
                elif t in kept:
                    out[t - lo] = old[kept[t] // otc][kept[t] % otc]
            return out

        _stage(tx, q, name, (t_new, n_cells), rows, write_chunks, tc)
    return len(steps)


def rebuild_quality(store, group: str, *, resolution: int | None = None,
                    progress: Callable[[int, int], None] | None = None, lock_timeout: float | None = None):
    """Recompute the whole quality group of ``group`` (at ``resolution``, default the stored
    one or 7) in one commit; returns its ``CommitReport``, or None when the recomputed group
    is byte for byte the published one (then nothing is committed: no new version)."""
    from ingest.store import DEFAULT_LOCK_TIMEOUT, CubeStore
    from ingest.store.layout import GROUP_VERSION_ATTR

    store = store if isinstance(store, CubeStore) else CubeStore.open(store)
    if not store.supports_writes:
        raise StoreError(f"{store.url} is read only; rebuild the quality atlas where the cube is written")
    with store.transaction(timeout=lock_timeout or DEFAULT_LOCK_TIMEOUT) as tx:
        if not tx.is_array(join(group, "SCL")):
            raise StoreError(f"{store.url}: no imagery group /{group} (nothing to compute from)")
        n = update_quality(tx, store.grid, group, None, resolution=resolution, rebuild=True, progress=progress)
        if not tx.changes_anything():
            log.info("/%s: the quality atlas of %d time steps is current at version %d", group, n,
                     tx.base_version)
            return None
        tx.update_attrs(group, {GROUP_VERSION_ATTR: tx.base_version + 1})
        report = tx.commit()
    log.info("/%s: quality atlas of %d time steps rebuilt in version %d", group, n, report.version)
    return report
