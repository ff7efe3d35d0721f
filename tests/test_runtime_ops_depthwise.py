"""CsrConv's depthwise path (ops.cc CsrConvKernel::Depthwise): a layer with one input and one
output channel per group runs band by band, each task filling only the copy rows its band of
output rows reads. Every case is compared with the float64 reference on every instruction set
the CPU has, with 1 and 2 threads, and with the path turned off (ONNXPRUNE_CONV_DEPTHWISE=0,
the whole-image copies): bands overhanging the image's bottom, several bands, strides,
dilations, asymmetric pads, non-square and 1-D kernels, batches, densities from empty rows to
dense, the residual Z and the activations."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests import test_runtime_ops as base
from tests.test_runtime_ops import close, conv_layout, conv_model, conv_reference, session
from tests.test_runtime_ops_residual import residual_model

lib, isa, threads = base.lib, base.isa, base.threads


def weights(name, c, kh, kw, density):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w4 = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    w4[rng.random(w4.shape) >= density] = 0.0
    return rng, w4


# (name, channels, (kh, kw), h, w, strides, pads, dilations)
GEOMETRIES = [
    ("3x3_same", 8, (3, 3), 13, 21, [1, 1], [1, 1, 1, 1], [1, 1]),
    # a tall, wide map: several bands per channel, the last one short
    ("3x3_tall_many_bands", 4, (3, 3), 150, 97, [1, 1], [1, 1, 1, 1], [1, 1]),
    ("3x3_stride2", 6, (3, 3), 29, 30, [2, 2], [1, 1, 1, 1], [1, 1]),
    ("5x5_stride2_asymmetric", 5, (5, 5), 23, 18, [2, 2], [2, 1, 2, 3], [1, 1]),
    ("7x7_dilation2", 3, (7, 7), 25, 19, [1, 1], [6, 6, 6, 6], [2, 2]),
    ("3x1_mixed_strides", 4, (3, 1), 17, 11, [1, 3], [1, 0, 1, 0], [1, 1]),
    ("1x5_row_kernel", 4, (1, 5), 9, 33, [1, 1], [0, 2, 0, 2], [1, 1]),
    ("3x3_unpadded_valid", 7, (3, 3), 10, 12, [1, 1], [0, 0, 0, 0], [1, 1]),
    ("3x3_pad_past_the_kernel", 3, (3, 3), 6, 5, [1, 1], [3, 2, 4, 1], [1, 1]),
    ("3x3_one_output_column", 5, (3, 3), 9, 3, [1, 2], [1, 0, 1, 0], [1, 1]),
    ("1x1_padded_stride2", 6, (1, 1), 9, 13, [2, 2], [1, 1, 1, 1], [1, 1]),
    ("3x3_stride3_dilation3", 4, (3, 3), 31, 26, [3, 3], [2, 4, 1, 3], [3, 3]),
    # the last kernel column 32 floats right of the first, one row of 193 positions: a last
    # tile that starts at position 192 reads 32 floats past the copies (discarded positions),
    # inside the buffer's zeroed overhang
    ("1x9_dilation4_wide_shift", 3, (1, 9), 5, 40, [1, 1], [0, 16, 0, 16], [1, 4]),
    ("1x9_dilation4_one_row", 3, (1, 9), 1, 161, [1, 1], [0, 16, 0, 16], [1, 4]),
]


def run(model, feeds, n_threads, monkeypatch, path):
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", path)
    before = {k: v.copy() for k, v in feeds.items()}
    y = session(model, n_threads).run(["Y_sparse" if len(model.graph.output) > 1 else "Y"], feeds)[0]
    assert all(np.array_equal(feeds[k], before[k]) for k in feeds)  # inputs untouched
    return y


@pytest.mark.parametrize("density", [0.0, 0.2, 0.55, 1.0])
@pytest.mark.parametrize("case", GEOMETRIES, ids=[c[0] for c in GEOMETRIES])
def test_depthwise_matches_the_reference_and_the_copies(case, density, isa, threads, monkeypatch):
    name, c, (kh, kw), h, w, strides, pads, dilations = case
    rng, w4 = weights(f"{name}-{density}", c, kh, kw, density)
    b = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=c)
    want = conv_reference(x, w4, b, strides, pads, dilations, c)
    rows = run(model, {"X": x}, threads, monkeypatch, "1")
    close(rows, want, kh * kw)
    copies = run(model, {"X": x}, threads, monkeypatch, "0")
    close(copies, want, kh * kw)


@pytest.mark.parametrize("activation", [None, "Relu", "HardSwish"])
@pytest.mark.parametrize("case", [GEOMETRIES[1], GEOMETRIES[3]], ids=[GEOMETRIES[1][0], GEOMETRIES[3][0]])
def test_z_then_the_activation_on_each_band(case, activation, isa, threads, monkeypatch):
    name, c, (kh, kw), h, w, strides, pads, dilations = case
    rng, w4 = weights(name, c, kh, kw, 0.3)
    b = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, strides, pads, dilations, c)
    z = rng.standard_normal(conv.shape).astype(np.float32) * 3
    want = conv + z
    if activation == "Relu":
        want = np.maximum(want, 0.0)
    elif activation == "HardSwish":
        want = want * np.clip(want / 6 + 0.5, 0.0, 1.0)
    model = residual_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=c, activation=activation)
    close(run(model, {"X": x, "Z": z}, threads, monkeypatch, "1"), want, kh * kw)


def test_a_1d_depthwise_convolution(isa, threads, monkeypatch):
    rng, w4 = weights("1d", 6, 1, 7, 0.5)
    x = rng.standard_normal((3, 6, 1, 300)).astype(np.float32)
    conv = conv_reference(x, w4, None, [1, 2], [0, 3, 0, 3], [1, 1], 6)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    model = residual_model(w4, None, strides=[1, 2], pads=[0, 3, 0, 3], group=6, one_d=True)
    close(run(model, {"X": x[:, :, 0], "Z": z[:, :, 0]}, threads, monkeypatch, "1"), (conv + z)[:, :, 0], 7)


def test_the_layout_depthwise_layers_take(lib, monkeypatch):
    """3: band by band; a grouped layer with 2 channels per group, or the path turned off,
    takes the copies; so does a band whose single output row needs a huge buffer (dilation)."""
    isa_name = "scalar"
    attrs = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1]
    monkeypatch.delenv("ONNXPRUNE_CONV_DEPTHWISE", raising=False)
    assert conv_layout(lib, isa_name, [*attrs, 32], [1, 32, 56, 56], 32, 100) == 3
    assert conv_layout(lib, isa_name, [*attrs, 16], [1, 32, 56, 56], 32, 100) in (1, 2)  # 2 channels per group
    assert conv_layout(lib, isa_name, [*attrs, 16], [1, 16, 56, 56], 32, 100) in (1, 2)  # 2 outputs per group
    huge = [3, 3, 1, 1, 20000, 1, 20000, 1, 20000, 1, 4]
    assert conv_layout(lib, isa_name, huge, [1, 4, 40, 100], 4, 10) in (1, 2)
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "0")
    assert conv_layout(lib, isa_name, [*attrs, 32], [1, 32, 56, 56], 32, 100) in (1, 2)


def test_an_unknown_switch_value_is_refused(monkeypatch):
    rng, w4 = weights("switch", 4, 3, 3, 0.5)
    model = conv_model(w4, None, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=4)
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "yes")
    with pytest.raises(Exception, match="ONNXPRUNE_CONV_DEPTHWISE=yes is not one of 0, 1"):
        session(model, 1)
