"""Shapes that ONNX shape inference cannot give, measured: one run of the model on seeded
random inputs with the tensors asked for added as outputs.

FLOPs need the rows each weight is applied to. Where a model computes a shape (Swin's window
partition turns [batch, 56·56, C] into [batch·64, 49, C]; a Reshape to a size taken from
``Shape``), inference leaves that dimension symbolic and the rows per sample are unknown.
:func:`shape_probe` is the ``measure`` of ``core.stats.layer_reuses``: it runs the model at
batch 1 (or at the ``--input-shape`` given), once, and only when inference left some layer
unsized.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
from onnx import ModelProto

from onnxprune import runtime_ops
from onnxprune.core.errors import OnnxPruneError

# a model whose serialized form is larger is not run just to size it (ORT would hold a
# second copy of its weights); its unsized layers keep the inferred figures
MAX_PROBE_BYTES = 1 << 30
# the longest one run may take before it is stopped and the layers stay unsized
PROBE_SECONDS = 30.0


def shape_probe(model: ModelProto, input_shapes: dict | None = None, info=None
                ) -> Callable[[list[str]], "dict[str, list[int]] | None"]:
    """A ``measure(names)`` for ``model``: tensor name → shape for ``names`` and the graph
    inputs, from one run on random inputs (integers in [0, 10), floats standard normal) of
    batch 1 or the ``input_shapes`` given; None when the model cannot run that way: an input
    with a symbolic dim other than the batch, weights left on disk (``info.external``), a
    model over :data:`MAX_PROBE_BYTES`, or ONNX Runtime refusing or failing it. The result
    is cached: a second call for the same names does not run the model again."""
    cache: dict[str, list[int]] = {}
    state = {"failed": info is not None and bool(getattr(info, "external", None))}

    def measure(names: list[str]) -> "dict[str, list[int]] | None":
        want = [n for n in names if n not in cache]
        if want and not state["failed"]:
            got = _run(model, want, input_shapes)
            if got is None:
                state["failed"] = True
            else:
                cache.update(got)
        if state["failed"]:
            return None
        return {n: s for n, s in cache.items()}

    return measure


def _run(model: ModelProto, names: list[str], input_shapes: dict | None
         ) -> "dict[str, list[int]] | None":
    from onnxprune.runtime.check import graph_inputs, make_session, random_inputs

    try:
        feeds = random_inputs(model, batch=1, shapes=input_shapes, strict=True)
    except OnnxPruneError:
        return None
    if model.ByteSize() > MAX_PROBE_BYTES:
        return None
    inputs = {vi.name for vi in graph_inputs(model)}
    # only what the main graph computes can be an output (a layer inside a Loop or If body
    # stays unmeasured); weights are not run: their shapes are stored
    top = {o for node in model.graph.node for o in node.output} | inputs
    names = [n for n in names if n in top]
    have = {o.name for o in model.graph.output}
    extra = [n for n in names if n not in have and n not in inputs]
    n_outputs = len(model.graph.output)
    try:  # the outputs are added to the caller's model for the serialization only
        for n in extra:
            model.graph.output.add().name = n
        sess = make_session(model, threads=1)
    except OnnxPruneError:
        return None
    finally:
        del model.graph.output[n_outputs:]
    fetch = [n for n in names if n not in inputs]
    options = runtime_ops.import_onnxruntime().RunOptions()
    # a model that loops for long is stopped (ORT checks the flag between nodes): sizing its
    # FLOPs is not worth more than this
    watchdog = threading.Timer(PROBE_SECONDS, lambda: setattr(options, "terminate", True))
    watchdog.start()
    try:
        values = sess.run(fetch, feeds, options) if fetch else []
    except Exception:  # ORT's own failure (or memory): the layers stay unsized, nothing else
        return None
    finally:
        watchdog.cancel()
    shapes = {n: list(np.shape(v)) for n, v in zip(fetch, values)}
    shapes.update({n: list(np.shape(v)) for n, v in feeds.items()})
    return shapes
