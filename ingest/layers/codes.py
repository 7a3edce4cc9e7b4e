"""Code tables: how a vector attribute becomes an integer raster code, and back to a name.

The table travels with the data (CF ``flag_values``/``flag_meanings`` plus a ``code_names``
attribute), so a user of the cube never needs the source file to read a class.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ingest.errors import LayerError

# Classes of CBS Bestand Bodemgebruik (BBG 2015/2017), code -> name. Used when the source file
# carries only the code (the real BBG shapefiles carry the code in ``BG2015``).
BBG_CLASSES: dict[int, str] = {
    10: "Spoorterrein", 11: "Wegverkeersterrein", 12: "Vliegveld",
    20: "Woonterrein", 21: "Terrein voor detailhandel en horeca",
    22: "Terrein voor openbare voorzieningen", 23: "Terrein voor sociaal-culturele voorzieningen",
    24: "Bedrijfsterrein", 30: "Stortplaats", 31: "Wrakkenopslagplaats", 32: "Begraafplaats",
    33: "Delfstofwinplaats", 34: "Bouwterrein", 35: "Semi-verhard overig terrein",
    40: "Park en plantsoen", 41: "Sportterrein", 42: "Volkstuin", 43: "Dagrecreatief terrein",
    44: "Verblijfsrecreatief terrein", 50: "Terrein voor glastuinbouw",
    51: "Overig agrarisch terrein", 60: "Bos", 61: "Open droog natuurlijk terrein",
    62: "Open nat natuurlijk terrein", 70: "IJsselmeer/Markermeer", 71: "Afgesloten zeearm",
    72: "Rijn en Maas", 73: "Randmeer", 74: "Spaarbekken", 75: "Recreatief binnenwater",
    76: "Binnenwater voor delfstofwinning", 77: "Vloei- en/of slibveld", 78: "Overig binnenwater",
    80: "Waddenzee, Eems, Dollard", 81: "Oosterschelde", 82: "Westerschelde", 83: "Noordzee",
    90: "Belgie", 91: "Duitsland",
}

_PREFIXED = re.compile(r"^([A-Za-z]{2})(\d+)$")  # CBS statcodes: GM0363, PV27, WK036300, ...


@dataclass
class CodeTable:
    """Integer code -> (source code as in the file, human name)."""

    source: dict[int, str] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def merged(self, other: "CodeTable") -> "CodeTable":
        """Union of two tables; the newer (``other``) wins on a name change."""
        return CodeTable({**self.source, **other.source}, {**self.names, **other.names})

    def cf_attrs(self) -> dict:
        """CF flag attributes plus JSON-friendly lookups (keys are strings in JSON)."""
        codes = sorted(self.source)
        return {
            "flag_values": codes,
            "flag_meanings": " ".join(_flag_word(self.names.get(c, self.source[c])) for c in codes),
            "code_names": {str(c): self.names.get(c, self.source[c]) for c in codes},
            "source_codes": {str(c): self.source[c] for c in codes},
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> "CodeTable":
        src = {int(k): str(v) for k, v in attrs.get("source_codes", {}).items()}
        names = {int(k): str(v) for k, v in attrs.get("code_names", {}).items()}
        return cls(src, names)


def _flag_word(name: str) -> str:
    """CF flag_meanings are blank-separated words: make each name one word."""
    word = re.sub(r"[^0-9A-Za-z_.+-]+", "_", name.strip()).strip("_")
    return word or "unnamed"


def encode(values: np.ndarray, names: np.ndarray | None, max_code: int,
           fixed_names: dict[int, str] | None = None) -> tuple[np.ndarray, CodeTable]:
    """Map attribute values to integer codes (0 is reserved for 'no feature').

    DESIGN CHOICE: codes keep their official numbers so they are stable across editions:
    integers (BBG class, BRP gewascode) stay as they are; CBS statcodes lose their prefix
    (GM0363 -> 363, PV27 -> 27), which is how CBS numbers them too. Anything else (free text)
    is numbered 1..n in sorted order, and that numbering is only valid within one edition
    (the table in the store says what it means).
    """
    vals = [_normalise(v) for v in values]
    if any(v is None for v in vals):
        n = sum(v is None for v in vals)
        raise LayerError(f"{n} feature(s) have no value for the attribute")
    codes, source = _to_integers(vals)
    if codes.size and (codes.min() < 1 or codes.max() > max_code):
        raise LayerError(
            f"codes must lie in 1..{max_code} (0 means 'no feature'); got {codes.min()}..{codes.max()}"
        )
    table = CodeTable(source=source)
    for i, c in enumerate(codes.tolist()):
        if names is not None and _normalise(names[i]) is not None:
            table.names[c] = str(names[i])
        elif fixed_names and c in fixed_names:
            table.names[c] = fixed_names[c]
    return codes, table


def _normalise(v) -> str | int | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode()
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() else str(v)
    s = str(v).strip()
    return s if s else None


def _to_integers(vals: list) -> tuple[np.ndarray, dict[int, str]]:
    if all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in vals):
        codes = np.array([int(v) for v in vals], dtype=np.int64)
        return codes, {int(v): str(v) for v in vals}
    m = [_PREFIXED.match(v) if isinstance(v, str) else None for v in vals]
    if all(m) and len({x.group(1).upper() for x in m}) == 1:
        codes = np.array([int(x.group(2)) for x in m], dtype=np.int64)
        return codes, {int(x.group(2)): str(v) for x, v in zip(m, vals)}
    uniq = sorted({str(v) for v in vals})
    lookup = {s: i + 1 for i, s in enumerate(uniq)}
    return np.array([lookup[str(v)] for v in vals], dtype=np.int64), {i: s for s, i in lookup.items()}


def prefix_of(values: np.ndarray) -> str | None:
    """The common two-letter CBS prefix of the values (GM, PV, ...), or None."""
    prefixes = {m.group(1).upper() for v in values if isinstance(v, str) and (m := _PREFIXED.match(v.strip()))}
    return prefixes.pop() if len(prefixes) == 1 else None


@dataclass(frozen=True)
class LayerSpec:
    """What one published layer variable is and how it is encoded."""

    group: str  # "NL", "NL/BBG", "NL/BRP"
    variable: str
    dtype: str
    long_name: str
    kind: str = "category"  # "category" (coded), "mask" (1 = inside), "index" (feature number)
    name_attribute: str | None = None  # attribute holding the human name, when the source has one
    fixed_names: dict[int, str] | None = None

    @property
    def max_code(self) -> int:
        return int(np.iinfo(self.dtype).max)


# DESIGN CHOICE: one spec per published variable; "index" layers (BRP parcel) are written beside
# the category layer from the same file, so crop and parcel always come from the same features.
SPECS: dict[tuple[str, str], LayerSpec] = {
    (s.group, s.variable): s
    for s in [
        LayerSpec("NL", "municipality", "uint16", "municipality (CBS gemeentecode without GM)", name_attribute="statnaam"),
        LayerSpec("NL", "province", "uint8", "province (CBS provinciecode without PV)", name_attribute="statnaam"),
        LayerSpec("NL", "border", "uint8", "inside the Netherlands (1); 0 = outside", kind="mask"),
        LayerSpec("NL/BBG", "landuse", "uint8", "CBS Bestand Bodemgebruik land-use class", fixed_names=BBG_CLASSES),
        LayerSpec("NL/BRP", "crop", "uint16", "BRP gewascode (crop code)", name_attribute="gewas"),
        LayerSpec("NL/BRP", "parcel", "uint32", "BRP parcel index (1-based feature number in the source file)", kind="index"),
    ]
}
GROUPS = ("NL", "NL/BBG", "NL/BRP")


def resolve_spec(group: str, variable: str | None, values: np.ndarray | None = None) -> LayerSpec:
    """The spec for ``group``/``variable``; for /NL the variable follows from GM/PV codes."""
    group = group.strip("/")
    if group not in GROUPS:
        raise LayerError(f"unknown layer group {group!r}; use one of {', '.join(GROUPS)}")
    if variable is None:
        defaults = {"NL/BBG": "landuse", "NL/BRP": "crop"}
        variable = defaults.get(group)
        if variable is None and values is not None:
            variable = {"GM": "municipality", "PV": "province"}.get(prefix_of(values) or "")
        if variable is None:
            raise LayerError(
                f"group {group}: say which variable with --variable (municipality, province or border); "
                "codes like GM0363 or PV27 are recognised automatically"
            )
    spec = SPECS.get((group, variable))
    if spec is None or spec.kind == "index":
        allowed = [v for (g, v), s in SPECS.items() if g == group and s.kind != "index"]
        raise LayerError(f"group {group} has no variable {variable!r}; use one of {', '.join(allowed)}")
    return spec


def companions(spec: LayerSpec) -> list[LayerSpec]:
    """Index layers written together with ``spec`` (the BRP parcel index with the crop)."""
    return [s for s in SPECS.values() if s.group == spec.group and s.kind == "index"]
