"""LowerToSparseOps' NCHW pools (pools.py): an ONNX MaxPool that reads a lowered node's output
becomes onnxprune's MaxPool (op-set 9), the same op ONNX Runtime would run between two layout
reorders; the others stay, and every lowered model computes what the dense one does."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps
from onnxprune.runtime.bench import csr_nodes, dense_from_lowered
from onnxprune.runtime.check import run_model
from onnxprune.runtime_ops import DOMAIN
from tests.models import run


def _conv(rng, name, c_in, c_out, x, y, density=0.3):
    w = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) >= density] = 0.0
    node = helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.pre"], name=name, pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", [f"{name}.pre"], [y], name=f"{name}.relu")
    return [node, relu], numpy_helper.from_array(w, f"{name}.w")


def vgg_like(pool1: dict | None = None, pool2: dict | None = None, indices: bool = False, side=120):
    """conv1 -> pool1 -> conv2 -> pool2 -> output, 16 channels of side x side (pools 2 x 2 / 2 by
    default)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for name, c_in, x, y in (("conv1", 3, "x", "a1"), ("conv2", 16, "p1", "a2")):
        ns, w = _conv(rng, name, c_in, 16, x, y)
        nodes += ns
        inits.append(w)
        pool = (pool1 if name == "conv1" else pool2) or {"kernel_shape": [2, 2], "strides": [2, 2]}
        outs = [f"p{name[-1]}"] + (["idx"] if indices and name == "conv1" else [])
        nodes.append(helper.make_node("MaxPool", [y], outs, name=f"pool{name[-1]}", **pool))
    outputs = [helper.make_tensor_value_info("p2", TensorProto.FLOAT, None)]
    if indices:
        outputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, None))
    graph = helper.make_graph(nodes, "vgg_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [1, 3, side, side])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def lowered(model, **options):
    result = LowerToSparseOps({"force": ["*"], **options})(graph_from_model(model))
    return graph_to_model(result.graph, model), result.stats


def pools(model) -> dict[str, str]:
    return {n.name: n.domain for n in model.graph.node if n.op_type == "MaxPool"}


def same_as_dense(model, low):
    x = np.random.default_rng(1).standard_normal(model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
                                                 * np.array([0, 0, 1, 1]) + np.array([1, 3, 0, 0])).astype(np.float32)
    for got, want in zip(run_model(low, {"x": x}), run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_pools_after_lowered_convolutions_run_as_onnxprunes():
    model = vgg_like()
    low, stats = lowered(model)
    assert stats["nchw_pools"] == ["pool1", "pool2"]
    assert pools(low) == {"pool1": DOMAIN, "pool2": DOMAIN}
    pool = next(n for n in low.graph.node if n.name == "pool1")
    assert {a.name: helper.get_attribute_value(a) for a in pool.attribute} == {
        "kernel_shape": [2, 2], "strides": [2, 2], "dilations": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": 0}
    assert [(o.domain, o.version) for o in low.opset_import if o.domain == DOMAIN] == [(DOMAIN, 9)]
    same_as_dense(model, low)


def test_a_pool_after_a_dense_convolution_stays_onnx_runtimes():
    model = vgg_like()
    low, stats = lowered(model, force=["conv2"])
    assert stats["nchw_pools"] == ["pool2"]
    assert pools(low) == {"pool1": "", "pool2": DOMAIN}
    same_as_dense(model, low)


@pytest.mark.parametrize("pool, why", [
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, "auto_pad SAME_UPPER"),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "pads": [2, 0, 0, 0]}, "a pad not smaller than its kernel"),
    ({"kernel_shape": [2, 2], "strides": [70000, 2]}, "an attribute beyond [1, 65536]"),
])
def test_pools_the_op_cannot_take_stay(pool, why):
    from onnxprune.passes.lower_to_sparse_ops.pools import pool_attrs

    model = vgg_like(pool1=pool)
    node = graph_from_model(model).nodes[2]
    assert node.name == "pool1" and pool_attrs(node) == why
    low, stats = lowered(model)
    assert "pool1" not in stats["nchw_pools"] and pools(low)["pool1"] == ""


def test_a_pool_writing_indices_stays():
    model = vgg_like(indices=True)
    low, stats = lowered(model)
    assert stats["nchw_pools"] == ["pool2"] and pools(low)["pool1"] == ""
    same_as_dense(model, low)


def test_every_pool_attribute_kept():
    pool = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
            "dilations": [1, 1], "storage_order": 1}
    valid = {"kernel_shape": [3, 2], "strides": [1, 2], "auto_pad": "VALID"}
    model = vgg_like(pool1=pool, pool2=valid)
    low, stats = lowered(model)
    assert stats["nchw_pools"] == ["pool1", "pool2"]
    got = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}
           for n in low.graph.node if n.op_type == "MaxPool"}
    assert got["pool1"] == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                            "dilations": [1, 1]}
    assert got["pool2"]["pads"] == [0, 0, 0, 0] and "auto_pad" not in got["pool2"]
    same_as_dense(model, low)


def test_the_option_turns_them_off_and_the_dense_view_restores_them():
    model = vgg_like()
    low, stats = lowered(model, **{"nchw-pools": False})
    assert stats["nchw_pools"] == [] and set(pools(low).values()) == {""}
    assert [o.version for o in low.opset_import if o.domain == DOMAIN] == [2]  # the Relu folded in
    low, _ = lowered(model)
    dense = dense_from_lowered(low, {n.input[0]: (1, 16 if n.name == "conv2" else 3, 1, 1) for n in csr_nodes(low)})
    assert set(pools(dense).values()) == {""} and not any(o.domain == DOMAIN for o in dense.opset_import)
    assert len(csr_nodes(low)) == 2  # the pools are not CSR nodes
    same_as_dense(model, dense)


def test_pools_on_small_or_unknown_maps_stay_onnx_runtimes():
    """ONNX Runtime's NCHWc pool stays ahead on small maps, reorders and all (pools.py): 2 x 2 / 2
    below 14 x 14, other pools below 55 x 55; and a map of unknown size is not rewritten."""
    from onnxprune.passes.lower_to_sparse_ops.pools import pays

    pairs = {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [1, 1], "pads": [0, 0, 0, 0], "ceil_mode": 0}
    other = {**pairs, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    assert pays(pairs, [1, 64, 14, 14]) and not pays(pairs, [1, 64, 13, 14])
    assert not pays({**pairs, "ceil_mode": 1}, [1, 64, 15, 15]) and pays({**pairs, "ceil_mode": 1}, [1, 64, 16, 16])
    assert pays(other, [1, 64, 55, 55]) and not pays(other, [1, 64, 54, 55])
    assert not pays(pairs, [1, 64, "h", "w"]) and not pays(pairs, None) and not pays(pairs, [1, 64, 28])
    model = vgg_like(side=40)  # pool2 reads 20 x 20: 2 x 2 / 2 pays from 14 x 14
    _, stats = lowered(model)
    assert stats["nchw_pools"] == ["pool1", "pool2"]
    model = vgg_like(side=24)  # pool2 reads 12 x 12
    low, stats = lowered(model)
    assert stats["nchw_pools"] == ["pool1"] and pools(low)["pool2"] == ""
    same_as_dense(model, low)
    symbolic = vgg_like()
    for d in symbolic.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "side"
    _, stats = lowered(symbolic)
    assert stats["nchw_pools"] == []
    _, stats = lowered(symbolic, **{"input-shapes": {"x": [1, 3, 120, 120]}})
    assert stats["nchw_pools"] == ["pool1", "pool2"]
