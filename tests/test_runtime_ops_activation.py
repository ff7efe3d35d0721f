"""The fused activation (``activation`` / ``activation_params``, runtime_ops/README.md) of
CsrConv (op-set 2) and CsrGemm (op-set 3): every function on every kernel path against a float64
numpy reference, over the tile layouts that apply it in different places (whole tiles written to
Y directly, tiles through the task buffer, the last partial tile, 1x1 convolutions reading X in
place, several channel blocks) and over CsrGemm's products (batch 1, column-blocked batch 1,
small batches, the tiled product, MatMul style), NaN and infinities included; and every malformed
attribute refused when the session is made, on both ops.
"""

from __future__ import annotations

import ctypes
import math
import zlib

import numpy as np
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from tests.test_runtime_ops import conv_reference, csr_inits, gemm_reference, sparse_weight
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


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _gelu(t):
    """x/2 (1 + erf(x / sqrt 2)) as x/2 erfc(-x / sqrt 2): exact in the negative tail too."""
    with np.errstate(invalid="ignore"):
        return 0.5 * t * _erfc(-t / math.sqrt(2.0))


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
    "Gelu": (None, _gelu),
}

# (name, c_in, c_out, kernel, h, w, pads): which path applies the activation
GEOMETRIES = [
    ("3x3_buffered_partial_tile", 3, 5, 3, 9, 13, [1, 1, 1, 1]),  # Wq != OW: task buffer, last tile partial
    ("1x1_in_place_direct", 8, 6, 1, 12, 20, [0, 0, 0, 0]),  # reads X in place, whole tiles into Y
    ("1x1_padded", 4, 3, 1, 5, 7, [1, 0, 0, 1]),
    ("3x3_channel_blocks", 96, 4, 3, 14, 14, [1, 1, 1, 1]),  # > 1 input-channel block per tile
]


def _one_node_model(op, w2d, bias_name, bias, activation, params, x_shape, opsets, **attrs):
    """X -> ``op`` (CSR of ``w2d``, optional bias, ``attrs``) with ``activation`` -> Y."""
    inits, names = csr_inits(w2d)
    inputs = ["X", *names]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, bias_name))
        inputs.append(bias_name)
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, **attrs)
    node.attribute.append(helper.make_attribute("activation", activation))
    if params is not None:
        node.attribute.append(helper.make_attribute("activation_params", [float(v) for v in params],
                                                    attr_type=AttributeProto.FLOATS))
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=opsets)


def act_model(w4, b, pads, activation, params):
    return _one_node_model("CsrConv", w4.reshape(w4.shape[0], -1), "B", b, activation, params, None, OPSETS,
                           kernel_shape=list(w4.shape[2:]), pads=pads)


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
    # the vector Sigmoid, Swish and Gelu are within absolute bounds (RationalActN in
    # kernels.cc), as ONNX Runtime's are; |x| <= 7 where finite
    atol = {"Sigmoid": 4e-7, "Swish": 4e-7 * 7 + 1e-7, "Gelu": 1e-6 * 7}.get(name, 1e-30)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=atol, equal_nan=True)


def _with_attrs(op="CsrConv", **attrs):
    """A valid CsrConv (1x1) or CsrGemm carrying ``attrs`` as given (types included)."""
    inits, names = csr_inits(np.ones((1, 1), np.float32))
    shape = dict(kernel_shape=[1, 1]) if op == "CsrConv" else {}
    node = helper.make_node(op, ["X", *names], ["Y"], domain=DOMAIN, **shape)
    for key, value in attrs.items():
        node.attribute.append(value if isinstance(value, AttributeProto) else helper.make_attribute(key, value))
    x_shape = [1, 1, 2, 2] if op == "CsrConv" else [2, 1]
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _floats(*v):
    return helper.make_attribute("activation_params", list(v), attr_type=AttributeProto.FLOATS)


REFUSED = [
    ("unknown", dict(activation="Mish"), "activation 'Mish' is not one of"),
    ("gelu_takes_no_params", dict(activation="Gelu", activation_params=_floats(0.5)), "takes no activation_params"),
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


@pytest.mark.parametrize("op", ["CsrConv", "CsrGemm"])
@pytest.mark.parametrize("attrs,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_malformed_activation_is_refused_at_session_creation(attrs, message, op):
    opts = runtime_ops.session_options(1)
    opts.log_severity_level = 4
    with pytest.raises(Exception, match=message):
        runtime_ops.InferenceSession(_with_attrs(op, **attrs).SerializeToString(), opts)


def test_library_implements_op_set_5_and_runs_files_of_1_to_5(lib):
    lib.onnxprune_ops_opset_version.restype = ctypes.c_int
    assert lib.onnxprune_ops_opset_version() == runtime_ops.OPSET_VERSION == 9
    w4 = np.ones((1, 1, 1, 1), np.float32)
    x = np.full((1, 1, 2, 2), -1.0, np.float32)
    for version in (1, 2, 3, 4, 5):
        model = act_model(w4, None, [0, 0, 0, 0], "Relu", None)
        model.opset_import[1].version = version
        np.testing.assert_array_equal(run(model, x), np.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# CsrGemm (op-set 3): the activation after alpha and the bias, on each product path.

# (name, n, k, density, x shape, transA, matmul, alpha, beta, bias shape)
GEMM_PATHS = [
    ("gemv", 37, 50, 0.3, (1, 50), 0, 0, 1.0, 1.0, (37,)),
    ("gemv_blocked_columns", 21, 9216, 0.05, (1, 9216), 0, 0, 1.5, 1.0, (21,)),
    ("gemv_transA_no_bias", 25, 31, 0.3, (31, 1), 1, 0, 1.0, 1.0, None),
    ("small_batch", 29, 70, 0.2, (5, 70), 0, 0, 0.5, -2.0, (5, 29)),
    ("small_batch_no_bias", 29, 70, 0.2, (3, 70), 0, 0, 1.0, 1.0, None),
    ("tiled", 30, 50, 0.3, (200, 50), 0, 0, 1.0, 1.0, (30,)),
    ("tiled_alpha_no_bias", 30, 50, 0.3, (40, 50), 0, 0, -0.5, 1.0, None),
    ("tiled_transA_bias_matrix", 30, 50, 0.3, (50, 40), 1, 0, 1.0, 0.7, (40, 30)),
    ("matmul_3d", 24, 40, 0.25, (2, 64, 40), 0, 1, 1.0, 1.0, (24,)),
    ("matmul_3d_batch1", 24, 40, 0.25, (1, 1, 40), 0, 1, 1.0, 1.0, (24,)),
]


def gemm_act_model(w, x_shape, trans_a, matmul, alpha, beta, bias, activation, params):
    attrs = dict(matmul=1, alpha=alpha) if matmul else dict(transA=trans_a, alpha=alpha, beta=beta)
    return _one_node_model("CsrGemm", w, "C", bias, activation, params, x_shape,
                           [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 3)], **attrs)


@pytest.mark.parametrize("path", GEMM_PATHS, ids=[p[0] for p in GEMM_PATHS])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_csr_gemm_activation_matches_the_reference(name, path, isa, threads):
    _, n, k, density, x_shape, trans_a, matmul, alpha, beta, bias_shape = path
    params, f = ACTIVATIONS[name]
    rng = np.random.default_rng(zlib.crc32(f"gemm/{name}/{path[0]}".encode()))
    w = sparse_weight(rng, n, k, density, empty_rows=(1,))  # an empty row: alpha * 0 + bias
    x = (rng.standard_normal(x_shape) * 3).astype(np.float32)
    x.reshape(-1)[:2] = [60.0, -60.0]  # large pre-activations reach the clamped branches
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    model = gemm_act_model(w, list(x_shape), trans_a, matmul, alpha, beta, bias, name.split("_")[0], params)
    y = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(threads)).run(
        None, {"X": x})[0]
    if matmul:
        pre = alpha * x.reshape(-1, k).astype(np.float64) @ w.astype(np.float64).T
        pre = pre.reshape(*x_shape[:-1], n) + (0.0 if bias is None else bias.astype(np.float64))
    else:
        pre = gemm_reference(w, x, trans_a, alpha, beta, bias)
    ref = f(pre)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-5 * max(1.0, np.sqrt(k)) * 60)


def test_gelu_matches_erf_over_its_range_nan_and_infinities(isa):
    """GELU through CsrGemm with one nonzero per row (Y = X before the activation), on the vector
    loop and the scalar rest: within 2e-7 relative plus 1e-6 |x| absolute of the float64 GELU,
    the bound both paths meet (the vector one evaluates erf by a rational fit and loses relative
    precision where 1 + erf cancels, as ONNX Runtime's Gelu does; the portable one uses erfc)."""
    x = np.concatenate([np.linspace(-13.0, 8.0, 4097), [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1e30]])
    x = x.astype(np.float32)
    n = x.size
    w = np.eye(n, dtype=np.float32)
    model = gemm_act_model(w, [1, n], 0, 0, 1.0, 1.0, None, "Gelu", None)
    y = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(1)).run(
        None, {"X": x[None]})[0][0]
    ref = _gelu(x.astype(np.float64))
    finite = np.isfinite(x)
    err = np.abs(y[finite] - ref[finite])
    assert (err <= 2e-7 * np.abs(ref[finite]) + 1e-6 * np.abs(x[finite])).all(), err.max()
    assert y[x == 1e30] == np.float32(1e30)
    assert np.isnan(y[np.isnan(x) | np.isneginf(x)]).all() and np.isposinf(y[np.isposinf(x)]).all()
    tiny = (x == 0) | (np.abs(x) == np.float32(1e-30))
    assert (y[tiny] == 0.5 * x[tiny]).all()


def _sigmoid_bound(name, x):
    """runtime_ops/README.md's bound: Sigmoid within 4e-7, Swish within 4e-7 |y| + 1e-7."""
    return 4e-7 + 0 * x if name == "Sigmoid" else 4e-7 * np.abs(x) + 1e-7


@pytest.mark.parametrize("name", ["Sigmoid", "Swish"])
def test_sigmoid_and_swish_within_their_bound_on_a_float32_scan(name, isa):
    """Every 251st float32 with |y| in [2^-10, 64), both signs, and inputs where the vector
    path came closest to its bound in a scan of all float32s (15.77 and 13.40: 2.2e-7 and
    3.5e-6, over the 2e-7 and 2e-7 |y| + 1e-7 the README first promised), through CsrGemm's
    tiled path (an identity weight over 2048 columns, the rows of X the batch)."""
    lo, hi = (int(np.array(v, np.float32).view(np.uint32)) for v in (2.0 ** -10, 64.0))
    bits = np.arange(lo, hi, 251, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), -bits.view(np.float32),
                        np.array([15.77119255065918, 13.40237808227539], np.float32)])
    n = 2048
    pad = (-x.size) % n
    xx = np.concatenate([x, np.zeros(pad, np.float32)]).reshape(-1, n)
    model = gemm_act_model(np.eye(n, dtype=np.float32), [None, n], 0, 1, 1.0, 1.0, None, name, None)
    y = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(1)).run(
        None, {"X": xx})[0].reshape(-1)[:x.size]
    ref = ACTIVATIONS[name][1](x.astype(np.float64))
    err = np.abs(y - ref)
    assert (err <= _sigmoid_bound(name, x.astype(np.float64))).all(), (err.max(), x[np.argmax(err)])


@pytest.mark.parametrize("name", ["Sigmoid", "Swish"])
def test_sigmoid_and_swish_match_over_their_range_nan_and_infinities(name, isa):
    """Through CsrGemm with one nonzero per row: within 4e-7 (Sigmoid) and 4e-7 |x| + 1e-7
    (Swish) of the float64 functions, the bound of the vector path's rational tanh (RationalActN);
    0 and 1 exactly beyond its clamp, NaN for NaN, Swish(-inf) NaN as the ONNX formula."""
    x = np.concatenate([np.linspace(-40.0, 40.0, 4097), [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 1e30, -1e30]])
    x = x.astype(np.float32)
    n = x.size
    model = gemm_act_model(np.eye(n, dtype=np.float32), [1, n], 0, 0, 1.0, 1.0, None, name, None)
    y = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(1)).run(
        None, {"X": x[None]})[0][0]
    with np.errstate(over="ignore", invalid="ignore"):
        ref = ACTIVATIONS[name][1](x.astype(np.float64))
    finite = np.isfinite(x) & (np.abs(x) < 1e29)
    bound = _sigmoid_bound(name, x[finite].astype(np.float64))
    assert (np.abs(y[finite] - ref[finite]) <= bound).all(), np.abs(y[finite] - ref[finite]).max()
    assert np.isnan(y[np.isnan(x)]).all()
    if name == "Sigmoid":
        assert y[x == np.inf] == 1 and y[x == -np.inf] == 0 and y[x == 1e30] == 1 and y[x == -1e30] == 0
        assert ((y >= 0) & (y <= 1))[~np.isnan(x)].all()
    else:
        assert np.isposinf(y[x == np.inf]).all() and np.isnan(y[x == -np.inf]).all()
        assert y[x == 1e30] == np.float32(1e30) and y[x == -1e30] == 0


@pytest.mark.parametrize("fit,struct", [("erf", "ErfFit"), ("tanh", "TanhFit")])
def test_vector_coefficients_are_the_fits_of_fit_rational(fit, struct):
    """The coefficients in kernels.cc (highest degree first) are what runtime_ops/fit_rational.py
    computes, to a few float32 ulps: the least-squares solve rounds differently on different
    CPUs (an Intel core and a Zen 1 class core differ in the last printed digit)."""
    import pathlib
    import re

    from onnxprune.runtime_ops import fit_rational

    source = (pathlib.Path(runtime_ops.__file__).parent / "src" / "kernels.cc").read_text()
    start = source.index(f"struct {struct} {{")
    body = source[start:source.index("\n};", start)]

    def written(name):
        found = re.search(rf"float {name}\[n{name}\] = \{{([^}}]*)\}};", body)
        assert found, f"{struct}.{name} not found"
        return np.array([float(v.strip().rstrip("f")) for v in found.group(1).split(",")], np.float32)

    for name, fitted in zip("pq", fit_rational.coefficients(fit)):
        want = np.array([float(v.rstrip("f")) for v in reversed(fitted)], np.float32)
        got = written(name)
        assert got.shape == want.shape
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
        assert ulps.max() <= 4, (name, got, want)


def test_clip_without_params_takes_onnx_defaults_on_both_ops(isa):
    """No activation_params: [float32 lowest, float32 max], ONNX Clip's defaults, so ±inf clamps
    to ±3.4028235e38 as ONNX Runtime's Clip computes it."""
    big = np.finfo(np.float32).max
    x = np.array([np.inf, -np.inf, 5.0, np.nan], np.float32)
    model = gemm_act_model(np.eye(4, dtype=np.float32), [1, 4], 0, 0, 1.0, 1.0, None, "Clip", None)
    y = runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(1)).run(
        None, {"X": x[None]})[0][0]
    np.testing.assert_array_equal(y, [big, -big, 5.0, np.nan])
    y = run(act_model(np.ones((1, 1, 1, 1), np.float32), None, [0, 0, 0, 0], "Clip", None), x.reshape(1, 1, 1, 4))
    np.testing.assert_array_equal(y.reshape(-1), [big, -big, 5.0, np.nan])
