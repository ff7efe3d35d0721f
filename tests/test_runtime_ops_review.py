"""Hostile attribute types and other model-controlled edge cases of the native sparse ops.

An attribute the ops define, present with another type than the contract's (README, `CsrGemm`
and `CsrConv` tables), must be refused when the session is created: read as "absent", it
silently took its default, and the op computed something other than what the model states.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime_ops import csr_from_dense

DOMAIN = runtime_ops.DOMAIN
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]


def single_op_model(op: str, x_shape, weight_rows: np.ndarray, attributes):
    """X -> op(X, CSR of `weight_rows` as constant initializers) -> Y, with raw AttributeProtos."""
    inits = [numpy_helper.from_array(a, n) for a, n in zip(csr_from_dense(weight_rows), ("values", "col", "rp"))]
    node = helper.make_node(op, ["X", "values", "col", "rp"], ["Y"], domain=DOMAIN)
    node.attribute.extend(attributes)
    graph = helper.make_graph([node], "review", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def run(model, x):
    opts = runtime_ops.session_options(1)
    opts.log_severity_level = 4
    return runtime_ops.InferenceSession(model.SerializeToString(), opts).run(None, {"X": x})[0]


def outcome(model, x):
    """run(model, x), or None when ONNX Runtime refuses the model or the run."""
    try:
        return run(model, x)
    except Exception as e:
        assert type(e).__module__.startswith("onnxruntime"), repr(e)
        return None


RNG_SEED = 1234
GEMM_W = np.random.default_rng(RNG_SEED).standard_normal((3, 3)).astype(np.float32)
GEMM_X = np.random.default_rng(RNG_SEED + 1).standard_normal((3, 3)).astype(np.float32)
GEMM_X3 = np.random.default_rng(RNG_SEED + 4).standard_normal((2, 2, 3)).astype(np.float32)
CONV_W = np.random.default_rng(RNG_SEED + 2).standard_normal((2, 1)).astype(np.float32)  # (C_out, C_in/g*kH*kW)
CONV_X = np.random.default_rng(RNG_SEED + 3).standard_normal((1, 2, 3, 3)).astype(np.float32)

# (op, attribute as the model states it, the same attribute with the contract's type).
# Square X and W, so a dropped transA or matmul still has valid shapes and only the values differ.
MISTYPED = [
    ("CsrGemm", helper.make_attribute("alpha", 3), helper.make_attribute("alpha", 3.0)),
    ("CsrGemm", helper.make_attribute("transA", 1.0), helper.make_attribute("transA", 1)),
    ("CsrGemm", helper.make_attribute("transA", [1]), helper.make_attribute("transA", 1)),
    ("CsrGemm", helper.make_attribute("matmul", "1"), helper.make_attribute("matmul", 1)),
    ("CsrConv", helper.make_attribute("group", 2.0), helper.make_attribute("group", 2)),
    ("CsrConv", helper.make_attribute("group", [2]), helper.make_attribute("group", 2)),
]


def mistyped_case(op, attributes):
    """The MISTYPED model of `op` with `attributes` (kernel_shape [1, 1] added for CsrConv)."""
    if op == "CsrGemm":
        x = GEMM_X3 if any(a.name == "matmul" for a in attributes) else GEMM_X
        return single_op_model(op, x.shape, GEMM_W, attributes), x
    return single_op_model(op, CONV_X.shape, CONV_W, [helper.make_attribute("kernel_shape", [1, 1]), *attributes]), CONV_X


@pytest.mark.parametrize("op, wrong, right", MISTYPED, ids=lambda v: getattr(v, "name", v))
def test_a_mistyped_attribute_is_refused_not_read_as_its_default(op, wrong, right):
    # The correctly typed attribute changes the result (so defaulting it is a wrong result) ...
    # (group=2 makes output channel 1 read input channel 1, group=1 channel 0).
    # matmul=1 on 2-D X is Gemm-style, so its case uses a rank-3 X that Gemm style refuses.
    model_right, x = mistyped_case(op, [right])
    model_default, _ = mistyped_case(op, [])
    y_right, y_default = outcome(model_right, x), outcome(model_default, x)
    assert y_right is not None
    assert y_default is None or not np.allclose(y_right, y_default)
    # ... and the mistyped one is an error naming the attribute, at session creation.
    model_wrong, _ = mistyped_case(op, [wrong])
    with pytest.raises(Exception, match=wrong.name) as info:
        run(model_wrong, x)
    assert type(info.value).__module__.startswith("onnxruntime")
