"""Hostile models against the native sparse ops: an ORT error, never a crash or a wrong result.

The ops index memory with their attributes and CSR arrays, so every attribute, every piece of
geometry derived from them and every CSR array is bounded before use (runtime_ops/README.md,
"Limits"). Cases known to have crashed the library run their session in a child process, so a
crash fails the test instead of killing pytest; the property-based tests run in-process and are
also run against an AddressSanitizer + UndefinedBehaviorSanitizer build of the library in CI
(runtime_ops/check_sanitized.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime_ops import dense_from_csr
from tests.test_runtime_ops import conv_reference

DOMAIN = runtime_ops.DOMAIN
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
CSR_NAMES = ("values", "col_idx", "row_ptr")


def op_model(op: str, x_shape, csr, bias=None, *, csr_as_inputs: bool = False, **attrs):
    """X -> op(X, values, col_idx, row_ptr[, B]) -> Y; returns (model, feeds without X).

    The CSR arrays are constant initializers, or graph inputs (validated on every run) when
    `csr_as_inputs`.
    """
    inputs, inits, feeds = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))], [], {}
    for name, arr in zip(CSR_NAMES, csr):
        if csr_as_inputs:
            feeds[name] = arr
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                        list(arr.shape)))
        else:
            inits.append(numpy_helper.from_array(arr, name))
    names = ["X", *CSR_NAMES]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "B"))
        names.append("B")
    node = helper.make_node(op, names, ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "hostile", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS), feeds


# ---------------------------------------------------------------------------------------------
# Reproductions, each in a child process

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    model_path, feeds_path, library = sys.argv[1:4]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library)
    feeds = dict(np.load(feeds_path))
    try:
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, feeds)
    except Exception as e:  # an ORT error is the expected way to refuse a model
        print(json.dumps({"error": str(e)}))
    else:
        print(json.dumps({"y": y.astype(float).tolist(), "shape": list(y.shape)}))
""")


def run_in_child(tmp_path, model, feeds) -> dict:
    """Runs `model` on `feeds` in a fresh interpreter: {"error": msg} or {"y": ..., "shape": ...}.

    The child inherits the environment (a sanitizer preload included) and loads the library
    the tests use; a crash or a sanitizer report fails the calling test with its stderr.
    """
    model_path, feeds_path = tmp_path / "model.onnx", tmp_path / "feeds.npz"
    model_path.write_bytes(model.SerializeToString())
    np.savez(feeds_path, **feeds)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), str(feeds_path), runtime_ops.library_path()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_nonzero_conv(kernel_shape, col: int, **attrs):
    """CsrConv with one output channel whose only nonzero (2.0) is at flattened column `col`."""
    csr = (np.array([2.0], np.float32), np.array([col], np.int16), np.array([0, 1], np.int32))
    return op_model("CsrConv", [1, 1, 1, 1], csr, np.array([0.5], np.float32), kernel_shape=kernel_shape, **attrs)


def test_wrapping_conv_geometry_is_refused_not_a_heap_overflow(tmp_path):
    # The plane size product wrapped to 0, so a tiny buffer was allocated and then filled with
    # 2^31 rows (SIGSEGV; ASan: heap-buffer-overflow).
    model, feeds = one_nonzero_conv([2, 1], 0, strides=[1, 2**33], dilations=[2**31 - 1, 1],
                                    pads=[0, 0, 2**31 - 1, 0])
    feeds["X"] = np.ones((1, 1, 1, 1), np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "strides" in out.get("error", ""), out


def test_stride_beyond_the_limit_is_refused_not_a_wrong_value(tmp_path):
    # 2^32 x 2^32 phase planes wrapped to none: the output came back as the bias alone.
    model, feeds = one_nonzero_conv([1, 1], 0, strides=[2**32, 2**32])
    feeds["X"] = np.full((1, 1, 1, 1), 3.0, np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert "strides" in out.get("error", ""), out


def test_largest_stride_on_a_tiny_input_is_exact(tmp_path):
    # At the documented limit the result must be the convolution: 2 * 3 + 0.5.
    model, feeds = one_nonzero_conv([1, 1], 0, strides=[65536, 65536])
    feeds["X"] = np.full((1, 1, 1, 1), 3.0, np.float32)
    out = run_in_child(tmp_path, model, feeds)
    assert out.get("y") == [[[[6.5]]]], out
