"""Synthetic but realistic reference vector data for tests and the demo.

Shapes follow the real datasets' attribute names: CBS gebiedsindelingen (``statcode`` GM0503,
``statnaam``; provinces PV28), CBS Bestand Bodemgebruik (``BG2015`` class code, ``BG2015A`` main
group), RVO BRP gewaspercelen (``gewascode``, ``gewas``, ``category``, ``jaar``, ``status``).
Geometry is invented: municipalities are Voronoi cells around the real town centres (RD New),
land use is a Voronoi mosaic with rivers and motorways cut out, parcels are a rotated grid of
strips with ditches between them, inside agricultural land.
"""
from __future__ import annotations

import itertools

from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
from pyproj import Transformer

from ingest.grid import NL_GRID, Bounds, CubeGrid

# Around Delft and the Hoeksche Waard, in RD New metres (left, bottom, right, top).
DEMO_BOUNDS: Bounds = (75_000.0, 415_000.0, 100_000.0, 455_000.0)

# Real CBS codes and names; centres approximate (RD New).
TOWNS: list[tuple[str, str, float, float]] = [
    ("GM0503", "Delft", 84_530, 446_470), ("GM1842", "Midden-Delfland", 80_500, 442_500),
    ("GM1783", "Westland", 74_500, 444_500), ("GM0603", "Rijswijk", 82_000, 452_500),
    ("GM0518", "'s-Gravenhage", 80_000, 456_500), ("GM1926", "Pijnacker-Nootdorp", 88_500, 450_000),
    ("GM1621", "Lansingerland", 93_000, 446_000), ("GM0599", "Rotterdam", 92_500, 437_500),
    ("GM0606", "Schiedam", 86_500, 437_500), ("GM0622", "Vlaardingen", 83_500, 436_500),
    ("GM0556", "Maassluis", 78_500, 435_800), ("GM0613", "Albrandswaard", 89_000, 430_000),
    ("GM0489", "Barendrecht", 95_500, 428_500), ("GM1963", "Hoeksche Waard", 88_000, 420_000),
    ("GM0642", "Zwijndrecht", 99_000, 423_500), ("GM1930", "Nissewaard", 79_000, 428_000),
]

# (gewascode, gewas, category, weight) as in the BRP.
CROPS: list[tuple[int, str, str, float]] = [
    (265, "Grasland, blijvend", "Grasland", 0.40), (266, "Grasland, tijdelijk", "Grasland", 0.08),
    (233, "Tarwe, winter-", "Bouwland", 0.14), (236, "Gerst, zomer-", "Bouwland", 0.04),
    (256, "Bieten, suiker-", "Bouwland", 0.10), (259, "Maïs, snij-", "Bouwland", 0.06),
    (2014, "Aardappelen, consumptie", "Bouwland", 0.12), (262, "Uien, zaai-", "Bouwland", 0.04),
    (335, "Natuurterreinen (incl. heide)", "Natuurterrein", 0.02),
]

_DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON"}


# -- writing ------------------------------------------------------------------------------------
def write_vector(path: str | Path, geoms: np.ndarray, fields: dict[str, np.ndarray],
                 crs: str = "EPSG:28992", geometry_type: str | None = None) -> Path:
    """Write geometries and attribute columns with pyogrio (driver from the suffix)."""
    path = Path(path)
    geoms = np.asarray(geoms, dtype=object)
    if geometry_type is None:
        kinds = {shapely.get_type_id(g) for g in geoms}
        geometry_type = "MultiPolygon" if kinds <= {3, 6} else "Unknown"
    names = list(fields)
    pyogrio.raw.write(
        path, shapely.to_wkb(geoms), [np.asarray(fields[n]) for n in names], names,
        driver=_DRIVERS[path.suffix.lower()], geometry_type=geometry_type, crs=crs,
        promote_to_multi=geometry_type == "MultiPolygon",
    )
    return path


def reproject(geoms: np.ndarray, src: str, dst: str, densify: float | None = 50.0) -> np.ndarray:
    """Vertex-wise reprojection (for making test inputs in other CRSs).

    Densified first (``densify`` in source units), so that edges straight in ``src`` are still
    followed closely once their vertices are connected by straight lines in ``dst``.
    """
    if densify:
        geoms = shapely.segmentize(geoms, densify)
    t = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


# -- shapes -------------------------------------------------------------------------------------
def land(bounds: Bounds = DEMO_BOUNDS) -> shapely.Geometry:
    """The demo box minus a North Sea corner in the north-west."""
    left, bottom, right, top = bounds
    sea = shapely.Polygon([(60_000, 439_250), (70_000, 439_250), (81_800, 459_900), (60_000, 459_900)])
    return shapely.box(*bounds).difference(sea)


def municipalities(bounds: Bounds = DEMO_BOUNDS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CBS-like municipalities: Voronoi cells of the town centres, clipped to land."""
    seeds = shapely.multipoints([(x, y) for _, _, x, y in TOWNS])
    cells = shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=shapely.box(50_000, 380_000, 130_000, 490_000)))
    area = land(bounds)
    geoms, code, name = [], [], []
    for code_, name_, x, y in TOWNS:
        cell = next(c for c in cells if c.contains(shapely.Point(x, y)))
        g = cell.intersection(area)
        if g.area > 0:
            geoms.append(g); code.append(code_); name.append(name_)
    fields = {"statcode": np.array(code, dtype=object), "statnaam": np.array(name, dtype=object),
              "jrstatcode": np.array([f"2023{c}" for c in code], dtype=object)}
    return np.array(geoms, dtype=object), fields


def provinces(bounds: Bounds = DEMO_BOUNDS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The demo area lies in Zuid-Holland (PV28)."""
    return (np.array([land(bounds)], dtype=object),
            {"statcode": np.array(["PV28"], dtype=object), "statnaam": np.array(["Zuid-Holland"], dtype=object)})


def _water_and_roads(bounds: Bounds) -> list[tuple[int, shapely.Geometry]]:
    rivers = [
        (72, shapely.LineString([(70_000, 437_800), (85_000, 435_600), (92_000, 436_600), (105_000, 436_000)]).buffer(300)),
        (72, shapely.LineString([(81_000, 433_500), (90_000, 427_000), (105_000, 425_300)]).buffer(150)),
        (71, shapely.LineString([(70_000, 416_300), (105_000, 414_300)]).buffer(700)),
        (11, shapely.LineString([(82_000, 456_000), (86_500, 444_000), (92_500, 438_800)]).buffer(40)),
        (11, shapely.LineString([(93_000, 436_000), (96_000, 426_000), (99_000, 410_000)]).buffer(35)),
    ]
    box = land(bounds)
    return [(c, g.intersection(box)) for c, g in rivers if g.intersects(box)]


def landuse(bounds: Bounds = DEMO_BOUNDS, seed: int = 0, cell_km2: float = 0.6
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """BBG-like land use: a partition of the land into classed polygons."""
    rng = np.random.default_rng(seed)
    area = land(bounds)
    left, bottom, right, top = bounds
    n = max(4, int((right - left) * (top - bottom) / 1e6 / cell_km2))
    pts = np.column_stack([rng.uniform(left, right, n), rng.uniform(bottom, top, n)])
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=shapely.box(*bounds)))
    cut = _water_and_roads(bounds)
    cells = shapely.intersection(cells, area)
    if cut:
        cells = shapely.difference(cells, shapely.union_all([g for _, g in cut]))
    cells = cells[~shapely.is_empty(cells) & (shapely.area(cells) > 0)]
    codes = np.array([_landuse_class(c.centroid, rng) for c in cells], dtype=np.int64)
    geoms = list(cells) + [g for _, g in cut if not g.is_empty]
    codes = np.concatenate([codes, [c for c, g in cut if not g.is_empty]]).astype(np.int64)
    geoms = [g for g in geoms]
    return np.array(geoms, dtype=object), {"BG2015": codes, "BG2015A": codes // 10}


def _landuse_class(p: shapely.Point, rng: np.random.Generator) -> int:
    d = min(np.hypot(p.x - x, p.y - y) for _, _, x, y in TOWNS)
    if d < 1500:
        return int(rng.choice([20, 20, 20, 24, 22, 21]))
    if d < 2500:
        return int(rng.choice([20, 24, 40, 41, 34, 42]))
    if p.x < 82_000 and p.y > 438_000:  # Westland: greenhouses
        return int(rng.choice([50, 50, 50, 51]))
    return int(rng.choice([51] * 16 + [60, 62, 78, 43]))


def parcels(landuse_geoms: np.ndarray, landuse_codes: np.ndarray, year: int, seed: int = 0,
            size: tuple[float, float] = (260.0, 110.0), angle_deg: float = 18.0,
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """BRP-like parcels: rotated strips inside agricultural land (BBG 51), 3 m ditches between."""
    ag = shapely.union_all(landuse_geoms[landuse_codes == 51])
    if ag.is_empty:
        return np.array([], dtype=object), {}
    strips = _rotated_grid(shapely.bounds(ag), size, angle_deg)
    tree = shapely.STRtree(strips)
    strips = strips[tree.query(ag, predicate="intersects")]
    pieces = shapely.intersection(strips, ag).astype(object)
    pieces = shapely.buffer(pieces, -1.5, join_style="mitre")
    pieces = pieces[shapely.area(pieces) > 2_000]
    rng = np.random.default_rng(seed)  # crop of each parcel, stable per seed ...
    base = rng.choice(len(CROPS), size=len(pieces), p=[c[3] for c in CROPS])
    shift = rng.integers(1, len(CROPS), size=len(pieces))  # ... rotated per year on arable land
    grass = np.isin(base, [0, 1, 8])
    idx = np.where(grass, base, _arable_rotation(base, shift, year))
    pick = lambda k: np.array([CROPS[i][k] for i in idx], dtype=object)
    fields = {"category": pick(2), "gewas": pick(1), "gewascode": pick(0).astype(np.int64),
              "jaar": np.full(len(idx), year, dtype=np.int64),
              "status": np.full(len(idx), "Definitief", dtype=object)}
    return pieces, fields


def _arable_rotation(base: np.ndarray, shift: np.ndarray, year: int) -> np.ndarray:
    arable = np.array([2, 3, 4, 5, 6, 7])
    pos = np.searchsorted(arable, np.clip(base, 2, 7))
    return arable[(pos + shift * (year % 7)) % len(arable)]


def _rotated_grid(bounds, size: tuple[float, float], angle_deg: float) -> np.ndarray:
    x0, y0, x1, y1 = bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = np.hypot(x1 - x0, y1 - y0) / 2 + max(size)
    w, h = size
    xs = np.arange(cx - r, cx + r, w)
    ys = np.arange(cy - r, cy + r, h)
    gx, gy = np.meshgrid(xs, ys)
    boxes = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + w, gy.ravel() + h)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([cx, cy])
    return shapely.transform(boxes, lambda xy: (xy - centre) @ rot.T + centre)


# -- imagery-like test group ------------------------------------------------------------------
def imagery_group(store: str | Path, bounds: Bounds, n_times: int = 3, group: str = "S2/R051",
                  seed: int = 0, grid: CubeGrid = NL_GRID) -> dict[str, np.ndarray]:
    """A tiny imagery-like group (B04, B08, SCL on the full grid, data only in ``bounds``).

    For tests of layer/imagery alignment and statistics without running the ingest pipeline.
    Not the real imagery layout (that is ``ingest.store``); just enough for xarray.
    """
    from ingest.store import COMPRESSOR, CubeStore, join

    rng = np.random.default_rng(seed)
    ny, nx = grid.shape
    win = grid.window_for_bounds(bounds)
    r0, c0 = int(win.row_off), int(win.col_off)
    shape = (n_times, int(win.height), int(win.width))
    store = CubeStore.for_writing(store, grid)
    out = {}
    with store.transaction() as tx:
        parts = group.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            if not tx.is_group("/".join(parts[:depth])):
                tx.create_group("/".join(parts[:depth]))
        for name, vals in (("x", grid.x), ("y", grid.y)):
            tx.create_array(join(group, name), shape=vals.shape, chunks=vals.shape, dtype="f8",
                            fill_value=None, compressor=COMPRESSOR, data=vals,
                            attrs={"_ARRAY_DIMENSIONS": [name]})
        tx.create_array(join(group, "time"), shape=(n_times,), chunks=(n_times,), dtype="i8",
                        fill_value=None, compressor=COMPRESSOR, data=np.arange(n_times) * 5,
                        attrs={"_ARRAY_DIMENSIONS": ["time"], "units": "days since 2023-06-01",
                               "calendar": "proleptic_gregorian"})
        for name, dtype, vals in (
            ("B04", "u2", rng.integers(300, 1500, shape)), ("B08", "u2", rng.integers(2000, 5000, shape)),
            ("SCL", "u1", rng.choice([4, 5, 8, 9], shape)),
        ):
            attrs = {"_ARRAY_DIMENSIONS": ["time", "y", "x"]}
            if name != "SCL":
                attrs["scale_factor"] = 1e-4
            path = join(group, name)
            meta = tx.create_array(path, shape=(n_times, ny, nx), chunks=(5, 625, 500), dtype=dtype,
                                   fill_value=0, compressor=COMPRESSOR, attrs=attrs)
            for k, (iy, ix) in itertools.product(range(-(-n_times // 5)), grid.chunks_in_window(win)):
                cw = grid.chunk_window((iy, ix))
                ry, rx = int(cw.row_off), int(cw.col_off)
                ys = slice(max(r0, ry), min(r0 + shape[1], ry + int(cw.height)))
                xs = slice(max(c0, rx), min(c0 + shape[2], rx + int(cw.width)))
                part = vals[k * 5:(k + 1) * 5, ys.start - r0:ys.stop - r0, xs.start - c0:xs.stop - c0]
                chunk = meta.empty_chunk()
                chunk[:len(part), ys.start - ry:ys.stop - ry, xs.start - rx:xs.stop - rx] = part
                tx.put(join(path, f"{k}.{iy}.{ix}"), meta.encode(chunk))
            out[name] = vals
        tx.commit()
    return out


# -- demo ---------------------------------------------------------------------------------------
_write_vector = write_vector  # the module function, under a name make_demo_files can wrap


def make_demo_files(directory: str | Path, bounds: Bounds = DEMO_BOUNDS, seed: int = 0,
                    years: tuple[int, ...] = (2022, 2023), reuse: bool = False) -> dict[str, Path]:
    """Write every demo input; returns {name: path}. Municipalities in WGS 84 on purpose.

    With ``reuse`` a file that exists is kept as it is (a GeoPackage written again differs in
    its timestamps, so its checksum, and so the layer's provenance, would change).
    """
    d = Path(directory)

    def write_vector(path: Path, *args, **kw) -> Path:
        return path if reuse and path.exists() else _write_vector(path, *args, **kw)

    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    g, f = municipalities(bounds)
    out["gemeenten"] = write_vector(d / "gemeente_2023.gpkg", reproject(g, "EPSG:28992", "EPSG:4326"), f, crs="EPSG:4326")
    g, f = provinces(bounds)
    out["provincies"] = write_vector(d / "provincie_2023.geojson", g, f)
    out["nederland"] = write_vector(d / "landsgrens_2023.gpkg", g, {"statcode": np.array(["NL01"], dtype=object)})
    lg, lf = landuse(bounds, seed)
    out["bbg"] = write_vector(d / "BBG2015.shp", lg, lf)
    for year in years:
        pg, pf = parcels(lg, lf["BG2015"], year, seed)
        out[f"brp{year}"] = write_vector(d / f"brpgewaspercelen_definitief_{year}.gpkg", pg, pf)
    return out
