"""One exception root for s2ingest.

Every error a user can cause (bad product, bad config, unreachable hub, full disk) is an
``S2IngestError``. Subclasses also derive from the builtin kind they resemble, so callers
that catch ``OSError`` or ``ValueError`` keep working (the rasterio habit). Only the CLI
maps these to exit codes (``ingest.cli.exits.EXIT_CODES``).
"""
from __future__ import annotations


class S2IngestError(Exception):
    """Root of every s2ingest error."""


class ConfigError(S2IngestError, ValueError):
    """Invalid configuration, option or argument."""


def require_extra(module: str, option: str, extra: str):
    """``module``, imported; if it is not installed, the one-line refusal of ``option`` naming
    the optional extra that brings it (a ConfigError: exit 3, before any work)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{option} needs {exc.name or module}, which is not installed: "
                          f"pip install \"s2ingest[{extra}]\"") from None


class CatalogMismatchError(ConfigError):
    """The catalog named (--db) belongs to another store than the one named (--store)."""


class UnknownVariableError(ConfigError, KeyError):
    """A variable (band or layer) name that the cube does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown variable"


class EmptySelectionError(ConfigError):
    """A time range or bbox that holds no data of the cube (the answer would be empty)."""


class ProductError(S2IngestError):
    """A product that cannot be ingested. Permanent: the catalog marks it rejected."""

    def __init__(self, product: str, reason: str) -> None:
        super().__init__(f"{product}: {reason}")
        self.product = product
        self.reason = reason

    def __reduce__(self):  # picklable with its two arguments: it crosses worker processes
        return (type(self), (self.product, self.reason))


class CorruptProductError(ProductError, OSError):
    """Unreadable archive or raster (truncated zip, broken JP2)."""


class MetadataError(ProductError, ValueError):
    """Malformed or inconsistent XML metadata."""


class UnsupportedProductError(ProductError, ValueError):
    """Not an L2A product we handle (L1C, the old L2Ap format, ...)."""


class WrongOrbitError(ProductError, ValueError):
    """The product belongs to another relative orbit than the cube."""


class OutsideGridError(ProductError, ValueError):
    """The product does not overlap the cube grid."""


class GridMismatchError(S2IngestError, ValueError):
    """A store was written with a different grid than the one asked for."""


class StoreError(S2IngestError, OSError):
    """The Zarr store cannot be read or written (permissions, full disk, corruption)."""


class TransferTimeoutError(StoreError):
    """A key of a remote store did not arrive within its time (a stalled or trickling server)."""


class StoreBusyError(StoreError):
    """Another process holds the store's writer lock longer than we were willing to wait."""


class StoreLeaseLostError(StoreBusyError):
    """This writer's hold on the store (an S3 lease object or the catalog's store lease) was
    taken over by another writer; it must not publish (fencing), and nothing was published."""


class StalePlanError(StoreError):
    """A write plan was made from another version than the store holds now (re-plan)."""


class NotACubeError(StoreError):
    """A path that is not an s2ingest cube (and not empty), or a Zarr store of another tool."""


class ComputeError(S2IngestError):
    """The workers cannot do the work: a dask scheduler unreachable, a worker process lost
    for good, a worker that cannot read the products."""


class CatalogError(S2IngestError):
    """The catalog database is unreachable, outdated or inconsistent."""


class LeaseLostError(CatalogError):
    """Another worker took over our claim; we must not publish."""


class HubError(S2IngestError, OSError):
    """A product hub failed: unreachable, refused, or sent bad data."""


class HubUnreachableError(HubError):
    """The hub did not answer (DNS, connection refused, timeouts after retries)."""


class AuthenticationError(HubError):
    """The hub refused our credentials."""


class ProductOfflineError(HubError):
    """The product is in the long-term archive; it was requested, try later."""


class ChecksumError(HubError):
    """A downloaded file does not match its checksum."""


class LayerError(S2IngestError, ValueError):
    """A reference-layer input that cannot be rasterised (wrong geometry, no overlap, ...)."""
