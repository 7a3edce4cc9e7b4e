"""One SAFE XML document, parsed safely and indexed by local element name.

Parsing goes through defusedxml (no entity expansion, no external references); callers hand
in bytes already read with a size limit (``container``). Elements are matched on their local
names, so the psd-12/14/15 namespaces and any prefixes all work.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from ingest.errors import MetadataError

_TIME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?"
    r"(?P<tz>Z|[+-]\d{2}:?\d{2})?$"
)


def _local(tag: str) -> str:
    """Local name of a tag, '{ns}Name' or 'prefix:Name' -> 'Name'."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


class _Doc:
    """A parsed XML member with a local-name index, and its names for error messages.

    DESIGN CHOICE: index every element by local name once; the SAFE XMLs use the same
    local names at every PSD version while namespaces (psd-12/14/15) and prefixes change.
    """

    def __init__(self, data: bytes, product: str, member: str) -> None:
        self.product = product
        self.member = member
        try:
            self.root: Element = DET.fromstring(data)
        except (ParseError, DefusedXmlException, ValueError) as exc:
            raise MetadataError(product, f"malformed XML in {member}: {exc}") from None
        self._index: dict[str, list[Element]] = {}
        for el in self.root.iter():
            if isinstance(el.tag, str):
                self._index.setdefault(_local(el.tag), []).append(el)

    @property
    def root_name(self) -> str:
        return _local(self.root.tag)

    def all(self, name: str) -> list[Element]:
        return self._index.get(name, [])

    def first(self, *names: str) -> Element | None:
        for name in names:
            found = self._index.get(name)
            if found:
                return found[0]
        return None

    def text(self, *names: str, required: bool = True) -> str | None:
        """Stripped text of the first element with one of ``names``."""
        el = self.first(*names)
        text = (el.text or "").strip() if el is not None else ""
        if not text:
            if required:
                raise self.error(f"missing {'/'.join(names)}")
            return None
        return text

    def error(self, reason: str) -> MetadataError:
        return MetadataError(self.product, f"{self.member}: {reason}")

    def number(self, *names: str, required: bool = True) -> float | None:
        text = self.text(*names, required=required)
        if text is None:
            return None
        return self.to_float(text, names[0])

    def to_float(self, text: str, what: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"{what} is not a number: {text!r}") from None
        if not math.isfinite(value):
            raise self.error(f"{what} is not finite: {text!r}")
        return value

    def to_int(self, text: str | None, what: str) -> int:
        try:
            return int(str(text).strip())
        except ValueError:
            raise self.error(f"{what} is not an integer: {text!r}") from None

    def time(self, *names: str) -> datetime:
        return _parse_time(self.text(*names), self, names[0])


def _child(el: Element, name: str) -> Element | None:
    for c in el:
        if isinstance(c.tag, str) and _local(c.tag) == name:
            return c
    return None


def _parse_time(text: str | None, doc: _Doc, what: str) -> datetime:
    """ISO time as in SAFE metadata ('...59.024Z', '....000000Z', '...10Z') -> aware UTC.

    DESIGN CHOICE: a time without zone is UTC (all Sentinel-2 metadata times are UTC);
    fractions beyond microseconds are truncated.
    """
    m = _TIME_RE.match((text or "").strip())
    if not m:
        raise doc.error(f"{what} is not an ISO time: {text!r}")
    frac = (m["frac"] or "0")[:6].ljust(6, "0")
    tz = m["tz"] or "Z"
    try:
        t = datetime.fromisoformat(f"{m['date']}T{m['time']}.{frac}")
    except ValueError:
        raise doc.error(f"{what} is not a valid time: {text!r}") from None
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        t -= sign * timedelta(hours=hh, minutes=mm)
    return t.replace(tzinfo=timezone.utc)
