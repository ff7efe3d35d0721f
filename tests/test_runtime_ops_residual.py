"""CsrConv's residual input Z (op-set 5): Y = activation(conv(X) + B + Z), Z of Y's exact shape,
added inside the tiles before the activation (runtime_ops/README.md). Every input layout and
tile path of the kernel (shifted and phase copies, X read in place with its moved-back last
tile, whole tiles written into Y, the partial-tile buffer) against a float64 reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, OPSETS, close, conv_reference, csr_inits, session

lib, isa, threads = base.lib, base.isa, base.threads


def residual_model(w4, b, *, strides, pads, dilations=(1, 1), group=1, activation=None, params=None, one_d=False):
    """CsrConv(X, CSR, [B], Z) -> Y; the bias slot is left empty ("") when ``b`` is None."""
    c_out = w4.shape[0]
    inits, csr_names = csr_inits(w4.reshape(c_out, -1), None)
    inputs = ["X", *csr_names, "B" if b is not None else "", "Z"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
    kernel = list(w4.shape[2:])
    attrs = dict(kernel_shape=kernel, strides=list(strides), pads=list(pads), dilations=list(dilations), group=group)
    if one_d:
        attrs = dict(kernel_shape=[kernel[1]], strides=[strides[1]], pads=[pads[1], pads[3]],
                     dilations=[dilations[1]], group=group)
    if activation:
        attrs["activation"] = activation
    if params is not None:
        attrs["activation_params"] = [float(v) for v in params]
    node = helper.make_node("CsrConv", inputs, ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "residual",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _case(name, c_out, cg, kh, kw, density):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w4 = rng.standard_normal((c_out, cg, kh, kw)).astype(np.float32)
    w4[rng.random(w4.shape) >= density] = 0.0
    return rng, w4


def _run(model, x, z, n_threads, monkeypatch=None, copies=""):
    if monkeypatch is not None:
        monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", copies)
    x0, z0 = x.copy(), z.copy()
    (y,) = session(model, n_threads).run(None, {"X": x, "Z": z})
    assert np.array_equal(x, x0, equal_nan=True) and np.array_equal(z, z0, equal_nan=True)  # inputs untouched
    return y


# (name, c_in, c_out, (kh, kw), h, w, strides, pads, group, density)
GEOMETRIES = [
    # 3x3, padded: Wq > OW, every tile through the buffer; several channel blocks.
    ("3x3_blocks", 96, 24, (3, 3), 30, 30, [1, 1], [1, 1, 1, 1], 1, 0.3),
    # 1x1 unpadded: X read in place, whole tiles written straight into Y, 13 x 17 = 221
    # positions leave a last tile moved back to end at the plane's end.
    ("1x1_in_place_partial", 256, 20, (1, 1), 13, 17, [1, 1], [0, 0, 0, 0], 1, 0.2),
    # ResNet's strided projection: one copy, Wq = OW.
    ("1x1_stride2", 64, 32, (1, 1), 14, 14, [2, 2], [0, 0, 0, 0], 1, 0.25),
    # Strides, dilations, asymmetric pads and groups; an output width that is no multiple of 8.
    ("3x3_s2_d2_groups", 16, 8, (3, 3), 17, 21, [2, 2], [2, 1, 0, 2], 2, 0.45),
    # The narrowest map: a plane smaller than one tile.
    ("3x3_7x7_512ch", 512, 16, (3, 3), 7, 7, [1, 1], [1, 1, 1, 1], 1, 0.1),
]


# Relu and Clip finish in the tile's last pass where Z lies under the whole tile (ConvEnd),
# LeakyRelu (not a clamp) in separate passes after it; both orders must add Z first.
ACTIVATIONS = {None: (None, lambda v: v), "Relu": (None, lambda v: np.maximum(v, 0.0)),
               "Clip": ((-0.5, 1.5), lambda v: np.clip(v, -0.5, 1.5)),
               "LeakyRelu": ((0.1,), lambda v: np.where(v < 0, 0.1 * v, v))}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("copies", ["", "shifted", "phase"])
@pytest.mark.parametrize("case", GEOMETRIES, ids=[c[0] for c in GEOMETRIES])
def test_z_is_added_before_the_activation(case, copies, activation, isa, threads, monkeypatch):
    name, c_in, c_out, (kh, kw), h, w, strides, pads, group, density = case
    rng, w4 = _case(name, c_out, c_in // group, kh, kw, density)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, strides, pads, [1, 1], group)
    z = rng.standard_normal(conv.shape).astype(np.float32) * 3
    params, f = ACTIVATIONS[activation]
    want = f(conv + z)
    model = residual_model(w4, b, strides=strides, pads=pads, group=group, activation=activation, params=params)
    y = _run(model, x, z, threads, monkeypatch, copies)
    close(y, want, (c_in // group) * kh * kw)
    if activation is not None:  # Z moved outputs across zero: the activation came after it
        assert ((conv > 0) != (conv + z > 0)).any() and not np.allclose(f(conv) + z, want)


@pytest.mark.parametrize("activation", ["Relu", "Clip", None])
def test_z_and_the_activation_in_the_last_pass_keep_nan_and_infinities(activation, isa, threads):
    # One input channel, weight 1: the sum is X itself, so X + Z takes NaN, inf + -inf and the
    # like straight into the tile's finish (a 16 x 16 plane: whole tiles, read in place).
    vals = np.array([np.nan, np.inf, -np.inf, -1.0, 0.0, -0.0, 1e-30, 7.0, -7.0, 3e38], np.float32)
    rng = np.random.default_rng(5)
    x = rng.choice(vals, size=(1, 1, 16, 16)).astype(np.float32)
    z = rng.choice(vals, size=(1, 1, 16, 16)).astype(np.float32)
    params, f = ACTIVATIONS[activation]
    model = residual_model(np.ones((1, 1, 1, 1), np.float32), None, strides=[1, 1], pads=[0, 0, 0, 0],
                           activation=activation, params=params)
    y = _run(model, x, z, threads)
    with np.errstate(invalid="ignore", over="ignore"):
        want = f(x.astype(np.float32) + z)  # float32: 3e38 + 3e38 overflows as the kernel's sum does
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(y[~np.isnan(y)], want[~np.isnan(want)])


# Planes that take the 13- and 14-vector tiles (kernels.h kConvVectors): 196 and 224
# positions on AVX-512 (16 lanes), 104 and 112 on AVX2 and the portable path (8 lanes); as 1x1
# layers and as padded 3x3 ones (Wq = W + 2), with Z and Relu finished in the tile's last pass.
WIDE_TILE_PLANES = [(14, 14), (14, 16), (13, 8), (14, 8), (14, 6)]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("plane", WIDE_TILE_PLANES, ids=[f"{h}x{w}" for h, w in WIDE_TILE_PLANES])
def test_13_and_14_vector_tiles_match_the_reference(plane, k, isa, threads):
    h, w = plane
    pads = [k // 2] * 4
    rng, w4 = _case(f"wide_{h}x{w}_{k}", 70, 40, k, k, 0.4)
    b = rng.standard_normal(70).astype(np.float32)
    x = rng.standard_normal((2, 40, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, [1, 1], pads, [1, 1], 1)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    y = _run(residual_model(w4, b, strides=[1, 1], pads=pads, activation="Relu"), x, z, threads)
    close(y, np.maximum(conv + z, 0.0), 40 * k * k)


def test_z_without_a_bias_and_in_a_1d_convolution(isa, threads):
    rng, w4 = _case("no_bias", 12, 8, 1, 5, 0.4)
    x = rng.standard_normal((3, 8, 1, 40)).astype(np.float32)
    conv = conv_reference(x, w4, None, [1, 1], [0, 2, 0, 2], [1, 1], 1)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    y = _run(residual_model(w4, None, strides=[1, 1], pads=[0, 2, 0, 2]), x, z, threads)
    close(y, conv + z, 8 * 5)
    # the same weights as a 1-D convolution over (N, C, L): Z is (N, C_out, L)
    y1 = _run(residual_model(w4, None, strides=[1, 1], pads=[0, 2, 0, 2], one_d=True), x[:, :, 0], z[:, :, 0],
              threads)
    close(y1, (conv + z)[:, :, 0], 8 * 5)


@pytest.mark.parametrize("z_shape", [(1, 6, 9, 9), (2, 6, 9), (2, 6, 9, 1), (2, 6, 9, 10), (2, 1, 9, 9)],
                         ids=["batch_broadcast", "rank", "width_broadcast", "width", "channel_broadcast"])
def test_z_of_another_shape_is_refused_not_broadcast(z_shape, isa):
    rng, w4 = _case("refused", 6, 4, 3, 3, 0.5)
    model = residual_model(w4, None, strides=[1, 1], pads=[1, 1, 1, 1])
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    z = np.zeros(z_shape, np.float32)
    with pytest.raises(Exception, match=r"Z must be a float32 tensor of the output.s shape \(2, 6, 9, 9\), got shape"):
        session(model, 1).run(None, {"X": x, "Z": z})
