"""Attention heads without their transposes: the products write, and read, each batch transposed.

A transformer's attention splits each of its query, key and value products into heads,
``Reshape(Y, (B, S, H, D))`` then ``Transpose`` to ``(B, H, S, D)`` (``perm=(0, 2, 1, 3)``), or
for the key straight to ``Kᵀ`` per head, ``(B, H, D, S)`` (``perm=(0, 2, 3, 1)``); the context
``P·V`` of shape ``(B, H, S, D)`` is transposed back and merged, ``Reshape(Transpose(C, (0, 2,
1, 3)), (B, S, N))``, into the output product. ``CsrGemm`` sums each output feature over a tile
of rows, so each batch's ``Yᵀ``, ``(B, N, S)``, is what its tiles hold before they transpose it,
and ``(B, N, S)`` is ``(B, H, D, S)`` by a reshape: every head's ``Kᵀ`` as it lies. So, for a
product lowered in this run:

* a head split of its output becomes ``matmul=3`` (op-set 8: ``Y`` of shape ``(..., N, S)``)
  and ``Reshape(Yᵀ, (0, H, D, -1))``: ``Kᵀ`` with nothing moved; the query's and the value's
  ``(B, H, S, D)`` are that ``Transpose``d by its last two axes, which ONNX Runtime folds into
  the ``MatMul`` that reads it (a ``FusedMatMul`` with ``transA`` or ``transB``), so no
  transpose runs;
* a merge into its ``X`` becomes ``matmul=4`` (``X`` given ``(..., K, S)``): the context is
  computed transposed, ``Vᵀ·Pᵀ`` (``(B, H, D, S)``: the value's head ``Vᵀ`` as the first step
  left it, ``Pᵀ`` again folded into the ``MatMul``), and reshaped to ``(B, N, S)``.

BERT-base's encoder layer at 10% ran four transposes of 128 × 768 floats fewer, 1.03-1.04x
faster (an Intel core of lscpu family 6 model 207, batch 1, one process; docs/BENCHMARKS.md).
Batch and sequence stay symbolic: the reshapes copy ``B`` (a 0) and infer ``S`` (a -1), or
take ``S`` as the original did (a number, or read by ``Shape`` where it copied it with a 0 and
had no -1, so that an empty batch still runs).

A split is rewritten when the product is MatMul-style (``matmul=1``) on ``X`` of rank 3,
without a residual ``Z``, and its output is read only by a ``Reshape`` to ``(b, s, H, D)`` with
``H · D = N`` that keeps ``X``'s first two dims — a constant shape (one of ``H``, ``D`` may be
-1; one of ``b``, ``s`` a 0 or the dim itself: the element count then fixes the other), or one
computed in the graph (``Shape``, ``Gather``, ``Concat``: exports with dynamic axes), whose
output ONNX shape inference gives the product's own dim symbols or sizes in front and ``H`` or
``D`` behind — read only by a ``Transpose`` of one of the two permutations above.
A merge is rewritten when the product is MatMul-style and its ``X`` is such a ``Reshape`` to
``(b, s, N)`` (``N`` or -1) of a ``Transpose`` ``(0, 2, 1, 3)`` of a ``MatMul`` of two rank-4
inputs, each of the three read only by the next, and the heads' ``H · D = N`` is known (from
shape inference, or because the value is a split rewritten here). A merge to a computed shape
is left (shape inference does not tie the context's dims to the batch and sequence there:
``MatMul``'s broadcasting gives them new symbols), and so are its one ``Transpose`` and copy.
Graph outputs are never among them, and the graph's default-domain op-set is at least 12 (the
dense view that inspect and report count, and the one-node timings, swap a node's axes back
with an ``Einsum``, which needs no rank).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import const_source, unique_name
from onnxprune.runtime_ops import DOMAIN

from .chains import reads_residual

# ai.onnxprune op-set that defines matmul=3 and matmul=4
HEADS_OPSET = 8
_MIN_ONNX_OPSET = 12  # Einsum, for the dense equivalent (onnxprune.runtime.bench)
_SPLIT_Q = (0, 2, 1, 3)  # (B, S, H, D) -> (B, H, S, D)
_SPLIT_K = (0, 2, 3, 1)  # (B, S, H, D) -> (B, H, D, S)
_SWAP = [0, 1, 3, 2]


def _only_reader(t: gs.Tensor, main: set[int], graph_outputs: set[int]) -> gs.Node | None:
    """The one main-graph node that reads ``t`` once, unless ``t`` is a graph output or read
    by anything else (a node of an If or Loop body counts: onnx-graphsurgeon lists it)."""
    users = list(t.outputs)
    if id(t) in graph_outputs or len(users) != 1 or id(users[0]) not in main:
        return None
    return users[0] if sum(i is t for i in users[0].inputs) == 1 else None


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op == op and not t.inputs[0].domain else None


def _reshape_to(node: gs.Node) -> list[int] | None:
    """A Reshape's constant target shape, None when it is not one (or 0 would mean a zero)."""
    if node.op != "Reshape" or node.domain or len(node.inputs) != 2:
        return None
    const = const_source(node.inputs[1])[0]
    if const is None or np.asarray(const.values).dtype.kind not in "iu":
        return None
    dims = [int(v) for v in np.asarray(const.values).reshape(-1)]
    if int(node.attrs.get("allowzero", 0)) and 0 in dims:
        return None
    return dims


def _keeps_leading(dims: list[int], given: list | None) -> bool:
    """Whether a Reshape to ``dims`` keeps its input's first two dims ``given`` (None where
    unknown), the rest of both shapes being the same ``N`` features (``H · D = N``): then the
    element count ties the two, so one kept (a 0, or the dim itself) keeps the other, whether
    it is a -1 or a number (a reshape that would not is refused when the model runs)."""
    if given is None or len(given) < 2:
        return False
    return any(dims[i] == 0 or (given[i] is not None and dims[i] == given[i]) for i in (0, 1))


def _heads_of(dims: list[int], n: int) -> tuple[int, int] | None:
    """(H, D) of a split of N features as a Reshape to ``dims`` (b, s, H, D) gives them, one of
    the two a -1 (PyTorch exports ``view(b, s, -1, d)`` so), None when it is no such split."""
    h, d = dims[2], dims[3]
    if h == -1 and d > 0 and n % d == 0:
        h = n // d
    elif d == -1 and h > 0 and n % h == 0:
        d = n // h
    return (h, d) if h > 0 and d > 0 and h * d == n and dims.count(-1) <= 1 else None


def _perm(node: gs.Node) -> tuple[int, ...] | None:
    if node.op != "Transpose" or node.domain:
        return None
    perm = node.attrs.get("perm")
    return tuple(int(v) for v in perm) if perm is not None else None


def _is_lowered_matmul(node: gs.Node, lowered: set[int]) -> bool:
    return (node.op == "CsrGemm" and node.domain == DOMAIN and id(node) in lowered
            and int(node.attrs.get("matmul", 0)) == 1)


def _inferred_heads(r: gs.Node, y: gs.Tensor, n: int, own) -> tuple[int, int] | None:
    """(H, D) of a head split whose target shape is computed in the graph (``Shape``,
    ``Gather``, ``Concat``: an export with dynamic axes), where shape inference shows its
    output keeping ``y``'s first two dims (the same dim symbols, or the same fixed sizes) and
    gives H or D; ``own(tensor)`` is (dims, symbols) as the model's own inference has them."""
    (out, out_sym), (got, got_sym) = own(r.outputs[0]), own(y)
    if out is None or got is None or len(out) != 4 or len(got) != 3 or out_sym is None or got_sym is None:
        return None
    for i in (0, 1):
        fixed = out[i] is not None and out[i] == got[i]
        if not fixed and (out_sym[i] is None or out_sym[i] != got_sym[i]):
            return None
    h, d = out[2], out[3]
    if h is None and d and n % d == 0:
        h = n // d
    elif d is None and h and n % h == 0:
        d = n // h
    return (h, d) if h and d and h * d == n else None


def _split(graph: gs.Graph, p: gs.Node, shapes, main: set[int], graph_outputs: set[int], taken: set[str],
           dead: list[gs.Node], split_widths: dict[int, int], own) -> bool:
    """Rewrites ``p``'s head split (module doc), noting the heads' tensor's H · D in
    ``split_widths``; whether it did."""
    x = shapes(p.inputs[0])
    y = p.outputs[0]
    n = int(p.inputs[3].values.shape[0]) - 1  # row_ptr: N + 1 entries
    if x is None or len(x) != 3 or reads_residual(p):
        return False
    r = _only_reader(y, main, graph_outputs)
    if r is None or r.op != "Reshape" or r.domain or r.inputs[0] is not y:
        return False
    dims = _reshape_to(r)
    if dims is not None:
        heads = _heads_of(dims, n) if len(dims) == 4 else None
        if heads is None or not _keeps_leading(dims, [x[0], x[1], n]):
            return False
    else:  # computed: B and S read from the product's output, as the original read them
        heads = _inferred_heads(r, y, n, own) if own is not None and len(r.inputs) == 2 else None
        if heads is None:
            return False
        dims = [0, 0, *heads]
    t = _only_reader(r.outputs[0], main, graph_outputs)
    perm = _perm(t) if t is not None else None
    if perm not in (_SPLIT_Q, _SPLIT_K):
        return False
    base = p.name or y.name
    dead.extend((r, t))
    p.attrs["matmul"] = 3
    y.shape = None  # (B, N, S) now: shape inference gives it again
    shape = _target(graph, y, dims, 2, heads, f"{base}.heads_shape", taken)
    heads_out = t.outputs[0]
    if perm == _SPLIT_Q:  # (B, H, S, D): a value's heads, whose P·V is (B, H, S, D) again
        split_widths[id(heads_out)] = n
    r.outputs.clear()
    t.inputs.clear()
    t.outputs.clear()
    if perm == _SPLIT_K:
        graph.nodes.append(gs.Node("Reshape", name=unique_name(f"{base}.heads", taken), inputs=[y, shape],
                                   outputs=[heads_out]))
        return True
    heads_t = gs.Variable(unique_name(f"{base}.heads_t", taken), dtype=np.float32)
    graph.nodes.append(gs.Node("Reshape", name=unique_name(f"{base}.heads_t", taken), inputs=[y, shape],
                               outputs=[heads_t]))
    graph.nodes.append(gs.Node("Transpose", name=unique_name(f"{base}.heads", taken), attrs={"perm": _SWAP},
                               inputs=[heads_t], outputs=[heads_out]))
    return True


def _target(graph: gs.Graph, src: gs.Tensor, dims: list[int], s_axis: int, middle: tuple[int, ...],
            name: str, taken: set[str]) -> gs.Tensor:
    """The shape (B, *middle, S) of a rewritten split or merge, B and S those of ``src`` (its
    dim 0 and ``s_axis``), as the original's target ``dims`` (b, s, ...) lets them be given:
    a constant ``(0, *middle, -1)`` where ``dims`` had a -1 (which, like this one, cannot be
    inferred on an empty tensor), ``(0, *middle, s)`` where it gave ``s``, and read from ``src``
    by Shape, Gather and Concat where it copied S with a 0 and so ran on an empty batch too."""
    if -1 in dims or dims[1] > 0:
        last = -1 if -1 in dims else dims[1]
        return gs.Constant(unique_name(name, taken), np.array([0, *middle, last], np.int64))
    full = gs.Variable(unique_name(f"{name}.of", taken), dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", name=unique_name(f"{name}.of", taken), inputs=[src], outputs=[full]))
    parts = []
    for tag, axis in (("b", 0), ("s", s_axis)):
        part = gs.Variable(unique_name(f"{name}.{tag}", taken), dtype=np.int64)
        index = gs.Constant(unique_name(f"{name}.{tag}_at", taken), np.array([axis], np.int64))
        graph.nodes.append(gs.Node("Gather", name=unique_name(f"{name}.{tag}", taken), attrs={"axis": 0},
                                   inputs=[full, index], outputs=[part]))
        parts.append(part)
    shape = gs.Variable(unique_name(name, taken), dtype=np.int64)
    graph.nodes.append(gs.Node("Concat", name=unique_name(name, taken), attrs={"axis": 0}, inputs=[
        parts[0], gs.Constant(unique_name(f"{name}.middle", taken), np.array(middle, np.int64)), parts[1]],
        outputs=[shape]))
    return shape


def _merge(graph: gs.Graph, c: gs.Node, shapes, main: set[int], graph_outputs: set[int], taken: set[str],
           dead: list[gs.Node], split_widths: dict[int, int]) -> bool:
    """Rewrites the head merge into ``c``'s X (module doc); whether it did."""
    x = c.inputs[0]
    n = int(c.attrs.get("columns", -1))
    r2 = _producer(x, "Reshape")
    if r2 is None or n < 1 or _only_reader(x, main, graph_outputs) is not c:
        return False
    dims = _reshape_to(r2)
    t2 = _producer(r2.inputs[0], "Transpose")
    if dims is None or len(dims) != 3 or dims[2] not in (n, -1) or t2 is None or _perm(t2) != _SPLIT_Q:
        return False
    merged = shapes(t2.outputs[0])
    mm = _producer(t2.inputs[0], "MatMul")
    if (merged is None or len(merged) != 4 or not _keeps_leading(dims, merged) or mm is None
            or _only_reader(r2.inputs[0], main, graph_outputs) is not r2
            or _only_reader(t2.inputs[0], main, graph_outputs) is not t2):
        return False
    p_in, v_in = mm.inputs
    if any(s is None or len(s) != 4 for s in (shapes(p_in), shapes(v_in))):
        return False
    # H · D = N: from shape inference, or from the value's split (P·V has V's heads and width)
    if (None in merged[2:] or merged[2] * merged[3] != n) and split_widths.get(id(v_in)) != n:
        return False
    base = c.name or c.outputs[0].name
    dead.extend((mm, t2, r2))
    swapped = _producer(v_in, "Transpose")
    if swapped is not None and list(_perm(swapped) or ()) == _SWAP:
        v_t = swapped.inputs[0]  # Vᵀ as the split left it
        dead.append(swapped)  # unless something else reads V
    else:
        v_t = gs.Variable(unique_name(f"{base}.value_t", taken), dtype=np.float32)
        graph.nodes.append(gs.Node("Transpose", name=unique_name(f"{base}.value_t", taken), attrs={"perm": _SWAP},
                                   inputs=[v_in], outputs=[v_t]))
    p_t = gs.Variable(unique_name(f"{base}.probs_t", taken), dtype=np.float32)
    graph.nodes.append(gs.Node("Transpose", name=unique_name(f"{base}.probs_t", taken), attrs={"perm": _SWAP},
                               inputs=[p_in], outputs=[p_t]))
    ctx_t = gs.Variable(unique_name(f"{base}.context_t", taken), dtype=np.float32)
    mm.inputs.clear()
    mm.outputs.clear()
    t2.inputs.clear()
    t2.outputs.clear()
    graph.nodes.append(gs.Node("MatMul", name=unique_name(f"{base}.context_t", taken), inputs=[v_t, p_t],
                               outputs=[ctx_t]))
    flat = _target(graph, ctx_t, dims, 3, (n,), f"{base}.x_t_shape", taken)
    graph.nodes.append(gs.Node("Reshape", name=unique_name(f"{base}.x_t", taken), inputs=[ctx_t, flat],
                               outputs=[r2.outputs[0]]))
    r2.outputs.clear()
    x.shape = None  # (B, N, S) now: shape inference gives it again
    c.attrs["matmul"] = 4
    return True


def attention_heads(graph: gs.Graph, lowered: set[int], shape_of, graph_outputs: set[int],
                    taken: set[str], own_of=None) -> list[tuple[gs.Node, str]]:
    """Rewrites every head split and merge (module doc) of the ``CsrGemm`` nodes in ``lowered``
    (ids of the nodes lowered in this run: CSR nodes the input file had are left as they are);
    ``shape_of(tensor)`` gives a tensor's dims (None where unknown), or None; ``own_of(tensor)``
    its dims and dim symbols as the model's own shape inference has them (no ``--input-shape``),
    each None where unknown, for splits whose target shape is computed. Returns each rewritten
    node with "split" or "merge", splits first."""
    if graph.opset < _MIN_ONNX_OPSET:
        return []
    main = {id(n) for n in graph.nodes}
    done: list[tuple[gs.Node, str]] = []
    dead: list[gs.Node] = []
    widths: dict[int, int] = {}
    for p in list(graph.nodes):
        if _is_lowered_matmul(p, lowered) and _split(graph, p, shape_of, main, graph_outputs, taken, dead, widths,
                                                      own_of):
            done.append((p, "split"))
    main = {id(n) for n in graph.nodes}
    for c in list(graph.nodes):
        if _is_lowered_matmul(c, lowered) and _merge(graph, c, shape_of, main, graph_outputs, taken, dead, widths):
            done.append((c, "merge"))
    if done:
        _remove_unread(graph, dead, graph_outputs)
        graph.toposort(recurse_subgraphs=False, recurse_functions=False, mode="nodes")
    return done


def _remove_unread(graph: gs.Graph, nodes: list[gs.Node], graph_outputs: set[int]) -> None:
    """Drops each of ``nodes`` that nothing reads any more, and then the nodes that only they
    read (a Reshape's shape: a Constant node, or the Shape, Gather and Concat computing it)."""
    gone: set[int] = set()
    while nodes:
        node = nodes.pop()
        if id(node) in gone or any(o.outputs or id(o) in graph_outputs for o in node.outputs):
            continue
        feeds = [t.inputs[0] for t in node.inputs if len(t.inputs) == 1]
        node.inputs.clear()
        node.outputs.clear()
        gone.add(id(node))
        nodes.extend(feeds)
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]
