"""The exit codes of ``s2ingest`` (documented in the README, "Exit codes"): one table.

The entry point (``ingest.cli.main``) maps every ``S2IngestError`` to its code here; the few
commands that end with a code of their own (``sync``: partial, ``verify``: mismatch) take it
from here too.
"""
from __future__ import annotations

from ingest.errors import (
    CatalogError, ConfigError, GridMismatchError, HubError, LayerError, ProductError,
    S2IngestError, StoreError,
)

EXIT_OK = 0
EXIT_ERROR = 1  # any other s2ingest error
EXIT_USAGE = 2  # click's own command-line usage errors (unknown option, missing argument)
EXIT_CONFIG = 3  # bad configuration, option or argument value
EXIT_PRODUCT = 4  # a bad product stopped the command
EXIT_HUB = 5  # hub unreachable or credentials refused
EXIT_STORE = 6  # store problem: other grid, not a cube, busy, disk, damaged chunk
EXIT_CATALOG = 7  # catalog database unreachable or outdated
EXIT_LAYER = 8  # bad reference-layer input
EXIT_MISMATCH = 9  # `verify` found mismatches
EXIT_PARTIAL = 10  # the run finished, but some products were rejected or failed
EXIT_INTERRUPTED = 130  # Ctrl-C (rerun the same command to resume)

# Error class -> exit code, first match wins (subclasses before their bases).
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (ConfigError, EXIT_CONFIG),
    (ProductError, EXIT_PRODUCT),
    (HubError, EXIT_HUB),
    (GridMismatchError, EXIT_STORE),
    (StoreError, EXIT_STORE),
    (CatalogError, EXIT_CATALOG),
    (LayerError, EXIT_LAYER),
    (S2IngestError, EXIT_ERROR),
]


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error (1 for anything not in ``EXIT_CODES``)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR
