"""The export passes `export_model` runs, in order, after the fp32 graph has validated.

Adding a pass: one module here with a `Pass` subclass (see base.py), and one entry in PASSES.
"""
from edgeseg.export.passes.base import Output, Pass
from edgeseg.export.passes.flowwarp import FlowWarp
from edgeseg.export.passes.fp16 import FP16
from edgeseg.export.passes.int8 import INT8

# One instance of each per export (a pass keeps what it prepared); FlowWarp last: it rewrites every graph before it.
PASSES: list[type[Pass]] = [FP16, INT8, FlowWarp]

__all__ = ["PASSES", "Output", "Pass"]
