"""Image chips of a place or parcel over a date range: GeoTIFF per date (zip), a PNG gallery,
and the SCL class histogram of the parcel (or chip) per date."""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.transform import Affine

from ingest.variables import SCL_CLASSES, VARIABLES
from ingest.serve.reader import MAX_CHIP_DATES, CubeReader, RequestError

CHIP_BANDS = ("B02", "B03", "B04", "B08", "SCL")


@dataclass
class Chips:
    group: str
    rows: slice
    cols: slice
    mask: np.ndarray  # the parcel (or the whole chip)
    times: list[int]  # time indices

    def transform(self, reader: CubeReader) -> Affine:
        left, _, _, top = reader.grid.bounds
        r = reader.grid.resolution
        return Affine(r, 0, left + self.cols.start * r, 0, -r, top - self.rows.start * r)


def select(reader: CubeReader, group: str, area: tuple[slice, slice, np.ndarray],
           start: str | None, end: str | None) -> Chips:
    rows, cols, mask = area
    times = reader.times(group)
    idx = []
    for i, t in enumerate(times):
        d = t.date().isoformat()
        if (start is None or d >= start[:10]) and (end is None or d <= end[:10]):
            idx.append(i)
    if not idx:
        raise RequestError(f"no time step between {start} and {end}")
    if len(idx) > MAX_CHIP_DATES:
        raise RequestError(f"{len(idx)} dates asked for; at most {MAX_CHIP_DATES} per request")
    return Chips(group, rows, cols, mask, idx)


def histograms(reader: CubeReader, chips: Chips) -> list[dict]:
    """SCL class counts inside the mask, per date (every class listed, zeros included)."""
    scl = reader.dataset(chips.group)["SCL"].isel(time=chips.times, y=chips.rows, x=chips.cols).values
    times = reader.times(chips.group)
    out = []
    for k, i in enumerate(chips.times):
        counts = np.bincount(scl[k][chips.mask].astype("int64"), minlength=256)
        out.append({"time": times[i].isoformat().replace("+00:00", "Z"),
                    "scl": {SCL_CLASSES[c]: int(counts[c]) for c in sorted(SCL_CLASSES)},
                    "pixels": int(chips.mask.sum())})
    return out


def geotiff_zip(reader: CubeReader, chips: Chips) -> bytes:
    """One GeoTIFF per date (bands B02 B03 B04 B08 SCL, raw encoding, EPSG of the grid) and
    ``histograms.json``, zipped."""
    ds = reader.dataset(chips.group)
    data = {b: ds[b].isel(time=chips.times, y=chips.rows, x=chips.cols).values for b in CHIP_BANDS}
    times = reader.times(chips.group)
    h, w = chips.mask.shape
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, i in enumerate(chips.times):
            mem = io.BytesIO()
            with rasterio.io.MemoryFile() as mf:
                with mf.open(driver="GTiff", width=w, height=h, count=len(CHIP_BANDS), dtype="uint16",
                             crs=reader.grid.crs, transform=chips.transform(reader), nodata=0,
                             compress="deflate") as dst:
                    for j, b in enumerate(CHIP_BANDS, 1):
                        dst.write(data[b][k].astype("uint16"), j)
                        dst.set_band_description(j, b)
                    dst.update_tags(time=times[i].isoformat(), scale_factor_reflectance="0.0001")
                mem.write(mf.read())
            zf.writestr(f"chip_{times[i]:%Y%m%dT%H%M%S}.tif", mem.getvalue())
        zf.writestr("histograms.json", json.dumps(histograms(reader, chips), indent=1))
    return buf.getvalue()


def gallery_png(reader: CubeReader, chips: Chips) -> bytes:
    """True-colour chips side by side, titled with their dates, the parcel outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = reader.dataset(chips.group)
    rgb = np.stack([ds[b].isel(time=chips.times, y=chips.rows, x=chips.cols).values
                    * VARIABLES[b].scale_factor for b in ("B04", "B03", "B02")], axis=-1)
    rgb = np.clip(rgb / 0.3, 0, 1)
    times = reader.times(chips.group)
    n = len(chips.times)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, i in enumerate(chips.times):
        ax = axes.ravel()[k]
        ax.imshow(rgb[k], interpolation="nearest")
        if not chips.mask.all():
            ax.contour(chips.mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{times[i]:%Y-%m-%d}", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    plt.close(fig)
    return out.getvalue()
