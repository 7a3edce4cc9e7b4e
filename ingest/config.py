"""Settings: command-line options over environment over config file over defaults.

Several cubes can live side by side: each is a ``--store`` path with its own catalog
(``--db``, SQLite next to the store by default). The config file is TOML:

    store = "/data/nl.zarr"
    db = "postgresql://cube@db/cube"
    orbit = 51
    grid = "NL"          # only for a new store: an existing one has its own grid
    cache = "/data/s2-cache"
    [resampling]
    "*" = "bilinear"
    SCL = "nearest"
    [hub]
    name = "cdse"
    [versions]            # retention (`s2ingest versions expire`)
    keep = 20
    max_age_days = 30
    grace_hours = 1

It is found at ``--config FILE``, ``$S2INGEST_CONFIG``, ``./s2ingest.toml`` or
``~/.config/s2ingest/config.toml`` (first one that exists).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from ingest.errors import ConfigError

ENV_PREFIX = "S2INGEST_"
DEFAULT_STORE = "s2ingest-cube.zarr"


@dataclass(frozen=True)
class Settings:
    store: Path | str = Path(DEFAULT_STORE)  # a str only for a URL (s3://bucket/prefix/nl.zarr)
    db: str | None = None  # None: SQLite next to the store
    orbit: int = 51
    grid: str | None = None  # None: the store's own grid (NL for a new store)
    cache: Path | None = None  # None: "<store>.cache" beside the store
    resampling: dict[str, str] = field(default_factory=dict)
    hub: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    s3_endpoint: str | None = None  # S3-compatible server (None: AWS or AWS_ENDPOINT_URL[_S3])
    versions: dict[str, Any] = field(default_factory=dict)  # retention: keep, max_age_days, grace_hours

    @property
    def db_url(self) -> str:
        from catalog.db import default_url_for_store

        return self.db or default_url_for_store(self.store)

    @property
    def cache_dir(self) -> Path:
        if self.cache is not None:
            return self.cache
        if isinstance(self.store, str):  # a URL: the cache goes in the current folder
            return Path(self.store.rstrip("/").rsplit("/", 1)[-1] + ".cache")
        return self.store.with_name(self.store.name + ".cache")


def config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """The config file in effect, if any."""
    candidates = [explicit, os.environ.get(ENV_PREFIX + "CONFIG"), "s2ingest.toml",
                  Path.home() / ".config" / "s2ingest" / "config.toml"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    if explicit:
        raise ConfigError(f"config file {explicit} does not exist")
    return None


def _from_mapping(base: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        try:
            if key == "store" and "://" in str(value):
                # DESIGN CHOICE: a URL stays a string (Path would fold "s3://" into "s3:/")
                changes[key] = str(value).rstrip("/")
            elif key in ("store", "cache"):
                changes[key] = Path(value).expanduser()
            elif key == "s3_endpoint":
                if not str(value).startswith(("http://", "https://")):
                    raise ConfigError(f"{origin}: s3_endpoint {value!r} is not an http(s):// URL")
                changes[key] = str(value)
            elif key in ("orbit", "threads"):
                changes[key] = int(value)
            elif key == "db":
                if "://" not in str(value):
                    raise ConfigError(f"{origin}: db {value!r} is not a database URL; use e.g. "
                                      "sqlite:///path/nl.catalog.sqlite or postgresql://user@host/db")
                changes[key] = str(value)
            elif key == "grid":
                changes[key] = str(value)
            elif key == "versions":
                allowed = {"keep", "max_age_days", "grace_hours"}
                unknown = set(dict(value)) - allowed
                if unknown:
                    raise ConfigError(f"{origin}: unknown [versions] setting(s) {sorted(unknown)}")
                changes[key] = {**base.versions, **{k: float(v) for k, v in dict(value).items()}}
            elif key in ("resampling", "hub"):
                changes[key] = {**getattr(base, key), **dict(value)}
            else:
                raise ConfigError(f"{origin}: unknown setting {key!r}")
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{origin}: bad value for {key!r}: {exc}") from None
    return replace(base, **changes)


def load_settings(cli: Mapping[str, Any] | None = None, config: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < config file < environment < command line."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    path = config_file(config)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        settings = _from_mapping(settings, data, str(path))
    env = {k: environ.get(ENV_PREFIX + k.upper())
           for k in ("store", "orbit", "grid", "cache", "threads", "s3_endpoint")}
    env["db"] = environ.get(ENV_PREFIX + "DB_URL")
    settings = _from_mapping(settings, env, "environment")
    return _from_mapping(settings, dict(cli or {}), "command line")
