"""The Python API: the command line's verbs as functions.

Each verb takes paths or ``onnx.ModelProto``s, returns the report its command writes with
``--json`` (a dict of plain values) and raises, instead of exiting, the error the command
would exit with (``onnxprune.core.errors``): ``UsageError`` → 2, ``InvalidModelError`` → 4,
``RuntimeFailure`` → 1.  A missed gate is a result in the report (``status`` "gate-failed",
``check``'s ``passed``), never an exception: the command turns it into exit 3.  Every verb takes
``before_run(files)``, called with the files it reads before any work (the command line's
output-over-input check).  The command line is a thin layer over these:
it parses flags, calls the verb, prints tables and writes the report.
"""

from onnxprune.api.check import check
from onnxprune.api.inspect import inspect
from onnxprune.api.lower import lower
from onnxprune.api.prune import prune
from onnxprune.api.training import compress, finetune

__all__ = ["check", "compress", "finetune", "inspect", "lower", "prune"]
