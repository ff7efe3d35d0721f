"""A batch streamed image by image through a model's leading layers (``Scan`` over axis 0).

ONNX Runtime runs a graph node by node, each node over the whole batch. A lowered layer runs
several times faster than the dense one, so at batch 8 the large maps of a network's first
layers become the time: the batch's activations leave the caches between one node and the
next (MobileNetV2 at batch 8, 96 channels of 112 x 112 are 38.5 MB, above this core's 32 MB
L3). ONNX Runtime's profiler on MobileNetV2 lowered at 75% (1 thread, lscpu family 25, L2 1
MiB): its layers on 112 x 112 and 56 x 56 maps took 1.3-2.6x longer per image at batch 8 than at
batch 1, those on 14 x 14 and 7 x 7 maps 0.8-0.9x; the dense model's layers, slower, scale
with the batch.

``stream`` moves a prefix of the graph into the body of a ``Scan`` that runs it one image at a
time (the body sees ``(1, C, H, W)`` through an ``Unsqueeze``, its outputs are ``Squeeze``d and
stacked again by the ``Scan``), so each image's activations stay in the caches from one layer
to the next; the rest of the graph runs on the whole batch as before. An ``If`` on the batch
size (``Shape``, ``Gather``, ``Greater``) takes the ``Scan`` for two images or more and the
prefix as it was, a copy of its nodes, for one image or none: ONNX Runtime refuses a ``Scan``
over an empty axis, and for one image the ``Scan`` would only cost its overhead (MobileNetV2
streamed through 19 nodes ran 0.965x of the model unstreamed at batch 1, ~0.2 ms a call).
Each op in the prefix computes each image apart from the others (``STREAMABLE``). The outputs
are the same to the bit where the prefix holds onnxprune's ops; ONNX Runtime runs a standard
``Conv`` inside a subgraph on its plain kernel, not in its blocked NCHWc layout as in the main
graph, which rounds differently (the lowering measures and reports the change).

A prefix qualifies when

* it starts from one graph input and each of its nodes reads only that input, tensors the
  prefix computes and constants (initializers, ``Constant`` nodes outside the body);
* each node is an op of ``STREAMABLE`` with one output (a ``MaxPool``'s ``Indices`` count
  positions across the batch) and no ``training_mode``, reading activations only at the
  positions listed there, and an elementwise op's constant operand of the activation's rank has a leading
  dimension of 1 (a constant of lower rank broadcasts over the trailing axes only); a
  ``Concat`` joins along an axis other than the batch's;
* it ends at a cut: one tensor (``MAX_FRONTIER`` at most) carries all that the rest of the
  graph reads from it, or that the graph outputs.

``cuts`` lists the qualifying prefixes, shortest first, with the largest tensor each leaves
to the batched part; ``onnxprune.runtime.lowering`` times the lowered model streamed at a few
of them against the same model unstreamed, at the expected batch, and keeps the fastest that
won by ``STREAM_MIN_GAIN``. ``flatten`` undoes the rewrite, the prefix's nodes back in the main
graph under their own names (the tools that look at the lowered nodes one by one, such as
``onnxprune bench`` on a lowered file, read the flat graph).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.core.graph import STREAM_BODY
from onnxprune.core.io import proto_graphs
from onnxprune.runtime_ops import DOMAIN

SCAN_NAME = "onnxprune_stream"  # the If node (its guard and Scan after it); ``flatten`` finds it
INNER = "onnxprune_stream/"  # prefix of the names of the tensors inside the body
EMPTY = "onnxprune_stream_one/"  # prefix of the names in the branch for one image or none
AXES = "onnxprune_stream_axes"  # the Unsqueeze/Squeeze axes, (0,)
MAX_FRONTIER = 1
_ELEMENTWISE = (None,)  # every input may be an activation, constants broadcast-checked

# (domain, op) -> the input positions that may read an activation (None: any, broadcast
# checked); every other input must be a constant. Each op computes image i of its output from
# image i of its inputs alone.
STREAMABLE: dict[tuple[str, str], tuple] = {
    **{("", op): (0,) for op in (
        "Conv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "LRN", "InstanceNormalization")},
    **{("", op): _ELEMENTWISE for op in (
        "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
        "Selu", "Softplus", "Identity", "Add", "Sub", "Mul", "Div", "PRelu", "Sqrt", "Neg",
        "Abs", "Exp", "Erf", "Pow", "Max", "Min")},
    ("", "Concat"): _ELEMENTWISE,
    (DOMAIN, "CsrConv"): (0, 5),  # X and the residual Z (runtime_ops/README.md)
    (DOMAIN, "MaxPool"): (0,),
}
# A prefix is streamed only where it won by this much timed whole against the model unstreamed:
# below it the Scan's per-image overhead (~0.15 ms a call for MobileNetV2 at batch 1) and the
# timing noise decide.
STREAM_MIN_GAIN = 1.05


@dataclasses.dataclass(frozen=True)
class Cut:
    """A qualifying prefix: the first ``nodes`` of ``prefix_nodes``, the tensor(s) it hands
    to the rest of the graph, and the bytes of the largest tensor the prefix's remaining nodes
    compute on the whole batch."""
    nodes: int
    frontier: tuple[str, ...]
    rest_bytes: int


def _domain(node: gs.Node) -> str:
    return "" if node.domain in (None, "", "ai.onnx") else node.domain


def _is_const(t, consts: set) -> bool:
    return isinstance(t, gs.Constant) or t.name in consts


def _const_shape(t) -> tuple | None:
    if isinstance(t, gs.Constant):
        return tuple(t.shape)
    return None


def _streamable(node: gs.Node, inside: set, consts: set, rank: int) -> bool:
    """Whether ``node`` computes each image apart, reading activations only from ``inside``
    (every one of which has the streamed input's ``rank``: each op here keeps it)."""
    spec = STREAMABLE.get((_domain(node), node.op))
    if spec is None or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return False
    # one output: a MaxPool's Indices count positions across the whole batch, and a
    # BatchNormalization with more outputs (or training_mode) computes batch statistics
    if len(node.outputs) != 1 or node.attrs.get("training_mode", 0) != 0:
        return False
    if node.op == "Concat":
        axis = node.attrs.get("axis")
        if not isinstance(axis, int) or axis % rank == 0 or not -rank <= axis < rank:
            return False
    reads = False
    for i, t in enumerate(node.inputs):
        if t.name == "":
            continue
        if t.name in inside:
            if spec != _ELEMENTWISE and i not in spec:
                return False
            reads = True
        elif not _is_const(t, consts):
            return False
        elif spec == _ELEMENTWISE:
            shape = _const_shape(t)
            # a constant of lower rank broadcasts over trailing axes; of the same rank only
            # with one image's worth along the batch axis
            if shape is None or len(shape) > rank or (len(shape) == rank and shape[0] != 1):
                return False
    return reads


def _constants(graph: gs.Graph) -> set[str]:
    """Names of the tensors ``Constant`` nodes (with no input) produce."""
    return {o.name for n in graph.nodes if n.op == "Constant" and not n.inputs for o in n.outputs}


def prefix_nodes(graph: gs.Graph, x: str, rank: int) -> list[gs.Node]:
    """The nodes that can run image by image from graph input ``x`` (of ``rank``), in graph
    order (topological, as ONNX requires), up to the first node on ``x``'s path that cannot."""
    consts = _constants(graph)
    inside = {x}
    order: list[gs.Node] = []
    for node in graph.nodes:
        if (node.op == "Constant" and not node.inputs) or not any(t.name in inside for t in node.inputs):
            continue
        if not _streamable(node, inside, consts, rank):
            break
        order.append(node)
        inside.update(o.name for o in node.outputs)
    return order


def cuts(graph: gs.Graph, order: list[gs.Node], sizes: dict[str, int], batch: int) -> list[Cut]:
    """The qualifying prefixes of ``order`` (``prefix_nodes``), shortest first. ``sizes`` maps
    tensor names to their bytes for one image; a cut's ``rest_bytes`` is the largest tensor of
    the prefix's remaining nodes at ``batch``."""
    outputs = {t.name for t in graph.outputs}
    position = {id(n): k for k, n in enumerate(order)}
    # the last position of order that reads each tensor; None where a node outside order does
    last: dict[str, int | None] = {}
    for node in order:
        for o in node.outputs:
            users = [position.get(id(c)) for c in o.outputs]
            last[o.name] = None if o.name in outputs or any(u is None for u in users) else max(users, default=-1)
    tail = [0] * (len(order) + 1)  # tail[k]: the largest output of order[k:], for one image
    for k in range(len(order) - 1, -1, -1):
        tail[k] = max([tail[k + 1], *(sizes.get(o.name, 0) for o in order[k].outputs)])
    found, live = [], set()
    for k, node in enumerate(order):
        live.update(o.name for o in node.outputs)
        live = {t for t in live if last[t] is None or last[t] > k}
        if 0 < len(live) <= MAX_FRONTIER:
            found.append(Cut(k + 1, tuple(sorted(live)), tail[k + 1] * batch))
    return found


def candidates(found: list[Cut], budgets: list[int]) -> list[Cut]:
    """For each budget (bytes), the shortest prefix that leaves no tensor larger than it to the
    rest of the prefix's nodes run on the whole batch; distinct, shortest first."""
    picked: list[Cut] = []
    for budget in budgets:
        cut = next((c for c in found if c.rest_bytes <= budget), None)
        if cut is not None and cut not in picked:
            picked.append(cut)
    return sorted(picked, key=lambda c: c.nodes)


def stream(graph: gs.Graph, x: str, rank: int, cut: Cut) -> None:
    """Move ``cut``'s prefix of ``graph`` (``prefix_nodes(graph, x, rank)[:cut.nodes]``) into
    the body of a ``Scan`` over ``x``'s leading axis, in place. The body's tensors are the
    prefix's, named ``INNER`` + their name; the frontier keeps its names, so the rest of the
    graph reads what it read before. An ``If`` on the batch size runs the ``Scan`` for two
    images or more and, for one or none, a copy of the prefix as it was (tensors named
    ``EMPTY`` + their name)."""
    order = prefix_nodes(graph, x, rank)[:cut.nodes]
    tensors = graph.tensors()
    xv = tensors[x]
    opset = graph.opset
    frontier = [tensors[f] for f in cut.frontier]
    one_image = _one_image_branch(order, frontier, xv.dtype, rank, opset)
    axes = gs.Constant(AXES, np.array([0], dtype=np.int64))
    image = gs.Variable(INNER + x + ":image", dtype=xv.dtype, shape=[None] * (rank - 1))
    x_in = gs.Variable(INNER + x, dtype=xv.dtype, shape=[1] + [None] * (rank - 1))
    body = [_axes_node("Unsqueeze", image, axes, x_in, opset)]
    members = {id(n) for n in order}
    for node in order:
        for i, t in enumerate(node.inputs):
            if t is xv:
                node.inputs[i] = x_in
        for j, o in enumerate(node.outputs):
            if o.name in cut.frontier:
                node.outputs[j] = gs.Variable(INNER + o.name, dtype=o.dtype)
            else:
                o.name, o.shape = INNER + o.name, None
    body.extend(order)
    outs = []
    inner = {o.name: o for n in order for o in n.outputs}
    for f in frontier:
        # ONNX Runtime's Scan needs a type and shape on each body output: x's type (no op of
        # the prefix changes it), its rank less the batch axis, the dims left open
        y = gs.Variable(INNER + f.name + ":image", dtype=xv.dtype, shape=[None] * (rank - 1))
        body.append(_axes_node("Squeeze", inner[INNER + f.name], axes, y, opset))
        outs.append(y)
    sub = gs.Graph(nodes=body, inputs=[image], outputs=outs, name=STREAM_BODY, opset=opset)
    stacked = [gs.Variable(INNER + f.name + ":batch", dtype=xv.dtype, shape=[None] * rank) for f in frontier]
    scan = gs.Node("Scan", name=SCAN_NAME + ":scan", attrs={"body": sub, "num_scan_inputs": 1},
                   inputs=[xv], outputs=stacked)
    batch = gs.Graph(nodes=[scan], inputs=[], outputs=stacked, name=STREAM_BODY + "_batch", opset=opset)
    shape, count, some = (gs.Variable(SCAN_NAME + suffix, dtype=dt, shape=dims) for suffix, dt, dims in (
        (":shape", np.int64, [rank]), (":images", np.int64, []), (":several", np.bool_, [])))
    zero = gs.Constant(SCAN_NAME + ":zero", np.array(0, dtype=np.int64))
    one = gs.Constant(SCAN_NAME + ":one", np.array(1, dtype=np.int64))
    guard = [gs.Node("Shape", name=SCAN_NAME + ":shape", inputs=[xv], outputs=[shape]),
             gs.Node("Gather", name=SCAN_NAME + ":images", attrs={"axis": 0}, inputs=[shape, zero], outputs=[count]),
             gs.Node("Greater", name=SCAN_NAME + ":several", inputs=[count, one], outputs=[some]),
             gs.Node("If", name=SCAN_NAME, attrs={"then_branch": batch, "else_branch": one_image},
                     inputs=[some], outputs=frontier)]
    # where the last member was: a node between the members reads none of their outputs
    # (prefix_nodes stops at the first that does), while a member may read a Constant node's
    # output from among them
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in members)
    rest = [n for n in graph.nodes if id(n) not in members]
    at = last - (len(members) - 1)
    graph.nodes = rest[:at] + guard + rest[at:]


def _one_image_branch(order: list[gs.Node], frontier: list, dtype, rank: int, opset: int) -> gs.Graph:
    """The prefix's nodes again, on their own tensors (``EMPTY`` + name), for one image or none."""
    copies: dict[int, gs.Variable] = {}
    nodes = []
    for node in order:
        outs = []
        for o in node.outputs:
            copies[id(o)] = gs.Variable(EMPTY + o.name, dtype=o.dtype, shape=o.shape)
            outs.append(copies[id(o)])
        nodes.append(gs.Node(node.op, name=EMPTY + node.name if node.name else None, attrs=dict(node.attrs),
                             inputs=[copies.get(id(t), t) for t in node.inputs], outputs=outs,
                             domain=node.domain))
    for f in frontier:  # the If's branches declare their outputs as the Scan's body does
        copies[id(f)].dtype, copies[id(f)].shape = dtype, [None] * rank
    return gs.Graph(nodes=nodes, inputs=[], outputs=[copies[id(f)] for f in frontier],
                    name=STREAM_BODY + "_one", opset=opset)


def _axes_node(op: str, x, axes: gs.Constant, y, opset: int) -> gs.Node:
    """Unsqueeze / Squeeze of axis 0: axes an input from op-set 13, an attribute before."""
    if opset >= 13:
        return gs.Node(op, name=f"{SCAN_NAME}_{op.lower()}_{y.name}", inputs=[x, axes], outputs=[y])
    return gs.Node(op, name=f"{SCAN_NAME}_{op.lower()}_{y.name}", attrs={"axes": [0]}, inputs=[x], outputs=[y])


def _guard(model: onnx.ModelProto):
    return next((n for n in model.graph.node if n.op_type == "If" and n.name == SCAN_NAME), None)


def streamed(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph holds the rewrite of ``stream``."""
    return _guard(model) is not None


def flat_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """``model``'s main-graph nodes with the rewrite of ``stream`` undone: the guard and its
    ``If`` replaced by the prefix's nodes under their own names (copies; the other nodes are
    the model's own, nothing else is copied); the main graph's nodes where there is none."""
    g = model.graph
    guard = _guard(model)
    if guard is None:
        return list(g.node)
    then = next(a.g for a in guard.attribute if a.name == "then_branch")
    scan = next(n for n in then.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")

    def strip(name: str) -> str:
        return name[len(INNER):] if name.startswith(INNER) else name

    nodes = []
    for node in body.node:
        if node.name.startswith(SCAN_NAME + "_"):
            continue  # the Unsqueeze and Squeezes
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.input[:] = [strip(t) for t in n.input]
        n.output[:] = [strip(t) for t in n.output]
        nodes.append(n)
    at = next(i for i, n in enumerate(g.node) if n.name.startswith(SCAN_NAME + ":") or n is guard)
    rest = [n for n in g.node if not (n.name == SCAN_NAME or n.name.startswith(SCAN_NAME + ":"))]
    return rest[:at] + nodes + rest[at:]


def flatten(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the rewrite of ``stream`` undone (``flat_nodes``; the guard's constants
    dropped where nothing else reads them); ``model`` itself where there is none."""
    if not streamed(model):
        return model
    nodes = flat_nodes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    g.node.extend(nodes)
    used = {t for sub in proto_graphs(g) for n in sub.node for t in n.input}
    keep = [t for t in g.initializer if t.name in used or t.name not in (AXES, SCAN_NAME + ":zero", SCAN_NAME + ":one")]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out
