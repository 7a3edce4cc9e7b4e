"""What can be verified of an EOPF product, which carries no checksums of its own.

A real product has no manifest, no per-file or per-chunk checksum and Blosc runs without
content checksums (eopf-facts §2, §9). What a download gets is the hub's checksum of the whole
zip (checked by ``ingest.sources.download`` before this). Here, the structure:

* ``verify_eopf`` (a source's ``fetch``, before the product is used): the container is safe
  (no zip slip, no symbolic links, bounded metadata), the metadata reads into a ``Product``
  (every expected array present, dtypes, shapes against the geocoding, coordinates on the grid),
  and every chunk of every array the product lists exists;
* ``check_arrays`` (``engine.validate``, before any warp): the chunks of the arrays the cube
  reads are all there (the product may have changed since it was verified);
* decodability is checked chunk by chunk when the warp reads them (``arrays.decode_chunk``):
  a chunk that does not decode rejects the product with its array and chunk named.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from ingest.errors import CorruptProductError
from ingest.products.checksums import VerifyReport
from ingest.products.eopf.container import Container, FolderContainer, open_container
from ingest.products.eopf.reader import read_eopf
from ingest.products.model import Product
from ingest.variables import VARIABLES


def _check_chunks(container: Container, product: Product, paths: Iterable[str]) -> int:
    n = 0
    for path in paths:
        layout = product.arrays[path]
        for index in itertools.product(*(range(g) for g in layout.chunk_grid)):
            if not container.exists(layout.chunk_key(*index)):
                raise CorruptProductError(product.name, f"{path} chunk {'.'.join(map(str, index))} is missing")
            n += 1
    return n


def verify_eopf(path: str | Path, *, product: str | None = None) -> VerifyReport:
    """Structural verification of a ``.zarr`` folder or zip (no pixel decoded)."""
    path = Path(path)
    if not path.exists():
        raise CorruptProductError(product or path.name, f"{path} does not exist")
    p = read_eopf(path)
    if product is not None and product != p.name:
        raise CorruptProductError(product, f"the product inside {path.name} is {p.name}")
    with open_container(path, p.name) as container:
        if isinstance(container, FolderContainer):
            container.check_no_links()
        n = _check_chunks(container, p, p.arrays)
    return VerifyReport(p.name, n, frozenset({"structure"}))


def check_arrays(product: Product, variables: Iterable[str] | None = None) -> None:
    """Every chunk of the arrays the cube reads is present (``engine.validate``)."""
    names = list(variables) if variables is not None else list(VARIABLES)
    paths = [product.file_for(v, VARIABLES[v].resolution) for v in names]
    with open_container(product.source, product.name) as container:
        _check_chunks(container, product, paths)
