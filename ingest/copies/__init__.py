"""Copies of a cube: consistent mirrors of one published version (``mirror``), subsets
(``subset``), and the read API, rechunked copies and exports built on the same versions."""
