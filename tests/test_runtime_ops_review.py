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
    kernel = helper.make_attribute("kernel_shape", [1, 1])
    return single_op_model(op, CONV_X.shape, CONV_W, [kernel, *attributes]), CONV_X


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


@pytest.mark.parametrize("value", ["SAME_UPPER", "VALID", "NOTSET"])
def test_conv_auto_pad_is_refused_not_ignored(value):
    """ONNX Conv's auto_pad is not part of CsrConv's contract (pads are explicit): SAME_UPPER
    ignored would silently compute a VALID convolution."""
    model, x = single_op_model("CsrConv", (1, 1, 3, 3), np.ones((1, 4), np.float32),
                               [helper.make_attribute("kernel_shape", [2, 2]),
                                helper.make_attribute("auto_pad", value)]), \
        np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(Exception, match="auto_pad") as info:
        run(model, x)
    assert type(info.value).__module__.startswith("onnxruntime")


# ---------------------------------------------------------------------------------------------
# Edge geometries, each in a child process (a crash or a sanitizer report fails the test), each
# checked against the float64 reference of tests/test_runtime_ops_hostile.py.

from tests.test_runtime_ops_hostile import conv_reference_csr, gemm_reference, op_model, run_in_child  # noqa: E402


def random_csr(rng, rows: int, k: int, density: float, dtype=None, shuffle: bool = False):
    """CSR of a random (rows, k) matrix; `shuffle` puts each row's columns in random order."""
    w = rng.standard_normal((rows, k)).astype(np.float32)
    w[rng.random((rows, k)) >= density] = 0.0
    v, c, p = csr_from_dense(w, dtype)
    if shuffle:
        for r in range(rows):
            perm = rng.permutation(np.arange(p[r], p[r + 1]))
            v[p[r]:p[r + 1]], c[p[r]:p[r + 1]] = v[perm], c[perm]
    return v, c, p


CONV_EDGES = {
    # no input channels: every output is its bias
    "no_input_channels": ((1, 0, 3, 3), 2, 0, dict(kernel_shape=[1, 1])),
    # an empty image padded to 2 x 2: the kernel reads padding only
    "empty_image_padded": ((1, 1, 0, 0), 2, 1, dict(kernel_shape=[1, 1], pads=[1, 1, 1, 1])),
    # the largest stride along an axis with one output, next to a long axis
    "max_stride_single_output_row": ((2, 1, 1, 40), 3, 3, dict(kernel_shape=[1, 3], strides=[65536, 1])),
    # the largest stride along an axis with two outputs (65536 phase planes of one column)
    "max_stride_two_outputs": ((1, 1, 9, 1), 2, 3, dict(kernel_shape=[3, 1], strides=[1, 65536],
                                                        pads=[0, 0, 0, 65536])),
    # the largest dilation, exactly fitting the input
    "max_dilation": ((1, 1, 1, 65537), 2, 2, dict(kernel_shape=[1, 2], dilations=[1, 65536])),
    # depthwise, odd sizes, tiles overhanging both edges
    "depthwise_overhang": ((1, 4, 7, 21), 4, 9, dict(kernel_shape=[3, 3], pads=[1, 2, 0, 1], strides=[2, 1],
                                                     group=4)),
}


@pytest.mark.parametrize("csr_as_inputs", [False, True], ids=["constant", "input"])
@pytest.mark.parametrize("name", sorted(CONV_EDGES))
def test_conv_edge_geometry_matches_the_reference(tmp_path, name, csr_as_inputs):
    x_shape, c_out, k_cols, attrs = CONV_EDGES[name]
    rng = np.random.default_rng(7)
    csr = random_csr(rng, c_out, k_cols, 0.7) if k_cols else (np.zeros(0, np.float32), np.zeros(0, np.int16),
                                                               np.zeros(c_out + 1, np.int32))
    bias = rng.standard_normal(c_out).astype(np.float32)
    model, feeds = op_model("CsrConv", x_shape, csr, bias, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = rng.standard_normal(x_shape).astype(np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "y" in out, out
    np.testing.assert_allclose(np.array(out["y"]).reshape(out["shape"]),
                               conv_reference_csr(feeds["X"], csr, bias, attrs), rtol=1e-4, atol=1e-4)


GEMM_EDGES = {
    # batch 1, wider than the column blocking, int16 columns in random order within each row
    "wide_batch1_unsorted_int16": ((1, 20000), 37, 0.05, dict(), np.int16, True),
    # the same with int32 indices and a MatMul-style rank-1 X
    "wide_rank1_unsorted_int32": ((20000,), 37, 0.05, dict(matmul=1), np.int32, True),
    # no input features at all: the output is the bias
    "no_input_features": ((3, 0), 2, 0.0, dict(), None, False),
    # transposed X, a batch of 17 (one padded panel) and K past one packing block
    "transposed_odd_batch": ((300, 17), 5, 0.3, dict(transA=1, alpha=0.5), None, False),
    # two panels, rows split over threads
    "two_panels": ((70, 50), 130, 0.2, dict(matmul=1), np.int16, True),
}


@pytest.mark.parametrize("csr_as_inputs", [False, True], ids=["constant", "input"])
@pytest.mark.parametrize("name", sorted(GEMM_EDGES))
def test_gemm_edge_shape_matches_the_reference(tmp_path, name, csr_as_inputs):
    x_shape, n, density, attrs, dtype, shuffle = GEMM_EDGES[name]
    rng = np.random.default_rng(11)
    k = x_shape[0] if attrs.get("transA") else x_shape[-1]
    csr = random_csr(rng, n, k, density, dtype, shuffle)
    bias = rng.standard_normal(n).astype(np.float32)
    model, feeds = op_model("CsrGemm", x_shape, csr, bias, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = rng.standard_normal(x_shape).astype(np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "y" in out, out
    shape = tuple(out["shape"])
    np.testing.assert_allclose(np.array(out["y"]).reshape(shape), gemm_reference(feeds["X"], csr, bias, attrs, shape),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Constant CSR arrays that change under a live session

_REWRITE_CHILD = """
import sys
import numpy as np, onnx
from onnxprune import runtime_ops
model_path, data_path, x_path = sys.argv[1:4]
sess = runtime_ops.InferenceSession(model_path)
x = np.load(x_path)
(before,) = sess.run(None, {"X": x})
# The session is live; overwrite the column indices in the data file in place with indices far
# out of range (ONNX Runtime maps external initializers from the file instead of copying them).
for t in onnx.load(model_path, load_external_data=False).graph.initializer:
    info = {e.key: int(e.value) for e in t.external_data if e.key in ("offset", "length")}
    if t.name == "col_idx":
        with open(data_path, "r+b") as f:
            f.seek(info["offset"])
            f.write(np.full(info["length"] // 4, 2**30, np.int32).tobytes())
(after,) = sess.run(None, {"X": x})
print("same" if np.array_equal(before, after) else "changed")
"""


def test_index_arrays_rewritten_on_disk_under_a_live_session_are_not_read(tmp_path):
    # Validated once at session creation, the memory-mapped indices were read again on every
    # run: a model data file rewritten in place (a deploy copying a new model over the old one)
    # made the next run read out of range (SIGSEGV). The kernel keeps its own validated copy.
    import onnx
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    k = 4096
    csr = random_csr(rng, 1000, k, 0.5, np.int32)
    model, _ = op_model("CsrGemm", [1, k], csr)
    model_path, x_path = tmp_path / "m.onnx", tmp_path / "x.npy"
    onnx.save(model, model_path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    np.save(x_path, rng.standard_normal((1, k)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-c", _REWRITE_CHILD, str(model_path), str(tmp_path / "m.data"),
                           str(x_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.split()[-1] == "same"
