"""Attention heads without their transposes (passes/lower_to_sparse_ops/heads.py): a lowered
query/key/value product whose output is split into heads writes each batch transposed
(CsrGemm matmul=3, op-set 8), the key's Kᵀ then a mere Reshape, and the output product reads
the context computed transposed (matmul=4). The rewritten model computes what the dense one
does at any batch and sequence length; what must not be rewritten is not."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.graph import graph_from_model
from onnxprune.passes.lower_to_sparse_ops import op_set_needed
from onnxprune.runtime.check import run_model
from tests.models import run
from tests.test_lower_chains import _w, attrs, csr_nodes, lowered

HIDDEN, HEADS = 32, 4
D = HIDDEN // HEADS


def attention(*, key_perm=(0, 2, 3, 1), shape_from_graph=False, extra_reader=None, merge_perm=(0, 2, 1, 3),
              mask=False, split_shape=(0, -1, HEADS, D), merged_shape=(0, -1, HIDDEN), residual=True, seq="S"):
    """x [N, seq, 32] -> Q, K, V (MatMul + bias) split into 4 heads -> softmax(Q·Kᵀ/√d)·V ->
    merged -> output MatMul + bias (+ x). ``key_perm=(0, 2, 1, 3)`` takes Kᵀ by a second
    Transpose (0, 1, 3, 2) before the scores, as PyTorch exports ``k.transpose(-1, -2)``;
    ``shape_from_graph`` computes the split's shape with Shape/Concat; ``extra_reader`` names a
    tensor ("q_split", "v_heads", "context") that a second graph output also reads; ``mask``
    adds an attention-mask input to the scores, which are divided by √d."""
    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def param(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    if shape_from_graph:  # as exports with dynamic axes compute it; "swapped": (S, B, H, D)
        order = [1, 0] if shape_from_graph == "swapped" else [0, 1]
        nodes += [helper.make_node("Shape", ["x"], ["x_shape"]),
                  helper.make_node("Gather", ["x_shape", param("bs_at", order, np.int64)], ["bs"], axis=0),
                  helper.make_node("Concat", ["bs", param("hd", [-1, D], np.int64)], ["split_shape"], axis=0)]
    heads = {}
    for t, perm in (("q", (0, 2, 1, 3)), ("k", key_perm), ("v", (0, 2, 1, 3))):
        nodes += [helper.make_node("MatMul", ["x", param(f"w{t}", _w(rng, HIDDEN, HIDDEN))], [f"{t}_mm"], name=t),
                  helper.make_node("Add", [f"{t}_mm", param(f"b{t}", rng.standard_normal(HIDDEN))], [f"{t}_out"]),
                  helper.make_node("Reshape", [f"{t}_out", "split_shape" if shape_from_graph
                                               else param(f"{t}_shape", split_shape, np.int64)], [f"{t}_split"]),
                  helper.make_node("Transpose", [f"{t}_split"], [f"{t}_heads"], perm=list(perm))]
        heads[t] = f"{t}_heads"
    if key_perm == (0, 2, 1, 3):
        nodes.append(helper.make_node("Transpose", ["k_heads"], ["k_t"], perm=[0, 1, 3, 2]))
        heads["k"] = "k_t"
    nodes.append(helper.make_node("MatMul", [heads["q"], heads["k"]], ["scores"]))
    if mask:
        nodes += [helper.make_node("Div", ["scores", param("sqrt_d", math.sqrt(D))], ["scaled"]),
                  helper.make_node("Add", ["scaled", "mask"], ["masked"])]
    else:
        nodes.append(helper.make_node("Mul", ["scores", param("scale", 1 / math.sqrt(D))], ["masked"]))
    nodes += [helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", heads["v"]], ["context"]),
              helper.make_node("Transpose", ["context"], ["merge"], perm=list(merge_perm)),
              helper.make_node("Reshape", ["merge", param("merged_shape", list(merged_shape), np.int64)], ["merged"]),
              helper.make_node("MatMul", ["merged", param("wo", _w(rng, HIDDEN, HIDDEN))], ["o_mm"], name="out"),
              helper.make_node("Add", ["o_mm", param("bo", rng.standard_normal(HIDDEN))],
                               ["o_out" if residual else "y"])]
    if residual:
        nodes.append(helper.make_node("Add", ["o_out", "x"], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, HIDDEN])]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 1, seq]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, HIDDEN])]
    if extra_reader:
        nodes.append(helper.make_node("Identity", [extra_reader], ["also"]))
        outputs.append(helper.make_tensor_value_info("also", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def same_as_dense(model, low, batch, seq, mask=False):
    rng = np.random.default_rng(batch * 100 + seq)
    feeds = {"x": rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32)}
    if mask:
        feeds["mask"] = np.where(rng.random((batch, 1, 1, seq)) < 0.2, -1e4, 0.0).astype(np.float32)
    want = run(model, feeds)
    got = run_model(low, feeds)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def transposes(model) -> list[list[int]]:
    return [list(attrs(n)["perm"]) for n in model.graph.node if n.op_type == "Transpose"]


@pytest.mark.parametrize("variant", ["key_heads_transposed", "key_transposed_after", "mask_and_div"])
def test_splits_and_merge_are_rewritten_and_compute_the_dense_model(variant):
    kw = {"key_transposed_after": dict(key_perm=(0, 2, 1, 3)), "mask_and_div": dict(mask=True)}.get(variant, {})
    model = attention(**kw)
    low, stats = lowered(model)
    assert stats["attention_heads"] == [{"node": "q", "rewrite": "split"}, {"node": "k", "rewrite": "split"},
                                        {"node": "v", "rewrite": "split"}, {"node": "out", "rewrite": "merge"}]
    nodes = csr_nodes(low)
    assert [attrs(nodes[t])["matmul"] for t in ("q", "k", "v", "out")] == [3, 3, 3, 4]
    # no head split or merge transposes S-major rows any more: every Transpose left swaps the
    # last two axes (folded by ONNX Runtime into the MatMul reading it)
    assert all(p == [0, 1, 3, 2] for p in transposes(low)), transposes(low)
    assert next(o.version for o in low.opset_import if o.domain == "ai.onnxprune") == 8
    rows = {r["name"]: r for r in stats["layers"]}
    assert "(matmul=3)" in rows["k"]["reason"] and "(matmul=4)" in rows["out"]["reason"]
    onnx.checker.check_model(low)
    for batch, seq in ((1, 16), (3, 16), (2, 5), (1, 1)):
        same_as_dense(model, low, batch, seq, mask=kw.get("mask", False))


@pytest.mark.parametrize("split_shape, merged_shape, batch", [
    ((-1, 16, HEADS, D), (0, -1, HIDDEN), 2),
    # as PyTorch exports a fixed-shape model (DistilBERT's view(bs, -1, n_heads, dim_per_head)
    # traced at batch 1): the batch written out where shape inference does not know it
    ((1, 16, -1, D), (1, 16, -1), 1),
    ((0, 16, HEADS, -1), (0, 16, -1), 3),
])
def test_explicit_and_inferred_split_dims_are_rewritten(split_shape, merged_shape, batch):
    model = attention(seq=16, split_shape=split_shape, merged_shape=merged_shape)
    low, stats = lowered(model)
    assert len(stats["attention_heads"]) == 4
    same_as_dense(model, low, batch, 16)


@pytest.mark.parametrize("kw, left, why", [
    (dict(shape_from_graph="swapped", seq=16, residual=False), {"q", "k", "v"}, "a computed split to (S, B, H, D)"),
    (dict(extra_reader="q_split"), {"q"}, "the query's split has a second reader"),
    (dict(extra_reader="context"), {"out"}, "the context has a second reader"),
    (dict(merge_perm=(0, 1, 2, 3)), {"out"}, "the merge is no head merge"),
    (dict(split_shape=(0, -1, 2, 2 * D)), set(), "other heads: still a valid split"),
    (dict(split_shape=(-1, 0, HEADS, D)), set(), "-1 for the batch, 0 for the sequence: a valid split"),
    (dict(seq=16, split_shape=(-1, 8, HEADS, D), residual=False), {"q", "k", "v"},
     "halves of the sequence as batches: not the product's batches"),
])
def test_what_must_not_be_rewritten_is_left(kw, left, why):
    model = attention(**kw)
    low, stats = lowered(model)
    rewritten = {r["node"] for r in stats["attention_heads"]}
    assert not rewritten & left, why
    for name in left:
        assert attrs(csr_nodes(low)[name])["matmul"] == 1
    for batch in (1, 2):
        same_as_dense(model, low, batch, 16)


def test_a_graph_output_is_never_rewritten():
    model = attention()
    model.graph.output.append(helper.make_tensor_value_info("k_out", TensorProto.FLOAT, None))
    low, stats = lowered(model)
    assert "k" not in {r["node"] for r in stats["attention_heads"]}
    same_as_dense(model, low, 2, 16)


def test_the_option_turns_heads_off_too():
    low, stats = lowered(attention(), **{"transposed-chains": False})
    assert stats["attention_heads"] == []
    assert max(op_set_needed(n) for n in graph_from_model(low).nodes if n.domain == "ai.onnxprune") < 8
    assert len(transposes(low)) == 4


def test_the_dense_view_counts_and_computes_the_dense_model():
    """inspect and report count a lowered file as the dense model it came from: each matmul=3
    and matmul=4 node becomes its product with an Einsum swapping the last two axes (after it,
    or before it), sized from its recorded width; the view computes the dense model's output
    and counts the same layers, parameters and nonzeros."""
    from onnxprune.runtime.bench import counted_layer_rows, dense_view

    model = attention()
    low, stats = lowered(model)
    assert len(stats["attention_heads"]) == 4
    view, left = dense_view(low)
    assert left == [] and not csr_nodes(view)
    assert sum(n.op_type == "Einsum" for n in view.graph.node) == 4
    for batch, seq in ((1, 16), (2, 7)):
        same_as_dense(model, view, batch, seq)
    keys = ("name", "params", "nonzero")
    got, want = counted_layer_rows(low)[0], counted_layer_rows(model)[0]
    assert sorted(tuple(r[k] for k in keys) for r in got) == sorted(tuple(r[k] for k in keys) for r in want)


def test_an_empty_batch_runs_where_the_split_copied_its_dims():
    """A split to (0, 0, H, D) and a merge to (0, 0, N), no -1, run on an empty batch: the
    rewrite reads B and S from the tensor (Shape, Gather, Concat) rather than writing a -1
    that cannot be inferred on zero elements; with a -1 in the original (which fails there
    too) or S given, it writes a constant."""
    model = attention(split_shape=(0, 0, HEADS, D), merged_shape=(0, 0, HIDDEN))
    low, stats = lowered(model)
    assert len(stats["attention_heads"]) == 4
    assert sum(n.op_type == "Shape" for n in low.graph.node) == 4
    x = np.zeros((0, 16, HIDDEN), np.float32)
    (want,), (got,) = run(model, {"x": x}), run_model(low, {"x": x})
    assert got.shape == want.shape == (0, 16, HIDDEN)
    for batch, seq in ((1, 16), (3, 5)):
        same_as_dense(model, low, batch, seq)
    low2, _ = lowered(attention(split_shape=(0, 16, HEADS, D), merged_shape=(0, 16, HIDDEN), seq=16))
    assert not any(n.op_type == "Shape" for n in low2.graph.node)


def test_no_stale_shape_and_no_unread_node_is_left():
    """A model carrying value_info (as shape inference or an exporter writes it) and its
    reshape targets in Constant nodes: the merged tensor, now (B, N, S), keeps no (B, S, N)
    shape, and no node is left that nothing reads."""
    model = attention(seq=16)
    for node in list(model.graph.node):
        for i, name in enumerate(node.input):
            init = next((t for t in model.graph.initializer if t.name == name and name.endswith("shape")), None)
            if init is not None:
                model.graph.initializer.remove(init)
                model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=init))
    model = onnx.shape_inference.infer_shapes(model)
    assert any(v.name == "merged" for v in model.graph.value_info)
    low, stats = lowered(model)
    assert len(stats["attention_heads"]) == 4
    stale = [v for v in low.graph.value_info if v.name == "merged"
             and [d.dim_value for d in v.type.tensor_type.shape.dim][1:] == [16, HIDDEN]]
    assert stale == []
    read = {i for n in low.graph.node for i in n.input} | {o.name for o in low.graph.output}
    assert [n.name or n.op_type for n in low.graph.node if not set(n.output) & read] == []
    same_as_dense(model, low, 2, 16)


def test_a_split_shape_computed_in_the_graph_is_rewritten():
    """Exports with dynamic axes compute a split's shape, Concat(Shape(x)[0:2], (-1, D)): shape
    inference shows its output keeping the product's batch and sequence (the same dim
    symbols) and gives D, so the split is rewritten, B and S read from the product's output;
    the nodes that computed the old shape are gone with it."""
    model = attention(shape_from_graph=True)
    low, stats = lowered(model)
    assert stats["attention_heads"] == [{"node": "q", "rewrite": "split"}, {"node": "k", "rewrite": "split"},
                                        {"node": "v", "rewrite": "split"}, {"node": "out", "rewrite": "merge"}]
    read = {i for n in low.graph.node for i in n.input} | {o.name for o in low.graph.output}
    assert [n.name or n.op_type for n in low.graph.node if not set(n.output) & read] == []
    assert "split_shape" not in read
    for batch, seq in ((1, 16), (3, 5)):
        same_as_dense(model, low, batch, seq)
