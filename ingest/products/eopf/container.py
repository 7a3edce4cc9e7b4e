"""An EOPF product's container, a ``.zarr`` folder or a zip of one, read key by key with bounds.

Keys are Zarr keys relative to the store root (``.zmetadata``,
``measurements/reflectance/r10m/b02/0.0``). Every read has a size limit checked before the bytes
are read (stat or zip entry) and again while reading (a zip entry may lie about its size).

Hostile containers are refused, never followed:

* a folder: any symbolic link below the product root (a chunk linked to ``/dev/zero`` or to a
  file outside the product), anything but a regular file where a key is read;
* a zip: member names that are absolute, contain ``..`` or backslashes (zip slip), symbolic-link
  entries, a name appearing twice, more members than a real product has, several product roots.

DESIGN CHOICE: the store root in a zip is found by its ``.zmetadata`` at depth 0 (zarr's own
``ZipStore`` convention) or 1 (``<name>.zarr/.zmetadata``, like the SAFE zips of the hubs): the
inner layout of the EOPF Sample Service zip is not verified, so both are accepted.
"""
from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ingest.errors import CorruptProductError, UnsupportedProductError

ZMETADATA = ".zmetadata"
ZARR3_ROOT = "zarr.json"
# A real product has ~3 000 keys with the layout-A chunking (36 chunks per 10 m array); the
# limit leaves a margin of 30x and keeps a hostile zip's central directory cheap to scan.
MAX_MEMBERS = 100_000


def _read_bounded(stream, label: str, key: str, limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise CorruptProductError(label, f"{key} has more than the {limit:,} bytes it may have "
                                         "(more than its zip entry or stat said)")
    return data


def _too_big(label: str, key: str, size: int, limit: int) -> CorruptProductError:
    return CorruptProductError(label, f"{key} has {size:,} bytes, more than the {limit:,} it may have")


class Container:
    """Read access to one product's keys."""

    source: Path
    label: str  # for messages: the file or folder name
    root: str  # inside a zip: the member prefix of the store root ("" or "<name>.zarr")

    def read(self, key: str, limit: int) -> bytes:
        """The whole value of ``key``; CorruptProductError if missing or above ``limit`` bytes."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderContainer(Container):
    """A ``.zarr`` folder; a symbolic link anywhere below its root is refused."""

    def __init__(self, path: Path, label: str) -> None:
        self.source, self.label, self.root = path, label, ""
        self._real = os.path.realpath(path)

    def _path(self, key: str) -> str:
        path = os.path.join(self._real, *PurePosixPath(key).parts)
        # a symlink in any component makes the real path differ from the lexical one
        if os.path.realpath(path) != path:
            raise CorruptProductError(self.label, f"{key} is (or lies under) a symbolic link; "
                                                  "a product's files must be its own")
        return path

    def read(self, key: str, limit: int) -> bytes:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise CorruptProductError(self.label, f"{key} is missing") from None
        except OSError as exc:
            raise CorruptProductError(self.label, f"cannot read {key}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CorruptProductError(self.label, f"{key} is not a regular file")
            if st.st_size > limit:
                raise _too_big(self.label, key, st.st_size, limit)
            try:
                return _read_bounded(f, self.label, key, limit)
            except OSError as exc:
                raise CorruptProductError(self.label, f"cannot read {key}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    def check_no_links(self) -> None:
        """Refuse a product holding any symbolic link (walks the whole tree, no file read)."""
        for top, dirs, files in os.walk(self._real):
            for name in dirs + files:
                if os.path.islink(os.path.join(top, name)):
                    rel = os.path.relpath(os.path.join(top, name), self._real)
                    raise CorruptProductError(self.label, f"{rel} is a symbolic link; a product's files must be its own")


def _bad_member(name: str) -> str | None:
    """Why a zip member name is refused (None: fine)."""
    if "\\" in name or "\x00" in name:
        return "holds a backslash or NUL"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if any(part in ("..", ".", "") for part in name.rstrip("/").split("/")):
        return "walks out of its folder ('..', '.' or an empty part)"
    return None


class ZipContainer(Container):
    """A zip of a product; only the keys asked for are ever decompressed."""

    def __init__(self, path: Path, label: str) -> None:
        self.source, self.label = path, label
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise CorruptProductError(label, f"not a readable zip archive: {exc}") from None
        try:
            self._members = self._scan()
            self.root = self._find_root()
        except BaseException:
            self._zip.close()
            raise

    def _scan(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise CorruptProductError(self.label, f"the zip has {len(infos):,} members, more than the "
                                                  f"{MAX_MEMBERS:,} a product may have")
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            why = _bad_member(info.filename)
            if why:
                raise CorruptProductError(self.label, f"zip member {info.filename!r} {why} (zip slip)")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise CorruptProductError(self.label, f"zip member {info.filename!r} is a symbolic link")
            if info.filename in members:
                raise CorruptProductError(self.label, f"zip member {info.filename!r} appears twice")
            if not info.is_dir():
                members[info.filename] = info
        return members

    def _find_root(self) -> str:
        roots = set()
        for name in self._members:
            parts = name.split("/")
            if len(parts) <= 2 and parts[-1] in (ZMETADATA, ZARR3_ROOT):
                roots.add("/".join(parts[:-1]))
        if not roots:
            raise CorruptProductError(self.label, f"no {ZMETADATA} at the root of the zip or of a folder in it")
        if "" in roots:
            return ""
        if len(roots) > 1:
            raise UnsupportedProductError(self.label, f"zip holds several products: {sorted(roots)}")
        return roots.pop()

    def _member(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def read(self, key: str, limit: int) -> bytes:
        info = self._members.get(self._member(key))
        if info is None:
            raise CorruptProductError(self.label, f"{key} is missing")
        if info.file_size > limit:
            raise _too_big(self.label, key, info.file_size, limit)
        try:
            with self._zip.open(info) as f:
                return _read_bounded(f, self.label, key, limit)
        except CorruptProductError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise CorruptProductError(self.label, f"cannot read {key} from the zip: {exc}") from None

    def exists(self, key: str) -> bool:
        return self._member(key) in self._members

    def close(self) -> None:
        self._zip.close()


def open_container(path: Path, label: str) -> Container:
    """The folder or zip at ``path``; FileNotFoundError when there is nothing."""
    if path.is_dir():
        return FolderContainer(path, label)
    if path.is_file():
        return ZipContainer(path, label)
    raise FileNotFoundError(f"no such product: {path}")
