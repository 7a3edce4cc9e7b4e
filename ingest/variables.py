"""The cube's variables: what each one is, where it comes from in a SAFE, how it is encoded.

This table is the single source of truth for the store encoding (DESIGN.md §3, a contract),
for the SAFE reader (which file feeds which variable) and for the synthetic products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ingest.errors import UnknownVariableError

Kind = Literal["reflectance", "classes", "probability", "aot", "wvp"]

SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}


@dataclass(frozen=True)
class VariableSpec:
    """How one cube variable is read from a SAFE and encoded in the store."""

    name: str
    kind: Kind
    dtype: str
    fill_value: int
    resolution: int  # the SAFE resolution folder we read it from (metres)
    long_name: str
    units: str = "1"
    scale_factor: float | None = None
    # a name of ``rasterio.enums.Resampling`` (a name, so this table imports no GDAL binding)
    default_resampling: str = "bilinear"
    wavelength_nm: float | None = None

    @property
    def is_reflectance(self) -> bool:
        return self.kind == "reflectance"

    def cf_attrs(self) -> dict:
        """CF attributes of the store variable (encoding attrs like _FillValue are separate)."""
        attrs: dict = {"long_name": self.long_name, "units": self.units}
        if self.kind == "reflectance":
            attrs["standard_name"] = "surface_bidirectional_reflectance"
            attrs["wavelength_nm"] = self.wavelength_nm
        if self.kind == "classes":
            codes = sorted(SCL_CLASSES)
            attrs["flag_values"] = codes
            attrs["flag_meanings"] = " ".join(SCL_CLASSES[c] for c in codes)
            attrs.pop("units")
        return attrs


def _refl(name: str, res: int, wl: float) -> VariableSpec:
    return VariableSpec(
        name=name, kind="reflectance", dtype="uint16", fill_value=0, resolution=res,
        long_name=f"bottom-of-atmosphere reflectance {name}", scale_factor=1e-4,
        wavelength_nm=wl,
    )


# DESIGN CHOICE: each variable is read from its *native* resolution folder. B01 exists at
# 20 m only from PB 04.00 on (an upsampled copy of the 60 m band); reading 60 m for every
# baseline keeps PB<04 and PB>=04 twins identical. AOT and WVP are retrieved at 20 m or
# coarser and merely resampled into R10m, so reading R20m costs a quarter of the decoding.
VARIABLES: dict[str, VariableSpec] = {
    v.name: v
    for v in [
        _refl("B01", 60, 442.7),
        _refl("B02", 10, 492.7),
        _refl("B03", 10, 559.8),
        _refl("B04", 10, 664.6),
        _refl("B05", 20, 704.1),
        _refl("B06", 20, 740.5),
        _refl("B07", 20, 782.8),
        _refl("B08", 10, 832.8),
        _refl("B8A", 20, 864.7),
        _refl("B09", 60, 945.1),
        _refl("B11", 20, 1613.7),
        _refl("B12", 20, 2202.4),
        VariableSpec("SCL", "classes", "uint8", 0, 20, "scene classification (sen2cor)",
                     default_resampling="nearest"),
        VariableSpec("CLD", "probability", "uint8", 255, 20, "cloud probability",
                     units="1", scale_factor=0.01),
        VariableSpec("SNW", "probability", "uint8", 255, 20, "snow probability",
                     units="1", scale_factor=0.01),
        VariableSpec("WVP", "wvp", "uint16", 0, 20, "water vapour column",
                     units="cm", scale_factor=1e-3),
        VariableSpec("AOT", "aot", "uint16", 0, 20, "aerosol optical thickness at 550 nm",
                     units="1", scale_factor=1e-3),
    ]
}

VARIABLE_NAMES: tuple[str, ...] = tuple(VARIABLES)
REFLECTANCE_BANDS: tuple[str, ...] = tuple(n for n, v in VARIABLES.items() if v.is_reflectance)

# MTD_MSIL2A.xml BOA_ADD_OFFSET@band_id -> band name (Spectral_Information bandId mapping).
BAND_ID_TO_NAME: dict[int, str] = {
    0: "B01", 1: "B02", 2: "B03", 3: "B04", 4: "B05", 5: "B06", 6: "B07",
    7: "B08", 8: "B8A", 9: "B09", 10: "B10", 11: "B11", 12: "B12",
}


def get_variable(name: str) -> VariableSpec:
    """Look a variable up by name, with a message that lists the valid ones."""
    try:
        return VARIABLES[name]
    except KeyError:
        raise UnknownVariableError(
            f"unknown variable {name!r}; known: {', '.join(VARIABLE_NAMES)}"
        ) from None
