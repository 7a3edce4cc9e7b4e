"""Publishing products into the cube: plan (pure), warp + mosaic + write inside one store
transaction, the catalog-driven sync loop, and the one place that records commits in the catalog.

- ``plan``, ``footprint``: pure planning (time slots, chunks per product, supersede).
- ``write``: applies a plan inside a store transaction (warp, mosaic, encode per chunk block).
- ``engine``: the store-level ingest (no catalog): validate, plan under the lock, write, commit.
- ``sync``: the catalog-driven loop (search, discover, download, ingest, publish, with leases).
- ``record``: every commit is recorded in the catalog here; ``audit``: the catalog against the store.
- ``preflight``: no litter after a failed first run.
"""
