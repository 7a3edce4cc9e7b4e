"""The work of ``s2ingest rechunk`` on local threads: boxes of whole target chunks that meet
stored source chunks, read and written one box per task, within a memory budget.

The plan (``ingest.copies.plan.plan_copy``) follows the chunks the source version stores, not
its grid: a national grid holding data in a few windows costs what those windows cost. Target
chunks that meet no stored source chunk are the fill value; they are not written (Zarr reads a
missing chunk as its fill value, as a copy through ``to_zarr`` leaves them).

Memory: each of ``threads`` tasks holds one box (at most ``max_mem / threads`` bytes of
values; fewer threads where a target chunk would not fit), so the boxes held at once stay within
``--max-mem`` whatever the number of threads. On top of that come the interpreter and libraries
(about 0.3 GB) and, per thread, the few chunks Zarr holds compressed or decoded while it reads
into or writes from a box (a few source chunks: tens of MB on the cube's chunks).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from ingest.copies.plan import CopyGroup, plan_copy
from ingest.store.zarr_view import VersionStore

DEFAULT_THREADS = 4


@dataclass
class VariableCopy:
    name: str
    read: Callable[[CopyGroup], np.ndarray]
    groups: list[CopyGroup]


def threads_for(threads: int | None) -> int:
    return max(1, int(threads or min(DEFAULT_THREADS, os.cpu_count() or 1)))


def fit_threads(threads: int, max_mem: int, largest_chunk: int) -> int:
    """As many threads as asked, but no more than boxes of one target chunk fit in ``max_mem``."""
    return max(1, min(threads, max_mem // max(1, largest_chunk)))


def task_budget(max_mem: int, threads: int) -> int:
    """Bytes of values one task's box may hold."""
    return max(1, max_mem // threads)


def _offsets(ds: xr.Dataset, full: xr.Dataset) -> dict[str, int] | None:
    """Where the selection ``ds`` starts in the whole group, per dimension; None where it is
    not one contiguous block of it."""
    out = {}
    for dim in ds.dims:
        if dim not in ds.coords or dim not in full.coords:
            if ds.sizes[dim] != full.sizes.get(dim):
                return None
            out[str(dim)] = 0
            continue
        mine, theirs = ds[dim].values, full[dim].values
        if not len(mine):
            return None
        hits = np.flatnonzero(theirs == mine[0])
        if len(hits) != 1:
            return None
        o = int(hits[0])
        if o + len(mine) > len(theirs) or not np.array_equal(theirs[o:o + len(mine)], mine):
            return None
        out[str(dim)] = o
    return out


def _stored_chunks(view: VersionStore, path: str, src_chunks: tuple[int, ...],
                   offset: tuple[int, ...]) -> set[tuple[int, ...]] | None:
    """Indices of the stored source chunks, in the selection's chunk grid (None: the
    selection does not start on a source chunk boundary, every chunk is then assumed)."""
    if any(o % c for o, c in zip(offset, src_chunks)):
        return None
    shift = [o // c for o, c in zip(offset, src_chunks)]
    prefix = path.rstrip("/") + "/"
    out = set()
    for key in view.keys:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        parts = name.replace("/", ".").split(".")
        if len(parts) != len(src_chunks) or not all(p.isdigit() for p in parts):
            continue  # metadata, or a chunk of another layout
        out.add(tuple(int(p) - s for p, s in zip(parts, shift)))
    return out


def plan_variables(ds: xr.Dataset, write_chunks: dict[str, tuple[int, ...]], budget: int
                   ) -> list[VariableCopy]:
    """The tasks of copying every data variable of ``ds`` (a selection ``open_cube`` made,
    stored integers) into ``write_chunks`` (per variable)."""
    import zarr

    view = VersionStore(ds.attrs["s2ingest_source"], int(ds.attrs["s2ingest_store_version"]))
    grp = ds.attrs["s2ingest_group"]
    full = xr.open_zarr(view, group=grp, consolidated=True, chunks={}, mask_and_scale=False)
    offsets = _offsets(ds, full)
    out = []
    for name in ds.data_vars:
        var = ds[name]
        src = tuple(int(c) for c in var.encoding["chunks"])
        offset = tuple(offsets[str(d)] for d in var.dims) if offsets is not None else None
        stored = None if offset is None else _stored_chunks(view, f"{grp}/{name}", src, offset)
        groups = plan_copy(var.shape, src, write_chunks[name], var.dtype.itemsize, budget,
                           stored, name=name)
        if offset is not None:
            arr = zarr.open_array(view, path=f"{grp}/{name}", mode="r")

            def read(g: CopyGroup, arr=arr, offset=offset) -> np.ndarray:
                return arr[tuple(slice(o + a, o + b) for o, a, b in zip(offset, g.start, g.stop))]
        else:
            def read(g: CopyGroup, data=var.data) -> np.ndarray:
                box = tuple(slice(a, b) for a, b in zip(g.start, g.stop))
                return np.asarray(data[box].compute(scheduler="synchronous"))
        out.append(VariableCopy(str(name), read, groups))
    return out


def copy_planned(copies: list[VariableCopy], destination: Path, group: str, zarr_format: int,
                 threads: int, progress: bool = False, desc: str = "rechunk") -> int:
    """Read each task's box and write it into the arrays ``to_zarr`` created at
    ``destination``; returns the number of tasks."""
    import zarr
    from tqdm.auto import tqdm

    arrays = {c.name: zarr.open_array(str(destination), path=f"{group}/{c.name}", mode="r+",
                                      zarr_format=zarr_format) for c in copies}
    tasks = [(c, g) for c in copies for g in c.groups]

    def run(task) -> None:
        c, g = task
        box = c.read(g)
        arrays[c.name][tuple(slice(a, b) for a, b in zip(g.start, g.stop))] = box

    with tqdm(total=len(tasks), desc=desc, unit="box", disable=not progress, leave=False) as bar:
        if threads == 1:
            for t in tasks:
                run(t)
                bar.update(1)
        else:
            with ThreadPoolExecutor(threads) as pool:
                # a box is read inside its task: no more boxes are held than threads run
                for _ in pool.map(run, tasks):
                    bar.update(1)
    return len(tasks)
