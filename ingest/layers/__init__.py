"""Reference layers (/NL, /NL/BBG, /NL/BRP) rasterised onto the cube grid.

``vector`` reads and validates a polygon file, ``rasterize`` burns it chunk by chunk,
``codes`` maps attributes to integer codes with their tables, ``publish`` writes into the
store with the commit protocol, ``stats`` answers per-region / per-parcel questions, and
``synth`` makes realistic test inputs.
"""
from ingest.layers.codes import BBG_CLASSES, GROUPS, SPECS, CodeTable, LayerSpec
from ingest.layers.publish import LayerRecord, add_layer, list_layers

__all__ = ["BBG_CLASSES", "GROUPS", "SPECS", "CodeTable", "LayerSpec", "LayerRecord", "add_layer",
           "list_layers"]
