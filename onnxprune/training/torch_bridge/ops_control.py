"""Control flow (If) for the torch interpreter, and the refusal of quantized graphs.

A branch is a :class:`SubGraph`: its nodes parsed like the main graph's, its own constants
(initializers and Constant nodes, held as fixed tensors: weights stored inside a branch are
not trained), and the names it reads from enclosing scopes.  The builder appends those
outer-scope names to the If node's inputs, so the interpreter hands their current values
(trainable parameters included, with their autograd history) to :func:`op_if` like any other
input; only the taken branch runs, and gradients flow through it alone.  The condition is
read on the host (it decides which code runs, so it cannot be differentiated anyway).
"""

from __future__ import annotations

import dataclasses

import torch

from onnxprune.core.graph import QUANTIZED_OPS
from onnxprune.core.io import proto_graphs


@dataclasses.dataclass
class SubGraph:
    """A parsed branch body: ``nodes`` in order, ``consts`` by name, its output names, and
    ``outer`` — the enclosing-scope names its nodes (or nested branches) read."""

    nodes: list
    consts: dict[str, torch.Tensor]
    outputs: list[str]
    outer: list[str]


def run_subgraph(sub: SubGraph, outer: dict[str, torch.Tensor], ctx, table: dict) -> list[torch.Tensor]:
    """Execute ``sub`` with the enclosing scope ``outer`` and the op ``table``; returns its
    outputs in order."""
    env = dict(outer)
    dev = next((v.device for v in outer.values() if v is not None and v.device.type != "cpu"), None)
    # Float constants follow the model onto its device; integer ones (shapes) stay on the host.
    env.update((k, v.to(dev) if dev is not None and v.is_floating_point() else v) for k, v in sub.consts.items())
    for node in sub.nodes:
        outs = table[node.op_type](node, [env[i] if i else None for i in node.inputs], ctx)
        outs = outs if isinstance(outs, tuple) else (outs,)
        env.update((name, v) for name, v in zip(node.outputs, outs) if name)
    return [env[o] for o in sub.outputs]


def if_op(table: dict):
    """The If op running branches with ``table`` (the interpreter's, which holds If itself):
    ``then_branch`` when the (single-element) condition is true, else ``else_branch``."""

    def op_if(n, ins, ctx):
        cond = bool(ins[0].reshape(-1)[0].item())
        outer = dict(zip(n.attrs.get("_outer", []), ins[1:]))
        outs = run_subgraph(n.attrs["then_branch" if cond else "else_branch"], outer, ctx, table)
        return tuple(outs) if len(outs) > 1 else outs[0]

    return op_if


def quantized_refusal(graph) -> str | None:
    """Why the bridge refuses ``graph`` (any scope): the first quantized op it holds, or None.

    Quantized graphs carry integer weights and scale/zero-point pairs that training in float
    would have to fake; the bridge trains float graphs (retrain the float model, quantize after).
    """
    for g in proto_graphs(graph):
        for i, node in enumerate(g.node):
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                label = node.name or f"{node.op_type}_{i}"
                return (f"quantized graph (op {node.op_type}, node {label!r}): the fine-tune bridge "
                        "trains float models only; retrain the float model and quantize it afterwards")
    return None

