"""Catalog database URLs: normalised, shown without their password, and the error for a
database that cannot be reached (shared by ``catalog.db`` and ``catalog.locks``)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from ingest.errors import CatalogError, ConfigError


def normalize_url(url: str | URL | Path) -> URL:
    """A SQLAlchemy URL; a bare path means SQLite, ``postgresql://`` means psycopg 3.

    DESIGN CHOICE: psycopg 3 (``psycopg[binary]``, the ``postgres`` extra) is the PostgreSQL
    driver; plain ``postgresql://`` and ``postgres://`` URLs (and ``postgresql+psycopg2://``
    ones from older configurations) are pinned to ``postgresql+psycopg`` here, whichever
    default the installed SQLAlchemy has.
    """
    if isinstance(url, Path) or (isinstance(url, str) and "://" not in url and url not in ("", ":memory:")):
        return URL.create("sqlite", database=str(Path(url).expanduser().resolve()))
    try:
        u = make_url(url) if not isinstance(url, URL) else url
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r} ({exc})") from None
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def display_url(url: str | URL | Path | Engine) -> str:
    """The URL without its password, for messages."""
    u = url.url if isinstance(url, Engine) else normalize_url(url)
    return u.render_as_string(hide_password=True)


def unreachable(engine: Engine | URL | str, exc: BaseException) -> CatalogError:
    """The CatalogError for a database we cannot talk to."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    return CatalogError(f"cannot reach the catalog database {display_url(engine)}: {detail}")
