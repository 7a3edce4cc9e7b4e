"""Publishing layers into the store: layout, alignment, editions, refusals, CLI and catalog."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr

from ingest.errors import LayerError
from ingest.grid import NL_GRID
from ingest.layers import add_layer, list_layers, synth
from ingest.layers.codes import BBG_CLASSES

AREA = (80_000.0, 431_250.0, 90_000.0, 443_750.0)  # 2 x 2 map sheets (chunks)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vec")
    out = {}
    g, f = synth.municipalities(AREA)
    out["gm_rd"] = synth.write_vector(d / "gemeente_rd.gpkg", g, f)
    out["gm_ll"] = synth.write_vector(d / "gemeente_ll.gpkg", synth.reproject(g, "EPSG:28992", "EPSG:4326"),
                                      f, crs="EPSG:4326")
    out["gm_small"] = synth.write_vector(d / "gemeente_small.geojson", g[:1], {k: v[:1] for k, v in f.items()})
    g, f = synth.provinces(AREA)
    out["pv"] = synth.write_vector(d / "provincie.geojson", g, f)
    lg, lf = synth.landuse(AREA, seed=1)
    out["bbg"] = synth.write_vector(d / "BBG2015.shp", lg, lf)
    for year in (2022, 2023):
        pg, pf = synth.parcels(lg, lf["BG2015"], year, seed=1)
        out[f"brp{year}"] = synth.write_vector(d / f"brp_{year}.gpkg", pg, pf)
    pts = shapely.points([(85_000, 440_000), (86_000, 441_000)])
    out["points"] = synth.write_vector(d / "points.gpkg", pts, {"statcode": np.array(["GM0503", "GM0599"], dtype=object)},
                                       geometry_type="Point")
    lines = np.array([shapely.LineString([(85_000, 440_000), (86_000, 441_000)])], dtype=object)
    out["lines"] = synth.write_vector(d / "lines.geojson", lines, {"statcode": np.array(["GM0503"], dtype=object)},
                                      geometry_type="LineString")
    far = np.array([shapely.box(-60_000, 700_000, -50_000, 710_000)], dtype=object)  # off the grid
    out["far"] = synth.write_vector(d / "far.gpkg", far, {"statcode": np.array(["GM0503"], dtype=object)})
    out["empty"] = synth.write_vector(d / "empty.gpkg", np.array([], dtype=object),
                                      {"statcode": np.array([], dtype=object)}, geometry_type="MultiPolygon")
    return out


def in_area(da: xr.DataArray) -> xr.DataArray:
    """The AREA window of a full-grid array (summing the whole 1-Gpixel grid is slow)."""
    win = NL_GRID.window_for_bounds(AREA)
    return da.isel(y=slice(win.row_off, win.row_off + win.height), x=slice(win.col_off, win.col_off + win.width))


def snapshot(root: Path) -> dict[str, str]:
    """Path -> content hash of every file under ``root`` (empty when it does not exist)."""
    if not root.exists():
        return {}
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_layer_opens_with_xarray_on_the_grid(tmp_path, inputs):
    store = tmp_path / "cube.zarr"
    (rec,) = add_layer(store, "NL", inputs["gm_ll"], edition=2023, attribute="statcode")
    _, fields = synth.municipalities(AREA)
    assert rec.variable == "municipality" and rec.n_features == len(fields["statcode"]) and rec.n_chunks == 4
    ds = xr.open_zarr(store, group="/NL", consolidated=True)
    assert ds.municipality.dims == ("edition", "y", "x")
    assert ds.municipality.shape == (1, *NL_GRID.shape)
    assert ds.municipality.encoding["chunks"] == (1, 625, 500)
    np.testing.assert_array_equal(ds.x.values, NL_GRID.x)
    np.testing.assert_array_equal(ds.y.values, NL_GRID.y)
    assert ds.edition.values.tolist() == [2023]
    pytest.importorskip("rioxarray")
    assert ds.rio.crs.to_epsg() == 28992
    win = NL_GRID.window_for_bounds(AREA)
    part = ds.municipality.sel(edition=2023).isel(y=slice(win.row_off, win.row_off + win.height),
                                                  x=slice(win.col_off, win.col_off + win.width))
    assert np.isfinite(part.values).all()  # the municipalities tile the area
    assert set(np.unique(part.values).astype(int)) == {int(c[2:]) for c in fields["statcode"]}
    assert np.isnan(ds.municipality.sel(edition=2023, x=5.0, y=643_745.0).values)  # unwritten: fill
    raw = xr.open_zarr(store, group="/NL", consolidated=True, mask_and_scale=False).municipality
    assert raw.dtype == np.uint16 and int(raw.isel(edition=0, y=0, x=0)) == 0
    attrs = ds.municipality.attrs
    assert attrs["code_names"]["503"] == "Delft" and attrs["source_codes"]["503"] == "GM0503"
    assert "Delft" in attrs["flag_meanings"].split() and 503 in attrs["flag_values"]
    prov = attrs["provenance"]["2023"]
    assert prov["source"] == "gemeente_ll.gpkg" and len(prov["sha256"]) == 64 and prov["attribute"] == "statcode"
    # only the four touched map sheets hold chunk files
    chunk_files = [n for n in os.listdir(store / "NL" / "municipality") if not n.startswith(".")]
    assert len(chunk_files) == 4


def test_layer_aligns_exactly_with_imagery(tmp_path, inputs):
    store = tmp_path / "cube.zarr"
    add_layer(store, "NL", inputs["gm_rd"], edition=2023, attribute="statcode")
    synth.imagery_group(store, AREA, n_times=2)
    img = xr.open_zarr(store, group="/S2/R051", consolidated=True)
    lay = xr.open_zarr(store, group="/NL", consolidated=True)
    a, b = xr.align(img.B04, lay.municipality, join="exact")
    assert a.shape[-2:] == b.shape[-2:] == NL_GRID.shape


def test_brp_crop_and_parcel_index_agree_with_the_file(tmp_path, inputs):
    import pyogrio

    store = tmp_path / "cube.zarr"
    recs = add_layer(store, "NL/BRP", inputs["brp2023"], edition=2023, attribute="gewascode")
    assert [r.variable for r in recs] == ["crop", "parcel"]
    ds = xr.open_zarr(store, group="/NL/BRP", consolidated=True, mask_and_scale=False).sel(edition=2023)
    win = NL_GRID.window_for_bounds(AREA)
    sl = dict(y=slice(win.row_off, win.row_off + win.height), x=slice(win.col_off, win.col_off + win.width))
    crop, parcel = ds.crop.isel(sl).values, ds.parcel.isel(sl).values
    assert ((crop > 0) == (parcel > 0)).all()
    _, _, _, fields = pyogrio.raw.read(inputs["brp2023"], columns=["gewascode"])
    expected = np.concatenate([[0], fields[0]])[parcel]  # parcel index = 1-based feature number
    np.testing.assert_array_equal(crop, expected)
    names = ds.crop.attrs["code_names"]
    assert names["265"] == "Grasland, blijvend"


def test_groups_nl_bbg_brp_together(tmp_path, inputs):
    store = tmp_path / "cube.zarr"
    add_layer(store, "NL", inputs["gm_rd"], edition=2023, attribute="statcode")
    add_layer(store, "NL", inputs["pv"], edition=2023, attribute="statcode")
    add_layer(store, "NL", inputs["pv"], edition=2023, attribute=None, variable="border")
    (bbg,) = add_layer(store, "NL/BBG", inputs["bbg"], edition=2015, attribute="bg2015")  # any case
    add_layer(store, "NL/BRP", inputs["brp2022"], edition=2022, attribute="gewascode")
    nl = xr.open_zarr(store, group="/NL", consolidated=True)
    assert {"municipality", "province", "border"} <= set(nl.data_vars)
    assert nl.province.attrs["code_names"] == {"28": "Zuid-Holland"}
    assert nl.border.attrs["flag_values"] == [1]
    b = xr.open_zarr(store, group="/NL/BBG", consolidated=True)
    assert bbg.attribute == "BG2015"
    assert all(b.landuse.attrs["code_names"][k] == BBG_CLASSES[int(k)] for k in b.landuse.attrs["code_names"])
    root = xr.open_zarr(store, consolidated=True)  # the root group opens too
    assert root is not None
    rows = list_layers(store)
    assert {(r["group"], r["variable"], r["edition"]) for r in rows} == {
        ("NL", "municipality", 2023), ("NL", "province", 2023), ("NL", "border", 2023),
        ("NL/BBG", "landuse", 2015), ("NL/BRP", "crop", 2022), ("NL/BRP", "parcel", 2022)}


def test_editions_extend_replace_and_refuse(tmp_path, inputs):
    store = tmp_path / "cube.zarr"
    add_layer(store, "NL/BRP", inputs["brp2022"], edition=2022, attribute="gewascode")
    add_layer(store, "NL/BRP", inputs["brp2023"], edition=2023, attribute="gewascode")
    ds = xr.open_zarr(store, group="/NL/BRP", consolidated=True)
    assert ds.edition.values.tolist() == [2022, 2023] and ds.crop.shape[0] == 2
    changed = in_area(ds.crop.sel(edition=2022) != ds.crop.sel(edition=2023)).sum().compute()
    assert int(changed) > 0  # crops rotate between years

    before = snapshot(store)
    with pytest.raises(LayerError, match="already holds edition 2023.*--force"):
        add_layer(store, "NL/BRP", inputs["brp2022"], edition=2023, attribute="gewascode")
    assert snapshot(store) == before

    # replace 2023 with a file covering a single municipality's worth: stale chunks must go
    (rec,) = add_layer(store, "NL", inputs["gm_rd"], edition=2023, attribute="statcode")
    (rep,) = add_layer(store, "NL", inputs["gm_small"], edition=2023, attribute="statcode", force=True)
    assert rep.replaced and rep.n_pixels < rec.n_pixels
    nl = xr.open_zarr(store, group="/NL", consolidated=True)
    assert nl.edition.values.tolist() == [2023]
    assert int(in_area(nl.municipality).notnull().sum()) == rep.n_pixels
    assert nl.municipality.attrs["provenance"]["2023"]["source"] == "gemeente_small.geojson"
    files = [n for n in os.listdir(store / "NL" / "municipality") if not n.startswith(".")]
    assert len(files) == rep.n_chunks


def test_new_variable_in_existing_edition_needs_no_force(tmp_path, inputs):
    store = tmp_path / "cube.zarr"
    add_layer(store, "NL", inputs["gm_rd"], edition=2023, attribute="statcode")
    add_layer(store, "NL", inputs["gm_rd"], edition=2024, attribute="statcode")
    (pv,) = add_layer(store, "NL", inputs["pv"], edition=2024, attribute="statcode")
    assert not pv.replaced
    nl = xr.open_zarr(store, group="/NL", consolidated=True)
    assert nl.province.shape[0] == 2
    assert int(in_area(nl.province.sel(edition=2023)).notnull().sum()) == 0  # never written for 2023
    assert int(in_area(nl.province.sel(edition=2024)).notnull().sum()) == pv.n_pixels


@pytest.mark.parametrize("key, kwargs, message", [
    ("points", {}, "expected polygons, found 2 feature.*Point"),
    ("lines", {}, "expected polygons.*Linestring"),
    ("gm_rd", {"attribute": "gemeentecode"}, "no attribute 'gemeentecode'; the file has statcode"),
    ("empty", {}, "no features"),
    ("far", {}, "no feature overlaps grid NL"),
    ("gm_rd", {"variable": "crop"}, "has no variable 'crop'"),
])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_input_is_refused_and_store_untouched(tmp_path, inputs, key, kwargs, message, existing):
    store = tmp_path / "cube.zarr"
    if existing:
        add_layer(store, "NL", inputs["pv"], edition=2023, attribute="statcode")
    before = snapshot(store)
    args = {"attribute": "statcode", **kwargs}
    with pytest.raises(LayerError, match=message):
        add_layer(store, "NL", inputs[key], edition=2023, **args)
    assert snapshot(store) == before
    assert store.exists() == existing


def test_missing_file_and_unknown_group(tmp_path, inputs):
    with pytest.raises(LayerError, match="no such file"):
        add_layer(tmp_path / "c.zarr", "NL", tmp_path / "nope.gpkg", edition=2023, attribute="statcode")
    with pytest.raises(LayerError, match="unknown layer group"):
        add_layer(tmp_path / "c.zarr", "NL/XYZ", inputs["gm_rd"], edition=2023, attribute="statcode")
    assert not (tmp_path / "c.zarr").exists()


def test_cli_add_list_and_catalog_record(tmp_path, inputs):
    from click.testing import CliRunner
    from sqlalchemy import select

    from catalog import Layer, open_catalog, session_scope
    from ingest.cli.layers import layers

    store, db = tmp_path / "cube.zarr", f"sqlite:///{tmp_path / 'cat.sqlite'}"
    runner = CliRunner()
    res = runner.invoke(layers, ["add", "--store", str(store), "--db", db, "--group", "NL/BRP",
                                 "--edition", "2023", "--attribute", "gewascode", str(inputs["brp2023"])])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "added /NL/BRP/crop edition 2023" in res.output
    version = (store / ".zmetadata").read_bytes()
    # the same file again is already done (e.g. a rerun after a crash): nothing is written
    res = runner.invoke(layers, ["add", "--store", str(store), "--db", db, "--group", "NL/BRP",
                                 "--edition", "2023", "--attribute", "gewascode", str(inputs["brp2023"])])
    assert res.exit_code == 0 and "already published from brp_2023.gpkg" in res.output, res.output
    assert (store / ".zmetadata").read_bytes() == version
    # another file for a published edition needs --force
    res = runner.invoke(layers, ["add", "--store", str(store), "--db", db, "--group", "NL/BRP",
                                 "--edition", "2023", "--attribute", "gewascode", str(inputs["brp2022"])])
    assert res.exit_code != 0 and isinstance(res.exception, LayerError)
    res = runner.invoke(layers, ["list", "--store", str(store)])
    assert "/NL/BRP/parcel\t2023\tbrp_2023.gpkg" in res.output
    with session_scope(open_catalog(db)) as s:
        rows = s.scalars(select(Layer)).all()
        assert {(r.group_path, r.name, r.edition) for r in rows} == {("NL/BRP", "crop", "2023"), ("NL/BRP", "parcel", "2023")}
        assert all(len(r.sha256) == 64 and r.source_name == "brp_2023.gpkg" for r in rows)
