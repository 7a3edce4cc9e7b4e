"""XML documents of a synthetic SAFE: MTD_MSIL2A.xml, MTD_TL.xml, manifest.safe and the small ones.

Element names, nesting and namespaces follow the real PB 02.12-05.09 samples in
``shared/samples/metadata`` (psd-14 for the user product and tile metadata; root children
qualified with ``n1:``, deeper elements unqualified, as ESA writes them). The documents are
built with ElementTree, so they are always well-formed.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime

from ingest.variables import BAND_ID_TO_NAME

NS_PSD14_PRODUCT = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
NS_PSD14_TILE = "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd"
NS_PSD14_DS = "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Datastrip_Metadata.xsd"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XFDU = "urn:ccsds:schema:xfdu:1"
NS_SAFE = "http://www.esa.int/safe/sentinel/1.1"
NS_GML = "http://www.opengis.net/gml"

# bandId -> (physical band name, resolution, min, max, central wavelength nm, solar irradiance)
SPECTRAL: dict[int, tuple[str, int, int, int, float, float]] = {
    0: ("B1", 60, 412, 456, 442.7, 1884.69), 1: ("B2", 10, 456, 533, 492.7, 1959.66),
    2: ("B3", 10, 538, 583, 559.8, 1823.24), 3: ("B4", 10, 646, 684, 664.6, 1512.06),
    4: ("B5", 20, 695, 714, 704.1, 1424.64), 5: ("B6", 20, 731, 749, 740.5, 1287.61),
    6: ("B7", 20, 769, 797, 782.8, 1162.08), 7: ("B8", 10, 760, 907, 832.8, 1041.63),
    8: ("B8A", 20, 837, 881, 864.7, 955.32), 9: ("B9", 60, 932, 958, 945.1, 812.92),
    10: ("B10", 60, 1337, 1412, 1373.5, 367.15), 11: ("B11", 20, 1539, 1682, 1613.7, 245.59),
    12: ("B12", 20, 2078, 2320, 2202.4, 85.25),
}
SCL_TEXT = [
    "SC_NODATA", "SC_SATURATED_DEFECTIVE", "SC_DARK_FEATURE_SHADOW", "SC_CLOUD_SHADOW",
    "SC_VEGETATION", "SC_NOT_VEGETATED", "SC_WATER", "SC_UNCLASSIFIED", "SC_CLOUD_MEDIUM_PROBA",
    "SC_CLOUD_HIGH_PROBA", "SC_THIN_CIRRUS", "SC_SNOW_ICE",
]


def el(parent: ET.Element | None, tag: str, text: object = None, **attrib: object) -> ET.Element:
    """Create a child element (or a root when parent is None) with text and attributes."""
    attrs = {k.replace("__", ":"): str(v) for k, v in attrib.items()}
    e = ET.Element(tag, attrs) if parent is None else ET.SubElement(parent, tag, attrs)
    if text is not None:
        e.text = str(text)
    return e


def to_bytes(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


def iso(d: datetime, frac: int = 3) -> str:
    """ESA time stamps: 2023-08-23T09:55:59.024Z (3 or 6 fraction digits)."""
    s = d.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return (s[: len(s) - (6 - frac)] if frac < 6 else s) + "Z"


def _fmt(x: float) -> str:
    return f"{x:.6f}"


@dataclass
class ProductInfo:
    """The facts every metadata document is built from."""

    name: str  # without .SAFE
    platform: str  # S2A
    baseline: str  # "05.09"
    product_start: datetime
    product_stop: datetime
    generation_time: datetime
    relative_orbit: int
    absolute_orbit: int
    tile: str
    epsg: int
    datatake_id: str
    granule_id: str
    datastrip_id: str
    l1c_tile_id: str
    granule_dir: str  # L2A_T31UFU_A...
    datastrip_dir: str
    ds_sensing_start: datetime
    image_files: list[str]  # relative, without extension
    footprint_latlon: list[tuple[float, float]]  # closed ring (lat, lon)
    sizes: dict[int, tuple[int, int]]  # res -> (nrows, ncols)
    ulx: float
    uly: float
    qi: dict[str, float]  # Image_Content_QI values computed from SCL
    sun_zenith_grid: list[list[float]] = field(default_factory=list)
    sun_azimuth_grid: list[list[float]] = field(default_factory=list)
    mask_files: list[tuple[str, int | None, str]] = field(default_factory=list)  # (type, bandId, path)
    pvi_file: str = ""

    @property
    def pb(self) -> tuple[int, int]:
        a, b = self.baseline.split(".")
        return int(a), int(b)

    @property
    def has_offset(self) -> bool:
        return self.pb >= (4, 0)

    @property
    def spacecraft(self) -> str:
        return "Sentinel-" + self.platform[1:]


def _ns_tile(info: ProductInfo) -> str:
    # [R] third-party PB 05.11 fixtures use psd-15; our samples up to 05.09 use psd-14
    return NS_PSD14_TILE.replace("psd-14", "psd-15") if info.pb >= (5, 11) else NS_PSD14_TILE


def _ns_product(info: ProductInfo) -> str:
    return NS_PSD14_PRODUCT.replace("psd-14", "psd-15") if info.pb >= (5, 11) else NS_PSD14_PRODUCT


# -- MTD_MSIL2A.xml ---------------------------------------------------------------------------
def product_metadata(info: ProductInfo) -> bytes:
    ns = _ns_product(info)
    ET.register_namespace("n1", ns)
    ET.register_namespace("xsi", NS_XSI)
    root = el(None, f"{{{ns}}}Level-2A_User_Product", **{f"{{{NS_XSI}}}schemaLocation": ns})
    gi = el(root, f"{{{ns}}}General_Info")
    pi = el(gi, "Product_Info")
    el(pi, "PRODUCT_START_TIME", iso(info.product_start))
    el(pi, "PRODUCT_STOP_TIME", iso(info.product_stop))
    el(pi, "PRODUCT_URI", info.name + ".SAFE")
    el(pi, "PROCESSING_LEVEL", "Level-2A")
    el(pi, "PRODUCT_TYPE", "S2MSI2A")
    el(pi, "PROCESSING_BASELINE", info.baseline)
    if info.has_offset:
        el(pi, "PRODUCT_DOI", "https://doi.org/10.5270/S2_-znk9xsj")
    el(pi, "GENERATION_TIME", iso(info.generation_time, 6))
    el(pi, "PREVIEW_IMAGE_URL", "Not applicable")
    el(pi, "PREVIEW_GEO_INFO", "Not applicable")
    dt = el(pi, "Datatake", datatakeIdentifier=info.datatake_id)
    el(dt, "SPACECRAFT_NAME", info.spacecraft)
    el(dt, "DATATAKE_TYPE", "INS-NOBS")
    el(dt, "DATATAKE_SENSING_START", iso(info.product_start))
    el(dt, "SENSING_ORBIT_NUMBER", info.relative_orbit)
    el(dt, "SENSING_ORBIT_DIRECTION", "DESCENDING")
    qo = el(pi, "Query_Options", completeSingleTile="true")
    el(qo, "PRODUCT_FORMAT", "SAFE_COMPACT")
    gl = el(el(pi, "Product_Organisation"), "Granule_List")
    g = el(gl, "Granule", datastripIdentifier=info.datastrip_id, granuleIdentifier=info.granule_id,
           imageFormat="JPEG2000")
    for f in info.image_files:
        el(g, "IMAGE_FILE", f)

    pic = el(gi, "Product_Image_Characteristics")
    for text, idx in (("NODATA", 0), ("SATURATED", 65535)):
        sv = el(pic, "Special_Values")
        el(sv, "SPECIAL_VALUE_TEXT", text)
        el(sv, "SPECIAL_VALUE_INDEX", idx)
    ido = el(pic, "Image_Display_Order")
    for tag, v in (("RED_CHANNEL", 3), ("GREEN_CHANNEL", 2), ("BLUE_CHANNEL", 1)):
        el(ido, tag, v)
    q = el(pic, "QUANTIFICATION_VALUES_LIST")
    el(q, "BOA_QUANTIFICATION_VALUE", "10000", unit="none")
    el(q, "AOT_QUANTIFICATION_VALUE", "1000.0", unit="none")
    el(q, "WVP_QUANTIFICATION_VALUE", "1000.0", unit="cm")
    if info.has_offset:
        ol = el(pic, "BOA_ADD_OFFSET_VALUES_LIST")
        for band_id in BAND_ID_TO_NAME:
            el(ol, "BOA_ADD_OFFSET", "-1000", band_id=band_id)
    rc = el(pic, "Reflectance_Conversion")
    el(rc, "U", _earth_sun_u(info.product_start))
    sil = el(rc, "Solar_Irradiance_List")
    for bid, spec in SPECTRAL.items():
        el(sil, "SOLAR_IRRADIANCE", spec[5], bandId=bid, unit="W/m²/µm")
    spl = el(pic, "Spectral_Information_List")
    for bid, (phys, res, wmin, wmax, wc, _) in SPECTRAL.items():
        si = el(spl, "Spectral_Information", bandId=bid, physicalBand=phys)
        el(si, "RESOLUTION", res)
        wl = el(si, "Wavelength")
        el(wl, "MIN", wmin, unit="nm")
        el(wl, "MAX", wmax, unit="nm")
        el(wl, "CENTRAL", wc, unit="nm")
    for bid in SPECTRAL:
        el(pic, "PHYSICAL_GAINS", "4.0", bandId=bid)
    el(pic, "REFERENCE_BAND", 3)
    scl = el(pic, "Scene_Classification_List")
    for i, text in enumerate(SCL_TEXT):
        sc = el(scl, "Scene_Classification_ID")
        el(sc, "SCENE_CLASSIFICATION_TEXT", text)
        el(sc, "SCENE_CLASSIFICATION_INDEX", i)

    geo = el(root, f"{{{ns}}}Geometric_Info")
    pf = el(geo, "Product_Footprint")
    gf = el(el(pf, "Product_Footprint"), "Global_Footprint")
    el(gf, "EXT_POS_LIST", _poslist(info.footprint_latlon))
    el(pf, "RASTER_CS_TYPE", "POINT")
    el(pf, "PIXEL_ORIGIN", 1)
    crs = el(geo, "Coordinate_Reference_System")
    el(crs, "GEO_TABLES", "EPSG", version="1")
    el(crs, "HORIZONTAL_CS_TYPE", "GEOGRAPHIC")

    aux = el(root, f"{{{ns}}}Auxiliary_Data_Info")
    gipp = el(aux, "GIPP_List")
    el(gipp, "GIPP_FILENAME", "S2__OPER_GIP_L2ACSC_MPC__20220121T000003_V20220125T022000_21000101T000000_B00",
       type="GIP_L2ACSC", version="0001")
    el(aux, "PRODUCTION_DEM_TYPE", "CopernicusDEM90")
    el(aux, "ECMWF_DATA_REF", "S2__OPER_AUX_ECMWFD_ADG__" + info.product_start.strftime("%Y%m%dT000000"))

    qii = el(root, f"{{{ns}}}Quality_Indicators_Info")
    el(qii, "Cloud_Coverage_Assessment", _fmt(info.qi["CLOUDY_PIXEL_PERCENTAGE"]))
    tqa = el(qii, "Technical_Quality_Assessment")
    el(tqa, "DEGRADED_ANC_DATA_PERCENTAGE", "0.0")
    el(tqa, "DEGRADED_MSI_DATA_PERCENTAGE", "0")
    qcc = el(qii, "Quality_Control_Checks")
    qi_ins = el(qcc, "Quality_Inspections")
    for check in _quality_checks(info):
        el(qi_ins, "quality_check", "PASSED", checkType=check)
    el(qcc, "Failed_Inspections")
    _image_content_qi(el(qii, "Image_Content_QI"), info, tile_level=False)
    return to_bytes(root)


def _quality_checks(info: ProductInfo) -> list[str]:
    checks = ["FORMAT_CORRECTNESS", "GENERAL_QUALITY", "GEOMETRIC_QUALITY"]
    if info.has_offset:
        checks.append("L2A_QUALITY")
    return checks + ["RADIOMETRIC_QUALITY", "SENSOR_QUALITY"]


QI_KEYS = [
    "NODATA_PIXEL_PERCENTAGE", "SATURATED_DEFECTIVE_PIXEL_PERCENTAGE", "DARK_FEATURES_PERCENTAGE",
    "CLOUD_SHADOW_PERCENTAGE", "VEGETATION_PERCENTAGE", "NOT_VEGETATED_PERCENTAGE", "WATER_PERCENTAGE",
    "UNCLASSIFIED_PERCENTAGE", "MEDIUM_PROBA_CLOUDS_PERCENTAGE", "HIGH_PROBA_CLOUDS_PERCENTAGE",
    "THIN_CIRRUS_PERCENTAGE", "SNOW_ICE_PERCENTAGE",
]


def _image_content_qi(parent: ET.Element, info: ProductInfo, tile_level: bool) -> None:
    """Image_Content_QI, in the order of the real documents of the baseline."""
    q = info.qi
    if tile_level:
        el(parent, "CLOUDY_PIXEL_PERCENTAGE", _fmt(q["CLOUDY_PIXEL_PERCENTAGE"]))
    if info.has_offset:
        el(parent, "CLOUDY_PIXEL_OVER_LAND_PERCENTAGE", _fmt(q["CLOUDY_PIXEL_OVER_LAND_PERCENTAGE"]))
    if tile_level:
        el(parent, "DEGRADED_MSI_DATA_PERCENTAGE", _fmt(0.0))
    for k in QI_KEYS:
        el(parent, k, _fmt(q[k]))
    for k in ("RADIATIVE_TRANSFER_ACCURACY", "WATER_VAPOUR_RETRIEVAL_ACCURACY", "AOT_RETRIEVAL_ACCURACY"):
        el(parent, k, "0.0")
    if info.has_offset:
        el(parent, "AOT_RETRIEVAL_METHOD", "CAMS")
        el(parent, "GRANULE_MEAN_AOT", _fmt(q["GRANULE_MEAN_AOT"]))
        el(parent, "GRANULE_MEAN_WV", _fmt(q["GRANULE_MEAN_WV"]))
        el(parent, "OZONE_SOURCE", "AUX_ECMWFT")
        el(parent, "OZONE_VALUE", _fmt(q.get("OZONE_VALUE", 320.0)))


def _poslist(ring: list[tuple[float, float]]) -> str:
    return " ".join(f"{lat:.12g} {lon:.12g}" for lat, lon in ring) + " "


def _earth_sun_u(d: datetime) -> str:
    import math

    doy = d.timetuple().tm_yday
    return repr(1 / (1 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2)


# -- MTD_TL.xml -------------------------------------------------------------------------------
def tile_metadata(info: ProductInfo) -> bytes:
    ns = _ns_tile(info)
    ET.register_namespace("n1", ns)
    ET.register_namespace("xsi", NS_XSI)
    root = el(None, f"{{{ns}}}Level-2A_Tile_ID", **{f"{{{NS_XSI}}}schemaLocation": ns})
    gi = el(root, f"{{{ns}}}General_Info")
    el(gi, "L1C_TILE_ID", info.l1c_tile_id, metadataLevel="Brief")
    el(gi, "TILE_ID", info.granule_id, metadataLevel="Brief")
    el(gi, "DATASTRIP_ID", info.datastrip_id, metadataLevel="Standard")
    el(gi, "DOWNLINK_PRIORITY", "NOMINAL", metadataLevel="Standard")
    el(gi, "SENSING_TIME", iso(info.product_start, 6), metadataLevel="Standard")
    ai = el(gi, "Archiving_Info", metadataLevel="Expertise")
    el(ai, "ARCHIVING_CENTRE", f"{info.platform[1:]}PS")
    el(ai, "ARCHIVING_TIME", iso(info.generation_time, 6))

    geo = el(root, f"{{{ns}}}Geometric_Info")
    tg = el(geo, "Tile_Geocoding", metadataLevel="Brief")
    el(tg, "HORIZONTAL_CS_NAME", f"WGS84 / UTM zone {info.epsg - 32600}N")
    el(tg, "HORIZONTAL_CS_CODE", f"EPSG:{info.epsg}")
    for res, (nrows, ncols) in info.sizes.items():
        s = el(tg, "Size", resolution=res)
        el(s, "NROWS", nrows)
        el(s, "NCOLS", ncols)
    for res in info.sizes:
        gp = el(tg, "Geoposition", resolution=res)
        el(gp, "ULX", _num(info.ulx))
        el(gp, "ULY", _num(info.uly))
        el(gp, "XDIM", res)
        el(gp, "YDIM", -res)
    ta = el(geo, "Tile_Angles", metadataLevel="Standard")
    sag = el(ta, "Sun_Angles_Grid")
    for tag, grid in (("Zenith", info.sun_zenith_grid), ("Azimuth", info.sun_azimuth_grid)):
        z = el(sag, tag)
        el(z, "COL_STEP", 5000, unit="m")
        el(z, "ROW_STEP", 5000, unit="m")
        vl = el(z, "Values_List")
        for row in grid:
            el(vl, "VALUES", " ".join(f"{v:.6g}" for v in row))
    msa = el(ta, "Mean_Sun_Angle")
    el(msa, "ZENITH_ANGLE", repr(_mean(info.sun_zenith_grid)), unit="deg")
    el(msa, "AZIMUTH_ANGLE", repr(_mean(info.sun_azimuth_grid)), unit="deg")
    mvl = el(ta, "Mean_Viewing_Incidence_Angle_List")
    for bid in SPECTRAL:
        mv = el(mvl, "Mean_Viewing_Incidence_Angle", bandId=bid)
        el(mv, "ZENITH_ANGLE", repr(5.0 + 0.02 * bid), unit="deg")
        el(mv, "AZIMUTH_ANGLE", repr(105.0 + 0.5 * bid), unit="deg")

    qii = el(root, f"{{{ns}}}Quality_Indicators_Info", metadataLevel="Standard")
    _image_content_qi(el(qii, "Image_Content_QI"), info, tile_level=True)
    plq = el(qii, "Pixel_Level_QI", geometry="FULL_RESOLUTION")
    for mtype, band_id, path in info.mask_files:
        if band_id is None:
            el(plq, "MASK_FILENAME", path, type=mtype)
        else:
            el(plq, "MASK_FILENAME", path, bandId=band_id, type=mtype)
    el(qii, "PVI_FILENAME", info.pvi_file)
    return to_bytes(root)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _mean(grid: list[list[float]]) -> float:
    vals = [v for row in grid for v in row]
    return sum(vals) / len(vals) if vals else 0.0


# -- manifest.safe ----------------------------------------------------------------------------
@dataclass
class DataObject:
    id: str
    href: str  # relative to the SAFE root, without "./"
    mime: str
    size: int
    checksum_name: str
    checksum: str


def manifest(info: ProductInfo, objects: list[DataObject]) -> bytes:
    ET.register_namespace("xfdu", NS_XFDU)
    ET.register_namespace("safe", NS_SAFE)
    ET.register_namespace("gml", NS_GML)
    root = el(None, f"{{{NS_XFDU}}}XFDU", version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product")
    ipm = el(root, "informationPackageMap")
    top = el(ipm, f"{{{NS_XFDU}}}contentUnit", dmdID="acquisitionPeriod platform", pdiID="processing",
             textInfo="SENTINEL-2 MSI Level-2A User Product", unitType="Product_Level-2A")
    for obj in objects:
        cu = el(top, f"{{{NS_XFDU}}}contentUnit", ID=obj.id.removesuffix("_Data") + "_Unit", unitType="Data Unit")
        el(cu, "dataObjectPointer", dataObjectID=obj.id)

    ms = el(root, "metadataSection")
    _wrap(ms, "acquisitionPeriod", "Acquisition Period", "DMD", "DESCRIPTION",
          lambda x: el(el(x, f"{{{NS_SAFE}}}acquisitionPeriod"), f"{{{NS_SAFE}}}startTime", iso(info.product_start)))

    def orbit(x: ET.Element) -> None:
        o = el(x, f"{{{NS_SAFE}}}orbitReference")
        el(o, f"{{{NS_SAFE}}}orbitNumber", f"{info.absolute_orbit:06d}", groundTrackDirection="descending", type="start")
        el(o, f"{{{NS_SAFE}}}relativeOrbitNumber", f"{info.relative_orbit:03d}", type="start")

    _wrap(ms, "measurementOrbitReference", "Orbit Reference", "DMD", "DESCRIPTION", orbit)

    def platform(x: ET.Element) -> None:
        p = el(x, f"{{{NS_SAFE}}}platform")
        el(p, f"{{{NS_SAFE}}}nssdcIdentifier", {"S2A": "2015-028A", "S2B": "2017-013A"}.get(info.platform, "2024-157A"))
        el(p, f"{{{NS_SAFE}}}familyName", "SENTINEL")
        el(p, f"{{{NS_SAFE}}}number", info.platform[1:])
        inst = el(p, f"{{{NS_SAFE}}}instrument")
        el(inst, f"{{{NS_SAFE}}}familyName", "Multi-Spectral Instrument", abbreviation="MSI")

    _wrap(ms, "platform", "Platform Description", "DMD", "DESCRIPTION", platform)
    _wrap(ms, "processing", "Processing", "PDI", "PROVENANCE",
          lambda x: el(x, f"{{{NS_SAFE}}}processing", name="Generation of Level-2A User Product",
                       start=iso(info.generation_time, 6)))

    def frames(x: ET.Element) -> None:
        fp = el(el(x, f"{{{NS_SAFE}}}frameSet"), f"{{{NS_SAFE}}}footPrint",
                srsName="http://www.opengis.net/gml/srs/epsg.xml#4326")
        el(fp, f"{{{NS_GML}}}coordinates", _poslist(info.footprint_latlon))

    _wrap(ms, "measurementFrameSet", "Frame Set", "DMD", "DESCRIPTION", frames)

    dos = el(root, "dataObjectSection")
    for obj in objects:
        do = el(dos, "dataObject", ID=obj.id)
        bs = el(do, "byteStream", mimeType=obj.mime, size=obj.size)
        el(bs, "fileLocation", href="./" + obj.href, locatorType="URL")
        el(bs, "checksum", obj.checksum, checksumName=obj.checksum_name)
    return to_bytes(root)


def _wrap(parent: ET.Element, id_: str, text: str, category: str, classification: str, fill) -> None:
    mo = el(parent, "metadataObject", ID=id_, category=category, classification=classification)
    mw = el(mo, "metadataWrap", mimeType="text/xml", textInfo=text, vocabularyName="Sentinel-SAFE")
    fill(el(mw, "xmlData"))


# -- small documents --------------------------------------------------------------------------
def inspire(info: ProductInfo, bbox: tuple[float, float, float, float]) -> bytes:
    """A minimal ISO 19139 record (real products carry ~19 kB of it)."""
    gmd, gco = "http://www.isotc211.org/2005/gmd", "http://www.isotc211.org/2005/gco"
    ET.register_namespace("gmd", gmd)
    ET.register_namespace("gco", gco)
    root = el(None, f"{{{gmd}}}MD_Metadata")
    el(el(root, f"{{{gmd}}}fileIdentifier"), f"{{{gco}}}CharacterString", info.name)
    el(el(root, f"{{{gmd}}}dateStamp"), f"{{{gco}}}Date", info.generation_time.strftime("%Y-%m-%d"))
    ext = el(el(el(root, f"{{{gmd}}}identificationInfo"), f"{{{gmd}}}extent"), f"{{{gmd}}}EX_GeographicBoundingBox")
    for tag, v in zip(("westBoundLongitude", "southBoundLatitude", "eastBoundLongitude", "northBoundLatitude"), bbox):
        el(el(ext, f"{{{gmd}}}{tag}"), f"{{{gco}}}Decimal", f"{v:.6f}")
    return to_bytes(root)


def quality_report(check: str, info: ProductInfo, item: str) -> bytes:
    """A short OLQC report (FORMAT_CORRECTNESS.xml etc.): one passed check."""
    root = el(None, "Earth_Explorer_File")
    hdr = el(root, "Earth_Explorer_Header")
    fh = el(hdr, "Fixed_Header")
    el(fh, "File_Name", check)
    el(fh, "File_Type", "REP_OLQCPA")
    data = el(el(root, "Data_Block", type="xml"), "report", date=iso(info.generation_time))
    ci = el(data, "checkList")
    el(ci, "parentID", info.baseline)
    el(ci, "name", check)
    el(ci, "item", name=item, url=item)
    el(el(ci, "check"), "status", "PASSED")
    return to_bytes(root)


def datastrip_metadata(info: ProductInfo) -> bytes:
    ns = NS_PSD14_DS
    ET.register_namespace("n1", ns)
    root = el(None, f"{{{ns}}}Level-2A_DataStrip_ID")
    gi = el(root, f"{{{ns}}}General_Info")
    el(gi, "DATASTRIP_ID", info.datastrip_id)
    dsi = el(gi, "Datastrip_Time_Info")
    el(dsi, "DATASTRIP_SENSING_START", iso(info.ds_sensing_start))
    el(dsi, "DATASTRIP_SENSING_STOP", iso(info.product_stop))
    el(gi, "PROCESSING_BASELINE", info.baseline)
    return to_bytes(root)


def gml_mask(mask_type: str, band: str, info: ProductInfo) -> bytes:
    """An empty vector mask (PB < 04.00): the envelope of the tile, no features."""
    eop = "http://www.opengis.net/eop/2.0"
    ET.register_namespace("eop", eop)
    ET.register_namespace("gml", NS_GML)
    root = el(None, f"{{{eop}}}Mask", **{f"{{{NS_GML}}}id": f"{mask_type}_{band}"})
    env = el(el(root, f"{{{NS_GML}}}boundedBy"), f"{{{NS_GML}}}Envelope", srsName=f"urn:ogc:def:crs:EPSG::{info.epsg}")
    nrows, ncols = info.sizes[10]
    el(env, f"{{{NS_GML}}}lowerCorner", f"{_num(info.ulx)} {_num(info.uly - nrows * 10)}")
    el(env, f"{{{NS_GML}}}upperCorner", f"{_num(info.ulx + ncols * 10)} {_num(info.uly)}")
    el(root, f"{{{eop}}}maskMembers")
    return to_bytes(root)


def xsd_placeholder(name: str) -> bytes:
    xs = "http://www.w3.org/2001/XMLSchema"
    ET.register_namespace("xs", xs)
    root = el(None, f"{{{xs}}}schema", elementFormDefault="unqualified")
    el(el(root, f"{{{xs}}}annotation"), f"{{{xs}}}documentation",
       f"Placeholder for {name}: s2ingest synthetic product (the real PSD schema is not bundled).")
    return to_bytes(root)


HTML_INDEX = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sentinel-2 Level-2A User Product (synthetic)</title></head>
<body><p>Synthetic Sentinel-2 L2A product written by s2ingest's test kit.</p></body></html>
"""
HTML_XSL = b"""<?xml version="1.0" encoding="UTF-8"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:template match="/"><html><body><xsl:value-of select="name(/*)"/></body></html></xsl:template>
</xsl:stylesheet>
"""
