"""Build hook: ship the top-level ``alembic/`` migrations inside the wheel as ``catalog._migrations``.

Everything else about the package lives in pyproject.toml. DESIGN CHOICE: ``alembic/`` must stay
a plain directory at the repo root (an ``alembic/__init__.py`` there would shadow the alembic
library for anyone running from the repo root), and ``[tool.setuptools.packages.find]`` cannot
map a directory under another package name, so build_py adds the mapping itself.
``catalog.db.migrations_dir()`` finds the packaged copy, or the source tree's ``alembic/``.
"""
from __future__ import annotations

from setuptools import setup
from setuptools.command.build_py import build_py

MIGRATIONS = {"catalog._migrations": "alembic", "catalog._migrations.versions": "alembic/versions"}
MIGRATION_DATA = {"catalog._migrations": ["script.py.mako"]}


class BuildPyWithMigrations(build_py):
    """build_py that also builds the migrations packages from ``alembic/``."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.packages = list(self.packages or []) + [p for p in MIGRATIONS if p not in (self.packages or [])]
        self.package_dir = {**(self.package_dir or {}), **MIGRATIONS}
        self.package_data = {**(self.package_data or {}), **MIGRATION_DATA}
        # data_files is computed lazily from the lists above; drop any stale cache
        self.__dict__.pop("data_files", None)


setup(cmdclass={"build_py": BuildPyWithMigrations})
