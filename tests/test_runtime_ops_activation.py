"""CsrConv's fused activation (``activation`` / ``activation_params``, runtime_ops/README.md):
every function on every kernel path against a float64 numpy reference, over the tile layouts
that apply it in different places (whole tiles written to Y directly, tiles through the task
buffer, the last partial tile, 1x1 convolutions reading X in place, several channel blocks),
NaN and infinities included; and every malformed attribute refused when the session is made.
"""

from __future__ import annotations

import ctypes
import zlib

import numpy as np
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from tests.test_runtime_ops import conv_reference, csr_inits
from tests.test_runtime_ops import isa as isa_fixture
from tests.test_runtime_ops import lib as lib_fixture
from tests.test_runtime_ops import threads as threads_fixture

# The kernel path (every one the CPU has) and thread count fixtures of the main op tests.
isa, lib, threads = isa_fixture, lib_fixture, threads_fixture

DOMAIN = runtime_ops.DOMAIN
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]


def _sigmoid(t):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-t))


# name -> (activation_params or None for the defaults, float64 reference)
ACTIVATIONS = {
    "Relu": (None, lambda t: np.where(t < 0, 0.0, t)),
    "LeakyRelu": ([0.3], lambda t: np.where(t < 0, 0.3 * t, t)),
    "LeakyRelu_default": (None, lambda t: np.where(t < 0, 0.01 * t, t)),
    "Clip": ([-0.5, 1.5], lambda t: np.clip(t, -0.5, 1.5)),
    "Clip_half_open": ([0.0, np.inf], lambda t: np.clip(t, 0.0, np.inf)),
    "HardSigmoid": ([0.25, 0.4], lambda t: np.clip(0.25 * t + 0.4, 0, 1)),
    "HardSwish": (None, lambda t: t * np.clip(t / 6 + 0.5, 0, 1)),
    "Sigmoid": (None, _sigmoid),
    "Swish": (None, lambda t: t * _sigmoid(t)),
}

# (name, c_in, c_out, kernel, h, w, pads): which path applies the activation
GEOMETRIES = [
    ("3x3_buffered_partial_tile", 3, 5, 3, 9, 13, [1, 1, 1, 1]),  # Wq != OW: task buffer, last tile partial
    ("1x1_in_place_direct", 8, 6, 1, 12, 20, [0, 0, 0, 0]),  # reads X in place, whole tiles into Y
    ("1x1_padded", 4, 3, 1, 5, 7, [1, 0, 0, 1]),
    ("3x3_channel_blocks", 96, 4, 3, 14, 14, [1, 1, 1, 1]),  # > 1 input-channel block per tile
]


def act_model(w4, b, pads, activation, params):
    c_out = w4.shape[0]
    inits, names = csr_inits(w4.reshape(c_out, -1))
    inputs = ["X", *names]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        inputs.append("B")
    node = helper.make_node("CsrConv", inputs, ["Y"], domain=DOMAIN, kernel_shape=list(w4.shape[2:]), pads=pads)
    node.attribute.append(helper.make_attribute("activation", activation))
    if params is not None:
        node.attribute.append(helper.make_attribute("activation_params", [float(v) for v in params],
                                                    attr_type=AttributeProto.FLOATS))
    graph = helper.make_graph([node], "act", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def run(model, x, threads=1):
    sess = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(threads))
    return sess.run(None, {"X": x})[0]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fused_activation_matches_the_reference(name, geometry, isa, threads):
    _, c_in, c_out, k, h, w, pads = geometry
    params, f = ACTIVATIONS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{geometry[0]}".encode()))
    w4 = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    w4[rng.random(w4.shape) < 0.6] = 0.0
    w4[-1] = 0.0  # an empty row: the activation of the bias alone
    b = rng.standard_normal(c_out).astype(np.float32)
    # Wide enough to reach every branch of each function (the sigmoid's clamped exp included).
    x = (rng.standard_normal((2, c_in, h, w)) * 4).astype(np.float32)
    x[0, 0, 0, :3] = [200.0, -200.0, 0.0]
    y = run(act_model(w4, b, pads, name.split("_")[0], params), x, threads)
    pre = conv_reference(x, w4, b, [1, 1], pads, [1, 1], 1)
    ref = f(pre)
    assert y.shape == ref.shape
    k_terms = c_in * k * k
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5 * max(1.0, np.sqrt(k_terms)) * 4 * 6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fused_activation_keeps_nan_and_infinities(name, isa):
    # One nonzero (1.0) per output channel, so Y is X itself before the activation.
    params, f = ACTIVATIONS[name]
    x = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, 1e-30, 7.0, -7.0] * 3, np.float32).reshape(1, 1, 3, 8)
    w4 = np.ones((1, 1, 1, 1), np.float32)
    y = run(act_model(w4, None, [0, 0, 0, 0], name.split("_")[0], params), x)
    with np.errstate(invalid="ignore"):
        ref = f(x.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-30, equal_nan=True)


def _with_attrs(**attrs):
    """A valid 1x1 CsrConv carrying ``attrs`` as given (types included)."""
    inits, names = csr_inits(np.ones((1, 1), np.float32))
    node = helper.make_node("CsrConv", ["X", *names], ["Y"], domain=DOMAIN, kernel_shape=[1, 1])
    for key, value in attrs.items():
        node.attribute.append(value if isinstance(value, AttributeProto) else helper.make_attribute(key, value))
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _floats(*v):
    return helper.make_attribute("activation_params", list(v), attr_type=AttributeProto.FLOATS)


REFUSED = [
    ("unknown", dict(activation="Gelu"), "activation 'Gelu' is not one of"),
    ("empty_name", dict(activation=""), "is not one of"),
    ("nul_inside", dict(activation=b"Relu\x00Sigmoid"), "activation 'Relu\\?Sigmoid' is not one of"),
    ("nul_at_end", dict(activation=b"Relu\x00"), "is not one of"),
    ("not_utf8", dict(activation=b"\xff\xfe"), "activation '\\?\\?' is not one of"),
    ("long_name", dict(activation="Relu" * 50), "a name over 16 characters"),
    ("int_name", dict(activation=1), "activation must be a string"),
    ("params_alone", dict(activation_params=_floats(1.0)), "given without an activation"),
    ("params_for_relu", dict(activation="Relu", activation_params=_floats(1.0)), "takes no activation_params"),
    ("too_few", dict(activation="Clip", activation_params=_floats(1.0)), "must be a list of 2 floats"),
    ("too_many", dict(activation="Clip", activation_params=_floats(*range(9))), "must be a list of 2 floats"),
    ("ints", dict(activation="Clip", activation_params=[0, 6]), "must be a list of 2 floats"),
    ("one_float", dict(activation="LeakyRelu", activation_params=0.1), "must be a list of 1 floats"),
    ("empty_list", dict(activation="LeakyRelu", activation_params=_floats()), "must be a list of 1 floats"),
    ("clip_reversed", dict(activation="Clip", activation_params=_floats(6.0, 0.0)), "min <= max"),
    ("clip_nan", dict(activation="Clip", activation_params=_floats(float("nan"), 1.0)), "min <= max"),
    ("leaky_nan", dict(activation="LeakyRelu", activation_params=_floats(float("nan"))), "must be finite"),
    ("hardsigmoid_inf", dict(activation="HardSigmoid", activation_params=_floats(float("inf"), 0.5)),
     "must be finite"),
]


@pytest.mark.parametrize("attrs,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_malformed_activation_is_refused_at_session_creation(attrs, message):
    opts = runtime_ops.session_options(1)
    opts.log_severity_level = 4
    with pytest.raises(Exception, match=message):
        runtime_ops.InferenceSession(_with_attrs(**attrs).SerializeToString(), opts)


def test_library_implements_op_set_2_and_runs_files_of_1_and_2(lib):
    lib.onnxprune_ops_opset_version.restype = ctypes.c_int
    assert lib.onnxprune_ops_opset_version() == runtime_ops.OPSET_VERSION == 2
    w4 = np.ones((1, 1, 1, 1), np.float32)
    x = np.full((1, 1, 2, 2), -1.0, np.float32)
    for version in (1, 2):
        model = act_model(w4, None, [0, 0, 0, 0], "Relu", None)
        model.opset_import[1].version = version
        np.testing.assert_array_equal(run(model, x), np.zeros_like(x))


def test_csr_gemm_refuses_conv_activation_attributes():
    # CsrGemm has no activation: an attribute meant for it must not be silently ignored
    inits, names = csr_inits(np.ones((2, 3), np.float32))
    for attrs in (dict(activation="Relu"), dict(activation_params=_floats(0.1))):
        node = helper.make_node("CsrGemm", ["X", *names], ["Y"], domain=DOMAIN)
        for key, value in attrs.items():
            node.attribute.append(value if isinstance(value, AttributeProto) else helper.make_attribute(key, value))
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
        opts = runtime_ops.session_options(1)
        opts.log_severity_level = 4
        with pytest.raises(Exception, match="is CsrConv's; CsrGemm has none"):
            runtime_ops.InferenceSession(helper.make_model(graph, opset_imports=OPSETS).SerializeToString(), opts)
