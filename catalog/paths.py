"""Where a store's default catalog lives: a SQLite file beside a local store (no SQLAlchemy
here, so a copy can look for its catalog without loading the database libraries)."""
from __future__ import annotations

from pathlib import Path

from ingest.errors import ConfigError

CATALOG_SUFFIX = ".catalog.sqlite"


def catalog_path_for_store(store_path: str | Path) -> Path:
    """``<dir>/<name>.catalog.sqlite`` beside a local store ``<dir>/<name>.zarr``.

    DESIGN CHOICE: beside the store, not inside it: the store is mirrored and served as is, and
    a database file (with its -wal/-shm companions) inside it would be copied half-written.
    """
    text = str(store_path)
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(
            f"store {text} is not on a local disk: give the catalog URL explicitly "
            "(a SQLite file on a local disk, or PostgreSQL)"
        )
    path = Path(text.removeprefix("file://")).expanduser().resolve()
    name = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    if not name:
        raise ConfigError(f"cannot derive a catalog name from the store path {text!r}")
    return path.parent / (name + CATALOG_SUFFIX)


def default_url_for_store(store_path: str | Path) -> str:
    """``sqlite:///<dir>/<name>.catalog.sqlite`` beside a local store (``catalog_path_for_store``)."""
    return f"sqlite:///{catalog_path_for_store(store_path)}"
