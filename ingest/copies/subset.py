"""Which keys of one published version a copy holds, and under which names (pure planning).

A copy of a whole cube holds every key of the version byte for byte. A subset copy
(``--bbox``, ``--time``, ``--variables``, ``--groups``) is a valid, smaller cube: its grid is
the source grid cut at chunk boundaries, so every data chunk it holds is a source chunk byte
for byte, renamed by the chunk offset and checkable against the source manifest. Only the
metadata documents, ``grid.json`` and the small coordinate arrays (``x``, ``y``, the time
coordinates) are rewritten.

DESIGN CHOICE: subsets are cut at chunk boundaries (the bbox grows to whole spatial chunks,
the time range to whole time chunks of the imagery). Cutting inside a chunk would decode and
re-encode every chunk of the copy (and shift all later chunks in time), lose the byte-for-
byte check against the source manifest, and make an incremental rerun rewrite the copy.
Readers who need the exact range select it when they read (``open_cube(time_range=…)``).

Nothing here reads or writes a store: the planner gets the version's manifest, metadata
documents and time axes, and returns a ``CopyPlan`` the mirror executes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import numpy as np

from ingest.errors import ConfigError
from ingest.grid import CubeGrid
from ingest.store.layout import GRID_FILE, is_metadata, join
from ingest.store.zarrdocs import ArrayMeta, dumps, encode_1d

SUBSET_ATTR = "s2ingest_subset_of"


@dataclass(frozen=True)
class Selection:
    """What a copy holds; all None: the whole cube."""

    bbox: tuple[float, float, float, float] | None = None  # left, bottom, right, top
    bbox_crs: str | None = None  # default: the grid's CRS
    time: tuple[datetime | None, datetime | None] | None = None  # inclusive
    variables: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.bbox is None and self.time is None and not self.variables and not self.groups

    def describe(self) -> dict:
        out: dict = {}
        if self.bbox is not None:
            out["bbox"] = list(self.bbox)
            out["bbox_crs"] = self.bbox_crs
        if self.time is not None:
            out["time"] = [t.isoformat() if t else None for t in self.time]
        if self.variables:
            out["variables"] = list(self.variables)
        if self.groups:
            out["groups"] = list(self.groups)
        return out


@dataclass(frozen=True)
class FromSource:
    """A key of the copy that is a source key byte for byte."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Rewritten:
    """A key of the copy whose bytes the planner made (metadata, coordinates, grid)."""

    data: bytes


@dataclass
class CopyPlan:
    version: int
    grid: CubeGrid
    keys: dict[str, FromSource | Rewritten] = field(default_factory=dict)
    window: tuple[int, int, int, int] | None = None  # row0, row1, col0, col1 of a bbox subset

    @property
    def source_bytes(self) -> int:
        return sum(e.size for e in self.keys.values() if isinstance(e, FromSource))


def plan_copy(version: int, manifest_keys: dict[str, dict], docs: dict[str, bytes], grid: CubeGrid,
              selection: Selection, read_array: Callable[[str], np.ndarray],
              source_url: str = "") -> CopyPlan:
    """The keys of a copy of ``version``.

    ``manifest_keys``: the version's manifest (key -> size, sha256); ``docs``: its metadata
    documents (key -> bytes, as published); ``read_array(path)``: the values of a small
    (coordinate) array of that version. Consolidated ``.zmetadata`` documents are not part of
    the plan: the copy's commit writes them from the documents, last.
    """
    plan = CopyPlan(version, grid)
    if selection.whole:
        for key, entry in manifest_keys.items():
            if key.rsplit("/", 1)[-1] == ".zmetadata":
                continue
            if is_metadata(key):
                plan.keys[key] = Rewritten(docs[key])
            else:
                plan.keys[key] = FromSource(key, int(entry["size"]), entry["sha256"])
        return plan

    arrays = _arrays(docs)
    groups = _selected_groups(docs, arrays, selection)
    wanted = _selected_arrays(arrays, groups, selection)
    if selection.variables and not selection.groups:  # only the groups holding those variables
        groups = sorted({p.rsplit("/", 1)[0] for p in wanted if len(arrays[p]) > 1})
        wanted = {p for p in wanted if p.rsplit("/", 1)[0] in groups}
    window = _spatial_window(grid, selection)
    if window is not None:
        row0, row1, col0, col1 = window
        left, _, _, top = grid.bounds
        res = grid.resolution
        plan.grid = grid.replace(
            name=f"{grid.name}-subset",
            bounds=(left + col0 * res, top - row1 * res, left + col1 * res, top - row0 * res))
        plan.window = window
    time_windows = {g: _time_window(g, arrays, selection, read_array, grid.time_chunk)
                    for g in groups if f"{join(g, 'time')}" in arrays}

    # groups: their documents, with the grid attribute of the copy
    kept_groups = {""} | {p for g in groups for p in _ancestors(g)} | set(groups)
    for g in sorted(kept_groups):
        for name in (".zgroup", ".zattrs"):
            key = join(g, name)
            if key in docs:
                plan.keys[key] = Rewritten(_rewrite_attrs(docs[key], plan.grid) if name == ".zattrs" else docs[key])
    root_attrs = json.loads(plan.keys[".zattrs"].data)  # type: ignore[union-attr]
    root_attrs[SUBSET_ATTR] = {"source": source_url, "version": version, **selection.describe(),
                               "grid": grid.to_dict()}
    plan.keys[".zattrs"] = Rewritten(dumps(root_attrs))
    plan.keys[GRID_FILE] = Rewritten(plan.grid.to_json().encode())

    for path in sorted(wanted):
        meta = ArrayMeta(json.loads(docs[join(path, ".zarray")]))
        dims = arrays[path]
        group = path.rsplit("/", 1)[0] if "/" in path else ""
        cuts: dict[int, tuple[int, int]] = {}  # axis -> [start, stop) in elements
        for axis, dim in enumerate(dims):
            if dim == "y" and window is not None:
                cuts[axis] = (window[0], min(window[1], meta.shape[axis]))
            elif dim == "x" and window is not None:
                cuts[axis] = (window[2], min(window[3], meta.shape[axis]))
            elif dim == "time" and time_windows.get(group) is not None:
                cuts[axis] = time_windows[group]
        shape = [cuts[a][1] - cuts[a][0] if a in cuts else n for a, n in enumerate(meta.shape)]
        plan.keys[join(path, ".zarray")] = Rewritten(meta.resized(shape).to_bytes())
        if join(path, ".zattrs") in docs:
            plan.keys[join(path, ".zattrs")] = Rewritten(_rewrite_attrs(docs[join(path, ".zattrs")], plan.grid))
        aligned = all(start % meta.chunks[a] == 0 for a, (start, _) in cuts.items())
        if aligned:
            _rename_chunks(plan, path, meta, cuts, manifest_keys)
        elif len(dims) == 1:
            (start, stop), = cuts.values()
            values = read_array(path)[start:stop]
            for i, raw in encode_1d(meta, values).items():
                if raw is not None:
                    plan.keys[f"{path}/{i}"] = Rewritten(raw)
        else:  # cannot happen with our layout: every gridded array is chunked like the grid
            raise ConfigError(f"{path}: chunks {meta.chunks} do not align with the subset")
    return plan


# -- helpers -----------------------------------------------------------------------------------
def _arrays(docs: dict[str, bytes]) -> dict[str, tuple[str, ...]]:
    """Array path -> dimension names, from the metadata documents."""
    out = {}
    for key in docs:
        if key.endswith("/.zarray") or key == ".zarray":
            path = key[: -len("/.zarray")]
            attrs = json.loads(docs.get(join(path, ".zattrs"), b"{}"))
            out[path] = tuple(attrs.get("_ARRAY_DIMENSIONS", ()))
    return out


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


# DESIGN CHOICE: a subset leaves out what is derived from a whole imagery group (the overview
# levels, whose arrays have other shapes; the quality atlas, whose cells cover the whole grid):
# cut at the subset's chunks they would be wrong. `s2ingest overviews` / `quality rebuild`
# make them again on the copy.
DERIVED = ("overviews", "quality")


def _derived(group: str) -> bool:
    return any(part in DERIVED for part in group.split("/")[2:])


def _selected_groups(docs, arrays, selection: Selection) -> list[str]:
    """Groups that hold arrays and are selected (all of them without ``--groups``), without
    the derived ones."""
    holding = sorted({g for p in arrays if "/" in p
                      if not _derived(g := p.rsplit("/", 1)[0])})
    if not selection.groups:
        return holding
    out = []
    for want in selection.groups:
        g = want.strip("/")
        found = [h for h in holding if h == g or h.startswith(g + "/")]
        if not found:
            raise ConfigError(f"no group {want!r} in the cube (groups: {', '.join('/' + h for h in holding)})")
        out.extend(found)
    return sorted(set(out))


def _selected_arrays(arrays, groups: list[str], selection: Selection) -> set[str]:
    """Arrays of the selected groups: the selected variables plus every coordinate (arrays of
    at most one dimension: time, provenance, x, y, edition, spatial_ref)."""
    in_groups = {p for p in arrays if "/" in p and p.rsplit("/", 1)[0] in groups}
    if not selection.variables:
        return in_groups
    names = {p.rsplit("/", 1)[1] for p in in_groups if len(arrays[p]) > 1}
    unknown = sorted(set(selection.variables) - names)
    if unknown:
        raise ConfigError(f"unknown variable(s) {', '.join(unknown)} (the selected groups hold "
                          f"{', '.join(sorted(names))})")
    return {p for p in in_groups if len(arrays[p]) <= 1 or p.rsplit("/", 1)[1] in selection.variables}


def _spatial_window(grid: CubeGrid, selection: Selection) -> tuple[int, int, int, int] | None:
    """[row0, row1, col0, col1) of the bbox, grown to whole chunks and clipped to the grid."""
    if selection.bbox is None:
        return None
    bounds = selection.bbox
    crs = selection.bbox_crs
    if crs is not None:
        from pyproj import CRS, Transformer

        if CRS.from_user_input(crs) != CRS.from_user_input(grid.crs):
            t = Transformer.from_crs(crs, grid.crs, always_xy=True)
            bounds = t.transform_bounds(*bounds, densify_pts=21)
    w = grid.window_for_bounds(tuple(bounds))  # type: ignore[arg-type]
    if w is None:
        raise ConfigError(f"bbox {list(selection.bbox)} does not overlap the grid {grid.name} "
                          f"{list(grid.bounds)} ({grid.crs})")
    cy, cx = grid.chunk_shape
    ny, nx = grid.shape
    r0, c0 = int(w.row_off), int(w.col_off)
    r1, c1 = r0 + int(w.height), c0 + int(w.width)
    return (r0 // cy * cy, min(ny, math.ceil(r1 / cy) * cy), c0 // cx * cx, min(nx, math.ceil(c1 / cx) * cx))


def _time_window(group: str, arrays, selection: Selection, read_array, time_chunk: int):
    """[start, stop) of the selected time steps of ``group``, grown to whole time chunks."""
    if selection.time is None:
        return None
    ms = np.asarray(read_array(join(group, "time")), dtype="int64")
    lo, hi = selection.time
    keep = np.ones(ms.shape, bool)
    if lo is not None:
        keep &= ms >= int(round(lo.timestamp() * 1000))
    if hi is not None:
        keep &= ms <= int(round(hi.timestamp() * 1000))
    idx = np.flatnonzero(keep)
    if not len(idx):
        return (0, 0)
    return (int(idx[0]) // time_chunk * time_chunk,
            min(len(ms), (int(idx[-1]) // time_chunk + 1) * time_chunk))


def _rename_chunks(plan: CopyPlan, path: str, meta: ArrayMeta, cuts, manifest_keys) -> None:
    """Source chunks inside the cuts, renamed by the chunk offset (bytes unchanged)."""
    ranges = []
    for axis, c in enumerate(meta.chunks):
        if axis in cuts:
            start, stop = cuts[axis]
            ranges.append((start // c, -(-stop // c)))
        else:
            ranges.append((0, -(-meta.shape[axis] // c) if meta.shape else 1))
    prefix = f"{path}/"
    for key, entry in manifest_keys.items():
        if not key.startswith(prefix) or "/" in key[len(prefix):] or is_metadata(key):
            continue
        name = key[len(prefix):]
        try:
            index = [int(i) for i in name.split(".")]
        except ValueError:
            continue
        if len(index) != len(ranges) and meta.shape:
            continue
        if all(lo <= i < hi for i, (lo, hi) in zip(index, ranges)):
            new = ".".join(str(i - lo) for i, (lo, _) in zip(index, ranges)) if meta.shape else name
            plan.keys[f"{prefix}{new}"] = FromSource(key, int(entry["size"]), entry["sha256"])


def _rewrite_attrs(raw: bytes, grid: CubeGrid) -> bytes:
    """Attributes that describe the grid, for the copy's grid (``grid``, ``GeoTransform``)."""
    attrs = json.loads(raw)
    changed = False
    if isinstance(attrs.get("grid"), dict):
        attrs["grid"] = grid.to_dict()
        changed = True
    if "GeoTransform" in attrs:
        attrs["GeoTransform"] = " ".join(str(v) for v in grid.transform.to_gdal())
        changed = True
    return dumps(attrs) if changed else raw
