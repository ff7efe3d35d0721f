"""AdjustDropout — the retraining dropout ratio of Han et al. (2015), eq. (2):

    D_r = D_o · sqrt(C_ir / C_io)

C_i = N_i·N_{i−1} is the connection count of layer i, the layer whose output neurons the
Dropout drops: C_io its dense size, C_ir its nonzero weights now.  Pruning already removed
capacity, so retraining should drop less.  Layer i is the first prunable Gemm/MatMul/Conv
reached upstream from the Dropout's input through element-wise ops (the same rule as the
fine-tune bridge's training-time adjustment); a Dropout with no such layer is left alone and
reported.

Applies to graphs that carry Dropout (training exports).  ``ratio`` is an attribute before
opset 12 and an optional input since (default 0.5); the new ratio is written where the old
one lived (a fresh constant input, so a ratio tensor shared with other nodes is not changed).
A ratio computed at run time (a graph input or a non-constant tensor) is left alone and
reported, as the bridge does.  ``modified`` is true only when a stored ratio changed (in
the ratio's own precision).  The rule is ``masks.retrain_dropout``, shared with the bridge.
Run it after pruning and before dead-neuron removal (C_io is the weight's current size).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import find_layers, weight_values
from onnxprune.core.masks import retrain_dropout

from .base import Pass, PassResult

PASS_THROUGH = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "HardSigmoid", "HardSwish",
    "Softplus", "Identity", "Cast", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization",
})


class AdjustDropout(Pass):
    name = "adjust-dropout"
    OPTIONS = ()

    def run(self, graph: gs.Graph, progress=None) -> PassResult:
        layers, _ = find_layers(graph)
        by_node = {}
        for layer in layers:
            if layer.skip_reason:
                continue
            for node in layer.nodes:
                by_node[id(node)] = layer
        rows = []
        modified = False
        for node in list(graph.nodes):
            if node.op != "Dropout":
                continue
            if not node.inputs or not node.outputs:
                rows.append({"node": node.name, "ratio": None, "new_ratio": None,
                             "reason": "malformed Dropout (no data input or output)"})
                continue
            old, where = _current_ratio(node)
            if where == "dynamic":
                rows.append({"node": node.name, "ratio": None, "new_ratio": None,
                             "reason": "ratio computed at run time; left as it is"})
                continue
            layer = _producing_layer(node, by_node)
            if layer is None:
                rows.append({"node": node.name, "ratio": old, "new_ratio": None,
                             "reason": "no prunable layer before it"})
                continue
            w = weight_values(layer)
            c_io = int(w.size)
            c_ir = int(np.count_nonzero(w))
            new = retrain_dropout(old, c_ir, c_io)
            if _stored(new, _ratio_dtype(node, where)) != old:
                _set_ratio(node, new, where)
                modified = True
            else:
                new = old  # the same value once stored: the graph is left as it is
            rows.append({"node": node.name, "layer": layer.name, "ratio": old,
                         "new_ratio": new, "c_io": c_io, "c_ir": c_ir})
        return PassResult(graph, modified, {"dropouts": rows})


def _current_ratio(node: gs.Node) -> tuple[float, str]:
    if "ratio" in node.attrs:
        return float(node.attrs["ratio"]), "attr"
    if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        return float(np.asarray(node.inputs[1].values).reshape(-1)[0]), "input"
    if len(node.inputs) > 1 and node.inputs[1].name:
        producer = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
        if producer is not None and producer.op == "Constant":
            return float(np.asarray(producer.attrs["value"].values).reshape(-1)[0]), "input"
        return 0.5, "dynamic"
    return 0.5, "default"


def _ratio_dtype(node: gs.Node, where: str) -> np.dtype:
    """The precision the ratio is stored in: float32 for the attribute, else the input's."""
    if where == "input" and len(node.inputs) > 1 and node.inputs[1].dtype is not None:
        return np.dtype(node.inputs[1].dtype)
    return np.dtype(np.float32)


def _stored(ratio: float, dtype: np.dtype) -> float:
    """``ratio`` as it reads back once written in ``dtype`` (so "changed" means stored change)."""
    return float(np.array(ratio, dtype=dtype))


def _set_ratio(node: gs.Node, ratio: float, where: str) -> None:
    if where == "attr":
        node.attrs["ratio"] = ratio
        return
    dtype = _ratio_dtype(node, where)
    const = gs.Constant(f"{node.name or node.outputs[0].name}_retrain_ratio",
                        np.array(ratio, dtype=dtype))
    if len(node.inputs) > 1:
        node.inputs[1] = const
    else:
        node.inputs.append(const)


def _producing_layer(node: gs.Node, by_node: dict):
    t = node.inputs[0]
    for _ in range(64):
        if not t.inputs:
            return None
        producer = t.inputs[0]
        if id(producer) in by_node:
            return by_node[id(producer)]
        if producer.op in PASS_THROUGH or producer.op in ("Add", "Mul") and _has_const(producer):
            t = producer.inputs[0]
            continue
        return None
    return None


def _has_const(node: gs.Node) -> bool:
    # A bias Add (MatMul + Add exports) or a scale Mul keeps the unit axis.
    return any(isinstance(t, gs.Constant) for t in node.inputs[1:])
