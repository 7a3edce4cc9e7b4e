"""Rasterisation geometry: areas, pixel-edge exactness, reprojection, code tables."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings, strategies as st

from ingest.errors import LayerError
from ingest.grid import NL_GRID
from ingest.layers import codes, synth
from ingest.layers.rasterize import chunks_touched, iter_rasterized, rasterize_window
from ingest.layers.vector import read_vector

RES2 = NL_GRID.resolution ** 2


def _burn(geoms, values, dtype="uint16"):
    """Whole-area rasterisation through the chunked path, as {chunk: block}."""
    return dict(iter_rasterized(np.asarray(geoms, dtype=object), np.asarray(values), NL_GRID, dtype))


def _count(blocks, value):
    return sum(int((b == value).sum()) for b in blocks.values())


def test_area_matches_vector_area_within_half_percent():
    geoms, fields = synth.municipalities((80_000, 430_000, 95_000, 450_000))
    vals, _ = codes.encode(fields["statcode"], fields["statnaam"], 65535)
    blocks = _burn(geoms, vals)
    for g, v in zip(geoms, vals):
        if g.area > 1e6:  # much larger than a pixel
            assert _count(blocks, v) * RES2 == pytest.approx(g.area, rel=0.005)


def test_rotated_parcels_total_area():
    lg, lf = synth.landuse((84_000, 420_000, 89_000, 426_250), seed=3)
    pg, _ = synth.parcels(lg, lf["BG2015"], 2023, seed=3)
    blocks = _burn(pg, np.arange(1, len(pg) + 1), "uint32")
    burned = sum(int((b > 0).sum()) for b in blocks.values()) * RES2
    assert burned == pytest.approx(shapely.area(pg).sum(), rel=0.005)


@settings(max_examples=30, deadline=None)
@given(col=st.integers(0, 2990), row=st.integers(0, 3990), w=st.integers(1, 1200), h=st.integers(1, 1200))
def test_polygon_on_pixel_edges_burns_exactly(col, row, w, h):
    left, top = NL_GRID.bounds[0] + col * 10.0 + 80_000, NL_GRID.bounds[3] - row * 10.0 - 150_000
    poly = shapely.box(left, top - h * 10.0, left + w * 10.0, top)
    blocks = _burn([poly], [7])
    assert _count(blocks, 7) == w * h
    # and exactly the right pixels: the burned window equals the grid window of the bounds
    win = NL_GRID.window_for_bounds(poly.bounds)
    for (iy, ix), block in blocks.items():
        cw = NL_GRID.chunk_window((iy, ix))
        rows, cols = np.nonzero(block)
        assert (rows + cw.row_off >= win.row_off).all() and (rows + cw.row_off < win.row_off + win.height).all()
        assert (cols + cw.col_off >= win.col_off).all() and (cols + cw.col_off < win.col_off + win.width).all()


def test_only_touched_chunks_are_visited():
    poly = shapely.box(85_010, 440_010, 85_990, 440_990)  # inside one chunk
    assert len(chunks_touched(np.array([poly]), NL_GRID)) == 1
    big = shapely.box(75_000, 415_000, 100_000, 455_000)  # 5 x 6.4 map sheets
    assert len(chunks_touched(np.array([big]), NL_GRID)) == 5 * 7


def test_later_feature_wins_where_polygons_overlap():
    a, b = shapely.box(85_000, 440_000, 85_100, 440_100), shapely.box(85_050, 440_000, 85_150, 440_100)
    win = NL_GRID.window_for_bounds((85_000, 440_000, 85_150, 440_100))
    out = rasterize_window(np.array([a, b]), [1, 2], NL_GRID, win, "uint8")
    assert (out[:, :5] == 1).all() and (out[:, 5:] == 2).all()


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_wgs84_input_agrees_with_rd_input(tmp_path, suffix):
    geoms, fields = synth.municipalities((80_000, 435_000, 90_000, 447_500))
    rd = synth.write_vector(tmp_path / f"rd{suffix}", geoms, fields)
    ll = synth.write_vector(tmp_path / f"ll{suffix}", synth.reproject(geoms, "EPSG:28992", "EPSG:4326"),
                            fields, crs="EPSG:4326")
    a, b = (read_vector(p, "statcode", NL_GRID, name_attribute="statnaam") for p in (rd, ll))
    va, _ = codes.encode(a.values, a.names, 65535)
    vb, _ = codes.encode(b.values, b.names, 65535)
    ba, bb = _burn(a.geometries, va), _burn(b.geometries, vb)
    assert ba.keys() == bb.keys()
    # A pixel may only flip when its centre lies within a centimetre of a boundary (the
    # round trip through WGS 84 moves vertices by < 1 mm).
    edges = shapely.union_all(shapely.boundary(a.geometries))
    for k in ba:
        rows, cols = np.nonzero(ba[k] != bb[k])
        w = NL_GRID.chunk_window(k)
        centres = shapely.points(NL_GRID.x[cols + w.col_off], NL_GRID.y[rows + w.row_off])
        assert (shapely.distance(centres, edges) < 0.01).all()


def test_code_tables_cbs_and_integers():
    vals, table = codes.encode(np.array(["GM0503", "GM0599", "GM0503"], dtype=object),
                               np.array(["Delft", "Rotterdam", "Delft"], dtype=object), 65535)
    assert vals.tolist() == [503, 599, 503]
    attrs = table.cf_attrs()
    assert attrs["flag_values"] == [503, 599]
    assert attrs["flag_meanings"] == "Delft Rotterdam"
    assert attrs["source_codes"] == {"503": "GM0503", "599": "GM0599"}
    assert codes.CodeTable.from_attrs(attrs).names == table.names
    vals, table = codes.encode(np.array([51, 20], dtype=object), None, 255, codes.BBG_CLASSES)
    assert vals.tolist() == [51, 20] and table.names[20] == "Woonterrein"
    vals, table = codes.encode(np.array(["b", "a", "b"], dtype=object), None, 255)
    assert vals.tolist() == [2, 1, 2] and table.source == {1: "a", 2: "b"}


def test_code_out_of_range_or_missing_is_refused():
    with pytest.raises(LayerError, match="1..255"):
        codes.encode(np.array([300], dtype=object), None, 255)
    with pytest.raises(LayerError, match="no value"):
        codes.encode(np.array([1, None], dtype=object), None, 255)
    with pytest.raises(LayerError, match="0 means"):
        codes.encode(np.array([0, 4], dtype=object), None, 255)
