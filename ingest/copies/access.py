"""The data-store API: one published version of a cube as a lazy ``xarray.Dataset``.

``open_cube`` is what users, ``rechunk`` and ``export`` call. It pins exactly one version
(``ingest.store.zarr_view.VersionStore``: metadata from that version's snapshot, every chunk
checked against its manifest), picks the imagery group, and cuts out a bbox (grid CRS or any
CRS pyproj knows, expanded to whole pixels of the grid), a time range (inclusive) and a set of
variables. Nothing is read beyond metadata and coordinates until the caller computes.
"""
from __future__ import annotations

import re
import time
import warnings
from typing import Iterable, Sequence

import pandas as pd
import xarray as xr

from ingest.errors import ConfigError, EmptySelectionError, UnknownVariableError
from ingest.grid import CubeGrid
from ingest.store import CubeStore, list_versions  # noqa: F401 (re-exported: the reader API)
from ingest.store.layout import VERSION_ATTR, group_path
from ingest.store.zarr_view import VersionStore

Bounds = tuple[float, float, float, float]
_IMAGERY = re.compile(r"S2/R\d{3}")


def imagery_groups(view: VersionStore) -> list[str]:
    """The imagery groups (``S2/R051``, ...) of a pinned version."""
    return sorted(k.rsplit("/", 1)[0] for k in view.metadata_keys()
                  if k.endswith("/.zgroup") and _IMAGERY.fullmatch(k.rsplit("/", 1)[0]))


def choose_group(view: VersionStore, group: str | None = None, orbit: int | None = None) -> str:
    """The group to open: ``group``, or that of ``orbit``, or the only imagery group."""
    if group is not None and orbit is not None:
        raise ConfigError("give group or orbit, not both")
    if orbit is not None:
        group = group_path(int(orbit))
    if group is not None:
        group = group.strip("/")
        if view.metadata(f"{group}/.zgroup") is None:
            raise ConfigError(f"version {view.version} of {view.url} has no group /{group}")
        return group
    found = imagery_groups(view)
    if len(found) != 1:
        raise ConfigError(f"version {view.version} of {view.url} has imagery groups "
                          f"{', '.join('/' + g for g in found) or '(none)'}; give group= or orbit=")
    return found[0]


def grid_bounds(grid: CubeGrid, bbox: Sequence[float], crs: str | None = None) -> Bounds:
    """``bbox`` (left, bottom, right, top in ``crs``, default the grid's) as pixel-edge bounds
    in the grid CRS, expanded to whole pixels of the grid and clipped to it."""
    if len(bbox) != 4:
        raise ConfigError(f"bbox must be left,bottom,right,top; got {list(bbox)}")
    left, bottom, right, top = (float(v) for v in bbox)
    if not (right > left and top > bottom):
        raise ConfigError(f"bbox {list(bbox)} is empty (left < right and bottom < top needed)")
    if crs is not None:
        from pyproj import CRS, Transformer
        from pyproj.exceptions import CRSError

        try:
            src = CRS.from_user_input(crs)
        except CRSError as exc:
            raise ConfigError(f"unknown CRS {crs!r}: {exc}") from None
        if not src.equals(CRS.from_user_input(grid.crs)):
            # DESIGN CHOICE: densified edges (transform_bounds), so the box in the grid CRS
            # covers the whole requested area, not only its four corners.
            tr = Transformer.from_crs(src, grid.crs, always_xy=True)
            left, bottom, right, top = tr.transform_bounds(left, bottom, right, top, densify_pts=21)
    window = grid.window_for_bounds((left, bottom, right, top))
    if window is None:
        raise ConfigError(f"bbox {list(bbox)}{f' ({crs})' if crs else ''} does not overlap "
                          f"grid {grid.name} {grid.bounds}")
    return grid.window_bounds(window)


def parse_time(value) -> pd.Timestamp:
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {value!r} as a date or time: {exc}") from None
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def time_slice(time_range) -> slice:
    """An inclusive label slice; a bare date as end includes that whole day."""
    start, end = time_range
    t0 = parse_time(start) if start is not None else None
    t1 = None
    if end is not None:
        t1 = parse_time(end)
        if isinstance(end, str) and len(end.strip()) <= 10:  # a date: up to its last instant
            t1 = t1 + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
    return slice(t0, t1)


def describe_time_range(time_range) -> str:
    """``START .. END`` as ``time_slice`` reads the range (UTC, to the second; "…" for an open side)."""
    t = time_slice(time_range)
    return " .. ".join("…" if v is None else v.isoformat(timespec="seconds") for v in (t.start, t.stop))


def select(ds: xr.Dataset, grid: CubeGrid | None, *, bbox=None, crs=None, time_range=None,
           variables: Iterable[str] | None = None, where: str = "") -> xr.Dataset:
    """Cut ``ds`` (a group of the cube) to variables, bbox (whole pixels) and time range."""
    if variables is not None:
        variables = list(variables)
        unknown = [v for v in variables if v not in ds.data_vars]
        if unknown:
            raise UnknownVariableError(
                f"{where}: no variable {', '.join(unknown)} (has {', '.join(map(str, ds.data_vars))})")
        ds = ds[variables]
    if bbox is not None:
        left, bottom, right, top = grid_bounds(grid, bbox, crs)
        half = grid.resolution / 2
        ds = ds.sel(x=slice(left + half, right - half), y=slice(top - half, bottom + half))
    if time_range is not None and "time" in ds.dims:
        ds = ds.sel(time=time_slice(time_range))
    return ds


def open_cube(store, bbox: Sequence[float] | None = None, crs: str | None = None,
              time_range: tuple | None = None, variables: Iterable[str] | None = None,
              version: int | None = None, group: str | None = None, orbit: int | None = None,
              *, max_cloud: float | None = None, min_valid: float | None = None, aoi=None,
              aoi_crs: str | None = None, chunks=None, mask_and_scale: bool = True) -> xr.Dataset:
    """One version of the cube at ``store`` (path, http(s):// or s3:// URL) as a lazy Dataset.

    ``bbox`` (left, bottom, right, top) is in the grid CRS (RD New) unless ``crs`` names
    another (e.g. ``"EPSG:4326"`` for lon/lat); it is expanded to whole pixels. ``time_range``
    is (start, end), inclusive, either may be None. ``version`` defaults to the one readers see
    now; a chunk a later version rewrote is read from the bytes the store kept for the
    versions it retains (DESIGN.md §5).

    ``max_cloud`` / ``min_valid`` (percent) keep only the dates whose area-weighted cloud
    fraction over ``aoi`` (a shapely geometry in ``aoi_crs``; default: the bbox, else the whole
    grid) is below / valid share at least that, as ``s2ingest quality`` selects them from the
    quality group (``ingest.quality.select``; no imagery is read to choose).
    """
    if version is None:
        warn_if_switching(CubeStore.open(str(store)))
    view = VersionStore(str(store), version)
    grp = choose_group(view, group, orbit)
    grid = view.grid
    ds = xr.open_zarr(view, group=grp, consolidated=True, chunks={} if chunks is None else chunks,
                      mask_and_scale=mask_and_scale)
    where = f"version {view.version} of {view.url}/{grp}"
    times = ds.time.values if "time" in ds.dims else None
    ds = select(ds, grid, bbox=bbox, crs=crs, time_range=time_range, variables=variables,
                where=where)
    refuse_empty(ds, view, grp, grid, times, bbox=bbox, crs=crs, time_range=time_range, where=where)
    if max_cloud is not None or min_valid is not None:
        ds = _clear_dates(ds, store, grp, max_cloud, min_valid, aoi, aoi_crs, bbox, crs)
    ds.attrs[VERSION_ATTR] = view.version
    ds.attrs["s2ingest_source"] = view.url
    ds.attrs["s2ingest_group"] = grp
    return ds


def refuse_empty(ds: xr.Dataset, view: VersionStore, group: str, grid: CubeGrid, times, *,
                 bbox, crs, time_range, where: str) -> None:
    """``EmptySelectionError`` when a time range holds no time step of the group, or a bbox
    no stored chunk of it (the version's manifest names every chunk that holds data)."""
    if time_range is not None and "time" in ds.dims and ds.sizes["time"] == 0:
        raise EmptySelectionError(f"{where}: no time step in {describe_time_range(time_range)}; "
                                  f"the cube holds {_time_extent(times)}")
    if bbox is None or grid is None:
        return
    window = grid.window_for_bounds(grid_bounds(grid, bbox, crs))
    cy, cx = grid.chunk_shape
    r0, c0 = int(window.row_off), int(window.col_off)
    r1, c1 = r0 + int(window.height) - 1, c0 + int(window.width) - 1
    rows, cols = range(r0 // cy, r1 // cy + 1), range(c0 // cx, c1 // cx + 1)
    prefix = f"{group}/"
    for key in view.keys:
        if not key.startswith(prefix) or key.count("/") != prefix.count("/") + 1:
            continue
        index = key.rsplit("/", 1)[1].split(".")
        if len(index) == 3 and index[1].isdigit() and index[2].isdigit() \
                and int(index[1]) in rows and int(index[2]) in cols:
            return
    raise EmptySelectionError(f"{where}: no data in bbox {list(bbox)}{f' ({crs})' if crs else ''}; "
                              "the cube holds no imagery there")


def _time_extent(times) -> str:
    """``N time steps from A to B``, for messages."""
    if times is None or not len(times):
        return "no time step at all"
    return f"{len(times)} time steps from {str(times[0])[:10]} to {str(times[-1])[:10]}"


class SwitchingWarning(UserWarning):
    """The cube's last commit is not finished: its keys are (or were left) half switched."""


SWITCH_WAIT = 3.0  # seconds a reader waits for a live writer to finish its switch


def warn_if_switching(cube: CubeStore, wait: float = SWITCH_WAIT) -> int | None:
    """The version whose commit ``cube`` is still switching after ``wait`` seconds (a writer
    killed mid-switch left it), with a ``SwitchingWarning``; None when there is none.

    DESIGN CHOICE: a reader never completes a commit itself (readers write nothing, and may
    not be allowed to): it reads the version the root metadata still names, the last complete
    one, whose chunks are checked against its manifest, so a chunk the unfinished commit
    already replaced raises ``VersionGoneError`` instead of mixing two versions. Any command
    that writes the cube completes the commit first (`s2ingest sync`, a rerun of `mirror`).
    """
    deadline = time.monotonic() + wait
    while (pending := cube.switching()) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if pending is not None:
        warnings.warn(
            f"{cube.url}: the commit of version {pending} was interrupted while its keys were "
            f"switched; reading version {cube.version()}, the last complete one (chunks that "
            "commit already replaced cannot be read); `s2ingest sync` (or rerunning the mirror "
            "of a copy) completes it", SwitchingWarning, stacklevel=3)
    return pending


def _clear_dates(ds: xr.Dataset, store, group: str, max_cloud, min_valid, aoi, aoi_crs, bbox,
                 crs) -> xr.Dataset:
    """``ds`` at the dates the quality atlas selects over the AOI (DESIGN.md §11)."""
    import shapely

    from ingest.quality.select import select_dates

    if aoi is None and bbox is not None:
        aoi, aoi_crs = shapely.box(*bbox), crs
    rows = select_dates(str(store), group=group, aoi=aoi, aoi_crs=aoi_crs, max_cloud=max_cloud,
                        min_valid=min_valid)
    keep = pd.DatetimeIndex([pd.Timestamp(r.time) for r in rows if r.selected])
    if keep.tz is not None:
        keep = keep.tz_convert(None)
    return ds.sel(time=ds.time.isin(keep.values))


def _geotransform(ds: xr.Dataset) -> str | None:
    """The GDAL GeoTransform of a regular north-up selection (origin at its own corner)."""
    if ds.sizes.get("x", 0) < 2 or ds.sizes.get("y", 0) < 2:
        return None
    x0, x1 = float(ds.x[0]), float(ds.x[1])
    y0, y1 = float(ds.y[0]), float(ds.y[1])
    rx, ry = x1 - x0, y1 - y0
    return " ".join(str(v) for v in (x0 - rx / 2, rx, 0.0, y0 - ry / 2, 0.0, ry))


def fix_grid_mapping(ds: xr.Dataset) -> xr.Dataset:
    """A subset's ``spatial_ref`` names its own corner: GDAL and rioxarray read the
    GeoTransform attribute before the coordinates."""
    gt = _geotransform(ds)
    if gt is not None and "spatial_ref" in ds.coords:
        ds = ds.assign_coords(spatial_ref=ds.spatial_ref.copy())
        ds.spatial_ref.attrs["GeoTransform"] = gt
    return ds
