"""Graph helpers: ModelProto ⇄ onnx-graphsurgeon Graph, and finding the prunable weights.

Op knowledge lives in one table (``WEIGHT_OPS``): for each op, which input may hold a constant
weight and which axis of that weight indexes output channels / input channels.

* Gemm   Y = α·op(A)·op(B) + β·C.  B is (K, N), or (N, K) with transB → output axis 1 / 0.
         A constant A (rare) is (M, K) or (K, M) with transA → output axis 0 / 1.
* MatMul Y = X·W with W (…, K, N) → output axis -1, input axis -2; or Y = W·X with
         W (…, M, K) → output axis -2, input axis -1.
* Conv   W (M, C/group, k…) → output axis 0, input axis 1.
* ConvTranspose W (C, M/group, k…) → output axis 1, input axis 0.

Invariants kept by ``graph_from_model`` / ``graph_to_model``:
* an initializer that is also a graph input stays a graph input (onnx-graphsurgeon would turn
  it into a Constant and drop it from the inputs); passes see it as a ``Variable``, so it is never
  pruned, and it is written back unchanged;
* model-level fields (ir_version, opsets, producer, metadata_props, doc strings, functions)
  come back exactly as they were.
"""

from __future__ import annotations

import os

import dataclasses
import fnmatch
import logging
from functools import partial
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import ModelProto, TensorProto
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxprune.core.errors import RuntimeFailure
from onnxprune.core.io import dim_size, proto_graphs
from onnxprune.runtime_ops import DOMAIN

# onnx-graphsurgeon logs through its own logger at import and on export; keep it quiet so the
# CLI's stderr stays readable.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)

QUANTIZED_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
    "DynamicQuantizeMatMul", "MatMulNBits", "MatMulIntegerToFloat", "QLinearAdd",
    "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulBnb4",
    "DynamicQuantizeLSTM", "QAttention",
})
# The quantized ops that hold weights (find_layers notes each one it leaves alone); the others
# quantize activations. A DequantizeLinear holds one when its input is a constant (QDQ models).
QUANTIZED_WEIGHT_OPS = QUANTIZED_OPS - {"QLinearAdd", "QuantizeLinear", "DynamicQuantizeLinear",
                                        "DequantizeLinear"}


@dataclasses.dataclass(frozen=True)
class WeightRole:
    input_index: int
    kind: str  # "fc" or "conv"
    out_axis: Callable[[gs.Node, int], int]  # (node, weight rank) -> axis
    in_axis: Callable[[gs.Node, int], int]


def _attr(node: gs.Node, name: str, default):
    return node.attrs.get(name, default)


WEIGHT_OPS: dict[str, tuple[WeightRole, ...]] = {
    "Gemm": (
        WeightRole(1, "fc", lambda n, r: 0 if _attr(n, "transB", 0) else 1,
                   lambda n, r: 1 if _attr(n, "transB", 0) else 0),
        WeightRole(0, "fc", lambda n, r: 1 if _attr(n, "transA", 0) else 0,
                   lambda n, r: 0 if _attr(n, "transA", 0) else 1),
    ),
    "MatMul": (
        WeightRole(1, "fc", lambda n, r: r - 1, lambda n, r: r - 2),
        WeightRole(0, "fc", lambda n, r: r - 2, lambda n, r: r - 1),
    ),
    "Conv": (WeightRole(1, "conv", lambda n, r: 0, lambda n, r: 1),),
    "ConvTranspose": (WeightRole(1, "conv", lambda n, r: 1, lambda n, r: 0),),
}
# Recurrent layers hold two weights, each a layer of its own: W [D, G·H, I] (input 1) and
# R [D, G·H, H] (input 2), gates stacked along axis 1.  Han et al. prune LSTMs like FC layers
# (NeuralTalk, Table 5), so they are of kind "fc"; the layer is named "<node>:W" / "<node>:R".
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
for _op in RECURRENT_OPS:
    # (rank-relative: a weight reached through Unsqueeze is stored as [G·H, I])
    WEIGHT_OPS[_op] = tuple(WeightRole(i, "fc", lambda n, r: r - 2, lambda n, r: r - 1) for i in (1, 2))


@dataclasses.dataclass
class Layer:
    """One prunable weight and the node(s) that consume it."""

    name: str
    op: str
    kind: str  # "fc" | "conv"
    weight: gs.Constant | None  # None when the layer is reported but not prunable
    weight_name: str
    shape: tuple[int, ...]
    dtype: str
    nodes: list[gs.Node]
    out_axis: int
    in_axis: int
    source: str  # "initializer" | "constant-node"
    skip_reason: str | None = None
    # "" when every consuming node is in the main graph; else the first subgraph (If/Loop/Scan
    # body) holding one, by its path "<node name>/<attribute>[/<node name>/<attribute>…]"
    # (_scoped_graphs) — pruning and retraining act there too, lowering does not (it rewrites
    # main-graph nodes only).
    scope: str = ""

    @property
    def params(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 0

    def matches(self, pattern: str) -> bool:
        return fnmatch.fnmatchcase(self.name, pattern) or fnmatch.fnmatchcase(
            self.weight_name, pattern
        )


@dataclasses.dataclass
class Note:
    """Something the report should tell the user about a node that was not pruned."""

    node: str
    op: str
    reason: str


# --------------------------------------------------------------------------- conversion


class ExternalValues(LazyValues):
    """Values of an initializer left in its external data file (``io.load(lazy=True)``).

    ``load`` returns a read-only memory map: reading is free until touched, and an accidental
    in-place write raises instead of changing the user's input file.
    """

    def __init__(self, tensor: TensorProto, loader: Callable[[], np.ndarray]):
        super().__init__(tensor)
        self._loader = loader

    def load(self):
        return self._loader()


class DenseOfSparse(SparseValues):
    """A sparse initializer's values, densified correctly.

    onnx-graphsurgeon's own loader reads only the typed fields (not ``raw_data``, which is how
    sparse tensors are normally written) and returns float64; this keeps the dtype.  As a
    ``SparseValues`` the tensor is still exported as the same sparse initializer if untouched.
    """

    def load(self):
        from onnxprune.core.io import sparse_to_dense

        return sparse_to_dense(self.tensor)


class _Placeholder(LazyValues):
    """Stands in for a large constant while onnx-graphsurgeon exports (see ``save_graph``)."""

    def __init__(self, name: str, data_type: int, shape):
        t = TensorProto()
        t.name = name
        t.data_type = data_type
        t.dims.extend(int(d) for d in shape)
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", "pending"
        super().__init__(t)


def graph_from_model(model: ModelProto, info=None) -> gs.Graph:
    """Import into onnx-graphsurgeon, keeping initializer-backed graph inputs as inputs.

    ``info`` (an ``io.LoadInfo``) supplies lazily loaded initializers as memory maps.
    """
    graph = gs.import_onnx(model)
    _own_shadowing_initializers(graph, model.graph)
    _densify_sparse_constants(graph, model.graph)
    # Every scope: a main-graph initializer read only inside an If branch is among the
    # branch's tensors, not the main graph's.
    every = {id(t): t for g in _all_graphs(graph) for t in g.tensors().values()}.values()
    for t in every:
        # Storage is decided by io at save time; a location remembered from the input would
        # make onnx-graphsurgeon mark a rewritten (embedded) tensor as external.
        if isinstance(t, gs.Constant):
            t.data_location = None
            if type(t._values) is SparseValues:
                t._values = DenseOfSparse(t._values.tensor)
    for t in every:
        if not (isinstance(t, gs.Constant) and isinstance(t._values, LazyValues)) or \
                getattr(t._values.tensor, "data_location", None) != TensorProto.EXTERNAL:
            continue
        # Matched by the tensor itself, not its name: another tensor may share the name.
        ref = info.ref_of(t._values.tensor) if info is not None else None
        if ref is None:
            # onnx would read it relative to the working folder: only io reads external data.
            raise RuntimeFailure(f"tensor {t.name!r} refers to external data that io.load "
                                 "did not validate")
        t._values = ExternalValues(t._values.tensor, partial(info.array_of, ref))
    init_names = {t.name for t in model.graph.initializer}
    # Before IR version 4 every initializer had to be listed as a graph input too, so there
    # the listing says nothing about the user wanting to override it: those are weights.
    input_inits = [i for i in model.graph.input if i.name in init_names] \
        if model.ir_version >= 4 else []
    if input_inits:
        tensors = graph.tensors()
        new_inputs = []
        by_name = {}
        for vi in input_inits:
            const = tensors.get(vi.name)
            if not isinstance(const, gs.Constant):
                continue
            var = gs.Variable(vi.name, dtype=const.dtype, shape=list(const.shape))
            for node in list(const.outputs):
                for k, t in enumerate(list(node.inputs)):
                    if t is const:
                        node.inputs[k] = var
            for i, out in enumerate(graph.outputs):
                if out is const:
                    graph.outputs[i] = var
            by_name[vi.name] = var
        # Restore the original graph-input order.
        current = {t.name: t for t in graph.inputs}
        for vi in model.graph.input:
            if vi.name in by_name:
                new_inputs.append(by_name[vi.name])
            elif vi.name in current:
                new_inputs.append(current[vi.name])
        graph.inputs = new_inputs
    return graph


def _replace_tensor(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every use of ``old`` in ``graph`` and its subgraphs at ``new``."""
    for g in _all_graphs(graph):
        for node in g.nodes:
            for k, t in enumerate(node.inputs):
                if t is old:
                    node.inputs[k] = new


def _paired_graphs(graph: gs.Graph, proto: onnx.GraphProto):
    """(onnx-graphsurgeon graph, its GraphProto, the outer-scope tensors by name), outer
    graphs before inner ones.  Nodes are matched by position: the import keeps their order."""
    stack = [(graph, proto, {})]
    while stack:
        g, p, outer = stack.pop()
        yield g, p, outer
        visible = {**outer, **{t.name: t for t in g.tensors().values()}}
        for node, pnode in zip(g.nodes, p.node):
            for a in pnode.attribute:
                sub = node.attrs.get(a.name)
                if a.HasField("g") and isinstance(sub, gs.Graph):
                    stack.append((sub, a.g, visible))
                elif len(a.graphs) and isinstance(sub, (list, tuple)):
                    stack.extend((s, pg, visible) for s, pg in zip(sub, a.graphs)
                                 if isinstance(s, gs.Graph))


def _own_shadowing_initializers(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Give each subgraph initializer that reuses an outer-scope name its own Constant.

    onnx-graphsurgeon resolves such an initializer to the outer tensor, so the subgraph would
    be written back with the outer tensor's values.
    """
    for g, p, outer in _paired_graphs(graph, proto):
        if g is graph:
            continue
        mine = {t.name: t for t in g.tensors().values()}
        for init in p.initializer:
            t = mine.get(init.name)
            if t is not None and outer.get(init.name) is t:
                own = gs.Constant(init.name, LazyValues(init))
                _replace_tensor(g, t, own)
                mine[init.name] = own


def _densify_sparse_constants(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """A Constant node's ``sparse_value`` (which onnx-graphsurgeon drops) becomes its dense
    ``value``, so the weight is a layer like any other; io decides its storage on save."""
    from onnxprune.core.io import sparse_to_dense

    for g, p, _ in _paired_graphs(graph, proto):
        for node, pnode in zip(g.nodes, p.node):
            if node.op != "Constant" or pnode.domain not in ("", "ai.onnx") or \
                    "value" in node.attrs:
                continue
            sp = next((a.sparse_tensor for a in pnode.attribute if a.name == "sparse_value"),
                      None)
            if sp is not None:
                node.attrs["value"] = gs.Constant(sp.values.name or node.outputs[0].name,
                                                  sparse_to_dense(sp))


def _large_constants(graph: gs.Graph, min_bytes: int):
    for t in graph.tensors().values():
        if not isinstance(t, gs.Constant):
            continue
        v = t._values
        if isinstance(v, SparseValues):
            continue  # exported as a sparse initializer, untouched
        if isinstance(v, ExternalValues) or (isinstance(v, np.ndarray) and v.nbytes >= min_bytes):
            yield t


def export_with_placeholders(graph: gs.Graph, original: ModelProto, source=None,
                             min_bytes: int = 1024, metadata=None
                             ) -> tuple[ModelProto, dict[int, np.ndarray]]:
    """Export with large constants as placeholders; returns (model, arrays by initializer index).

    The arrays are the constants' own numpy arrays / memory maps: nothing is copied.
    """
    swapped = []
    pending: dict[str, np.ndarray] = {}
    try:
        for t in _large_constants(graph, min_bytes):
            arr = t._values.load() if isinstance(t._values, ExternalValues) else t._values
            data_type = (t._values.tensor.data_type if isinstance(t._values, ExternalValues)
                         else onnx.helper.np_dtype_to_tensor_dtype(arr.dtype))
            swapped.append((t, t._values))
            pending[t.name] = arr
            t._values = _Placeholder(t.name, data_type, arr.shape)
        model = _export(graph, original, metadata)
    finally:
        for t, v in swapped:
            t._values = v
    arrays = {i: pending[init.name] for i, init in enumerate(model.graph.initializer)
              if init.name in pending}
    return model, arrays


def save_graph(graph: gs.Graph, original: ModelProto, path, *, storage: str = "dense",
               source=None, in_place: bool = False, external_data: bool | None = None,
               metadata=None, records: list | None = None, progress=None
               ) -> tuple[list[str], list[str]]:
    """Export ``graph`` and write it without copying its weights in memory.

    Large constants are swapped for placeholders while onnx-graphsurgeon builds the ModelProto
    (it would otherwise copy every array into a TensorProto), then ``io.write_exported`` streams
    them from their numpy arrays or memory maps straight into the output.  Returns (files
    written, names stored sparse).  The graph is left as it was.
    """
    from onnxprune.core.io import check_output_path, write_exported

    check_output_path(os.fspath(path), source, in_place=in_place)  # refuse before the export
    model, arrays = export_with_placeholders(graph, original, source, metadata=metadata)
    return write_exported(model, arrays, path, storage=storage, source=source,
                          in_place=in_place, external_data=external_data, records=records,
                          progress=progress)


def graph_to_model(graph: gs.Graph, original: ModelProto, metadata=None) -> ModelProto:
    """Export to a self-contained in-memory ModelProto (lazily loaded weights are read in)."""
    swapped = []
    try:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and isinstance(t._values, ExternalValues):
                swapped.append((t, t._values))
                t._values = np.asarray(t._values.load()).copy()
        return _export(graph, original, metadata)
    finally:
        for t, v in swapped:
            t._values = v


# The name of the Scan body that runs a lowered model's leading layers image by image
# (passes/lower_to_sparse_ops/stream.py): its weights are exported into the main graph.
STREAM_BODY = "onnxprune_stream_body"

# Model fields the export writes itself (from the graph, or merged with the original below).
_EXPORTED_MODEL_FIELDS = frozenset({"graph", "ir_version", "opset_import", "metadata_props",
                                    "functions"})


def _export(graph: gs.Graph, original: ModelProto, metadata=None) -> ModelProto:
    """Export, then restore what onnx-graphsurgeon does not carry.

    ``metadata`` (a list of (key, value)) replaces the original's metadata_props when given.
    """
    # onnx-graphsurgeon exports tensor, sequence and sparse value infos only (an optional- or
    # map-typed graph input/output makes it fail, a nested sequence loses its element type):
    # export such tensors as plain tensors and put the original ValueInfoProto back by name.
    swapped = []
    for g in _all_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Variable) and t.dtype is not None and \
                    getattr(t, "type", "tensor_type") not in ("tensor_type", "sparse_tensor_type"):
                swapped.append((t, t.type, t.dtype))
                t.type, t.dtype = "tensor_type", np.float32
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for t, kind, dtype in swapped:
            t.type, t.dtype = kind, dtype
    if swapped:
        _restore_value_infos(model.graph, _non_tensor_value_infos(original.graph))
    _restore_dropped_attributes(model.graph, original.graph)
    _restore_weight_value_infos(model.graph, original.graph)
    _restore_metadata(model.graph, original.graph)
    _restore_outer_initializers(model.graph, original.graph)
    model.ir_version = original.ir_version
    # Keep the original opsets; add only domains a pass introduced (graph.import_domains), and
    # take a version a pass raised (lowering declares op-set 2 or 3 of ai.onnxprune once a node
    # uses it, also in a model that imported op-set 1 before).
    exported = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    had = {op.domain or "ai.onnx" for op in original.opset_import}
    gained = [op for op in model.opset_import if (op.domain or "ai.onnx") not in had]
    kept = []
    for op in original.opset_import:
        raised = exported.get(op.domain or "ai.onnx", op.version)
        kept.append(onnx.helper.make_opsetid(op.domain, raised) if raised > op.version else op)
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.opset_import.extend(gained)
    # Every other model-level field (producer, doc string, training_info, configuration, any
    # field a newer onnx adds) comes back exactly as it was: no pass changes them.
    for fd in ModelProto.DESCRIPTOR.fields:
        if fd.name in _EXPORTED_MODEL_FIELDS:
            continue
        model.ClearField(fd.name)
        # (``is_repeated`` replaced ``label`` in protobuf 5.)
        if (fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED):
            getattr(model, fd.name).extend(getattr(original, fd.name))
        elif original.HasField(fd.name):
            if fd.type == fd.TYPE_MESSAGE:
                getattr(model, fd.name).CopyFrom(getattr(original, fd.name))
            else:
                setattr(model, fd.name, getattr(original, fd.name))
    del model.metadata_props[:]
    if metadata is None:
        model.metadata_props.extend(original.metadata_props)
    else:
        for k, v in metadata:
            e = model.metadata_props.add()
            e.key, e.value = k, v
    if original.graph.doc_string:
        model.graph.doc_string = original.graph.doc_string
    model.graph.name = original.graph.name
    if not len(model.functions) and len(original.functions):
        model.functions.extend(original.functions)
    # Initializers that are graph inputs went through as Variables: put their data back.
    input_names = {i.name for i in model.graph.input}
    have = {t.name for t in model.graph.initializer}
    for t in original.graph.initializer:
        if t.name in input_names and t.name not in have:
            model.graph.initializer.append(t)
    if original.ir_version < 4:
        # IR < 4 requires every initializer to be a graph input as well (with its new shape,
        # should a pass have shrunk it).
        for t in model.graph.initializer:
            if t.name not in input_names:
                model.graph.input.append(onnx.helper.make_tensor_value_info(
                    t.name, t.data_type, list(t.dims)))
    return model


def _all_graphs(graph: gs.Graph):
    """``graph`` and every subgraph (If/Loop/Scan bodies), outer before inner."""
    return (g for g, _ in _scoped_graphs(graph))


def _non_tensor_value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    found = {}
    for g in proto_graphs(graph):
        for vi in (*g.input, *g.output, *g.value_info):
            kind = vi.type.WhichOneof("value")
            if kind not in (None, "tensor_type", "sparse_tensor_type"):
                found.setdefault(vi.name, vi)
    return found


def _restore_value_infos(graph: onnx.GraphProto, originals: dict[str, onnx.ValueInfoProto]) -> None:
    for g in proto_graphs(graph):
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.name in originals:
                vi.type.CopyFrom(originals[vi.name].type)


# Attribute types onnx-graphsurgeon imports; it drops the others (with a warning), e.g. a
# Constant's ``sparse_value`` or Optional's ``type``.
_GS_ATTRIBUTE_TYPES = frozenset({
    onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT, onnx.AttributeProto.STRING,
    onnx.AttributeProto.TENSOR, onnx.AttributeProto.GRAPH, onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.INTS, onnx.AttributeProto.STRINGS,
})


def _restore_metadata(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Copy back the ``metadata_props`` onnx-graphsurgeon drops (IR 10: PyTorch writes a
    namespace and stack trace on every node): nodes matched by op and outputs, graphs by
    name, value infos by name.  A node a pass replaced has no match and gets none."""
    if "metadata_props" not in onnx.NodeProto.DESCRIPTOR.fields_by_name:  # onnx < 1.16
        return
    nodes, graphs, infos = {}, {}, {}
    for g in proto_graphs(original):
        if len(g.metadata_props):
            graphs.setdefault(g.name, g.metadata_props)
        for node in g.node:
            if len(node.metadata_props):
                nodes[(node.domain, node.op_type, tuple(node.output))] = node.metadata_props
        for vi in (*g.input, *g.output, *g.value_info):
            if len(vi.metadata_props):
                infos.setdefault(vi.name, vi.metadata_props)
    if not (nodes or graphs or infos):
        return
    for g in proto_graphs(graph):
        if not len(g.metadata_props) and g.name in graphs:
            g.metadata_props.extend(graphs[g.name])
        for node in g.node:
            props = nodes.get((node.domain, node.op_type, tuple(node.output)))
            if props is not None and not len(node.metadata_props):
                node.metadata_props.extend(props)
        for vi in (*g.input, *g.output, *g.value_info):
            if not len(vi.metadata_props) and vi.name in infos:
                vi.metadata_props.extend(infos[vi.name])


def _restore_outer_initializers(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Put main-graph initializers read only inside subgraphs back into the main graph.

    onnx-graphsurgeon exports a constant into the subgraph that uses it, so a weight that two
    If branches share would be written twice and move out of the scope it was stored in.
    Initializers the original stored in a subgraph (its own, or one shadowing an outer name)
    stay where they are. The graphs of a prefix streamed image by image (named ``STREAM_BODY``
    and after it) hold no weight of their own: all of their initializers go to the main graph."""
    main_names = {t.name for t in original.initializer} | {s.values.name for s in original.sparse_initializer}
    sub_names = {t.name for g in proto_graphs(original) if g is not original
                 for t in (*g.initializer, *(s.values for s in g.sparse_initializer))}
    movable = main_names - sub_names
    # a prefix streamed image by image keeps its weights in the main graph (stream.py)
    movable |= {t.name for g in proto_graphs(graph) if g.name.startswith(STREAM_BODY) for t in g.initializer}
    have = {t.name for t in graph.initializer}
    for g in proto_graphs(graph):
        if g is graph:
            continue
        keep = []
        for t in g.initializer:
            if t.name not in movable:
                keep.append(t)
            elif t.name not in have:
                graph.initializer.append(t)
                have.add(t.name)
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)


def _restore_weight_value_infos(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Put back the top-level ``value_info`` entries of initializers (PyTorch's exporter writes
    them, with parameter metadata), which onnx-graphsurgeon drops for constants.  The entry
    takes the written tensor's type and shape (a pass may have shrunk it); an entry whose
    initializer is gone stays gone."""
    have = {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
    weights = {t.name: (t.data_type, list(t.dims)) for t in graph.initializer}
    weights.update((sp.values.name, (sp.values.data_type, list(sp.dims)))
                   for sp in graph.sparse_initializer)
    for vi in original.value_info:
        if vi.name in have or vi.name not in weights or \
                vi.type.WhichOneof("value") != "tensor_type":
            continue
        kept = graph.value_info.add()
        kept.CopyFrom(vi)
        elem, dims = weights[vi.name]
        kept.type.tensor_type.elem_type = elem
        shape = kept.type.tensor_type.shape
        shape.ClearField("dim")
        for d in dims:
            shape.dim.add().dim_value = d
        have.add(vi.name)


def _restore_dropped_attributes(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Copy back attributes onnx-graphsurgeon dropped, matching nodes by op and outputs."""
    dropped = {}
    for g in proto_graphs(original):
        for node in g.node:
            lost = [a for a in node.attribute
                    if a.type not in _GS_ATTRIBUTE_TYPES and not a.ref_attr_name]
            if lost:
                dropped[(node.domain, node.op_type, tuple(node.output))] = lost
    if not dropped:
        return
    for g in proto_graphs(graph):
        for node in g.node:
            lost = dropped.get((node.domain, node.op_type, tuple(node.output)))
            if lost:
                have = {a.name for a in node.attribute}
                if node.op_type == "Constant" and have:
                    continue  # it holds its one value already (a densified sparse_value)
                node.attribute.extend(a for a in lost if a.name not in have)


# --------------------------------------------------------------------------- weights


def const_source(t: gs.Tensor, unsqueeze: bool = False,
                 via: list[gs.Node] | None = None) -> tuple[gs.Constant | None, str, gs.Node | None]:
    """The constant behind a node input: an initializer, or a Constant node (through Identity).

    With ``unsqueeze`` (recurrent weights) also through an Unsqueeze with constant axes and
    through a Concat of row blocks of one tensor that together cover each of its rows once:
    torch exports an LSTM's W as Unsqueeze(Concat(Slice(W, i), Slice(W, o), Slice(W, f·c)))
    to reorder its gates.  Both are views of the stored rows, so an elementwise mask on the
    stored tensor prunes exactly the entries the LSTM reads.  ``via`` collects the views passed
    through (a Concat's Slices with it), whether or not a constant is found behind them."""
    seen = 0
    while isinstance(t, gs.Variable) and len(t.inputs) == 1 and seen < 8:
        producer = t.inputs[0]
        if producer.op == "Constant" and isinstance(producer.attrs.get("value"), gs.Constant):
            return producer.attrs["value"], "constant-node", producer
        if producer.inputs and (producer.op == "Identity" or unsqueeze and producer.op == "Unsqueeze"
                                and _constant_axes(producer)):
            if via is not None:
                via.append(producer)
            t = producer.inputs[0]
            seen += 1
            continue
        whole = _row_blocks(producer) if unsqueeze and producer.op == "Concat" else None
        if whole is not None:
            if via is not None:
                via += [producer, *(part.inputs[0] for part in producer.inputs)]
            t = whole
            seen += 1
            continue
        return None, "", None
    if isinstance(t, gs.Constant):
        return t, "initializer", None
    return None, "", None


def _holds_quantized_weight(node: gs.Node) -> bool:
    """A quantized op with a weight among its inputs (a QLinearMatMul of two activations,
    attention's Q·Kᵀ, holds none), or a DequantizeLinear of one: a weight is a constant of
    rank >= 2 stored quantized, or stored in float and quantized at run time (onnxruntime's
    quantize_dynamic: Constant → DynamicQuantizeLinear → ConvInteger; quantize_static's QDQ:
    W → QuantizeLinear → DequantizeLinear → Conv). A bias (rank 1) is none: one note a layer."""
    if node.op == "DequantizeLinear":
        return bool(node.inputs) and _quantized_weight(node.inputs[0])
    if node.op not in QUANTIZED_WEIGHT_OPS:
        return False
    return any(_quantized_weight(t) for t in node.inputs if not is_absent(t))


def _quantized_weight(t: gs.Tensor) -> bool:
    """Whether ``t`` is a weight (rank >= 2) stored as it is or quantized from a stored one by
    a QuantizeLinear or DynamicQuantizeLinear (its first output)."""
    c = const_source(t)[0]
    if c is not None:
        return len(c.shape) >= 2
    if isinstance(t, gs.Variable) and len(t.inputs) == 1:
        q = t.inputs[0]
        if q.op in ("QuantizeLinear", "DynamicQuantizeLinear") and q.inputs and q.outputs[0] is t:
            c = const_source(q.inputs[0])[0]
            return c is not None and len(c.shape) >= 2
    return False


def _constant_expression(t: gs.Tensor, limit: int = 64) -> bool:
    """Whether ``t`` is computed from constants only (initializers and Constant nodes, through
    at most ``limit`` nodes): no graph input, no random op, reaches it."""
    stack, seen = [t], set()
    while stack:
        x = stack.pop()
        if isinstance(x, gs.Constant) or id(x) in seen:
            continue
        seen.add(id(x))
        if not isinstance(x, gs.Variable) or len(x.inputs) != 1 or len(seen) > limit:
            return False  # a graph input, or too deep to tell
        producer = x.inputs[0]
        if producer.op.startswith("Random") or producer.op in ("Multinomial", "Bernoulli", "If", "Loop", "Scan"):
            return False
        if producer.op in QUANTIZED_OPS:
            return False  # a quantized weight: noted as such
        if producer.op == "Constant":
            continue
        if not producer.inputs:
            return False
        stack.extend(i for i in producer.inputs if not is_absent(i))
    return True


# ops that move a tensor's values without computing new ones (input 0 is the data)
_DATA_MOVES = ("Slice", "Transpose", "Reshape", "Gather", "Split", "Squeeze", "Unsqueeze",
               "Identity", "Cast", "Flatten", "Expand")


def _taken_from_weight(t: gs.Tensor, limit: int = 8) -> tuple[str, str] | None:
    """(initializer name, ops) when ``t`` is a weight-sized constant (rank >= 2) moved by
    ``_DATA_MOVES`` ops whose other inputs are not all constant (torch's cross-attention takes
    its key/value rows of ``in_proj_weight`` by a Slice with bounds from the query's shape)."""
    ops, computed = [], False
    while isinstance(t, gs.Variable) and len(t.inputs) == 1 and len(ops) < limit:
        producer = t.inputs[0]
        if producer.op not in _DATA_MOVES or not producer.inputs:
            return None
        ops.append(producer.op)
        computed |= any(const_source(i)[0] is None for i in producer.inputs[1:] if not is_absent(i))
        t = producer.inputs[0]
    const = const_source(t)[0] if ops else None
    if const is None or len(const.shape or ()) < 2:
        return None
    return const.name, " → ".join(reversed(ops)) + (", the part taken chosen at run time" if computed else "")


def is_absent(t: gs.Tensor | None) -> bool:
    """An optional node input left out: None, or the empty-named tensor ONNX writes for it."""
    return t is None or (isinstance(t, gs.Variable) and not t.name)


def _ints(t: gs.Tensor) -> list[int] | None:
    const = const_source(t)[0] if t is not None else None
    if const is None:
        return None
    v = np.asarray(const.values)
    return [int(x) for x in v.reshape(-1)] if v.dtype.kind in "iu" else None


def _row_blocks(concat: gs.Node) -> gs.Tensor | None:
    """The tensor T when ``concat`` joins, along axis 0, Slices of T on axis 0 (step 1, constant
    bounds) that cover each row of T exactly once; else None."""
    if _attr(concat, "axis", None) != 0 or not concat.inputs:
        return None
    source, rows = None, []
    for part in concat.inputs:
        node = part.inputs[0] if isinstance(part, gs.Variable) and len(part.inputs) == 1 else None
        if node is None or node.op != "Slice" or len(node.inputs) < 3:
            return None
        if source is not None and node.inputs[0] is not source:
            return None
        source = node.inputs[0]
        starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
        axes = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if starts is None or ends is None or axes != [0] or steps != [1] or len(starts) != 1 or \
                len(ends) != 1:
            return None
        rows.append((starts[0], ends[0]))
    stored = const_source(source)[0] if source is not None else None
    n = int(stored.shape[0]) if stored is not None and stored.shape else None
    return source if n is not None and rows_partition(rows, n) else None


def rows_partition(rows: list[tuple[int, int]], n: int) -> bool:
    """Whether the half-open Slice ranges ``rows`` (ONNX bounds: negative counts from the end,
    then clamped to 0..n) cover 0..n−1, each row exactly once."""
    def clamp(i: int) -> int:
        return min(max(i + n if i < 0 else i, 0), n)

    covered = sorted((clamp(a), clamp(b)) for a, b in rows)
    return bool(covered) and covered[0][0] == 0 and covered[-1][1] == n and \
        all(a < b for a, b in covered) and all(x[1] == y[0] for x, y in zip(covered, covered[1:]))


def _constant_axes(node: gs.Node) -> bool:
    """An Unsqueeze whose axes are an attribute (opset < 13) or a constant input."""
    if len(node.inputs) < 2:
        return "axes" in node.attrs
    return const_source(node.inputs[1])[0] is not None


def _np_dtype_name(values) -> str:
    return str(np.dtype(values.dtype))


def is_float(dtype) -> bool:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    return dt.kind == "f" or dt.name == "bfloat16"


def _scoped_graphs(graph: gs.Graph):
    """(graph, scope label) for ``graph`` (label "") and every subgraph, outer before inner;
    a subgraph is labelled ``"<node name>/<attribute>"`` of the node holding it, after its own
    graph's label (``"route/then_branch/inner/else_branch"``): the bridge's names for it."""
    stack = [(graph, "")]
    while stack:
        g, label = stack.pop(0)
        yield g, label
        for i, node in enumerate(g.nodes):
            for key, v in node.attrs.items():
                subs = [v] if isinstance(v, gs.Graph) else \
                    [x for x in v if isinstance(x, gs.Graph)] if isinstance(v, (list, tuple)) else []
                for sub in subs:
                    here = f"{node.name or f'{node.op}_{i}'}/{key}"
                    stack.append((sub, f"{label}/{here}" if label else here))


def find_layers(graph: gs.Graph) -> tuple[list[Layer], list[Note]]:
    """Every prunable weight once (shared weights grouped), plus notes on what was skipped.

    Layers are found in the main graph and inside subgraphs (If branches, Loop/Scan bodies),
    whether the weight is stored in the subgraph or read from an enclosing scope; a layer's
    ``scope`` names the first subgraph that uses it ("" when only the main graph does)."""
    layers: dict[int, Layer] = {}
    order: list[int] = []
    notes: list[Note] = []
    for g, scope in _scoped_graphs(graph):
        _find_in(g, scope, layers, order, notes)
    result = [layers[k] for k in order]
    _skip_shared_with_other_readers(graph, result)
    # Layer names must be unique for globs and reports; disambiguate repeats deterministically.
    seen: dict[str, int] = {}
    for layer in result:
        if layer.name in seen:
            seen[layer.name] += 1
            layer.name = f"{layer.name}#{seen[layer.name]}"
        else:
            seen[layer.name] = 0
    return result, notes


def _weight_readers(graph: gs.Graph) -> tuple[dict[int, list[gs.Node]], set[int]]:
    """Per constant (by id), every node of the graph and its subgraphs that reads its values,
    directly or through Identity / Constant nodes (which ``const_source`` sees through and which
    are therefore not listed; nor are Shape and Size); and the ids of the constants a graph or
    subgraph output resolves to."""
    readers: dict[int, list[gs.Node]] = {}
    outputs: set[int] = set()
    for g, _ in _scoped_graphs(graph):
        g_outputs = {id(t) for t in g.outputs}
        for node in g.nodes:
            # Shape and Size read only what pruning keeps (an exporter's Shape(W) for a reshape);
            # a node whose outputs nothing reads changes nothing
            if node.op in ("Identity", "Constant", "Shape", "Size") or \
                    all(not o.outputs and id(o) not in g_outputs for o in node.outputs):
                continue
            for t in node.inputs:
                const = None if is_absent(t) else const_source(t)[0]
                if const is not None and node not in readers.setdefault(id(const), []):
                    readers[id(const)].append(node)
        outputs.update(id(c) for t in g.outputs if (c := const_source(t)[0]) is not None)
    return readers, outputs


def _skip_shared_with_other_readers(graph: gs.Graph, layers: list[Layer]) -> None:
    """Marks skipped a layer whose stored weight something besides its own nodes also reads: an
    embedding's Gather whose table a Gemm also multiplies by (a tied language-model head), any
    other op, or a graph output. Pruning it would change that reader's values too (a tied
    embedding's rows would lose most of their entries), and lowering it would keep the dense
    copy for the other reader beside the CSR one, a larger file."""
    readers, outputs = _weight_readers(graph)
    for layer in layers:
        if layer.skip_reason or layer.weight is None:
            continue
        # the layer's nodes, and the views of the weight on the way to them
        views: list[gs.Node] = []
        for n in layer.nodes:
            for t in n.inputs:
                if not is_absent(t):
                    const_source(t, unsqueeze=True, via=views)
        own = {id(n) for n in (*layer.nodes, *views)}
        others = [n for n in readers.get(id(layer.weight), []) if id(n) not in own]
        if others:
            first = others[0]
            more = f" and {len(others) - 1} more node(s)" if len(others) > 1 else ""
            who = f"{first.op} {first.name!r}" if first.name else f"an unnamed {first.op}"
            tied = " (a tied embedding)" if first.op == "Gather" else ""
            layer.skip_reason = f"weight also read by {who}{more}{tied}"
        elif id(layer.weight) in outputs:
            layer.skip_reason = "weight is also a graph output"


def _find_in(graph: gs.Graph, scope: str, layers: dict, order: list, notes: list) -> None:
    """find_layers over the nodes of one graph (main or subgraph)."""
    graph_inputs = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS:
            if _holds_quantized_weight(node):
                notes.append(Note(node.name, node.op, "quantized weights: not pruned"))
            continue
        roles = WEIGHT_OPS.get(node.op)
        if roles is None or (node.domain or "") not in ("", "ai.onnx"):
            continue
        for role in roles:
            if role.input_index >= len(node.inputs):
                continue
            tensor = node.inputs[role.input_index]
            if isinstance(tensor, gs.Variable) and tensor.name in graph_inputs:
                # input 0 of a MatMul or Gemm is the data side: a graph input there is no weight
                if role.input_index > 0:
                    notes.append(Note(node.name, node.op, f"weight {tensor.name!r} is also a graph input: left alone"
                                      if not scope else f"weight {tensor.name!r} is an input of the "
                                      f"{scope.rsplit('/', 1)[-1]} subgraph (a value the enclosing "
                                      "Loop, Scan or If passes in at run time): left alone"))
                continue
            const, source, _ = const_source(tensor, unsqueeze=node.op in RECURRENT_OPS)
            if const is None:
                if role.input_index > 0 and _constant_expression(tensor):
                    # a stored weight only moved (GPT-2's tied head: MatMul(h, Transpose(wte))) is
                    # named as such; anything else computed is e.g. weight normalisation
                    moved = _taken_from_weight(tensor)
                    what = (f"weight taken from {moved[0]!r} through {moved[1]}, computed at run time"
                            if moved else "weight computed from constants at run time (e.g. weight normalisation)")
                    notes.append(Note(node.name, node.op, f"{what}: not pruned; fold it into a constant first"))
                elif role.input_index > 0 and (taken := _taken_from_weight(tensor)) is not None:
                    notes.append(Note(node.name, node.op, f"weight taken from {taken[0]!r} through "
                                      f"{taken[1]}: not pruned"))
                continue
            # For MatMul/Gemm a constant on the data side of a variable weight is unusual;
            # only take input 0 when input 1 is not itself constant.
            if role.input_index == 0 and len(node.inputs) > 1 and const_source(node.inputs[1])[0] is not None:
                continue
            key = id(const)
            shape = tuple(int(d) for d in const.shape)
            rank = len(shape)
            if key in layers:
                layers[key].nodes.append(node)
                layers[key].scope = layers[key].scope or scope
                continue
            name = node.name or const.name or f"{node.op}_{len(order)}"
            if node.op in RECURRENT_OPS:
                name = f"{name}:{'W' if role.input_index == 1 else 'R'}"
            out_axis = role.out_axis(node, rank) if rank >= 2 else 0
            in_axis = role.in_axis(node, rank) if rank >= 2 else 0
            layer = Layer(
                name=name, op=node.op, kind=role.kind, weight=const,
                weight_name=const.name or name, shape=shape,
                dtype=_np_dtype_name(const.values) if hasattr(const, "values") else "?",
                nodes=[node], out_axis=out_axis, in_axis=in_axis, source=source, scope=scope,
            )
            if not is_float(const.dtype):
                layer.skip_reason = f"weight dtype {const.dtype} is not floating point"
            elif rank < 2:
                layer.skip_reason = "weight has rank < 2"
            layers[key] = layer
            order.append(key)
            if node.op not in RECURRENT_OPS:
                break  # Gemm/MatMul roles are alternatives: one weight per node


def weight_values(layer: Layer) -> np.ndarray:
    return np.asarray(layer.weight.values)


def set_weight_values(layer: Layer, values: np.ndarray) -> None:
    layer.weight.values = np.ascontiguousarray(values)


# --------------------------------------------------------------------------- shapes and FLOPs


def _skeleton(model: ModelProto, small: int = 4096) -> ModelProto:
    """The model without its large weights (typed graph inputs instead) for shape inference."""
    sk = ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    have_inputs = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        external = t.data_location == TensorProto.EXTERNAL
        if n <= small // 4 and not external:
            g.initializer.append(t)
        elif t.name not in have_inputs:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for sp in model.graph.sparse_initializer:
        g.input.append(onnx.helper.make_tensor_value_info(
            sp.values.name, sp.values.data_type, list(sp.dims)))
    _stand_ins(model, g)
    return sk


def _stand_ins(model: ModelProto, g: onnx.GraphProto) -> None:
    """onnxprune's own ``CsrConv``, ``CsrGemm`` and ``MaxPool`` nodes of ``g`` (a skeleton of ``model``)
    replaced, for shape inference only, by the ONNX op they compute over a weight input of the
    dense shape: ONNX's inference does not know the custom domain, so a lowered model's shapes
    stopped at its first lowered node (and re-lowering it could not fold a residual ``Add``).
    ``CsrGemm`` in Gemm style and in MatMul style (``matmul`` 0, 1, and 3 and 4 as an
    ``Einsum`` from op-set 12); ``matmul=2`` (a flattened, transposed Y) and a node whose CSR
    width is unknown are left as they are. The ``If`` of a prefix streamed image by image keeps
    the shapes the lowering recorded for its outputs (its branches' nodes are not inferred)."""
    rows = {t.name: int(t.dims[0]) - 1 for t in model.graph.initializer if len(t.dims) == 1 and t.dims[0] >= 1}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    taken = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.input}
    known = {v.name: v for v in model.graph.value_info}
    for i, node in enumerate(g.node):
        if node.op_type == "If" and any(a.g.name == STREAM_BODY + "_batch" for a in node.attribute):
            # a prefix streamed image by image: its outputs' shapes as the lowering recorded them
            g.value_info.extend(known[o] for o in node.output if o in known)
            continue
        if node.domain == DOMAIN and node.op_type == "MaxPool":
            g.node[i].CopyFrom(standard_pool(node))
            continue
        if node.domain != DOMAIN or node.op_type not in ("CsrConv", "CsrGemm") or len(node.input) < 4:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n_out, k = rows.get(node.input[3]), attrs.get("columns")
        if n_out is None or not isinstance(k, int) or k < 0:
            continue
        w = unique_name(f"{node.output[0]}::weight", taken)
        if node.op_type == "CsrConv":
            kernel = list(attrs.get("kernel_shape") or [])
            size = int(np.prod(kernel)) if kernel else 0
            if not size or k % size:
                continue
            keep = {a: attrs[a] for a in ("kernel_shape", "strides", "pads", "dilations", "group") if a in attrs}
            stand_in = onnx.helper.make_node("Conv", [node.input[0], w], node.output[:1], **keep)
            dims = [n_out, k // size, *kernel]
        elif attrs.get("matmul", 0) == 0:
            stand_in = onnx.helper.make_node("Gemm", [node.input[0], w], node.output[:1], transB=1,
                                             transA=attrs.get("transA", 0))
            dims = [n_out, k]
        elif attrs.get("matmul") == 1:
            stand_in = onnx.helper.make_node("MatMul", [node.input[0], w], node.output[:1])
            dims = [k, n_out]
        elif attrs.get("matmul") in (3, 4) and opset >= 12:  # each batch's Y, or X, transposed
            equation = "...sk,kn->...ns" if attrs["matmul"] == 3 else "...ks,kn->...sn"
            stand_in = onnx.helper.make_node("Einsum", [node.input[0], w], node.output[:1], equation=equation)
            dims = [k, n_out]
        else:
            continue
        g.input.append(onnx.helper.make_tensor_value_info(w, TensorProto.FLOAT, dims))
        g.node[i].CopyFrom(stand_in)


def standard_pool(node: onnx.NodeProto) -> onnx.NodeProto:
    """onnxprune's MaxPool (op-set 9) as the ONNX MaxPool it computes: the same attributes."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    out.domain = ""
    return out


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``… the first not in ``taken``; added to ``taken``."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def infer_shapes(model: ModelProto, input_shapes: dict | None = None,
                 symbols: dict | None = None, dtypes: dict | None = None) -> dict[str, list[int | None]]:
    """Tensor name → shape (None for unknown/symbolic dims); empty on failure. The graph
    inputs named in ``input_shapes`` (``--input-shape``, checked by the caller) take those
    dims for the inference. ``symbols``, when given, is filled with tensor name → each dim's
    symbol (``dim_param``; None for a fixed or unnamed dim), which tells where the inputs'
    symbolic batch went (:func:`batch_symbol`). ``dtypes``, when given, is filled with tensor
    name → ONNX element type (``TensorProto.FLOAT``…) wherever inference knows it."""
    sk = _skeleton(model)
    for vi in sk.graph.input:
        dims = (input_shapes or {}).get(vi.name)
        if dims is not None and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.shape.ClearField("dim")
            for d in dims:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort: FLOPs become unknown, nothing else
        return {}
    shapes: dict[str, list[int | None]] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        tt = vi.type.tensor_type
        if dtypes is not None and tt.elem_type:
            dtypes[vi.name] = int(tt.elem_type)
        if not tt.HasField("shape"):
            continue
        shapes[vi.name] = [dim_size(d) for d in tt.shape.dim]
        if symbols is not None:
            symbols[vi.name] = [None if dim_size(d) else (d.dim_param or None) for d in tt.shape.dim]
    return shapes


def _prod_known(dims) -> int | None:
    """The product of ``dims``; None when one is unknown (a symbolic size is not 1)."""
    n = 1
    for d in dims:
        if not d:
            return None
        n *= d
    return n


def model_batch(graph: gs.Graph, shapes: dict[str, list[int | None]]) -> int | None:
    """The batch size the graph's inputs fix: their common leading dimension; None when one is
    symbolic or a scalar, when they differ, or when the graph has no input."""
    firsts = set()
    for t in graph.inputs:
        dims = shapes.get(t.name)
        if dims is None and t.shape is not None:
            dims = [d if isinstance(d, int) else None for d in t.shape]
        if not dims or not dims[0]:
            return None
        firsts.add(dims[0])
    return firsts.pop() if len(firsts) == 1 else None


def batch_symbol(graph: gs.Graph, symbols: dict[str, list[str | None]]) -> str | None:
    """The symbol every graph input's leading dimension is named by (``infer_shapes``'s
    ``symbols``), when they share one: a tensor whose leading dim carries it is batch-first."""
    names = {(symbols.get(t.name) or [None])[0] for t in graph.inputs}
    return names.pop() if len(names) == 1 and graph.inputs else None


def _rows_per_sample(rows_dims, batch: int | None) -> int | None:
    """Rows of a weight's input ÷ the model's batch, when every row dimension is known and the
    batch divides them; None otherwise."""
    rows = _prod_known(rows_dims)
    return rows // batch if batch and rows and rows % batch == 0 else None


def weight_reuse(layer: Layer, node: gs.Node, shapes: dict[str, list[int | None]],
                 batch: int | None = None, exact: bool = False,
                 batch_first: Callable[[str], bool] | None = None) -> int | None:
    """How many times each weight is applied for one sample (FLOPs = 2 · reuse · weights).

    With the model's batch known (``model_batch``), a Gemm or MatMul weight is applied once
    per row of its input, divided by that batch, wherever the batch sits in the rows: a
    sequence-first [S, N, D] MatMul or a [N·S, D] Gemm of a transformer. With a symbolic batch,
    a product whose leading dim carries the inputs' batch symbol (``batch_first(name)``) counts
    the rows after it. Otherwise ``exact`` gives None (unknown) and the default takes the
    leading dimension to be the batch, which is a guess (Swin's windows × batch is not)."""
    out = shapes.get(node.outputs[0].name) if node.outputs else None
    if layer.op == "Conv":
        return _prod_known(out[2:]) if out and len(out) >= 3 else None
    if layer.op == "ConvTranspose":
        x = shapes.get(node.inputs[0].name)
        return _prod_known(x[2:]) if x and len(x) >= 3 else None
    if layer.op in RECURRENT_OPS:  # W and R are applied once per time step
        x = shapes.get(node.inputs[0].name) if node.inputs else None
        t_axis = 1 if _attr(node, "layout", 0) else 0
        return x[t_axis] if x and len(x) == 3 and x[t_axis] else None
    if layer.op not in ("Gemm", "MatMul") or out is None:
        return 1 if layer.op == "Gemm" and not exact else None
    weight_is_b = layer.op == "Gemm" or node.inputs[1] is layer.weight or \
        const_source(node.inputs[1])[0] is layer.weight
    if len(out) < 2:  # a vector times the weight (or the weight times one): applied once
        return 1 if out else None
    if len(out) == 2 and not weight_is_b:  # W·X: once per column of X, no batch among them
        return out[-1]
    # the rows the weight is applied to, in order: all but the last dim of the product when
    # the weight is B (X·W), all but the last two and the last one when it is A (W·X)
    rows = out[:-1] if weight_is_b else [*out[:-2], out[-1]]
    per_sample = _rows_per_sample(rows, batch)
    if per_sample is None and batch is None and batch_first is not None and \
            batch_first(node.outputs[0].name):
        per_sample = _prod_known(rows[1:])
    if per_sample is not None or exact:
        return per_sample
    if layer.op == "Gemm":
        return 1
    if weight_is_b:
        return _prod_known(out[1:-1]) if len(out) >= 3 else 1
    lead = _prod_known(out[1:-2])
    return out[-1] * lead if out[-1] and lead is not None else None
