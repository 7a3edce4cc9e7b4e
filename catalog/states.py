"""Product states and the one table of allowed transitions (DESIGN.md §6).

Everything that moves a product between states consults ``TRANSITIONS``; the guarded UPDATEs
in ``catalog.work`` are generated from it, so the table is the whole truth of the worker
protocol. The only other moves are the crash repairs in ``REPAIRS`` (reconcile_published).
"""
from __future__ import annotations

import enum
from datetime import timedelta
from typing import Iterable, Mapping


class State(str, enum.Enum):
    """Where a product is in the pipeline. Stored as its string value."""

    DISCOVERED = "discovered"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INGESTING = "ingesting"
    PUBLISHED = "published"
    FAILED = "failed"  # retryable: attempts, next_attempt_at, failed_stage
    REJECTED = "rejected"  # permanent: reason
    SUPERSEDED = "superseded"  # superseded_by
    OFFLINE = "offline"  # waiting for the hub (LTA): next_attempt_at

    def __str__(self) -> str:
        return self.value


class Guard(enum.Enum):
    """What an UPDATE must check besides the from-state."""

    CLAIM = "claim"  # only through claim(): sets a fresh lease
    LEASE = "lease"  # the worker must hold a live lease on the row
    FREE = "free"  # anyone (discovery, supersede, operator) may do it


S = State
ALL_STATES: tuple[str, ...] = tuple(s.value for s in State)
# DESIGN CHOICE: only the two "working" states carry a lease. A row in them without a live
# lease belongs to a crashed worker and is reclaimable by the next claim of the same stage.
LEASED_STATES: frozenset[str] = frozenset({S.DOWNLOADING.value, S.INGESTING.value})
TERMINAL_STATES: frozenset[str] = frozenset({S.REJECTED.value, S.SUPERSEDED.value})

# (from, to) -> guard. Anything not listed is illegal and raises CatalogError.
TRANSITIONS: Mapping[tuple[str, str], Guard] = {
    (f.value, t.value): g
    for f, t, g in [
        # claims (and reclaims of a lapsed lease: the same state again, new owner)
        (S.DISCOVERED, S.DOWNLOADING, Guard.CLAIM),
        (S.OFFLINE, S.DOWNLOADING, Guard.CLAIM),
        (S.FAILED, S.DOWNLOADING, Guard.CLAIM),
        (S.DOWNLOADING, S.DOWNLOADING, Guard.CLAIM),
        (S.DOWNLOADED, S.INGESTING, Guard.CLAIM),
        (S.FAILED, S.INGESTING, Guard.CLAIM),
        (S.INGESTING, S.INGESTING, Guard.CLAIM),
        # what the lease holder reports
        (S.DOWNLOADING, S.DOWNLOADED, Guard.LEASE),
        (S.DOWNLOADING, S.FAILED, Guard.LEASE),
        (S.DOWNLOADING, S.OFFLINE, Guard.LEASE),
        (S.DOWNLOADING, S.REJECTED, Guard.LEASE),
        (S.DOWNLOADING, S.DISCOVERED, Guard.LEASE),  # release()
        (S.INGESTING, S.PUBLISHED, Guard.LEASE),
        (S.INGESTING, S.FAILED, Guard.LEASE),
        (S.INGESTING, S.REJECTED, Guard.LEASE),
        (S.INGESTING, S.DOWNLOADED, Guard.LEASE),  # release()
        # decisions taken outside a worker (operator, hub drift)
        (S.DISCOVERED, S.REJECTED, Guard.FREE),
        (S.OFFLINE, S.REJECTED, Guard.FREE),
        (S.FAILED, S.REJECTED, Guard.FREE),
        (S.DOWNLOADED, S.REJECTED, Guard.FREE),
        # a rejected product is retried when its file changed or an operator asks (`retry`)
        (S.REJECTED, S.DISCOVERED, Guard.FREE),
    ]
} | {
    # DESIGN CHOICE: supersede needs no lease: a newer product makes the work of whoever holds
    # the older one pointless; its worker finds out when its next guarded update fails.
    (f, S.SUPERSEDED.value): Guard.FREE
    for f in ALL_STATES
    if f not in TERMINAL_STATES
}

# DESIGN CHOICE: repairs from the store's truth are not worker transitions: they are not in
# TRANSITIONS (so transition() and claim() can never take them, and "discovered -> published"
# stays illegal for workers) but listed here, and applied only by
# ``catalog.publish.reconcile_published`` after a crash between the store and catalog commits.
# to-state -> the from-states a repair may move. Terminal states are never repaired.
REPAIRS: Mapping[str, frozenset[str]] = {
    # the store holds the product: whatever lease it carries, its work is done
    S.PUBLISHED.value: frozenset({S.DISCOVERED.value, S.DOWNLOADING.value, S.DOWNLOADED.value,
                                  S.INGESTING.value, S.FAILED.value, S.OFFLINE.value}),
    # the catalog says published, the store does not hold it: ingest again (from the cache,
    # or download first when no local copy was ever recorded)
    S.DOWNLOADED.value: frozenset({S.PUBLISHED.value}),
    S.DISCOVERED.value: frozenset({S.PUBLISHED.value}),
}

# Where release() sends a leased row back to.
RELEASE_TO: Mapping[str, str] = {S.DOWNLOADING.value: S.DISCOVERED.value, S.INGESTING.value: S.DOWNLOADED.value}


def _value(state: str | State) -> str:
    return state.value if isinstance(state, State) else str(state)


def guard(from_state: str | State, to_state: str | State) -> Guard | None:
    """The guard of a transition, or None when it is illegal."""
    return TRANSITIONS.get((_value(from_state), _value(to_state)))


def is_allowed(from_state: str | State, to_state: str | State) -> bool:
    return guard(from_state, to_state) is not None


def sources(to_state: str | State, guards: Iterable[Guard]) -> dict[Guard, tuple[str, ...]]:
    """From-states that may reach ``to_state``, grouped by guard (only the guards asked for)."""
    wanted = set(guards)
    out: dict[Guard, list[str]] = {g: [] for g in wanted}
    for (f, t), g in TRANSITIONS.items():
        if t == _value(to_state) and g in wanted and f != t:
            out[g].append(f)
    return {g: tuple(sorted(v)) for g, v in out.items()}


def validate_state(state: str | State) -> str:
    """The state's string value; ValueError for unknown names (catches typos early)."""
    value = _value(state)
    if value not in ALL_STATES:
        raise ValueError(f"unknown product state {value!r} (one of {', '.join(ALL_STATES)})")
    return value


def backoff(
    attempts: int, base: timedelta = timedelta(minutes=1), cap: timedelta = timedelta(hours=6)
) -> timedelta:
    """Exponential backoff before retry number ``attempts`` + 1: base * 2**(attempts-1), capped.

    DESIGN CHOICE: no jitter here; the catalog clock and the claim order already spread workers,
    and a deterministic delay is testable. Hub requests add their own jitter.
    """
    n = max(attempts, 1) - 1
    if n >= 32:
        return cap
    return min(base * (2**n), cap)
