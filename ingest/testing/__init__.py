"""Test kit shipped with s2ingest: fake hubs and tiny products for users' own tests."""
from ingest.testing.fakehub import FakeCDSE, FakeDHuS, FaultPlan, ProductStore, free_port, make_tiny_product, tiny_names

__all__ = ["FakeCDSE", "FakeDHuS", "FaultPlan", "ProductStore", "free_port", "make_tiny_product", "tiny_names"]
