"""A PNG a person can look at: a true-colour scene and an NDVI time series at one point.

Reads the published cube exactly as users do (xarray, consolidated metadata).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ingest.errors import StoreError

CLEAR_SCL = [4, 5, 6, 7, 11]  # vegetation, bare, water, unclassified, snow: no cloud/shadow


def open_cube(store: str | Path, group: str = "/S2/R051") -> xr.Dataset:
    return xr.open_zarr(str(store), group=group, consolidated=True)


def data_window(cube: xr.Dataset, bounds: tuple[float, float, float, float]) -> xr.Dataset:
    """Cut the cube to RD bounds (left, bottom, right, top); y descends, so slice top->bottom."""
    left, bottom, right, top = bounds
    return cube.sel(x=slice(left, right), y=slice(top, bottom))


def ndvi(cube: xr.Dataset) -> xr.DataArray:
    return (cube.B08 - cube.B04) / (cube.B08 + cube.B04)


def point_series(cube: xr.Dataset, x: float, y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, NDVI, clear?) at the pixel nearest to (x, y)."""
    px = cube.sel(x=x, y=y, method="nearest")
    values = ndvi(px).values
    clear = px.SCL.isin(CLEAR_SCL).values
    return px.time.values, values, clear


def _rgb(scene: xr.Dataset) -> np.ndarray:
    rgb = np.stack([scene.B04.values, scene.B03.values, scene.B02.values], axis=-1)
    rgb = np.clip(rgb / 0.25, 0, 1) ** (1 / 1.6)  # reflectance 0..0.25 stretched, gamma
    return np.where(np.isnan(rgb), 1.0, rgb)


def write_quicklook(store: str | Path, out: str | Path, bounds, point: tuple[float, float],
                    group: str = "/S2/R051", title: str = "") -> Path:
    """Render the least cloudy time step and the NDVI series at ``point`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cube = data_window(open_cube(store, group), bounds)
    if cube.sizes["time"] == 0:
        raise StoreError(f"{store}: group {group} has no time steps to show")
    cloud = cube.CLD.mean(dim=("y", "x")).compute()
    best = int(np.nanargmin(np.where(np.isnan(cloud.values), np.inf, cloud.values)))
    scene = cube.isel(time=best).compute()
    times, values, clear = point_series(cube, *point)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.1, 1]})
    extent = (float(scene.x[0]) - 5, float(scene.x[-1]) + 5, float(scene.y[-1]) - 5, float(scene.y[0]) + 5)
    ax1.imshow(_rgb(scene), extent=extent)
    ax1.plot(*point, marker="+", color="red", markersize=14, mew=2)
    ax1.set_title(f"true colour {np.datetime_as_string(scene.time.values, unit='m')} "
                  f"{str(scene.platform.values)} (mean CLD {float(cloud[best]):.0f} %)")
    ax1.set_xlabel("RD x (m)")
    ax1.set_ylabel("RD y (m)")
    ax2.plot(times[clear], values[clear], "o-", color="green", label="NDVI, clear (SCL)")
    if (~clear).any():
        ax2.plot(times[~clear], values[~clear], "x", color="grey", label="cloud/shadow/no data")
    ax2.set_ylim(-0.3, 1.0)
    ax2.set_title(f"NDVI at RD ({point[0]:.0f}, {point[1]:.0f})")
    ax2.legend(loc="lower right")
    ax2.grid(alpha=0.3)
    fig.autofmt_xdate()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
