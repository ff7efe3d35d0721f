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


def residual_model(w4, b, *, strides, pads, dilations=(1, 1), group=1, activation=None, one_d=False):
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
    assert np.array_equal(x, x0) and np.array_equal(z, z0)  # inputs untouched
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


@pytest.mark.parametrize("activation", [None, "Relu"])
@pytest.mark.parametrize("copies", ["", "shifted", "phase"])
@pytest.mark.parametrize("case", GEOMETRIES, ids=[c[0] for c in GEOMETRIES])
def test_z_is_added_before_the_activation(case, copies, activation, isa, threads, monkeypatch):
    name, c_in, c_out, (kh, kw), h, w, strides, pads, group, density = case
    rng, w4 = _case(name, c_out, c_in // group, kh, kw, density)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, strides, pads, [1, 1], group)
    z = rng.standard_normal(conv.shape).astype(np.float32) * 3
    want = conv + z
    if activation == "Relu":
        want = np.maximum(want, 0.0)
    model = residual_model(w4, b, strides=strides, pads=pads, group=group, activation=activation)
    y = _run(model, x, z, threads, monkeypatch, copies)
    close(y, want, (c_in // group) * kh * kw)
    if activation == "Relu":  # Z moved outputs across zero: the activation came after it
        assert ((conv > 0) != (want > 0)).any()


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
