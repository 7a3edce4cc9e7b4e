"""Local fake product hubs (DHuS, CDSE) with scripted faults, for tests without internet."""
from ingest.testing.fakehub.cdse import FakeCDSE
from ingest.testing.fakehub.common import FaultPlan, ProductStore, free_port, make_tiny_product, tiny_names
from ingest.testing.fakehub.dhus import FakeDHuS

__all__ = ["FakeCDSE", "FakeDHuS", "FaultPlan", "ProductStore", "free_port", "make_tiny_product", "tiny_names"]
