"""What readers see of a cube: its version and the time axis of an imagery group."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from ingest.store.layout import GROUP_VERSION_ATTR, VERSION_ATTR


@dataclass(frozen=True)
class PublishedState:
    """The time axis and provenance of one imagery group as readers see it."""

    times: tuple[datetime, ...]
    platforms: tuple[str, ...]
    datatake_ids: tuple[str, ...]
    products: tuple[tuple[str, ...], ...]
    version: int  # the store-wide version these were read at
    group_version: int = 0  # the version that last wrote this group

    @property
    def length(self) -> int:
        return len(self.times)


EMPTY_STATE = PublishedState((), (), (), (), 0)


def to_ms(t: datetime) -> int:
    return int(round(t.timestamp() * 1000))


def version_of(root_meta: dict) -> int:
    """The store version in a root ``.zmetadata``; stores written before store-wide versions
    carry it only per group (their versions came from one cube-wide counter)."""
    attrs = root_meta.get(".zattrs", {})
    if VERSION_ATTR in attrs:
        return int(attrs[VERSION_ATTR])
    found = [int(doc.get(GROUP_VERSION_ATTR, 0)) for key, doc in root_meta.items()
             if key.endswith(".zattrs")]
    return max(found, default=0)


def read_state(column: Callable[[str], np.ndarray], meta: dict[str, dict] | None,
               version: int) -> PublishedState:
    """The state of a group from its consolidated metadata ``meta`` (None: no such group) and
    ``column(name)``, which reads one of its 1-D arrays."""
    if meta is None or "time/.zarray" not in meta:
        return PublishedState((), (), (), (), version)
    group_version = int(meta.get(".zattrs", {}).get(GROUP_VERSION_ATTR, 0))
    ms = column("time")
    times = tuple(datetime.fromtimestamp(int(v) / 1000, tz=timezone.utc) for v in ms)

    def col(name: str) -> tuple[str, ...]:
        return tuple(str(v) for v in column(name)) if len(ms) else ()

    products = tuple(tuple(p for p in s.split(",") if p) for s in col("products"))
    return PublishedState(times, col("platform"), col("datatake_id"), products, version, group_version)
