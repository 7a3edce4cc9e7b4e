"""Publish a rasterised reference layer into the cube store (DESIGN.md §3, §5).

Layout of one layer group (``/NL``, ``/NL/BBG``, ``/NL/BRP``), a plain xarray Dataset:

    edition (edition)            int32  reference year, in order of addition
    x (x), y (y)                 float64 pixel centres, identical to the grid's (and /S2/R051's)
    spatial_ref ()               CF grid mapping (crs_wkt, spatial_ref, GeoTransform)
    <variable> (edition, y, x)   uint codes, _FillValue 0, chunks (1, 625, 500)

Commit order: (1) every chunk of the new slice, encoded with the array's own codec and written
under its final key (one atomic rename each); (2) stale chunks of a replaced slice removed;
(3) array metadata: create/resize arrays, append the edition, code tables and provenance;
(4) consolidated metadata, group first and root last. Readers of the previous ``.zmetadata``
never see a half-written new edition; a replaced edition switches chunk by chunk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc
from pyproj import CRS

from ..errors import LayerError
from ..grid import NL_GRID, CubeGrid
from ..commit import Transaction
from ..store import consolidate as store_consolidate
from ..store import init_store, read_grid
from . import codes as codes_mod
from .codes import CodeTable, LayerSpec
from .rasterize import iter_rasterized
from .vector import VectorSource, read_vector

EDITION = "edition"
# Same codec family as the imagery (DESIGN §8: Blosc zstd); byte shuffle suits small integers.
COMPRESSOR = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)


@dataclass(frozen=True)
class LayerRecord:
    """What was published, for the catalog's ``layers`` table."""

    group: str
    variable: str
    edition: int
    source_name: str
    sha256: str
    attribute: str | None
    added_at: str  # ISO 8601, UTC
    n_features: int
    n_pixels: int
    replaced: bool = False
    n_chunks: int = 0  # chunks written for this edition

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    """One variable to write: its spec, the values to burn and its code table."""

    spec: LayerSpec
    values: np.ndarray
    table: CodeTable | None


def add_layer(store_path: str | Path, group: str, source: str | Path, *, edition: int,
              attribute: str | None, variable: str | None = None, force: bool = False,
              grid: CubeGrid = NL_GRID, name_attribute: str | None = None,
              now: datetime | None = None) -> list[LayerRecord]:
    """Rasterise ``source`` into ``group`` for ``edition``; returns one record per variable.

    Every refusal (bad file, existing edition without ``force``, other grid) is raised before
    anything is written.
    """
    group = group.strip("/")
    if group not in codes_mod.GROUPS:
        raise LayerError(f"unknown layer group {group!r}; use one of {', '.join(codes_mod.GROUPS)}")
    if variable != "border" and not attribute:
        raise LayerError("--attribute is required (the field holding the codes)")
    name_attr = name_attribute or _default_name_attribute(group, variable)
    vec = read_vector(source, attribute, grid, name_attribute=name_attr)
    spec = codes_mod.resolve_spec(group, variable, vec.values)
    plans = _plans(spec, vec)
    store_path = Path(store_path)
    index, replacing = _check_store(store_path, group, [p.spec for p in plans], edition, force, grid)
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    init_store(store_path, grid)  # root group + grid.json, shared with the imagery writer
    store = zarr.DirectoryStore(str(store_path), dimension_separator=".")
    records = []
    # DESIGN CHOICE: the same transaction as the imagery (one writer per store, undo log,
    # consolidated metadata last): a crash leaves the published layers exactly as they were.
    with Transaction(store_path, group) as tx:
        for plan in plans:
            n_pixels, n_chunks = _write_chunks(store, group, plan, vec, grid, index, tx)
            records.append(LayerRecord(group, plan.spec.variable, int(edition), vec.name, vec.sha256,
                                       vec.attribute, stamp, vec.n_features, n_pixels, replacing, n_chunks))
        tx.protect_metadata()
        tx.protect_tree(f"{group}/{EDITION}")
        _write_metadata(store, group, plans, records, vec, grid, edition)
        tx.commit()
    return records


def _default_name_attribute(group: str, variable: str | None) -> str | None:
    names = [s.name_attribute for s in codes_mod.SPECS.values()
             if s.group == group and (variable is None or s.variable == variable) and s.name_attribute]
    return names[0] if names else None


def _plans(spec: LayerSpec, vec: VectorSource) -> list[_Plan]:
    """The variables to write from one file, with their burn values and code tables."""
    n = vec.n_features
    if spec.kind == "mask":
        plans = [_Plan(spec, np.ones(n, dtype=np.int64), CodeTable({1: "inside"}, {1: "inside"}))]
    else:
        try:
            values, table = codes_mod.encode(vec.values, vec.names, spec.max_code, spec.fixed_names)
        except LayerError as exc:
            raise LayerError(f"{vec.name}: attribute {vec.attribute!r}: {exc}") from None
        plans = [_Plan(spec, values, table)]
    for comp in codes_mod.companions(spec):
        if n > comp.max_code:
            raise LayerError(f"{vec.name}: {n} features do not fit {comp.variable} ({comp.dtype})")
        plans.append(_Plan(comp, np.arange(1, n + 1, dtype=np.int64), None))
    return plans


# -- checks (read only) -----------------------------------------------------------------------
def _check_store(store_path: Path, group: str, specs: list[LayerSpec], edition: int,
                 force: bool, grid: CubeGrid) -> tuple[int, bool]:
    """Edition slot to write and whether it replaces one; refuses before any write."""
    stored = read_grid(store_path)  # StoreError for a Zarr store that is not an s2ingest cube
    if stored is None:
        return 0, False
    grid.check_same(stored, f"store {store_path}")
    root = zarr.open_group(str(store_path), mode="r")
    if group not in root:
        return 0, False
    g = root[group]
    _check_grid(g.attrs.asdict().get("grid"), grid, f"{store_path}/{group}")
    editions = [int(e) for e in g[EDITION][:]] if EDITION in g else []
    index = editions.index(edition) if edition in editions else len(editions)
    replacing = any(spec.variable in g and str(edition) in g[spec.variable].attrs.get("provenance", {})
                    for spec in specs)
    if replacing and not force:
        raise LayerError(
            f"/{group}/{specs[0].variable} already holds edition {edition}; "
            "use --force to replace it"
        )
    return index, replacing


def _check_grid(stored: dict | None, grid: CubeGrid, where: str) -> None:
    if stored is not None:
        grid.check_same(CubeGrid.from_dict(stored), where)


# -- chunks -------------------------------------------------------------------------------------
def _template(dtype: str, grid: CubeGrid) -> zarr.Array:
    """An in-memory one-edition array with the store array's exact encoding.

    DESIGN CHOICE: chunks are encoded by this twin (public zarr API, same dtype, codec, fill and
    chunking) and their bytes copied under their final key in the real store. That lets us write
    every chunk of a *new* edition before the real array is resized, so the metadata change
    really is the last step (zarr itself refuses writes beyond an array's current shape).
    """
    return zarr.create(
        shape=(1, *grid.shape), chunks=(1, *grid.chunk_shape), dtype=dtype, fill_value=0,
        compressor=COMPRESSOR, store=zarr.KVStore({}), write_empty_chunks=False,
        dimension_separator=".",
    )


def _write_chunks(store: zarr.DirectoryStore, group: str, plan: _Plan, vec: VectorSource,
                  grid: CubeGrid, index: int, tx: Transaction) -> tuple[int, int]:
    """Write the slice's non-empty chunks; drop stale ones. Returns (pixels, chunks) written."""
    prefix = f"{group}/{plan.spec.variable}"
    twin = _template(plan.spec.dtype, grid)
    written: set[str] = set()
    n_pixels = 0
    for (iy, ix), block in iter_rasterized(vec.geometries, plan.values, grid, plan.spec.dtype):
        win = grid.chunk_window((iy, ix))
        twin[0, win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width] = block
        key = f"{index}.{iy}.{ix}"
        tx.protect([f"{prefix}/{key}"])
        store[f"{prefix}/{key}"] = twin.store.pop(f"0.{iy}.{ix}")  # atomic: temp file + rename
        written.add(key)
        n_pixels += int(np.count_nonzero(block))
    if n_pixels == 0:
        raise LayerError(
            f"{vec.name}: no pixel centre of grid {grid.name} falls inside any feature; nothing published"
        )
    # Stale chunks: of the replaced edition, or orphans of an interrupted earlier run.
    for key in _slice_keys(store, prefix, index) - written:
        tx.protect([f"{prefix}/{key}"])
        del store[f"{prefix}/{key}"]
    return n_pixels, len(written)


def _slice_keys(store: zarr.DirectoryStore, prefix: str, index: int) -> set[str]:
    try:
        names = store.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {n for n in names if n.startswith(f"{index}.")}


# -- metadata -----------------------------------------------------------------------------------
def _write_metadata(store: zarr.DirectoryStore, group: str, plans: list[_Plan],
                    records: list[LayerRecord], vec: VectorSource, grid: CubeGrid, edition: int) -> None:
    """Arrays, coordinates and attributes, after every chunk is in place."""
    g = zarr.open_group(store, path=group, mode="a")
    if "grid" not in g.attrs:
        g.attrs.update({"grid": grid.to_dict(), "title": f"reference layers /{group} on grid {grid.name}"})
    _ensure_coords(g, grid)
    editions = [int(e) for e in g[EDITION][:]]
    if edition not in editions:
        editions.append(int(edition))
    n = len(editions)
    for plan, rec in zip(plans, records):
        _ensure_variable(g, plan.spec, grid, n)
    for name, arr in g.arrays():
        dims = list(arr.attrs.get("_ARRAY_DIMENSIONS", []))
        if dims[:1] == [EDITION] and name != EDITION and arr.shape[0] < n:
            arr.resize(n, *arr.shape[1:])
    ed = g[EDITION]
    ed.resize(n)
    ed[:] = np.asarray(editions, dtype="int32")
    for plan, rec in zip(plans, records):
        _update_attrs(g[plan.spec.variable], plan, rec, vec, grid)


def _ensure_coords(g: zarr.Group, grid: CubeGrid) -> None:
    """x, y, edition and the CF grid mapping, created once per group."""
    if "x" not in g:
        for name, values, axis in (("x", grid.x, "X"), ("y", grid.y, "Y")):
            a = g.create(name, shape=values.shape, chunks=values.shape, dtype="float64",
                         fill_value=None, compressor=COMPRESSOR)
            a[:] = values
            a.attrs.update({"_ARRAY_DIMENSIONS": [name], "axis": axis, "units": "m",
                            "standard_name": f"projection_{name}_coordinate",
                            "long_name": f"{name} coordinate of pixel centre"})
    if EDITION not in g:
        a = g.create(EDITION, shape=(0,), chunks=(256,), dtype="int32", fill_value=None)
        a.attrs.update({"_ARRAY_DIMENSIONS": [EDITION], "long_name": "edition (reference year)"})
    if "spatial_ref" not in g:
        crs = CRS.from_user_input(grid.crs)
        a = g.create("spatial_ref", shape=(), dtype="int32", fill_value=None)
        a[...] = 0
        t = grid.transform
        attrs = crs.to_cf()
        attrs.update({"_ARRAY_DIMENSIONS": [], "crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
                      "GeoTransform": " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))})
        a.attrs.update(attrs)


def _ensure_variable(g: zarr.Group, spec: LayerSpec, grid: CubeGrid, n: int) -> None:
    if spec.variable in g:
        arr = g[spec.variable]
        if arr.dtype != np.dtype(spec.dtype) or arr.shape[1:] != grid.shape:
            raise LayerError(f"/{g.path}/{spec.variable} has dtype {arr.dtype} shape {arr.shape}, "
                             f"expected {spec.dtype} (*, {grid.shape})")
        return
    # overwrite=False: chunks already written under this path are kept, only metadata is added.
    g.create(spec.variable, shape=(n, *grid.shape), chunks=(1, *grid.chunk_shape), dtype=spec.dtype,
             fill_value=0, compressor=COMPRESSOR, dimension_separator=".", overwrite=False,
             write_empty_chunks=False)


def _update_attrs(arr: zarr.Array, plan: _Plan, rec: LayerRecord, vec: VectorSource,
                  grid: CubeGrid) -> None:
    attrs = arr.attrs.asdict()
    prov = dict(attrs.get("provenance", {}))
    window = grid.window_for_bounds(vec.bounds)
    prov[str(rec.edition)] = {
        "source": rec.source_name, "sha256": rec.sha256, "attribute": rec.attribute,
        "added_at": rec.added_at, "n_features": rec.n_features, "n_pixels": rec.n_pixels,
        "source_crs": vec.source_crs,
        "bounds": list(grid.window_bounds(window)) if window is not None else None,
    }
    new = {
        # "coordinates" makes xarray attach spatial_ref as a coordinate, so rioxarray finds the CRS.
        "_ARRAY_DIMENSIONS": [EDITION, "y", "x"], "grid_mapping": "spatial_ref", "coordinates": "spatial_ref",
        "long_name": plan.spec.long_name, "layer_kind": plan.spec.kind,
        "rasterization": "pixel centre inside polygon (GDAL all_touched=False); later features win",
        "provenance": dict(sorted(prov.items())),
    }
    if plan.table is not None:
        table = CodeTable.from_attrs(attrs).merged(plan.table)
        new.update(table.cf_attrs())
    attrs.update(new)
    arr.attrs.put(attrs)


# -- consolidation ------------------------------------------------------------------------------
def consolidate(store_path: str | Path, group: str) -> None:
    """Rewrite ``.zmetadata`` of ``group`` and each ancestor, root last (the imagery's rule)."""
    store_consolidate(store_path, group)


def list_layers(store_path: str | Path) -> list[dict]:
    """One row per published (group, variable, edition), from the consolidated metadata."""
    rows = []
    try:
        root = zarr.open_consolidated(str(store_path), mode="r")
    except (KeyError, ValueError, OSError) as exc:
        raise LayerError(f"{store_path}: no consolidated Zarr store ({exc})") from None
    for group in codes_mod.GROUPS:
        if group not in root:
            continue
        for name, arr in root[group].arrays():
            for ed, p in arr.attrs.get("provenance", {}).items():
                rows.append({"group": group, "variable": name, "edition": int(ed), **p})
    return rows
