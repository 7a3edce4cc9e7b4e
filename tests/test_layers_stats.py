"""Zonal statistics: known answers on small arrays, and the cube-level helper on a tiny store."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import xarray as xr

from ingest.grid import NL_GRID
from ingest.layers import add_layer, synth
from ingest.layers.stats import class_counts, cube_stats, write_table, zonal_stats


def _grid_da(values: np.ndarray, window, name: str, time=None) -> xr.DataArray:
    r0, c0 = window.row_off, window.col_off
    coords = {"y": NL_GRID.y[r0:r0 + values.shape[-2]], "x": NL_GRID.x[c0:c0 + values.shape[-1]]}
    dims = ("y", "x")
    if time is not None:
        coords["time"] = time
        dims = ("time", "y", "x")
    return xr.DataArray(values, dims=dims, coords=coords, name=name)


def test_mean_per_municipality_known_answer():
    win = NL_GRID.window_for_bounds((85_000, 440_000, 85_060, 440_040))  # 4 x 6 pixels
    zones = np.array([[363, 363, 363, 599, 599, 599]] * 2 + [[503, 503, 0, 0, 599, 599]] * 2, dtype="uint16")
    t = pd.date_range("2023-06-01", periods=2)
    ndvi = np.stack([np.full((4, 6), 0.2), np.full((4, 6), 0.6)])
    ndvi[0, 0, 0] = 0.8  # one pixel of GM0363 on day 1
    ndvi[1, 3, 5] = np.nan  # one cloudy pixel of GM0599 on day 2
    df = zonal_stats(_grid_da(ndvi, win, "NDVI", t), _grid_da(zones, win, "municipality"),
                     names={363: "Amsterdam", 599: "Rotterdam", 503: "Delft"})
    df = df.set_index(["municipality", "time"])
    assert df.loc[(363, t[0]), "mean"] == pytest.approx((0.8 + 5 * 0.2) / 6)
    assert df.loc[(363, t[0]), "name"] == "Amsterdam"
    assert df.loc[(599, t[1]), "count"] == 9 and df.loc[(599, t[1]), "mean"] == pytest.approx(0.6)
    assert df.loc[(503, t[0]), "count"] == 4
    assert 0 not in df.index.get_level_values(0)  # fill is not a zone


def test_scl_class_counts_per_parcel_and_date():
    win = NL_GRID.window_for_bounds((85_000, 440_000, 85_040, 440_020))  # 2 x 4
    parcels = np.array([[1, 1, 2, 2], [1, 1, 2, 0]], dtype="uint32")
    t = pd.date_range("2023-06-01", periods=2)
    scl = np.array([[[4, 4, 8, 9], [4, 5, 8, 6]], [[4, 4, 4, 4], [3, 3, 4, 6]]], dtype="uint8")
    df = class_counts(_grid_da(scl, win, "SCL", t), _grid_da(parcels, win, "parcel"), values=[3, 4, 5, 8, 9])
    s = df["count"]
    assert s.loc[(1, t[0], 4)] == 3 and s.loc[(1, t[0], 5)] == 1
    assert s.loc[(2, t[0], 8)] == 2 and s.loc[(2, t[0], 9)] == 1 and s.loc[(2, t[0], 4)] == 0
    assert s.loc[(1, t[1], 3)] == 2 and s.loc[(2, t[1], 4)] == 3
    # every pixel of a parcel is counted once per date when all classes are asked for
    full = class_counts(_grid_da(scl, win, "SCL", t), _grid_da(parcels, win, "parcel"))
    assert full.groupby(level=["parcel", "time"])["count"].sum().tolist() == [4, 4, 3, 3]


def test_misaligned_zones_are_refused():
    from ingest.errors import LayerError

    win = NL_GRID.window_for_bounds((85_000, 440_000, 85_040, 440_020))
    data = _grid_da(np.ones((2, 4)), win, "B04")
    zones = _grid_da(np.ones((2, 4), dtype="uint8"), win, "zone").assign_coords(x=lambda d: d.x + 5)
    with pytest.raises(LayerError, match="same x/y grid"):
        zonal_stats(data, zones)


def test_cube_stats_mean_ndvi_per_municipality_and_scl_per_parcel(tmp_path):
    """End to end on a tiny store: one map sheet of layers and imagery."""
    area = (85_000.0, 437_500.0, 90_000.0, 443_750.0)  # one map sheet
    store = tmp_path / "cube.zarr"
    g, f = synth.municipalities(area)
    add_layer(store, "NL", synth.write_vector(tmp_path / "gm.gpkg", g, f), edition=2023, attribute="statcode")
    lg, lf = synth.landuse(area, seed=2)
    pg, pf = synth.parcels(lg, lf["BG2015"], 2023, seed=2)
    add_layer(store, "NL/BRP", synth.write_vector(tmp_path / "brp.gpkg", pg, pf), edition=2023, attribute="gewascode")
    img = synth.imagery_group(store, area)

    df = cube_stats(store, group="S2/R051", variable="NDVI", layer_group="NL", layer="municipality",
                    edition=2023)
    ndvi = (img["B08"] - img["B04"]) / (img["B08"] + img["B04"])
    zones = xr.open_zarr(store, group="/NL", consolidated=True, mask_and_scale=False).municipality
    win = NL_GRID.window_for_bounds(area)
    z = zones.isel(edition=0, y=slice(win.row_off, win.row_off + win.height),
                   x=slice(win.col_off, win.col_off + win.width)).values
    for code in np.unique(z[z > 0]):
        row = df[(df.municipality == code) & (df.time == df.time.min())].iloc[0]
        assert row["mean"] == pytest.approx(ndvi[0][z == code].mean(), rel=1e-5)
        assert row["name"] == dict(zip(f["statcode"], f["statnaam"]))[f"GM{code:04d}"]

    cls = cube_stats(store, group="S2/R051", variable="SCL", layer_group="NL/BRP", layer="parcel",
                     edition=2023, kind="classes")
    assert set(cls.columns) == {"parcel", "time", "class", "count"}
    per = cls.groupby(["parcel", "time"])["count"].sum()
    sizes = pd.Series(np.unique(
        xr.open_zarr(store, group="/NL/BRP", consolidated=True, mask_and_scale=False).parcel
        .isel(edition=0, y=slice(win.row_off, win.row_off + win.height),
              x=slice(win.col_off, win.col_off + win.width)).values, return_counts=True)[1][1:])
    assert sorted(per.xs(per.index.levels[1][0], level="time").tolist()) == sorted(sizes.tolist())
    # #20 item 15: a row for every class a zone has on a date, none for a zero count
    assert (cls["count"] > 0).all()
    assert not cls.duplicated(["parcel", "time", "class"]).any()

    for suffix in (".csv", ".parquet"):
        path = write_table(df, tmp_path / f"ndvi{suffix}")
        back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert len(back) == len(df) and list(back.columns) == list(df.columns)


def test_write_table_csv_and_parquet(tmp_path):
    df = pd.DataFrame({"parcel": [1, 2], "time": pd.to_datetime(["2023-06-01", "2023-06-06"]),
                       "class": [4, 8], "count": [10, 3]})
    pd.testing.assert_frame_equal(pd.read_parquet(write_table(df, tmp_path / "a.parquet")), df)
    back = pd.read_csv(write_table(df, tmp_path / "a.csv"), parse_dates=["time"])
    pd.testing.assert_frame_equal(back, df)


def test_stats_cli_writes_parquet(tmp_path):
    from click.testing import CliRunner

    from ingest.cli.layers import stats

    area = (85_000.0, 437_500.0, 90_000.0, 443_750.0)
    store = tmp_path / "cube.zarr"
    g, f = synth.municipalities(area)
    add_layer(store, "NL", synth.write_vector(tmp_path / "gm.gpkg", g, f), edition=2023, attribute="statcode")
    synth.imagery_group(store, area, n_times=2)
    out = tmp_path / "ndvi.parquet"
    res = CliRunner().invoke(stats, ["--store", str(store), "--by", "NL/municipality", "--edition", "2023",
                                     "--variable", "NDVI", "--valid-scl", "4,5", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["municipality", "name", "time", "sum", "count", "mean"]
    assert len(df) == 2 * df.municipality.nunique() and df["mean"].between(0, 1).all()


def test_cube_stats_equal_a_groupby_per_chunk_and_skip_what_holds_no_data(tmp_path):
    """The bincount path gives the sums and counts of xarray's groupby over the same pixels,
    the zones outside the imagery included (count 0, mean NaN)."""
    area = (85_000.0, 437_500.0, 90_000.0, 443_750.0)
    store = tmp_path / "cube.zarr"
    g, f = synth.municipalities((80_000.0, 437_500.0, 90_000.0, 443_750.0))
    add_layer(store, "NL", synth.write_vector(tmp_path / "gm.gpkg", g, f), edition=2023, attribute="statcode")
    synth.imagery_group(store, area, n_times=2)
    df = cube_stats(store, group="S2/R051", variable="NDVI", layer_group="NL", layer="municipality",
                    edition=2023, valid_scl=[4, 5])
    zones = xr.open_zarr(store, group="/NL", consolidated=True).municipality.sel(edition=2023)
    win = NL_GRID.window_for_bounds(area)
    sel = {"y": slice(win.row_off, win.row_off + win.height), "x": slice(win.col_off, win.col_off + win.width)}
    img = xr.open_zarr(store, group="/S2/R051", consolidated=True).isel(sel).load()
    ndvi = ((img["B08"] - img["B04"]) / (img["B08"] + img["B04"])).where(img["SCL"].isin([4, 5]))
    z = zones.isel(sel).load()
    want = zonal_stats(ndvi, z).set_index(["municipality", "time"])
    got = df.set_index(["municipality", "time"])
    for key, row in want.iterrows():
        assert got.loc[key, "count"] == row["count"]
        assert got.loc[key, "sum"] == pytest.approx(row["sum"], rel=1e-9)
    outside = set(got.index.get_level_values(0)) - set(want.index.get_level_values(0))
    assert outside, "the layer reaches beyond the imagery"
    assert (got.loc[list(outside), "count"] == 0).all() and got.loc[list(outside), "mean"].isna().all()
