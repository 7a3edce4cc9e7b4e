"""Hostile products for tests: a synthetic product with one file damaged or wrong (SAFE or EOPF).

Every function edits one file of a ``.SAFE`` folder written by ``make_product`` and updates
that file's size and checksum in ``manifest.safe``, so the product still passes verification
and the damage reaches the reader, the raster checks or the decoder, as it would with a
product that was broken before the ground segment checksummed it.

    >>> safe = make_product(tmp_path, tile="31UFT", datatake_start=when, window=(5400, 0, 180, 360))
    >>> corrupt_raster(safe, "B04", "truncate")                     # doctest: +SKIP
    >>> rewrite_raster(safe, "B03", shift=(10, 0))                  # doctest: +SKIP
    >>> zip_with_padded_member(safe, dest, "MTD_MSIL2A.xml", 2 << 30)  # doctest: +SKIP

EOPF Zarr products (``eopf_*``) have no checksums to keep in step: a band missing, a chunk
damaged, an array's shape or georeferencing wrong, hostile root attributes, a zip slip.
"""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine

from ingest.variables import VARIABLES
from ingest.synth.safe_writer import JP2_OPTIONS, checksum_algorithm, file_checksum
from ingest.products.checksums import new_hash

MANIFEST = "manifest.safe"
PAD_BLOCK = 1 << 24  # 16 MiB of padding per write: a 2 GiB member never sits in memory


def _manifest_entry(text: str, rel: str) -> re.Match:
    m = re.search(r'size="(\d+)">\s*<fileLocation href="\./' + re.escape(rel)
                  + r'"[^>]*/>\s*<checksum checksumName="([^"]+)">([0-9a-fA-F]+)<', text)
    if m is None:
        raise KeyError(f"{rel} is not listed in manifest.safe")
    return m


def _set_manifest_entry(text: str, rel: str, size: int, digest: str) -> str:
    m = _manifest_entry(text, rel)
    return text[:m.start(1)] + str(size) + text[m.end(1):m.start(3)] + digest + text[m.end(3):]


def _algorithm(safe: Path, rel: str) -> str:
    return _manifest_entry((Path(safe) / MANIFEST).read_text(), rel).group(2)


def update_manifest(safe: str | Path, rel: str) -> None:
    """Make manifest.safe's size and checksum of ``rel`` match the file as it now is."""
    safe = Path(safe)
    text = (safe / MANIFEST).read_text()
    algo = _manifest_entry(text, rel).group(2)
    path = safe / rel
    text = _set_manifest_entry(text, rel, path.stat().st_size, file_checksum(path, algo))
    (safe / MANIFEST).write_text(text)


def raster_path(safe: str | Path, variable: str, resolution: int | None = None) -> str:
    """The path (relative to the SAFE root) of the raster the ingest reads for ``variable``."""
    from ingest.products.safe import read_product

    res = resolution or VARIABLES[variable].resolution
    return read_product(safe).file_for(variable, res)


def corrupt_raster(safe: str | Path, variable: str,
                   how: Literal["garbage", "truncate"] = "garbage") -> str:
    """Damage the raster of ``variable``: ``garbage`` replaces every byte (it no longer opens),
    ``truncate`` keeps the first half (the header opens; decoding fails half way)."""
    safe = Path(safe)
    rel = raster_path(safe, variable)
    path = safe / rel
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(f"how must be 'garbage' or 'truncate', not {how!r}")
    update_manifest(safe, rel)
    return rel


def rewrite_raster(safe: str | Path, variable: str, *, shift: tuple[float, float] = (0.0, 0.0),
                   crs: str | None = None, dtype: str | None = None, drop_columns: int = 0,
                   from_resolution: int | None = None) -> str:
    """Rewrite the raster of ``variable`` with wrong georeferencing or content type.

    ``shift``: origin moved by (dx, dy) metres; ``crs``: another CRS declared (same numbers);
    ``dtype``: pixels cast to another type; ``drop_columns``: that many columns cut off the
    east edge; ``from_resolution``: the file of the same variable at another resolution put in
    its place (e.g. a 20 m file in the 10 m slot).
    """
    safe = Path(safe)
    rel = raster_path(safe, variable)
    source = safe / (raster_path(safe, variable, from_resolution) if from_resolution else rel)
    with rasterio.open(source) as src:
        data, profile = src.read(), src.profile
    t: Affine = profile["transform"]
    profile.update(transform=Affine(t.a, t.b, t.c + shift[0], t.d, t.e, t.f + shift[1]))
    if crs is not None:
        profile.update(crs=crs)
    if dtype is not None:
        data = data.astype(dtype)
        profile.update(dtype=dtype)
    if drop_columns:
        data = np.ascontiguousarray(data[:, :, : data.shape[2] - drop_columns])
        profile.update(width=data.shape[2])
    profile.update(driver="JP2OpenJPEG", **JP2_OPTIONS)
    for key in ("blockxsize", "blockysize", "tiled", "nodata"):
        profile.pop(key, None)
    out = safe / rel
    out.unlink()
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    update_manifest(safe, rel)
    return rel


def zip_with_padded_member(safe: str | Path, dest: str | Path, rel: str, size: int, *,
                           match_manifest: bool = True) -> Path:
    """A hub-style zip of ``safe`` whose member ``rel`` is padded with spaces to ``size`` bytes.

    Trailing whitespace keeps the XML well-formed, and it deflates about 1000:1, so a 2 GiB
    member makes a zip of a few MB; the padding is written in ``PAD_BLOCK`` pieces (nothing
    big is held in memory or written to disk). ``match_manifest``: manifest.safe gets the
    padded member's size and checksum (it is written last, after the member is hashed).
    """
    safe, dest = Path(safe), Path(dest)
    algo = _algorithm(safe, rel) if match_manifest else checksum_algorithm("05.09")
    original = (safe / rel).read_bytes()
    if size < len(original):
        raise ValueError(f"{rel} already has {len(original)} bytes")
    root = safe.name
    # compresslevel 1: a run of spaces deflates as well as at level 6, several times faster
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in sorted(safe.rglob("*")):
            name = p.relative_to(safe).as_posix()
            if p.is_dir() or name in (rel, MANIFEST):
                continue
            zf.write(p, f"{root}/{name}",
                     compress_type=zipfile.ZIP_STORED if p.suffix == ".jp2" else zipfile.ZIP_DEFLATED)
        h = new_hash(algo)
        with zf.open(f"{root}/{rel}", "w", force_zip64=True) as f:
            f.write(original)
            h.update(original)
            left = size - len(original)
            block = b" " * PAD_BLOCK
            while left > 0:
                piece = block if left >= PAD_BLOCK else block[:left]
                f.write(piece)
                h.update(piece)
                left -= len(piece)
        manifest = (safe / MANIFEST).read_text()
        if match_manifest:
            manifest = _set_manifest_entry(manifest, rel, size, h.hexdigest())
        zf.writestr(f"{root}/{MANIFEST}", manifest)
    return dest


# ------------------------------------------------------------------------------------------
# EOPF Zarr products: they carry no checksums, so a damaged file needs no manifest update;
# every function edits a ``.zarr`` folder written by ``make_product(..., format="eopf")``
# (the consolidated ``.zmetadata`` and the per-array documents alike, as a writer would).


def _edit_metadata(store: Path, key: str, change) -> None:
    """Apply ``change(document)`` to ``key`` (e.g. "measurements/reflectance/r10m/b04/.zarray")
    in ``.zmetadata`` and in the key's own file."""
    zmeta = json.loads((store / ".zmetadata").read_text())
    doc = zmeta["metadata"][key]
    change(doc)
    (store / ".zmetadata").write_text(json.dumps(zmeta, indent=2))
    (store / key).write_text(json.dumps(doc, indent=2))


def eopf_drop_array(store: str | Path, path: str) -> str:
    """Remove the array ``path`` (its chunks and its metadata): a product missing a band."""
    store = Path(store)
    zmeta = json.loads((store / ".zmetadata").read_text())
    for leaf in (".zarray", ".zattrs"):
        zmeta["metadata"].pop(f"{path}/{leaf}", None)
    (store / ".zmetadata").write_text(json.dumps(zmeta, indent=2))
    shutil.rmtree(store / path)
    return path


def eopf_corrupt_chunk(store: str | Path, path: str, index: tuple[int, ...] = (0, 0),
                       how: Literal["garbage", "truncate", "missing"] = "garbage") -> str:
    """Damage one chunk of ``path``: random bytes of the same length, the first half only, or
    no chunk at all. Returns the chunk key."""
    store = Path(store)
    key = f"{path}/{'.'.join(map(str, index))}"
    data = (store / key).read_bytes()
    if how == "garbage":
        (store / key).write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "truncate":
        (store / key).write_bytes(data[: len(data) // 2])
    elif how == "missing":
        (store / key).unlink()
    else:
        raise ValueError(f"how must be 'garbage', 'truncate' or 'missing', not {how!r}")
    return key


def eopf_rewrite_array(store: str | Path, path: str, *, shift: tuple[float, float] = (0.0, 0.0),
                       drop_columns: int = 0, dtype: str | None = None) -> str:
    """Wrong metadata of one array: its ``proj:transform`` origin moved by (dx, dy) metres,
    ``drop_columns`` fewer columns in its shape, or another declared dtype."""
    store = Path(store)

    def attrs(doc: dict) -> None:
        t = doc["proj:transform"]
        t[2] += shift[0]
        t[5] += shift[1]

    def zarray(doc: dict) -> None:
        doc["shape"][-1] -= drop_columns
        if dtype is not None:
            doc["dtype"] = dtype

    if shift != (0.0, 0.0):
        _edit_metadata(store, f"{path}/.zattrs", attrs)
    if drop_columns or dtype is not None:
        _edit_metadata(store, f"{path}/.zarray", zarray)
    return path


def eopf_hostile_metadata(store: str | Path, how: Literal["huge", "deep", "huge-string"],
                          size: int = 64 << 20) -> Path:
    """Root attributes no real product has: ``huge`` (an attribute that makes ``.zmetadata``
    ``size`` bytes), ``huge-string`` (one 2 MiB string inside a small document) or ``deep``
    (nesting 10 000 levels deep)."""
    store = Path(store)
    text = (store / ".zmetadata").read_text()
    marker = '"other_metadata": {'
    if marker not in text:
        text = json.dumps(json.loads(text), indent=2)
    if how == "deep":
        text = text.replace(marker, marker + '"nested": ' + "[" * 10_000 + "]" * 10_000 + ", ", 1)
    elif how == "huge-string":
        text = text.replace(marker, marker + '"note": "' + "x" * (2 << 20) + '", ', 1)
    elif how == "huge":
        pad = max(0, size - len(text))
        text = text.replace(marker, marker + '"note": "' + " " * pad + '", ', 1)
    else:
        raise ValueError(f"how must be 'huge', 'huge-string' or 'deep', not {how!r}")
    (store / ".zmetadata").write_text(text)
    return store / ".zmetadata"


def eopf_zip(store: str | Path, dest: str | Path, *, extra: dict[str, bytes] | None = None,
             symlinks: dict[str, str] | None = None) -> Path:
    """A zip of the store (at the zip root), plus ``extra`` members written under the given
    names as they are (e.g. ``"../../evil.txt"``: a zip slip) and ``symlinks`` (name -> target)
    stored as symbolic-link entries."""
    store, dest = Path(store), Path(dest)
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(store.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(store).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return dest
