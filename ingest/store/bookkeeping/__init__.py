"""Bookkeeping format 2: what each version of a cube holds, split so that every path costs
what it changes or reads (DESIGN.md §5).

- ``codec``: the immutable, content-addressed objects (pieces, array lists, change lists,
  metadata snapshots, roots) and their names under ``.s2ingest/``; pure.
- ``index``: ``VersionIndex``, one version's records read lazily, piece by piece.
- ``build``: the objects of a new version from its parent's index and a commit's changes.
- ``expire``: retention, and deleting what no retained version references.
"""
