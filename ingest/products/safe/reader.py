"""``read_product``: a SAFE folder or hub zip -> ``Product``, reading its XML only."""
from __future__ import annotations

import os
from pathlib import Path

from ingest.errors import CorruptProductError, MetadataError, UnsupportedProductError
from ingest.products.model import Product
from ingest.products.names import PRODUCT_NAME_RE, strip_product_suffix
from ingest.products.safe.container import _PRODUCT_MTD_RE, MANIFEST, TILE_MTD, _open_container
from ingest.products.safe.identity import _check_level_2a
from ingest.products.safe.metadata import _build_product
from ingest.products.safe.xml import _Doc


def read_product(path: str | os.PathLike[str], *, require_files: bool = True) -> Product:
    """Read a product's metadata from a ``.SAFE`` folder or a hub ``.zip``.

    With ``require_files`` every raster the Product lists must exist in the product.
    A path to the SAFE's ``MTD_MSIL2A.xml`` itself is accepted too.
    DESIGN CHOICE: a path that does not exist raises FileNotFoundError, not a ProductError:
    a missing cache file is not a reason to reject the product permanently.
    """
    path = Path(path)
    if path.is_file() and _PRODUCT_MTD_RE.match(path.name):
        path = path.parent
    container = _open_container(path)
    try:
        mtd = _Doc(container.read(container.mtd_name), container.label, container.mtd_name)
        _check_level_2a(mtd)
        tiles = container.tile_metadata()
        if not tiles:
            raise CorruptProductError(container.label, f"missing granule {TILE_MTD} (GRANULE/*/{TILE_MTD})")
        if len(tiles) > 1:
            raise UnsupportedProductError(container.label, f"{len(tiles)} granules (only single-tile products are supported)")
        tile_doc = _Doc(container.read(tiles[0]), container.label, tiles[0])
        manifest = _Doc(container.read(MANIFEST), container.label, MANIFEST) if container.exists(MANIFEST) else None
        name_hint = container.safe_root or path.name
        product = _build_product(
            mtd, tile_doc, manifest, source=path, safe_root=container.safe_root, name_hint=name_hint,
            exists=container.exists if require_files else None,
        )
        if container.safe_root and PRODUCT_NAME_RE.match(strip_product_suffix(path.name)):
            if strip_product_suffix(path.name) != product.name:
                raise MetadataError(product.name, f"zip file name {path.name} differs from the product inside")
        return product
    finally:
        container.close()
