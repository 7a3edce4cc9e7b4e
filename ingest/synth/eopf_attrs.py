"""Attributes of a synthetic EOPF S02MSIL2A product: root ``stac_discovery``/``other_metadata``
and the per-array attributes, with the key names, nesting and value types of real products.

Modelled on the CPM 2.5.x products described in DESIGN.md §7 (eopf-facts §4, §6, §7): a STAC
item whose ``id`` is the SAFE name, ``datetime`` null, the datatake id under
``eopf:data_take_id``, the baseline under ``eopf:baseline`` (``processing:version`` empty), the
CRS as ``proj:epsg``; ``other_metadata`` with ``UTM_zone_identification`` (the granule id) and
``horizontal_CRS_code``; per array ``_ARRAY_DIMENSIONS``, ``_eopf_attrs`` and ``proj:*``;
reflectance with ``scale_factor`` 1e-4 and ``add_offset`` -0.1 (0 below PB 04.00, an assumption:
no converted PB < 04.00 product was seen). Values are synthetic.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from pyproj import CRS

from ingest.synth.xml_templates import SPECTRAL

STAC_EXTENSIONS = [
    f"https://stac-extensions.github.io/{name}/schema.json"
    for name in ("eopf/v1.0.0", "eo/v1.1.0", "sat/v1.0.0", "view/v1.0.0", "scientific/v1.0.0",
                 "processing/v1.2.0", "product/v0.1.0")
]
COMMON_NAMES = {"b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "rededge",
                "b06": "rededge", "b07": "rededge", "b08": "nir", "b8a": "nir08", "b09": "nir09",
                "b10": "cirrus", "b11": "swir16", "b12": "swir22"}
QUALITY_FLAGS = ["ANC_LOST", "ANC_DEG", "MSI_LOST", "MSI_DEG", "QT_DEFECTIVE_PIXELS", "QT_NODATA_PIXELS",
                 "QT_PARTIALLY_CORRECTED_PIXELS", "QT_SATURATED_PIXELS_L1A"]


def _band(physical: str) -> str:
    """'B1' -> 'b01', 'B8A' -> 'b8a' (EOPF variable names are lower case, eopf-facts §3)."""
    num = physical[1:]
    return "b8a" if num == "8A" else f"b{int(num):02d}"


def _stac_band(physical: str) -> str:
    """'B1' -> '01', 'B8A' -> '8A' (the names of ``assets.analytic.eo:bands``)."""
    num = physical[1:]
    return num if num == "8A" else f"{int(num):02d}"


BANDS = {_band(v[0]): v for v in SPECTRAL.values()}  # "b01" -> (physical, res, min, max, wavelength, E0)


@lru_cache(maxsize=8)
def wkt1(epsg: int) -> str:
    """``proj:wkt2`` of real products is a WKT1 ``PROJCS`` string despite its name."""
    return CRS.from_epsg(epsg).to_wkt(version="WKT1_GDAL")


def proj_attrs(epsg: int, res: int, ulx: float, uly: float, shape: tuple[int, int]) -> dict[str, Any]:
    h, w = shape
    return {
        "proj:bbox": [float(ulx), float(uly - h * res), float(ulx + w * res), float(uly)],
        "proj:epsg": epsg, "proj:shape": [h, w],
        "proj:transform": [float(res), 0.0, float(ulx), 0.0, -float(res), float(uly), 0.0, 0.0, 1.0],
        "proj:wkt2": wkt1(epsg),
    }


def _eopf(dims: list[str], coords: list[str], **extra: Any) -> dict[str, Any]:
    return {"coordinates": coords, "dimensions": dims, **extra}


def raster_attrs(kind: str, name: str, proj: dict[str, Any], *, baseline: str = "05.09") -> dict[str, Any]:
    """Attributes of one raster: kind is reflectance, scl, probability, atmosphere, tci, quality,
    detector or classification."""
    dims = ["band", "y", "x"] if kind == "tci" else ["y", "x"]
    attrs: dict[str, Any] = {"_ARRAY_DIMENSIONS": dims}
    if kind == "reflectance":
        offset = -0.1 if baseline >= "04.00" else 0.0
        cf = {"add_offset": offset, "fill_value": 0, "scale_factor": 0.0001, "units": "digital_counts"}
        attrs["_eopf_attrs"] = {**_eopf(dims, ["x", "y"]), **cf}
        attrs.update(cf, dtype="<u2", valid_min=1, valid_max=65535,
                     long_name=f"BOA reflectance from MSI acquisition at spectral band {name} {BANDS[name][4]} nm")
    elif kind == "probability":
        attrs["_eopf_attrs"] = _eopf(dims, ["band", "x", "y"])
        attrs["coordinates"] = "band"
    elif kind == "tci":
        attrs["_eopf_attrs"] = _eopf(dims, ["band", "x", "y"])
    elif kind == "quality":
        attrs["_eopf_attrs"] = _eopf(dims, ["x", "y"], flag_masks=[1 << i for i in range(8)],
                                     flag_meanings=QUALITY_FLAGS)
        attrs.update(dtype="<u1", flag_masks=[1 << i for i in range(8)], flag_meanings=QUALITY_FLAGS,
                     long_name="quality mask provided in the final reference frame (ground geometry)")
    elif kind == "detector":
        attrs["_eopf_attrs"] = _eopf(dims, ["x", "y"])
        attrs.update(dtype="<u1", long_name="detector footprint mask provided in the final reference frame "
                                            "(ground geometry). 0 = no detector, 1-12 = detector 1-12")
    elif kind == "classification":
        attrs["_eopf_attrs"] = _eopf(dims, ["x", "y"], flag_masks=[1, 2, 4],
                                     flag_meanings=["OPAQUE", "CIRRUS", "SNOW_ICE"])
    else:  # scl, atmosphere: nothing but the dimensions and the grid (CPM 2.5.x)
        attrs["_eopf_attrs"] = _eopf(dims, ["x", "y"])
    attrs.update(proj)
    return attrs


def _iso(d: datetime, timespec: str = "microseconds") -> str:
    return d.isoformat(timespec=timespec)


def root_attrs(*, name: str, platform: str, baseline: str, start: datetime, generation: datetime,
               datatake_id: str, granule_id: str, relative_orbit: int, absolute_orbit: int, epsg: int,
               bbox_utm: list[float], footprint_lonlat: list[tuple[float, float]], qi: dict[str, float],
               mean_sun: tuple[float, float]) -> dict[str, Any]:
    """Root ``.zattrs``: ``stac_discovery`` and ``other_metadata`` (CPM 2.5.x key names)."""
    lons = [p[0] for p in footprint_lonlat] or [0.0]
    lats = [p[1] for p in footprint_lonlat] or [0.0]
    eo_bands = [{"center_wavelength": round(v[4] / 1000, 6), "full_width_half_max": round((v[3] - v[2]) / 1000, 3),
                 "name": _stac_band(v[0]), "solar_illumination": f"{v[5]:.2f}",
                 **({"common_name": COMMON_NAMES[b]} if b in ("b01", "b02", "b03", "b04", "b08") else {})}
                for b, v in BANDS.items()]
    bands = [{"center_wavelength": v[4], "common_name": COMMON_NAMES[b],
              "full_width_half_max": round((v[3] - v[2]) / 1000, 3), "name": b, "solar_illumination": v[5]}
             for b, v in BANDS.items()]
    cloud = round(qi["CLOUDY_PIXEL_PERCENTAGE"], 6)
    snow = round(qi["SNOW_ICE_PERCENTAGE"], 6)
    props = {
        "bands": bands, "constellation": "sentinel-2", "created": _iso(generation, "seconds"),
        "datetime": None, "end_datetime": _iso(start), "eo:cloud_cover": cloud, "eo:snow_cover": snow,
        "eopf:baseline": baseline, "eopf:data_take_id": datatake_id, "eopf:instrument_mode": "INS-NOBS",
        "eopf:resolutions": {"bands 01, 09, 10": "60", "bands 02, 03, 04, 08": "10",
                             "bands 05, 06, 07, 8A, 11, 12": "20"},
        "instrument": "msi", "mission": "copernicus", "platform": f"sentinel-{platform[1:].lower()}",
        "processing:expression": "systematic", "processing:facility": "ESA", "processing:level": "L2A",
        "processing:lineage": "IPF L2A processor", "processing:software": {"Sentinel-2 IPF": " "},
        "processing:version": "", "product:timeline": "NRT", "product:timeliness": "PT3H",
        "product:timeliness_category": "NRT", "product:type": "S02MSIL2A", "proj:bbox": bbox_utm,
        "proj:epsg": epsg,
        "providers": [{"name": "L2A Processor", "roles": ["processor"]}, {"name": "ESA", "roles": ["producer"]}],
        "sat:absolute_orbit": absolute_orbit, "sat:orbit_state": "descending",
        "sat:platform_international_designator": {"S2A": "2015-028A", "S2B": "2017-013A"}.get(platform, "2024-157A"),
        "sat:relative_orbit": relative_orbit, "sci:doi": "10.5270/S2_-znk9xsj", "start_datetime": _iso(start),
    }
    stac = {
        "assets": {"analytic": {"eo:bands": eo_bands, "eo:cloud_cover": cloud, "eo:snow_cover": snow,
                                "href": "null"}},
        # unordered, as real products have it (eopf-facts §7.1)
        "bbox": [max(lons), min(lats), min(lons), max(lats)],
        "geometry": {"coordinates": [[[lon, lat] for lon, lat in footprint_lonlat]], "type": "Polygon"},
        "id": f"{name}.SAFE", "links": [{"href": "./.zattrs.json", "rel": "self", "type": "application/json"}],
        "properties": props, "stac_extensions": STAC_EXTENSIONS, "stac_version": "1.0.0", "type": "Feature",
    }
    band_description = {_stac_band(v[0]): {
        "bandwidth": f"{v[3] - v[2]:.1f}", "central_wavelength": v[4], "physical_gain": "3.5",
        "spectral_response_step": "1", "wavelength_max": v[3], "wavelength_min": v[2]} for v in BANDS.values()}
    band_description.update({b: band_description[_stac_band(v[0])] for b, v in BANDS.items()})
    other = {
        "AOT_retrieval_model": "CAMS", "L0_ancillary_data_quality": "4", "L0_ephemeris_data_quality": "4",
        "NUC_table_ID": 3, "SWIR_rearrangement_flag": "null", "UTM_zone_identification": granule_id,
        "absolute_location_assessment_from_AOCS": "\n          ", "band_description": band_description,
        "declared_accuracy_of_AOT_model": 0.0, "declared_accuracy_of_radiative_transfer_model": 0.0,
        "declared_accuracy_of_water_vapour_model": 0.0, "electronic_crosstalk_correction_flag": "null",
        "eopf_category": "eoproduct",
        "history": [{"output": "Downlinked Stream", "type": "Raw Data"},
                    {"inputs": "Downlinked Stream", "organisation": "ESA", "output": "S2MSIL0__etc",
                     "processor": "L0", "type": "Level-0 Product"}],
        "horizontal_CRS_code": f"EPSG:{epsg}",
        "horizontal_CRS_name": f"WGS84 / UTM zone {epsg % 100}{'N' if epsg < 32700 else 'S'}",
        "mean_sensing_time": start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "mean_sun_azimuth_angle_in_deg_for_all_bands_all_detectors": mean_sun[1],
        "mean_sun_zenith_angle_in_deg_for_all_bands_all_detectors": mean_sun[0],
        "mean_value_of_aerosol_optical_thickness": round(qi["GRANULE_MEAN_AOT"], 6),
        "mean_value_of_total_water_vapour_content": round(qi["GRANULE_MEAN_WV"], 3),
        "meteo": {"source": "ECMWF", "type": "FORECAST"}, "multispectral_registration_assessment": "N/A",
        "onboard_compression_flag": "true", "onboard_equalization_flag": "null",
        "optical_crosstalk_correction_flag": "null", "ozone_source": "AUX_ECMWFT", "ozone_value": 330.0,
        "percentage_of_degraded_MSI_data": 0.0, "planimetric_stability_assessment_from_AOCS": "\n          ",
        "product_quality_status": "PASSED,PASSED,PASSED,PASSED,PASSED,PASSED",
        "reflectance_correction_factor_from_the_Sun-Earth_distance_variation_computed_using_the_acquisition_date":
            1.0, "spectral_band_of_reference": "N/A",
    }
    return {"other_metadata": other, "stac_discovery": stac}
