"""Rebuild an ONNX graph as a ``torch.nn.Module`` that interprets it node by node.

The module holds:

* ``params`` — one ``nn.Parameter`` (float32) per trainable weight of
  :func:`.weights.find_weights`, keyed by a sanitised form of its ONNX name
  (``onnx_name → key`` in :attr:`OnnxModule.param_keys`); a weight shared by several nodes is
  one parameter, so its gradient sums over every use, as in the original network;
* float buffers for every other float tensor stored in the graph (BatchNormalization running
  statistics among them: training updates them in place and they are written back);
* integer/bool constants on the CPU (shape arithmetic), outside ``state_dict``.

``forward`` walks ``graph.node`` in order (ONNX requires topological order; the builder
checks it) and dispatches each node through :data:`.ops.OPS`.  Building rejects, before any
training, every op type that is not in the table (or is in another domain) and every node
using a feature the table's static checks refuse — naming the ops and nodes.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from onnxprune.core.errors import InvalidModelError, RuntimeFailure
from onnxprune.core.io import node_label, node_subgraphs
from onnxprune.training.torch_bridge import ops as _ops
from onnxprune.training.torch_bridge import ops_control as _control
from onnxprune.training.torch_bridge.weights import (
    FLOAT_TYPES, UnsupportedOpError, all_stored_tensors, scan_weights, stored_tensors, tensor_value,
)

__all__ = ["OnnxModule", "UnsupportedOpError", "build_module", "default_opset"]


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModelError("model has no opset import for the default ONNX domain")


def _attr_value(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a Constant node whose attribute is not a (sparse) tensor."""
    for attr in node.attribute:
        if attr.name in ("value_float", "value_int"):
            v = onnx.helper.get_attribute_value(attr)
            return np.array(v, dtype=np.float32 if attr.name == "value_float" else np.int64)
        if attr.name in ("value_floats", "value_ints"):
            v = onnx.helper.get_attribute_value(attr)
            return np.array(list(v), dtype=np.float32 if attr.name == "value_floats" else np.int64)
    return None


def _sanitize(name: str, used: set[str]) -> str:
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "t"
    if key[0].isdigit():
        key = "t" + key
    base, i = key, 1
    while key in used:
        key = f"{base}_{i}"
        i += 1
    used.add(key)
    return key


class OnnxModule(nn.Module):
    """A torch module that computes what the ONNX graph computes (see module docstring)."""

    def __init__(self, model: onnx.ModelProto, outputs: list[str] | None = None):
        super().__init__()
        graph = model.graph
        if _control.quantized_refusal(graph):
            raise UnsupportedOpError(_control.quantized_refusal(graph))
        # Only the nodes the wanted outputs depend on are rebuilt: a classifier's label
        # post-processing (ArgMax, ai.onnx.ml ops) need not be supported to train its scores.
        wanted = list(outputs) if outputs else [o.name for o in graph.output]
        needed_nodes = _ancestor_nodes(graph, wanted)
        opset = default_opset(model)
        self.weight_info, self.fixed_weights = scan_weights(model)  # fixed: not trained (see there)
        self.params = nn.ParameterDict()
        self.param_keys: dict[str, str] = {}
        self.buffer_keys: dict[str, str] = {}
        self._cpu_consts: dict[str, torch.Tensor] = {}
        self.dropout_ratio: dict[str, float] = {}  # node name → ratio used instead of the graph's
        self.frozen_bn: set[str] = set()  # BatchNormalization nodes that keep running stats fixed
        used_keys: set[str] = set()
        unusable: dict[str, str] = {}

        def add_const(name: str, value: np.ndarray, elem_type: int) -> None:
            info = self.weight_info.get(name)
            if info is not None and info.trainable:
                key = _sanitize(name, used_keys)
                self.params[key] = nn.Parameter(torch.from_numpy(np.asarray(value, dtype=np.float32).copy()))
                self.param_keys[name] = key
            elif elem_type in FLOAT_TYPES:
                key = "buf_" + _sanitize(name, used_keys)
                self.register_buffer(key, torch.from_numpy(np.asarray(value, dtype=np.float32).copy()))
                self.buffer_keys[name] = key
            elif _ops.compute_dtype(elem_type) is not None:
                self._cpu_consts[name] = torch.from_numpy(np.array(value)).to(_ops.compute_dtype(elem_type))
            else:
                unusable[name] = onnx.helper.tensor_dtype_to_string(elem_type)

        for name, (kind, t) in stored_tensors(graph).items():
            elem = t.values.data_type if kind in ("sparse_initializer", "constant_sparse") else t.data_type
            if elem in FLOAT_TYPES or _ops.compute_dtype(elem) is not None:
                add_const(name, tensor_value(kind, t), elem)
            else:
                unusable[name] = onnx.helper.tensor_dtype_to_string(elem)

        # Weights stored inside subgraphs (If branches) are held by the module too, so they train
        # and are written back; the branches read them from the enclosing scope like any other
        # outer name (``_subgraph`` leaves them out of the branch's fixed constants).
        main_stored = stored_tensors(graph)
        for name, (kind, t) in all_stored_tensors(graph).items():
            if name in self.weight_info and name not in main_stored:
                add_const(name, tensor_value(kind, t), self.weight_info[name].elem_type)
        held = frozenset(n for n in self.weight_info if n not in main_stored
                         and (n in self.param_keys or n in self.buffer_keys))

        init_names = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = wanted

        available = set(self.input_names) | set(self.param_keys) | set(self.buffer_keys) | set(self._cpu_consts)
        self._nodes: list[_ops.Node] = []
        unsupported: dict[str, list[str]] = {}
        problems: list[str] = []
        for i, node in enumerate(graph.node):
            if i not in needed_nodes:
                continue
            name = node_label(node, i)
            if node.domain not in ("", "ai.onnx"):
                unsupported.setdefault(f"{node.domain}::{node.op_type}", []).append(name)
                available.update(node.output)
                continue
            if node.op_type == "Constant":
                value = _constant_value(node)
                if node.output[0] in available or node.output[0] in unusable:
                    pass  # tensor-valued Constant, registered (or refused) from stored_tensors
                elif value is not None:
                    add_const(node.output[0], value,
                              TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT64)
                else:
                    unsupported.setdefault("Constant(string)", []).append(name)
                available.update(node.output)
                continue
            problems += _input_problems(node, name, available, unusable)
            available.update(o for o in node.output if o)
            if node.op_type not in _ops.OPS:
                unsupported.setdefault(node.op_type, []).append(name)
                continue
            parsed = _ops.Node(
                name=name, op_type=node.op_type, inputs=list(node.input), outputs=list(node.output),
                attrs={a.name: _attr_value(a) for a in node.attribute}, opset=opset,
            )
            check = _ops.CHECKS.get(node.op_type)
            why = check(parsed) if check else None
            if why:
                problems.append(f"node {name!r} ({node.op_type}): {why}")
            problems += _attach_subgraphs(parsed, available, unsupported, held)
            self._nodes.append(parsed)

        missing_out = [o for o in self.output_names if o not in available]
        if missing_out:
            problems.append(f"graph outputs {missing_out} are never produced")
        _refuse_unbuildable(unsupported, problems)
        self._producer = {o: n for n in self._nodes for o in n.outputs if o}

    # --- running --------------------------------------------------------------------------

    def forward(self, *inputs, outputs: list[str] | None = None):
        """Run the graph; returns the graph outputs (or the named tensors) — one tensor or a tuple.

        The inputs are given in graph order (``module(x)``, ``module(ids, mask)``) or as one
        mapping from input name to tensor (``module({"input_ids": ids, "mask": mask})``)."""
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            given = inputs[0]
            missing = [n for n in self.input_names if n not in given]
            if missing or len(given) != len(self.input_names):
                raise RuntimeFailure(f"graph takes inputs {self.input_names}, got {sorted(given)}")
            inputs = tuple(given[n] for n in self.input_names)
        if len(inputs) != len(self.input_names):
            raise RuntimeFailure(f"graph takes {len(self.input_names)} inputs, got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(self._cpu_consts)
        for name, key in self.param_keys.items():
            env[name] = self.params[key]
        for name, key in self.buffer_keys.items():
            env[name] = getattr(self, key)
        for name, x in zip(self.input_names, inputs):
            env[name] = x.float() if x.is_floating_point() else x
        want = list(outputs) if outputs is not None else self.output_names
        pending = {w for w in want if w not in env}
        for node in self._nodes:
            if not pending:
                break  # everything asked for is computed
            ins = [env[i] if i else None for i in node.inputs]
            try:
                outs = _ops.OPS[node.op_type](node, ins, self)
            except Exception as exc:
                raise RuntimeFailure(f"node {node.name!r} ({node.op_type}) failed: {exc}") from exc
            if not isinstance(outs, tuple):
                outs = (outs,)
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = value
                    pending.discard(name)
        result = tuple(env[w] for w in want)
        return result[0] if len(result) == 1 else result

    # --- weights by ONNX name ---------------------------------------------------------------

    def parameter(self, onnx_name: str) -> nn.Parameter:
        return self.params[self.param_keys[onnx_name]]

    def onnx_tensor(self, onnx_name: str) -> torch.Tensor:
        if onnx_name in self.param_keys:
            return self.parameter(onnx_name)
        return getattr(self, self.buffer_keys[onnx_name])

    def onnx_state(self) -> dict[str, np.ndarray]:
        """Current float32 values of every weight (trainable ones and BN statistics), by ONNX name."""
        return {
            name: self.onnx_tensor(name).detach().cpu().numpy().copy()
            for name in self.weight_info
            if name in self.param_keys or name in self.buffer_keys
        }

    def producer(self, tensor_name: str) -> _ops.Node | None:
        return self._producer.get(tensor_name)


def _input_problems(node: onnx.NodeProto, name: str, available: set[str],
                    unusable: dict[str, str]) -> list[str]:
    """Why ``node``'s inputs cannot be fed: read before produced, or of an element type torch
    cannot hold (``unusable``: tensor name → type name)."""
    problems = []
    missing = [x for x in node.input if x and x not in available]
    if missing:
        problems.append(
            f"node {name!r} ({node.op_type}) uses {missing} before they are produced "
            "(graph is not topologically sorted or inputs are undefined)"
        )
    bad = [x for x in node.input if x in unusable]
    if bad:
        problems.append(
            f"node {name!r} ({node.op_type}) consumes {bad} of unsupported element type "
            f"{sorted({unusable[b] for b in bad})}"
        )
    return problems


def _const_tensor(value: np.ndarray, elem_type: int) -> torch.Tensor | None:
    """A constant as the interpreter holds it (floats in float32), or None for types torch lacks."""
    dtype = torch.float32 if elem_type in FLOAT_TYPES else _ops.compute_dtype(elem_type)
    return torch.from_numpy(np.array(value)).to(dtype) if dtype is not None else None


def _subgraph(graph: onnx.GraphProto, opset: int, label: str, unsupported: dict[str, list[str]],
              problems: list[str], held: frozenset = frozenset()) -> _control.SubGraph:
    """Parse a branch body (nested branches included); unsupported ops and problems are
    recorded in the caller's collections, as for the main graph.  Stored tensors named in
    ``held`` (weights the module trains) are read from the enclosing scope instead of being
    fixed constants of the branch."""
    consts: dict[str, torch.Tensor] = {}
    for name, (kind, t) in stored_tensors(graph).items():
        if name in held:
            continue
        elem = t.values.data_type if kind in ("sparse_initializer", "constant_sparse") else t.data_type
        value = _const_tensor(tensor_value(kind, t), elem)
        if value is None:
            problems.append(f"{label}: constant {name!r} has an unsupported element type")
        consts[name] = value
    local = set(consts) | {i.name for i in graph.input}
    nodes, outer = [], []
    for i, node in enumerate(graph.node):
        name = f"{label}/{node_label(node, i)}"
        if node.op_type == "Constant" and node.output[0] in held:
            continue  # a trained weight: the module holds it
        if node.op_type == "Constant" and node.output[0] not in consts:
            value = _constant_value(node)
            if value is None:
                unsupported.setdefault("Constant(string)", []).append(name)
            else:
                consts[node.output[0]] = torch.from_numpy(value)
        if node.op_type == "Constant" or node.domain not in ("", "ai.onnx") or node.op_type not in _ops.OPS:
            if node.op_type != "Constant":
                unsupported.setdefault(node.op_type, []).append(name)
            local.update(node.output)
            continue
        parsed = _ops.Node(name=name, op_type=node.op_type, inputs=list(node.input), outputs=list(node.output),
                           attrs={a.name: _attr_value(a) for a in node.attribute}, opset=opset)
        check = _ops.CHECKS.get(node.op_type)
        why = check(parsed) if check else None
        if why:
            problems.append(f"node {name!r} ({node.op_type}): {why}")
        problems += _attach_subgraphs(parsed, None, unsupported, held)
        outer += [x for x in parsed.inputs if x and x not in local and x not in outer]
        local.update(node.output)
        nodes.append(parsed)
    return _control.SubGraph(nodes, consts, [o.name for o in graph.output], outer)


def _attach_subgraphs(parsed: _ops.Node, available: set[str] | None,
                      unsupported: dict[str, list[str]], held: frozenset = frozenset()) -> list[str]:
    """Replace the graph attributes of ``parsed`` (If branches) by parsed :class:`SubGraph`s and
    append the enclosing-scope names they read to its inputs, so the interpreter feeds them;
    returns the problems found (outer names not ``available`` when that set is given)."""
    problems: list[str] = []
    names: list[str] = []
    for key, value in list(parsed.attrs.items()):
        if isinstance(value, onnx.GraphProto):
            sub = _subgraph(value, parsed.opset, f"{parsed.name}/{key}", unsupported, problems, held)
            parsed.attrs[key] = sub
            names += [x for x in sub.outer if x not in names]
    if not names:
        return problems
    missing = [x for x in names if available is not None and x not in available]
    if missing:
        problems.append(f"node {parsed.name!r} ({parsed.op_type}) reads {missing} before they are produced")
    parsed.attrs["_outer"] = names
    parsed.inputs = parsed.inputs + names
    return problems


def _refuse_unbuildable(unsupported: dict[str, list[str]], problems: list[str]) -> None:
    """UnsupportedOpError listing the unsupported ops (first five nodes of each), else the
    problems found; nothing when both are empty."""
    if unsupported:
        listing = "; ".join(
            f"{op} (nodes: {', '.join(names[:5])}{', …' if len(names) > 5 else ''})"
            for op, names in sorted(unsupported.items())
        )
        raise UnsupportedOpError(f"the fine-tune bridge does not support these ops: {listing}")
    if problems:
        raise UnsupportedOpError("cannot rebuild the graph in torch: " + "; ".join(problems))


def build_module(model: onnx.ModelProto, outputs: list[str] | None = None) -> OnnxModule:
    """Rebuild ``model`` (the part computing ``outputs``, default all graph outputs) as an
    :class:`OnnxModule` (raises :class:`UnsupportedOpError`)."""
    return OnnxModule(model, outputs)


def _ancestor_nodes(graph, outputs: list[str]) -> set[int]:
    producer = {}
    for i, node in enumerate(graph.node):
        for o in node.output:
            if o:
                producer[o] = i
    needed: set[int] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        node = graph.node[i]
        names = list(node.input)
        for g in node_subgraphs(node):  # subgraph bodies may read outer-scope tensors
            names += [x for n in g.node for x in n.input]
        stack.extend(producer[x] for x in names if x in producer)
    return needed
