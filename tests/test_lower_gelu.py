"""LowerToSparseOps folds the activation after a lowered product into CsrGemm (op-set 3), GELU
included: the Gelu op and the Erf form exporters write, x·½·(1 + erf(x/√2)), in each order they
write it, after a MatMul and its folded bias Add or after a Gemm; GELU after a Conv into CsrConv.
Each folded model computes what the original did (ONNX Runtime running the original), its dense
equivalent too, and every near miss keeps its nodes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime.bench import dense_from_lowered
from tests.test_lower_activations import _same_on
from tests.test_lower_to_sparse_ops import _lower

SQRT2 = float(np.float32(np.sqrt(2.0)))


def _c(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def _erf_form(order="torch", scale=("Div", "sqrt2"), one="one", half="half"):
    """GELU's Erf form on "y", writing "z", in one of the orders exporters use."""
    op, const = scale
    first = helper.make_node(op, ["y", const], ["s"])
    head = [first, helper.make_node("Erf", ["s"], ["e"]), helper.make_node("Add", ["e", one], ["a"])]
    if order == "torch":  # (y · (1 + erf)) · ½
        return head + [helper.make_node("Mul", ["y", "a"], ["m"]), helper.make_node("Mul", ["m", half], ["z"])]
    if order == "hf":  # (y · ½) · (1 + erf)
        return head + [helper.make_node("Mul", ["y", half], ["m"]), helper.make_node("Mul", ["m", "a"], ["z"])]
    # y · ((1 + erf) · ½), constants on the left
    return head + [helper.make_node("Mul", [half, "a"], ["h"]), helper.make_node("Mul", ["h", "y"], ["z"])]


CONSTS = [_c("sqrt2", SQRT2), _c("rsqrt2", 1 / np.sqrt(2.0)), _c("one", 1.0), _c("half", 0.5)]

# name -> (nodes after the product "y" writing "z", folded as)
FOLDED = {
    "erf_torch_order": (_erf_form("torch"), "Gelu (Div, Erf, Add, Mul, Mul)"),
    "erf_hf_order": (_erf_form("hf"), "Gelu (Div, Erf, Add, Mul, Mul)"),
    "erf_halved_sum": (_erf_form("halved"), "Gelu (Div, Erf, Add, Mul, Mul)"),
    "erf_times_rsqrt2": (_erf_form("torch", scale=("Mul", "rsqrt2")), "Gelu (Mul, Erf, Add, Mul, Mul)"),
    "relu": ([helper.make_node("Relu", ["y"], ["z"])], "Relu"),
    "clip": ([helper.make_node("Clip", ["y", "lo", "hi"], ["z"])], "Clip"),
    "silu": ([helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["y", "s"], ["z"])],
             "Swish (Sigmoid, Mul)"),
}

KEPT = {
    "sqrt2_rounded": (_erf_form(scale=("Div", "approx_sqrt2")), [_c("approx_sqrt2", 1.414)]),
    "plus_two": (_erf_form(one="two"), [_c("two", 2.0)]),
    "times_0_4": (_erf_form(half="p4"), [_c("p4", 0.4)]),
    "erf_of_y_itself": ([helper.make_node("Erf", ["y"], ["e"]), helper.make_node("Add", ["e", "one"], ["a"]),
                         helper.make_node("Mul", ["y", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["z"])],
                        []),
}


def _matmul_model(tail, extra_inits=(), opset=17, outputs=("z",), with_add=True):
    """x [2, 3, 16] · W [16, 12] (+ b) then ``tail``."""
    rng = np.random.default_rng(7)
    w = np.where(rng.random((16, 12)) < 0.35, rng.normal(size=(16, 12)), 0).astype(np.float32)
    b = rng.normal(size=12).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p" if with_add else "y"], name="fc")]
    inits = [numpy_helper.from_array(w, "W"), *CONSTS, _c("lo", -0.5), _c("hi", 1.5), *extra_inits]
    if with_add:
        nodes.append(helper.make_node("Add", ["p", "b"], ["y"]))
        inits.append(numpy_helper.from_array(b, "b"))
    g = helper.make_graph(nodes + tail, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 20 else 9
    return model


def _feeds():
    return {"x": (np.random.default_rng(5).standard_normal((2, 3, 16)) * 3).astype(np.float32)}


def _domain_version(model):
    return {o.domain: o.version for o in model.opset_import}[runtime_ops.DOMAIN]


@pytest.mark.parametrize("with_add", [True, False], ids=["bias_add", "no_bias"])
@pytest.mark.parametrize("name", list(FOLDED))
def test_activation_after_a_lowered_matmul_is_folded_in(name, with_add):
    tail, described = FOLDED[name]
    model = _matmul_model(tail, with_add=with_add)
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm"]
    node = lowered.graph.node[0]
    assert node.output == ["z"]
    assert {a.name: a.s for a in node.attribute}["activation"] == described.split(" ")[0].encode()
    assert result.stats["layers"][0]["reason"].endswith(f"; activation {described} folded in")
    assert _domain_version(lowered) == 3  # CsrGemm's activation is op-set 3
    # the pattern's constants went with it
    assert not {"sqrt2", "rsqrt2", "one", "half"} & {t.name for t in lowered.graph.initializer}
    _same_on(model, lowered, _feeds())
    dense = dense_from_lowered(lowered, {"x": (2, 3, 16)})
    assert not any(n.domain == runtime_ops.DOMAIN for n in dense.graph.node)
    _same_on(model, dense, _feeds())


def test_the_gelu_op_of_opset_20_is_folded_and_its_tanh_form_is_not():
    model = _matmul_model([helper.make_node("Gelu", ["y"], ["z"])], opset=20)
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm"] and _domain_version(lowered) == 3
    _same_on(model, lowered, _feeds())
    dense = dense_from_lowered(lowered, {"x": (2, 3, 16)})
    assert "Gelu" in [n.op_type for n in dense.graph.node]  # rebuilt as the op at opset 20
    _same_on(model, dense, _feeds())
    model = _matmul_model([helper.make_node("Gelu", ["y"], ["z"], approximate="tanh")], opset=20)
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "Gelu"] and _domain_version(lowered) == 1
    _same_on(model, lowered, _feeds())


@pytest.mark.parametrize("name", list(KEPT))
def test_near_misses_after_a_matmul_keep_their_nodes(name):
    tail, inits = KEPT[name]
    model = _matmul_model(tail, inits)
    lowered, result = _lower(model, force=["*"])
    ops = [n.op_type for n in lowered.graph.node]
    assert ops[0] == "CsrGemm" and ops[1:] == [n.op_type for n in tail]
    assert "activation" not in result.stats["layers"][0]["reason"] and _domain_version(lowered) == 1
    _same_on(model, lowered, _feeds())


def test_a_gelu_tensor_read_elsewhere_keeps_the_pattern():
    model = _matmul_model(_erf_form(), outputs=("z", "e"))  # erf's output is also a graph output
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "Div", "Erf", "Add", "Mul", "Mul"]
    _same_on(model, lowered, _feeds())
    model = _matmul_model(_erf_form(), outputs=("z", "y"))  # the product itself too
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node][1:] == ["Div", "Erf", "Add", "Mul", "Mul"]


def test_gemm_and_its_activation_become_one_csr_gemm():
    rng = np.random.default_rng(2)
    w = np.where(rng.random((12, 16)) < 0.3, rng.normal(size=(12, 16)), 0).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0),
             *_erf_form("hf")]
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), _c("b", rng.normal(size=12)), *CONSTS])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm"] and _domain_version(lowered) == 3
    feeds = {"x": (rng.standard_normal((4, 16)) * 3).astype(np.float32)}
    _same_on(model, lowered, feeds)
    _same_on(model, dense_from_lowered(lowered, {"x": (4, 16)}), feeds)


def test_gelu_after_a_conv_becomes_csr_conv_activation_at_op_set_3():
    from tests.test_lower_activations import _model, _scaled_feeds

    model = _model(_erf_form(), CONSTS)
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv"]
    assert result.stats["layers"][0]["reason"].endswith("; activation Gelu (Div, Erf, Add, Mul, Mul) folded in")
    assert _domain_version(lowered) == 3  # Gelu is op-set 3 on either op
    _same_on(model, lowered, _scaled_feeds(model))
    _same_on(model, dense_from_lowered(lowered, {"x": (2, 4, 6, 9)}), _scaled_feeds(model))


def test_each_node_of_a_shared_weight_folds_its_own_activation():
    # transformer layers exported from copies of one module share their weights: the two
    # products of one weight each keep their own activation (GELU on one, Relu on the other)
    rng = np.random.default_rng(4)
    w = np.where(rng.random((16, 12)) < 0.35, rng.normal(size=(16, 12)), 0).astype(np.float32)
    consts = {t.name for t in CONSTS}
    gelu = [helper.make_node(n.op_type, [i if i in consts else i + "1" for i in n.input], [o + "1" for o in n.output])
            for n in _erf_form()]  # on y1, writing z1
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y1"], name="fc_a"), *gelu,
             helper.make_node("MatMul", ["x", "W"], ["y2"], name="fc_b"), helper.make_node("Relu", ["y2"], ["z2"])]
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("z1", "z2")],
                          [numpy_helper.from_array(w, "W"), *CONSTS])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lowered, result = _lower(model, force=["*"])
    acts = {n.output[0]: {a.name: a.s for a in n.attribute}.get("activation") for n in lowered.graph.node}
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "CsrGemm"]
    assert acts == {"z1": b"Gelu", "z2": b"Relu"}
    assert result.stats["layers"][0]["reason"].endswith(
        "; activation Gelu (Div, Erf, Add, Mul, Mul), Relu folded in")
    _same_on(model, lowered, _feeds())


def test_one_node_timing_models_declare_the_op_set_their_node_needs(monkeypatch):
    """The measured decision and ``bench`` time each CSR node alone: the one-node model must
    declare the lowered model's op-set (3 for CsrGemm's activation), not op-set 1."""
    import onnx

    from onnxprune.runtime import bench

    lowered, _ = _lower(_matmul_model(FOLDED["erf_torch_order"][0]), force=["*"])
    seen = []
    original = bench._one_node_models

    def spy(*args, **kwargs):
        dense_b, sparse_b = original(*args, **kwargs)
        seen.append(_domain_version(onnx.load_from_string(sparse_b)))
        return dense_b, sparse_b

    monkeypatch.setattr(bench, "_one_node_models", spy)
    pairs = list(bench.one_node_pairs(lowered, lowered, _feeds(), 1, 17, 0))
    assert len(pairs) == 1 and seen == [3]
