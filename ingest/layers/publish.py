"""Publish a rasterised reference layer into the cube store (DESIGN.md §3, §5).

Layout of one layer group (``/NL``, ``/NL/BBG``, ``/NL/BRP``), a plain xarray Dataset:

    edition (edition)            int32  reference year, in order of addition
    x (x), y (y)                 float64 pixel centres, identical to the grid's (and /S2/R051's)
    spatial_ref ()               CF grid mapping (crs_wkt, spatial_ref, GeoTransform)
    <variable> (edition, y, x)   uint codes, _FillValue 0, chunks (1, 625, 500)

Everything is staged in one store transaction (``ingest.store``): every chunk of the new slice,
encoded with the array's own codec; stale chunks of a replaced slice removed; array metadata
(create/resize arrays, the edition coordinate, code tables, provenance). The commit switches
them in, consolidated metadata last. Readers of the previous ``.zmetadata`` never see a
half-written new edition; a replaced edition switches chunk by chunk in a few milliseconds.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numcodecs import Blosc
from pyproj import CRS
from tqdm.auto import tqdm

from ingest.errors import LayerError
from ingest.grid import NL_GRID, CubeGrid
from ingest.store import CubeStore, Transaction, join
from ingest.store.imagery import write_1d
from ingest.store.layout import GROUP_VERSION_ATTR
from ingest.store.zarrdocs import ArrayMeta, new_array, read_array
import ingest.layers.codes as codes_mod
from ingest.layers.codes import CodeTable, LayerSpec
from ingest.layers.rasterize import chunks_touched, iter_rasterized
from ingest.layers.vector import VectorSource, read_vector

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
    version: int = 0  # the store version that published it
    unchanged: bool = False  # already published from the same file: nothing was written

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
              now: datetime | None = None, progress: bool = False) -> list[LayerRecord]:
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
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    store = CubeStore.for_writing(store_path, grid)
    records = []
    # DESIGN CHOICE: the same transaction as the imagery (one writer per store, checks under
    # the lock, everything staged, consolidated metadata last): a crash or a refusal leaves
    # the published layers exactly as they were.
    with store.transaction() as tx:
        same = _published_from(tx, group, [p.spec for p in plans], edition, vec)
        if same is not None and not force:
            # DESIGN CHOICE: the same file again is done already (e.g. a rerun after a crash
            # whose commit the store completed): say so and change nothing, no --force needed.
            return [LayerRecord(group, p.spec.variable, int(edition), vec.name, vec.sha256,
                                vec.attribute, same[p.spec.variable]["added_at"], vec.n_features,
                                int(same[p.spec.variable].get("n_pixels", 0)), False, 0,
                                int(tx.attrs(group).get(GROUP_VERSION_ATTR, tx.base_version)), True)
                    for p in plans]
        index, replacing = _check_store(tx, group, [p.spec for p in plans], edition, force, grid)
        _ensure_group(tx, group, grid)
        for plan in plans:
            n_pixels, n_chunks = _write_chunks(tx, group, plan, vec, grid, index, progress)
            records.append(LayerRecord(group, plan.spec.variable, int(edition), vec.name, vec.sha256,
                                       vec.attribute, stamp, vec.n_features, n_pixels, replacing, n_chunks))
        _write_metadata(tx, group, plans, records, vec, grid, edition)
        tx.update_attrs(group, {GROUP_VERSION_ATTR: tx.base_version + 1})
        version = tx.commit().version
    return [replace(r, version=version) for r in records]


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


# -- checks (under the lock, before anything is staged) ---------------------------------------
def _check_store(tx: Transaction, group: str, specs: list[LayerSpec], edition: int,
                 force: bool, grid: CubeGrid) -> tuple[int, bool]:
    """Edition slot to write and whether it replaces one; refuses before any write."""
    if not tx.is_group(group):
        return 0, False
    _check_grid(tx.attrs(group).get("grid"), grid, f"{tx.store.url}/{group}")
    editions = _editions(tx, group)
    index = editions.index(edition) if edition in editions else len(editions)
    replacing = any(tx.is_array(join(group, spec.variable))
                    and str(edition) in tx.attrs(join(group, spec.variable)).get("provenance", {})
                    for spec in specs)
    if replacing and not force:
        raise LayerError(
            f"/{group}/{specs[0].variable} already holds edition {edition}; "
            "use --force to replace it"
        )
    return index, replacing


def _published_from(tx: Transaction, group: str, specs: list[LayerSpec], edition: int,
                    vec: VectorSource) -> dict[str, dict] | None:
    """Each variable's provenance if every one already holds ``edition`` from this very file
    (same sha256 and attribute); None otherwise."""
    found = {}
    for spec in specs:
        path = join(group, spec.variable)
        prov = tx.attrs(path).get("provenance", {}).get(str(edition)) if tx.is_array(path) else None
        if not prov or prov.get("sha256") != vec.sha256 or prov.get("attribute") != vec.attribute:
            return None
        found[spec.variable] = prov
    return found


def _editions(tx: Transaction, group: str) -> list[int]:
    path = join(group, EDITION)
    if not tx.is_array(path):
        return []
    values = read_array(tx.array(path), lambda chunk: tx.get(join(path, chunk)))
    return [int(e) for e in values]


def _check_grid(stored: dict | None, grid: CubeGrid, where: str) -> None:
    if stored is not None:
        grid.check_same(CubeGrid.from_dict(stored), where)


# -- chunks -------------------------------------------------------------------------------------
def _write_chunks(tx: Transaction, group: str, plan: _Plan, vec: VectorSource,
                  grid: CubeGrid, index: int, progress: bool = False) -> tuple[int, int]:
    """Stage the slice's non-empty chunks; drop stale ones. Returns (pixels, chunks) written.

    DESIGN CHOICE: chunks are encoded with the codec the array's ``.zarray`` names (the same
    codec zarr-python uses for format 2) and staged under their final keys, before the array
    is created or resized: the metadata change really is the last step.
    """
    path = join(group, plan.spec.variable)
    meta = _variable_meta(tx, path, plan.spec, grid)
    written: set[str] = set()
    n_pixels = 0
    bar = tqdm(total=len(chunks_touched(vec.geometries, grid)), unit="chunk", disable=not progress,
               desc=f"rasterise /{path}")
    for (iy, ix), block in iter_rasterized(vec.geometries, plan.values, grid, plan.spec.dtype,
                                           on_chunk=lambda: bar.update(1)):
        chunk = meta.empty_chunk()
        chunk[0, :block.shape[0], :block.shape[1]] = block
        name = f"{index}.{iy}.{ix}"
        tx.put(join(path, name), meta.encode(chunk))
        written.add(name)
        n_pixels += int(np.count_nonzero(block))
    bar.close()
    if n_pixels == 0:
        raise LayerError(
            f"{vec.name}: no pixel centre of grid {grid.name} falls inside any feature; nothing published"
        )
    # Stale chunks: of the replaced edition, or orphans of an interrupted earlier run.
    for name in tx.chunk_keys(path):
        if name.startswith(f"{index}.") and name not in written:
            tx.delete(join(path, name))
    return n_pixels, len(written)


def _variable_meta(tx: Transaction, path: str, spec: LayerSpec, grid: CubeGrid) -> ArrayMeta:
    """The array's encoding: the stored one, or the one it will be created with."""
    if tx.is_array(path):
        meta = tx.array(path)
        if meta.dtype != np.dtype(spec.dtype) or meta.shape[1:] != grid.shape:
            raise LayerError(f"/{path} has dtype {meta.dtype} shape {meta.shape}, "
                             f"expected {spec.dtype} (*, {grid.shape})")
        meta.check_plain(path)
        return meta
    docs = new_array("v", shape=(1, *grid.shape), chunks=(1, *grid.chunk_shape), dtype=spec.dtype,
                     fill_value=0, compressor=COMPRESSOR, attrs={})
    return ArrayMeta(json.loads(docs["v/.zarray"]))


# -- metadata -----------------------------------------------------------------------------------
def _ensure_group(tx: Transaction, group: str, grid: CubeGrid) -> None:
    """The layer group with x, y, edition and the CF grid mapping, created once."""
    parts = group.split("/")
    for depth in range(1, len(parts) + 1):
        path = "/".join(parts[:depth])
        if not tx.is_group(path):
            tx.create_group(path)
    attrs = tx.attrs(group)
    if "grid" not in attrs:
        tx.update_attrs(group, {"grid": grid.to_dict(),
                                "title": f"reference layers /{group} on grid {grid.name}"})
    for name, values, axis in (("x", grid.x, "X"), ("y", grid.y, "Y")):
        if not tx.is_array(join(group, name)):
            tx.create_array(join(group, name), shape=values.shape, chunks=values.shape,
                            dtype="float64", fill_value=None, compressor=COMPRESSOR, data=values,
                            attrs={"_ARRAY_DIMENSIONS": [name], "axis": axis, "units": "m",
                                   "standard_name": f"projection_{name}_coordinate",
                                   "long_name": f"{name} coordinate of pixel centre"})
    if not tx.is_array(join(group, EDITION)):
        tx.create_array(join(group, EDITION), shape=(0,), chunks=(256,), dtype="int32",
                        fill_value=None, compressor=COMPRESSOR,
                        attrs={"_ARRAY_DIMENSIONS": [EDITION], "long_name": "edition (reference year)"})
    if not tx.is_array(join(group, "spatial_ref")):
        crs = CRS.from_user_input(grid.crs)
        t = grid.transform
        attrs = crs.to_cf()
        attrs.update({"_ARRAY_DIMENSIONS": [], "crs_wkt": crs.to_wkt(), "spatial_ref": crs.to_wkt(),
                      "GeoTransform": " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))})
        tx.create_array(join(group, "spatial_ref"), shape=(), chunks=(), dtype="int32",
                        fill_value=None, compressor=COMPRESSOR, data=np.array(0, dtype="int32"),
                        attrs=attrs)


def _write_metadata(tx: Transaction, group: str, plans: list[_Plan],
                    records: list[LayerRecord], vec: VectorSource, grid: CubeGrid, edition: int) -> None:
    """Arrays, coordinates and attributes, after every chunk is staged."""
    editions = _editions(tx, group)
    if edition not in editions:
        editions.append(int(edition))
    n = len(editions)
    for plan in plans:
        path = join(group, plan.spec.variable)
        if not tx.is_array(path):
            tx.put(join(path, ".zarray"),
                   _variable_meta(tx, path, plan.spec, grid).resized((n, *grid.shape)).to_bytes())
    for name in tx.children(group):
        path = join(group, name)
        if name == EDITION or not tx.is_array(path):
            continue
        meta = tx.array(path)
        if list(tx.attrs(path).get("_ARRAY_DIMENSIONS", []))[:1] == [EDITION] and meta.shape[0] < n:
            tx.resize(path, (n, *meta.shape[1:]))
    write_1d(tx, join(group, EDITION), np.asarray(editions, dtype="int32"))
    for plan, rec in zip(plans, records):
        _update_attrs(tx, join(group, plan.spec.variable), plan, rec, vec, grid)


def _update_attrs(tx: Transaction, path: str, plan: _Plan, rec: LayerRecord, vec: VectorSource,
                  grid: CubeGrid) -> None:
    attrs = tx.attrs(path)
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
    tx.put_json(join(path, ".zattrs"), attrs)


def list_layers(store_path: str | Path) -> list[dict]:
    """One row per published (group, variable, edition), from the consolidated metadata."""
    rows = []
    meta = CubeStore.open(store_path).consolidated("")
    if meta is None:
        raise LayerError(f"{store_path}: no consolidated metadata; not a published cube")
    for group in codes_mod.GROUPS:
        prefix = f"{group}/"
        for key, doc in sorted(meta.items()):
            rest = key[len(prefix):] if key.startswith(prefix) else ""
            if rest.count("/") != 1 or not rest.endswith("/.zattrs"):
                continue
            for ed, p in doc.get("provenance", {}).items():
                rows.append({"group": group, "variable": rest.split("/")[0], "edition": int(ed), **p})
    return rows
