"""The imagery group ``/S2/R{orbit:03d}``: its arrays, coordinates and time axis (a contract).

Everything here runs inside a ``Transaction``; layout and encoding come from ``layout``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ingest.errors import StoreError
from ingest.grid import CubeGrid
from ingest.variables import VARIABLES, VariableSpec
from ingest.store.layout import (
    COMPRESSOR, COORD_CHUNK, GROUP_VERSION_ATTR, PROVENANCE, TIME_UNITS, cf_grid_mapping, join,
    variable_attrs,
)
from ingest.store.geozarr import raster_group_attrs
from ingest.store.state import to_ms
from ingest.store.transaction import Transaction
from ingest.store.zarrdocs import encode_1d


def ensure_imagery_group(tx: Transaction, grid: CubeGrid, group: str,
                         variables: dict[str, VariableSpec] = VARIABLES) -> bool:
    """Create the empty group (time length 0) in ``tx`` unless it exists. True if created."""
    if tx.is_group(group):
        missing = [v for v in variables if not tx.is_array(join(group, v))]
        if missing:
            raise StoreError(f"{tx.store.url}/{group} lacks the variables {', '.join(missing)}")
        return False
    parts = group.strip("/").split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        if not tx.is_group(parent):
            tx.create_group(parent)
    tx.create_group(group, {"title": f"Sentinel-2 L2A, relative orbit {group.rsplit('R', 1)[-1]}",
                            "Conventions": "CF-1.8", GROUP_VERSION_ATTR: 0,
                            **raster_group_attrs(grid)})  # GeoZarr beside CF (store.geozarr)
    ny, nx = grid.shape
    tx.create_array(join(group, "x"), shape=(nx,), chunks=(nx,), dtype="f8", fill_value=None,
                    compressor=COMPRESSOR, data=grid.x, attrs={
                        "_ARRAY_DIMENSIONS": ["x"], "standard_name": "projection_x_coordinate",
                        "long_name": "x coordinate of pixel centre", "units": "m", "axis": "X"})
    tx.create_array(join(group, "y"), shape=(ny,), chunks=(ny,), dtype="f8", fill_value=None,
                    compressor=COMPRESSOR, data=grid.y, attrs={
                        "_ARRAY_DIMENSIONS": ["y"], "standard_name": "projection_y_coordinate",
                        "long_name": "y coordinate of pixel centre", "units": "m", "axis": "Y"})
    tx.create_array(join(group, "spatial_ref"), shape=(), chunks=(), dtype="i4", fill_value=None,
                    compressor=COMPRESSOR, data=np.array(0, dtype="i4"),
                    attrs={"_ARRAY_DIMENSIONS": [], **cf_grid_mapping(grid)})
    tx.create_array(join(group, "time"), shape=(0,), chunks=(COORD_CHUNK,), dtype="i8",
                    fill_value=-1, compressor=COMPRESSOR, attrs={
                        "_ARRAY_DIMENSIONS": ["time"], "standard_name": "time", "axis": "T",
                        "long_name": "datatake sensing start", "units": TIME_UNITS,
                        "calendar": "proleptic_gregorian"})
    for name, (width, desc) in PROVENANCE.items():
        tx.create_array(join(group, name), shape=(0,), chunks=(COORD_CHUNK,), dtype=f"<U{width}",
                        fill_value="", compressor=COMPRESSOR,
                        attrs={"_ARRAY_DIMENSIONS": ["time"], "long_name": desc})
    tc = grid.time_chunk
    cy, cx = grid.chunk_shape
    for spec in variables.values():
        tx.create_array(join(group, spec.name), shape=(0, ny, nx), chunks=(tc, cy, cx),
                        dtype=spec.dtype, fill_value=spec.fill_value, compressor=COMPRESSOR,
                        attrs=variable_attrs(spec, grid))
    return True


def write_time_axis(tx: Transaction, group: str, times: Sequence, columns: dict[str, Sequence[str]]) -> None:
    """Stage the time coordinate and the provenance columns at their new length."""
    write_1d(tx, join(group, "time"), np.array([to_ms(t) for t in times], dtype="i8"))
    for name, (width, _) in PROVENANCE.items():
        values = columns[name]
        too_long = [v for v in values if len(v) > width]
        if too_long:
            raise StoreError(f"provenance {name!r} longer than {width} characters: {too_long[0][:80]}...")
        write_1d(tx, join(group, name), np.array(values, dtype=f"<U{width}"))


def write_1d(tx: Transaction, path: str, values: np.ndarray) -> None:
    meta = tx.resize(path, values.shape)
    old = set(tx.chunk_keys(path))
    for i, raw in encode_1d(meta, values).items():
        if raw is not None:
            tx.put(f"{path}/{i}", raw)
            old.discard(str(i))
    for name in old:  # chunks past the new end, or holding fill only
        tx.delete(f"{path}/{name}")


def resize_variables(tx: Transaction, group: str, length: int, grid: CubeGrid,
                     variables: dict[str, VariableSpec] = VARIABLES) -> None:
    for var in variables:
        tx.resize(join(group, var), (length, *grid.shape))
