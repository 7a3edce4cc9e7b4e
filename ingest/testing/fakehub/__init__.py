"""Local fake product hubs (DHuS, CDSE) with scripted faults, for tests without internet."""
from .cdse import FakeCDSE
from .common import FaultPlan, ProductStore, free_port, make_tiny_product, tiny_names
from .dhus import FakeDHuS

__all__ = ["FakeCDSE", "FakeDHuS", "FaultPlan", "ProductStore", "free_port", "make_tiny_product", "tiny_names"]
