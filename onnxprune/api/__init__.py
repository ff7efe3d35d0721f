"""The Python API: the command line's verbs as functions.

Each verb takes paths or ``onnx.ModelProto``s, returns the report its command writes with
``--json`` (a dict of plain values) and raises, instead of exiting, the error the command
would exit with (``onnxprune.core.errors``): ``UsageError`` → 2, ``InvalidModelError`` → 4,
``GateFailed`` → 3, ``RuntimeFailure`` → 1. The command line is a thin layer over these:
it parses flags, calls the verb, prints tables and writes the report.
"""

from onnxprune.api.check import check
from onnxprune.api.inspect import inspect
from onnxprune.api.training import compress, finetune

__all__ = ["check", "compress", "finetune", "inspect"]
