"""A per-date QA report from the quality group and the provenance columns (no imagery read).

Per time step: platform, contributing tiles and baselines, the share of the cube's footprint
with valid pixels (footprint: the cells holding a valid pixel at any step of the period), the
clear and cloud fractions of the valid pixels, and a small map of the cloud fraction per cell.
Over the period: the clear-sky frequency per cell (clear pixels / valid pixels, summed over the
steps) as an H3 map.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import h3
import numpy as np

from ingest.store import CubeStore
from ingest.quality.select import QualityReader

PROVENANCE_COLUMNS = ("platform", "tiles", "baselines", "products")


@dataclass
class StepReport:
    time: datetime
    platform: str
    tiles: str
    baselines: str
    products: int
    valid: float  # share of the footprint's pixels that are valid (estimate: by cell pixels)
    clear: float
    cloud: float

    def to_json(self) -> dict:
        return {"time": self.time.isoformat().replace("+00:00", "Z"), "platform": self.platform,
                "tiles": self.tiles, "baselines": self.baselines, "products": self.products,
                "valid": _r(self.valid), "clear": _r(self.clear), "cloud": _r(self.cloud)}


def _r(v: float):
    return None if np.isnan(v) else round(float(v), 6)


@dataclass
class Report:
    group: str
    version: int
    resolution: int
    steps: list[StepReport]
    cells: np.ndarray  # footprint cells (uint64)
    cloud: np.ndarray  # (steps, footprint cells) cloud fraction, NaN: no valid pixel
    clear_sky: np.ndarray  # (footprint cells,) clear / valid over the period


def build_report(store, group: str, time_range=None) -> Report:
    store = store if isinstance(store, CubeStore) else CubeStore.open(store)
    reader = QualityReader(store, group)
    times = reader.times()
    keep = np.ones(len(times), bool)
    if time_range is not None:
        lo, hi = time_range
        keep = np.array([(lo is None or t >= lo) and (hi is None or t <= hi) for t in times], bool)
    meta = store.consolidated(group) or {}
    cols = {}
    for name in PROVENANCE_COLUMNS:
        cols[name] = [str(v) for v in store.read_array(group, name, meta)]
    valid = reader.array("valid")[keep].astype(np.float64)
    clear = np.rint(np.nan_to_num(reader.array("clear")[keep].astype(np.float64)) * valid)
    cloudn = np.rint(np.nan_to_num(reader.array("cloud")[keep].astype(np.float64)) * valid)
    foot = valid.max(axis=0, initial=0) > 0
    # footprint pixels per cell: the most valid pixels any step had there (a lower bound)
    cell_pixels = valid[:, foot].max(axis=0, initial=0)
    steps = []
    idx = np.flatnonzero(keep)
    with np.errstate(invalid="ignore", divide="ignore"):
        for r, t in enumerate(idx):
            v = valid[r, foot].sum()
            steps.append(StepReport(times[t], cols["platform"][t], cols["tiles"][t], cols["baselines"][t],
                                    len([p for p in cols["products"][t].split(",") if p]),
                                    float(v / cell_pixels.sum()) if cell_pixels.sum() else float("nan"),
                                    float(clear[r].sum() / valid[r].sum()), float(cloudn[r].sum() / valid[r].sum())))
        cloud = np.where(valid[:, foot] > 0, cloudn[:, foot] / valid[:, foot], np.nan)
        clear_sky = clear[:, foot].sum(axis=0) / valid[:, foot].sum(axis=0)
    return Report(group, store.version(), reader.resolution, steps, reader.array("cell")[foot], cloud, clear_sky)


# -- maps ------------------------------------------------------------------------------------------
def _polygons(cells: np.ndarray) -> list[np.ndarray]:
    return [np.array([(lng, lat) for lat, lng in h3.cell_to_boundary(h3.int_to_str(int(c)))]) for c in cells]


def cell_map_png(cells: np.ndarray, values: np.ndarray, *, title: str, label: str, cmap: str,
                 size: tuple[float, float] = (4.0, 3.2)) -> bytes:
    """A PNG of H3 cells coloured by ``values`` (0..1; NaN: grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig, ax = plt.subplots(figsize=size, dpi=100)
    polys = _polygons(cells)
    coll = PolyCollection(polys, array=np.ma.masked_invalid(values), cmap=cmap, edgecolors="none")
    coll.set_clim(0, 1)
    coll.cmap.set_bad("#cccccc")
    ax.add_collection(coll)
    if polys:
        allv = np.concatenate(polys)
        ax.set_xlim(allv[:, 0].min(), allv[:, 0].max())
        ax.set_ylim(allv[:, 1].min(), allv[:, 1].max())
        mid = np.radians(allv[:, 1].mean())
        ax.set_aspect(1 / np.cos(mid))
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    fig.colorbar(coll, ax=ax, label=label, shrink=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def clear_sky_png(report: Report) -> bytes:
    period = (f"{report.steps[0].time:%Y-%m-%d} .. {report.steps[-1].time:%Y-%m-%d}"
              if report.steps else "no time steps")
    return cell_map_png(report.cells, report.clear_sky, title=f"clear-sky frequency, {period}",
                        label="clear / valid pixels", cmap="viridis", size=(6.0, 4.8))


def write_html(report: Report, path: Path) -> None:
    """One self-contained HTML file (maps embedded as PNG data)."""
    def img(data: bytes) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    rows = []
    for r, s in enumerate(report.steps):
        png = cell_map_png(report.cells, report.cloud[r], title=f"{s.time:%Y-%m-%d %H:%M} cloud",
                           label="cloud fraction", cmap="Blues")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            f"{s.time:%Y-%m-%d %H:%M:%S}", s.platform, s.tiles, s.baselines, s.products,
            _pct(s.valid), _pct(s.clear), _pct(s.cloud))) + f"<td>{img(png)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("time (UTC)", "platform", "tiles", "baselines", "products",
                                               "valid", "clear", "cloud", "cloud per H3 cell"))
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>s2ingest report /{html.escape(report.group)}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}}</style>
</head><body>
<h1>/{html.escape(report.group)}: quality report (store version {report.version})</h1>
<p>{len(report.steps)} time steps; H3 resolution {report.resolution}; {len(report.cells)} cells hold data.
valid: share of the footprint's pixels with a scene class; clear (SCL 4, 5, 6) and cloud
(SCL 8, 9, 10): shares of the valid pixels.</p>
{img(clear_sky_png(report))}
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table></body></html>
"""
    Path(path).write_text(doc, encoding="utf-8")


def _pct(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.1f} %"


def format_table(report: Report) -> str:
    lines = [f"{'time (UTC)':19}  {'platform':8}  {'tiles':15}  {'baselines':11}  {'valid':>7}  "
             f"{'clear':>7}  {'cloud':>7}"]
    for s in report.steps:
        lines.append(f"{s.time:%Y-%m-%dT%H:%M:%S}  {s.platform:8}  {s.tiles:15}  {s.baselines:11}  "
                     f"{_pct(s.valid):>7}  {_pct(s.clear):>7}  {_pct(s.cloud):>7}")
    return "\n".join(lines)
