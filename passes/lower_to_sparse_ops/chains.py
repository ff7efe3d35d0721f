"""Products that feed products: the first writes its output transposed, the second reads it so.

``CsrGemm`` computes on ``X`` transposed (each input feature one plane of the rows of ``X``)
and sums each output feature over those rows, ``Yᵀ``: a MatMul-style node transposes ``X`` in
and ``Yᵀ`` back out. Where the output of one lowered product is the ``X`` of the next and of
nothing else (a transformer's FFN, ``fc1`` with its GELU then ``fc2``; an MLP at batch > 1),
the first can leave its output as ``Yᵀ`` (``matmul=2``, op-set 7: ``Y`` of shape ``(N, M)``)
and the second read it as Gemm-style ``X`` given transposed (``transA=1``): two transposes of
``M × N`` floats fewer. BERT-base's encoder layer at 10%, 128 rows, ran 1.07x faster so on an
Intel core of lscpu family 6 (one process; docs/BENCHMARKS.md).

Where both are MatMul-style on an ``X`` of rank 3 or more whose batches' rows (its next-to-last
dim, ``S``) are a known multiple of ``_PER_BATCH_ROWS`` (64), and the graph's default-domain
op-set is at least 12, the pair instead transposes each batch (op-set 8): the first writes
``(…, N, S)`` (``matmul=3``) and the second reads it so (``matmul=4``) and writes ``(…, S, N₂)``
as the MatMul did, its residual ``Z`` as it was. At one batch this is the same product; at more,
each batch's ``K`` rows of ``S`` floats are the second product's input planes as they lie
(runtime_ops/README.md), where one ``(K, M)`` matrix is copied into planes across the batches:
BERT-base's ``fc2`` at batch 8 (``K`` = 3072, ``S`` = 128) took 15.5 ms copied, ~1.8 times
eight times its 1.07 ms at batch 1 (docs/BENCHMARKS.md). ``S`` unknown (a dynamic sequence
axis) or not such a multiple keeps the transpose of the whole ``M``: batches the second product
cannot read in place are copied in runs of ``S`` floats, slower than one transpose.

Otherwise the second product writes ``(M, N₂)``: where its ``X`` had more than two dimensions, a
``Reshape`` to ``X.shape[:-1] + (N₂,)`` (the first product's ``X``'s leading dims: ``Shape``
with ``end=-1``, op-set 15 and later, or ``Shape`` and ``Slice``; ``allowzero`` from op-set
14, so that an empty leading dim stays empty — before it, a model fed an empty inner dim
fails to reshape) restores the output, and its residual ``Z`` is reshaped to ``(-1, N₂)``. A
pair is rewritten when both were lowered in the same run (CSR nodes the input already had
are left as they are), and

* the first is MatMul-style, or Gemm-style with ``transA=0``, ``alpha = beta = 1`` and a bias
  over the output features only, without a residual ``Z``, its rows not known to be one (at
  one row there is no transpose to save);
* its output is neither a graph output nor read by any node but the second, as its ``X`` (a
  node of an ``If`` or ``Loop`` body that reads it counts);
* the second is MatMul-style, or Gemm-style with ``transA=0``, and a bias of rank at most 2,
  and does not share the first one's weight (one weight stays one layer to the tools that
  read a lowered file back as dense weights: a weight read both ways would be two);
* the graph's default-domain op-set is at least 10 (``Slice`` with inputs).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import const_source, is_absent, unique_name
from onnxprune.runtime_ops import DOMAIN

# ai.onnxprune op-set that defines matmul=2
TRANSPOSED_OUTPUT_OPSET = 7
# S a multiple of 64 rows: CsrGemm reads each batch in place (4- or 8-vector tiles divide it on
# AVX-512 and AVX2); where it would copy, per batch ran 0.89-1.05x of the whole M's transpose
# (S = 16, 32, 48, 80, 96 at batch 8; 64 and up, read in place: 1.07-1.17x)
_PER_BATCH_ROWS = 64
_PER_BATCH_ONNX_OPSET = 12  # Einsum, for the dense equivalent of matmul=3/4 (onnxprune.runtime.bench)
_MIN_ONNX_OPSET = 10  # Slice with inputs
_SHAPE_END_OPSET = 15  # Shape's start/end attributes
_ALLOWZERO_OPSET = 14  # Reshape's allowzero


def reads_residual(node: gs.Node) -> bool:
    """Whether a CSR node reads a residual input Z (input 5)."""
    return len(node.inputs) > 5 and not is_absent(node.inputs[5])


def _is_gemm(node: gs.Node) -> bool:
    return node.op == "CsrGemm" and node.domain == DOMAIN


def _gemm_style_plain(node: gs.Node) -> bool:
    a = node.attrs
    return (int(a.get("transA", 0)) == 0 and float(a.get("alpha", 1.0)) == 1.0
            and float(a.get("beta", 1.0)) == 1.0)


def _bias_shape(node: gs.Node) -> tuple | None:
    """Shape of the bias input, () without one (as a scalar would be), None when unknown; a
    constant behind Identity or a Constant node counts (PyTorch aliases equal biases so)."""
    if len(node.inputs) < 5 or is_absent(node.inputs[4]):
        return ()
    b = node.inputs[4]
    if not isinstance(b, gs.Constant):
        b = const_source(b)[0] or b
    if isinstance(b, gs.Constant):
        return tuple(b.values.shape)
    return tuple(b.shape) if b.shape is not None else None


def _producer_ok(node: gs.Node, rows: int | None) -> bool:
    if rows == 1 or reads_residual(node):
        return False
    matmul = int(node.attrs.get("matmul", 0))
    if matmul == 1:
        return True
    if matmul != 0 or not _gemm_style_plain(node):
        return False
    shape = _bias_shape(node)
    return shape is not None and (len(shape) <= 1 or (len(shape) == 2 and shape[0] == 1))


def _consumer_ok(node: gs.Node) -> bool:
    matmul = int(node.attrs.get("matmul", 0))
    if matmul == 0 and int(node.attrs.get("transA", 0)) != 0:
        return False
    shape = _bias_shape(node)
    return matmul in (0, 1) and shape is not None and len(shape) <= 2


def transposed_chains(graph: gs.Graph, xs: dict[int, tuple[int | None, int | None, int | None]],
                      graph_outputs: set[int], taken: set[str]) -> list[tuple[gs.Node, gs.Node]]:
    """Rewrites every eligible (producer, consumer) pair of ``CsrGemm`` nodes lowered in this
    run (module doc); ``xs[id(node)]`` is such a node's rows of ``X`` at the expected batch,
    ``X``'s rank and the rows of each of its batches, each None when unknown (nodes keyed by
    identity: names may be empty or repeat). CSR nodes the input file already had are not in
    ``xs`` and never paired. Returns the pairs."""
    if graph.opset < _MIN_ONNX_OPSET:
        return []
    main = {id(n) for n in graph.nodes}
    used: set[int] = set()
    pairs = []
    for p in list(graph.nodes):
        if not _is_gemm(p) or id(p) in used or id(p) not in xs or not _producer_ok(p, xs[id(p)][0]):
            continue
        y = p.outputs[0]
        # onnx-graphsurgeon lists a node of an If or Loop body that reads y among y's users
        users = list(y.outputs)
        if id(y) in graph_outputs or len(users) != 1 or id(users[0]) not in main:
            continue
        c = users[0]
        if (not _is_gemm(c) or id(c) in used or id(c) not in xs or c.inputs[0] is not y
                or sum(t is y for t in c.inputs) != 1 or not _consumer_ok(c) or c.inputs[1] is p.inputs[1]):
            continue
        # the consumer's X is the producer's Y: of the producer's X's rank (MatMul style) or 2
        # (Gemm style), which shape inference may know where it lost the consumer's
        p_rank = xs[id(p)][1] if int(p.attrs.get("matmul", 0)) == 1 else 2
        c_rank = (xs[id(c)][1] or p_rank) if int(c.attrs.get("matmul", 0)) == 1 else 2
        if c_rank is None or c_rank < 2:
            continue
        seq = xs[id(p)][2]
        both_matmul = int(p.attrs.get("matmul", 0)) == 1 and int(c.attrs.get("matmul", 0)) == 1
        if (graph.opset >= _PER_BATCH_ONNX_OPSET and c_rank >= 3 and both_matmul and seq is not None and seq > 0
                and seq % _PER_BATCH_ROWS == 0):
            p.attrs["matmul"] = 3
            p.outputs[0].shape = None  # (..., N, S) now: shape inference gives it again
            c.attrs["matmul"] = 4
        else:
            _rewrite(graph, p, c, c_rank, taken)
        used.update((id(p), id(c)))
        pairs.append((p, c))
    if pairs:
        graph.toposort(recurse_subgraphs=False, recurse_functions=False, mode="nodes")
    return pairs


def _rewrite(graph: gs.Graph, p: gs.Node, c: gs.Node, c_rank: int, taken: set[str]) -> None:
    x_p = p.inputs[0]
    p.attrs["matmul"] = 2
    for a in ("transA", "alpha", "beta"):
        p.attrs.pop(a, None)
    y = p.outputs[0]
    y.shape = None  # (N, M) now: shape inference gives it again
    c.attrs["matmul"] = 0
    c.attrs["transA"] = 1
    if c_rank == 2:
        return
    n2 = int(c.inputs[3].values.shape[0]) - 1  # row_ptr: N + 1 entries
    base = c.name or c.outputs[0].name
    if reads_residual(c):
        z2d = gs.Variable(unique_name(f"{base}.z_2d", taken), dtype=np.float32)
        flat = gs.Constant(unique_name(f"{base}.z_2d_shape", taken), np.array([-1, n2], np.int64))
        graph.nodes.append(gs.Node("Reshape", name=unique_name(f"{base}.z_2d", taken),
                                   inputs=[c.inputs[5], flat], outputs=[z2d]))
        c.inputs[5] = z2d
    out = c.outputs[0]
    out2d = gs.Variable(unique_name(f"{base}.out_2d", taken), dtype=np.float32)
    c.outputs[0] = out2d
    lead = gs.Variable(unique_name(f"{base}.lead_dims", taken), dtype=np.int64)
    if graph.opset >= _SHAPE_END_OPSET:
        graph.nodes.append(gs.Node("Shape", name=unique_name(f"{base}.lead_dims", taken), attrs={"end": -1},
                                   inputs=[x_p], outputs=[lead]))
    else:
        full = gs.Variable(unique_name(f"{base}.x_shape", taken), dtype=np.int64)
        graph.nodes.append(gs.Node("Shape", name=unique_name(f"{base}.x_shape", taken), inputs=[x_p],
                                   outputs=[full]))
        graph.nodes.append(gs.Node("Slice", name=unique_name(f"{base}.lead_dims", taken), inputs=[
            full, gs.Constant(unique_name(f"{base}.lead_start", taken), np.array([0], np.int64)),
            gs.Constant(unique_name(f"{base}.lead_end", taken), np.array([-1], np.int64))], outputs=[lead]))
    shape = gs.Variable(unique_name(f"{base}.out_shape", taken), dtype=np.int64)
    graph.nodes.append(gs.Node("Concat", name=unique_name(f"{base}.out_shape", taken), attrs={"axis": 0},
                               inputs=[lead, gs.Constant(unique_name(f"{base}.out_last", taken),
                                                         np.array([n2], np.int64))], outputs=[shape]))
    # allowzero (op-set 14): an empty leading dim is a 0 to keep, not one to copy from (M, N2)
    reshape_attrs = {"allowzero": 1} if graph.opset >= _ALLOWZERO_OPSET else {}
    graph.nodes.append(gs.Node("Reshape", name=unique_name(f"{base}.out", taken), attrs=reshape_attrs,
                               inputs=[out2d, shape], outputs=[out]))
