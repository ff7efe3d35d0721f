"""CsrConv's depthwise paths: a layer with one input and one output channel per group reads X
where it lies (ops.cc CsrConvKernel::DirectDepthwise: each output row a weighted sum of shifted
input rows, through the channel's column phases at a column stride above 1, the lanes where a
tap reads padding masked), or band by band (CsrConvKernel::Depthwise), each task filling only
the copy rows its band of output rows reads.
Every case is compared with the float64 reference on every instruction set the CPU has, with 1
and 2 threads, by each path (ONNXPRUNE_CONV_DEPTHWISE=1 the default, =bands every depthwise
layer band by band, =0 the whole-image copies, =blocks channel blocks as vector lanes on
maps of any size, =direct X read where it lies wherever it can): row widths across the vector steps, bands
overhanging the image's bottom, several bands, strides, dilations, asymmetric pads, padding
wider than the kernel, non-square and 1-D kernels, batches, densities from empty rows to dense,
the residual Z and the activations."""

from __future__ import annotations

import sys
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
    assert all(np.array_equal(feeds[k], before[k], equal_nan=True) for k in feeds)  # inputs untouched
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
    for path in ("1", "bands", "0", "blocks"):
        close(run(model, {"X": x}, threads, monkeypatch, path), want, kh * kw)


# Geometries for the direct path's row kernel: output widths on both sides of every vector
# step (8 and 32 floats on AVX2; 16, 64 and the masked tail on AVX-512), kernels whose taps all
# read padding in some columns, rows where no tap lands (pads taller than the kernel), a kernel
# wider than the unpadded row, so that every column is an edge column, and strides 1, 2 (the
# column phases by the pairs' pass, odd widths leaving phase 0 one column longer) and 3.
@pytest.mark.parametrize("strides", [[1, 1], [2, 2], [1, 3]], ids=["s1", "s2", "s1x3"])
@pytest.mark.parametrize("width", [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 79, 80, 81, 130])
@pytest.mark.parametrize("kernel", [((3, 3), [1, 1, 1, 1], [1, 1]), ((5, 5), [2, 2, 2, 2], [1, 1]),
                                    ((3, 5), [4, 0, 3, 6], [1, 2]), ((1, 7), [0, 6, 0, 6], [1, 1])],
                         ids=["3x3", "5x5", "3x5_wide_pads_dilated", "1x7_wider_than_a_short_row"])
def test_direct_rows_of_every_width_match_the_reference(width, kernel, strides, isa, threads, monkeypatch):
    (kh, kw), pads, dilations = kernel
    if width + pads[1] + pads[3] < (kw - 1) * dilations[1] + 1:
        pytest.skip("the dilated kernel is wider than the padded row: the op refuses it")
    rng, w4 = weights(f"direct-{width}-{kh}x{kw}-{strides}", 5, kh, kw, 0.6)
    w4[1] = 0.0  # a channel with no nonzero: bias only
    b = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((2, 5, 7, width)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=5)
    want = conv_reference(x, w4, b, strides, pads, dilations, 5)
    close(run(model, {"X": x}, threads, monkeypatch, "1"), want, kh * kw)


@pytest.mark.parametrize("strides", [[1, 1], [2, 2]], ids=["s1", "s2"])
@pytest.mark.parametrize("width", [9, 56, 81])
def test_channels_with_the_same_taps_share_their_layout(width, strides, isa, threads, monkeypatch):
    """The direct path makes a plane's offsets and masks once for a run of channels keeping the
    same taps (every channel of an unpruned layer) and again where they change: channels keep
    all taps, a few, all, none, all, another few, all, across two batches."""
    rng = np.random.default_rng(width)
    w4 = rng.standard_normal((7, 1, 3, 3)).astype(np.float32)
    w4[1].reshape(-1)[[0, 2, 6, 8]] = 0.0
    w4[3] = 0.0
    w4[5].reshape(-1)[[1, 3, 4]] = 0.0
    b = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((2, 7, 12, width)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=[1, 1, 1, 1], dilations=[1, 1], group=7)
    want = conv_reference(x, w4, b, strides, [1, 1, 1, 1], [1, 1], 7)
    close(run(model, {"X": x}, threads, monkeypatch, "direct"), want, 9)


# The grid path (ops.cc GridKernel, AVX-512): stride 1 or 2, unit dilation, a 3x3 or 5x5 kernel
# padded (K - 1) / 2 columns each side, any rows of padding; widths across its vector steps and
# step pairs, heights across its groups of four rows and its bands of rows.
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("width", [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 56, 64, 65, 112])
def test_the_grid_path_matches_the_reference(width, k, stride, isa, threads, monkeypatch):
    """Channels keeping every tap take the grid (one of them with a tap named twice, summed),
    the others the direct path's rows (a tap left out, an empty channel), in two batches; a
    residual Z and an activation after; X placed right before an inaccessible page where the
    platform allows, and left as it was. ONNXPRUNE_CONV_DEPTHWISE=direct: by default, maps up
    to 32 outputs wide go to channel blocks."""
    rng = np.random.default_rng(width * 10 + k)
    # 112 wide: 97 rows, several bands (ops.cc GridRunRows: 40 rows of a 144-float pitch in 24 KiB)
    c, h = 6, 97 if width == 112 else 1 + width % 9 + (4 if k == 5 else 0)
    w4 = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    w4[2].reshape(-1)[k] = 0.0  # a tap left out
    w4[4] = 0.0
    pads = [0 if width % 2 else 2, k // 2, 3, k // 2]  # rows of padding on top and below: any
    b = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((2, c, h, width)).astype(np.float32)
    st = [stride, stride]
    conv = conv_reference(x, w4, b, st, pads, [1, 1], c)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    want = np.maximum(conv + z, 0.0)
    model = residual_model(w4, b, strides=st, pads=pads, group=c, activation="Relu")
    close(run(model, {"X": x, "Z": z}, threads, monkeypatch, "direct"), want, k * k)
    # the repeated tap: channel 0's centre as two entries of half its weight each
    from tests.test_runtime_ops_hostile import op_model
    dense = w4.reshape(c, -1)
    vals, cols, ptr = [], [], [0]
    for ch in range(c):
        nz = np.flatnonzero(dense[ch])
        v = dense[ch, nz].astype(np.float32)
        if ch == 0:
            centre = (k * k) // 2
            nz = np.append(nz, centre)
            v[list(nz[:-1]).index(centre)] *= 0.5
            v = np.append(v, dense[ch, centre] * 0.5).astype(np.float32)
        vals.append(v)
        cols.append(nz.astype(np.int16))
        ptr.append(ptr[-1] + len(nz))
    csr = (np.concatenate(vals), np.concatenate(cols), np.array(ptr, np.int32))
    model2, _ = op_model("CsrConv", x.shape, csr, kernel_shape=[k, k], pads=pads, strides=st, group=c)  # no bias
    conv = conv_reference(x, w4, None, st, pads, [1, 1], c)
    close(run(model2, {"X": x}, threads, monkeypatch, "direct"), conv, k * k)
    if sys.platform.startswith("linux"):
        from tests.test_runtime_ops_guarded import GuardedBuffers
        buffers = GuardedBuffers()
        try:
            xg = buffers.place(x)
            close(run(model2, {"X": xg}, threads, monkeypatch, "direct"), conv, k * k)
            assert np.array_equal(xg, x)
        finally:
            buffers.free()


@pytest.mark.parametrize("path", ["1", "bands", "blocks"])
@pytest.mark.parametrize("activation", [None, "Relu", "HardSwish"])
@pytest.mark.parametrize("case", [GEOMETRIES[1], GEOMETRIES[3]], ids=[GEOMETRIES[1][0], GEOMETRIES[3][0]])
def test_z_then_the_activation_on_each_band(case, activation, path, isa, threads, monkeypatch):
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
    close(run(model, {"X": x, "Z": z}, threads, monkeypatch, path), want, kh * kw)


def test_a_1d_depthwise_convolution(isa, threads, monkeypatch):
    rng, w4 = weights("1d", 6, 1, 7, 0.5)
    x = rng.standard_normal((3, 6, 1, 300)).astype(np.float32)
    conv = conv_reference(x, w4, None, [1, 2], [0, 3, 0, 3], [1, 1], 6)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    model = residual_model(w4, None, strides=[1, 2], pads=[0, 3, 0, 3], group=6, one_d=True)
    close(run(model, {"X": x[:, :, 0], "Z": z[:, :, 0]}, threads, monkeypatch, "1"), (conv + z)[:, :, 0], 7)


def test_the_layout_depthwise_layers_take(lib, monkeypatch):
    """4: X read directly, at any stride; 3: band by band (a column stride over a plane past
    ops.cc kDwMaxPhaseFloats, or ONNXPRUNE_CONV_DEPTHWISE=bands); a grouped layer with 2
    channels per group, or the paths turned off, takes the copies; so does a band whose single
    output row needs a huge buffer (dilation), which the direct path reads in place. The copies
    are whole (1, 2) or band by band (7) by the L2 size read at run time: three shifted copies of
    32 planes of 58x58 are 1.3 MB, past two L2s of 512 KiB."""
    isa_name = "scalar"
    copies = (1, 2, 7)
    attrs = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1]
    stride2 = [3, 3, 2, 2, 1, 1, 1, 1, 1, 1]
    monkeypatch.delenv("ONNXPRUNE_CONV_DEPTHWISE", raising=False)
    assert conv_layout(lib, isa_name, [*attrs, 32], [1, 32, 56, 56], 32, 100) == 4
    assert conv_layout(lib, isa_name, [*stride2, 32], [1, 32, 56, 56], 32, 100) == 4
    assert conv_layout(lib, isa_name, [*stride2, 4], [1, 4, 2048, 2049], 4, 10) == 3  # 2^22 floats passed
    assert conv_layout(lib, isa_name, [*stride2, 4], [1, 4, 2048, 2048], 4, 10) == 4
    assert conv_layout(lib, isa_name, [*attrs, 16], [1, 32, 56, 56], 32, 100) in copies  # 2 channels per group
    assert conv_layout(lib, isa_name, [*attrs, 16], [1, 16, 56, 56], 32, 100) in copies  # 2 outputs per group
    huge = [3, 3, 2, 1, 20000, 1, 20000, 1, 20000, 1, 4]
    assert conv_layout(lib, isa_name, huge, [1, 4, 40, 100], 4, 10) == 4
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "bands")
    assert conv_layout(lib, isa_name, [*attrs, 32], [1, 32, 56, 56], 32, 100) == 3
    assert conv_layout(lib, isa_name, huge, [1, 4, 40, 100], 4, 10) in copies
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "0")
    assert conv_layout(lib, isa_name, [*attrs, 32], [1, 32, 56, 56], 32, 100) in copies


# kH, kW, sH, sW, dH, dW, pads t/l/b/r of a centred 3x3 (conv_layout's attrs, group to follow)
DW_3X3 = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1]
DW_3X3_STRIDE2 = [3, 3, 2, 2, 1, 1, 1, 1, 1, 1]


def _layout_isas(lib, monkeypatch, narrow: str):
    """The instruction sets this CPU has, for layout queries under the default depthwise rule
    with ONNXPRUNE_CONV_NARROW=narrow."""
    monkeypatch.delenv("ONNXPRUNE_CONV_DEPTHWISE", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", narrow)
    return [isa for isa in ("scalar", "avx2", "avx512") if lib.onnxprune_ops_cpu_has(isa.encode()) == 1]


def test_the_layout_small_depthwise_maps_take(lib, monkeypatch):
    """5: channel blocks (ops.cc ChannelBlocks) on maps at most 16 outputs wide (8 for a
    sparse strided layer), or 32 where the channels keep half their taps (also where the grid
    path could take them, except on a core that splits 512-bit operations: below); 4 (X read
    directly) on wider maps, sparser 28-wide ones, and whenever ONNXPRUNE_CONV_DEPTHWISE=direct,
    6 of those where the grid path (AVX-512; stride 1 or 2, a centred 3x3 or 5x5) takes
    channels that keep every tap; =blocks forces 5 where the block's scratch stays within its
    bound. ONNXPRUNE_CONV_NARROW=0 here: the rule of a core with whole 512-bit units."""
    attrs, stride2 = DW_3X3, DW_3X3_STRIDE2
    for isa_name in _layout_isas(lib, monkeypatch, narrow="0"):
        assert conv_layout(lib, isa_name, [*attrs, 960], [1, 960, 7, 7], 960, 960 * 9) == 5
        assert conv_layout(lib, isa_name, [*attrs, 960], [1, 960, 7, 7], 960, 960 * 2) == 5  # 22%
        grid = 6 if isa_name == "avx512" else None
        assert conv_layout(lib, isa_name, [*attrs, 192], [1, 192, 28, 28], 192, 192 * 9) == 5
        assert conv_layout(lib, isa_name, [*attrs, 192], [1, 192, 28, 28], 192, 192 * 2) == 4
        assert conv_layout(lib, isa_name, [*stride2, 144], [1, 144, 56, 56], 144, 144 * 9) == 5  # 28 wide
        assert conv_layout(lib, isa_name, [*attrs, 144], [1, 144, 56, 56], 144, 144 * 9) == (grid or 4)
        assert conv_layout(lib, isa_name, [*stride2, 96], [1, 96, 112, 112], 96, 96 * 9) == (grid or 4)  # 56 wide
        assert conv_layout(lib, isa_name, [3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 144], [1, 144, 56, 56], 144,
                           144 * 9) == 4  # dilated: the direct path's row kernel
        # stride 2 at 22%: 16 outputs wide read 32 inputs a row, the transposes' cost; 7 wide not
        assert conv_layout(lib, isa_name, [*stride2, 576], [1, 576, 32, 32], 576, 576 * 2) == 4
        assert conv_layout(lib, isa_name, [*stride2, 576], [1, 576, 32, 32], 576, 576 * 9) == 5
        assert conv_layout(lib, isa_name, [*stride2, 384], [1, 384, 14, 14], 384, 384 * 2) == 5
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "direct")
    assert conv_layout(lib, "scalar", [*attrs, 960], [1, 960, 7, 7], 960, 960 * 9) == 4
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "blocks")
    assert conv_layout(lib, "scalar", [*attrs, 144], [1, 144, 56, 56], 144, 144) == 5
    assert conv_layout(lib, "scalar", [*attrs, 4], [1, 4, 2048, 2048], 4, 10) == 4  # 2^22 floats passed


def test_a_core_that_splits_wide_operations_puts_28_wide_dense_maps_on_the_grid(lib, monkeypatch):
    """With ONNXPRUNE_CONV_NARROW=1 (the default on a Zen 4 class core) an AVX-512 session keeps
    channel blocks to maps at most 16 outputs wide: a dense 28-wide map takes the grid (6),
    which measured 1.1-1.3x faster there; 14- and 7-wide maps stay in blocks, as do layers the
    grid does not take (dilated, 7x7, a tap left out), and the other instruction sets (no grid
    path) keep the rule of the test above."""
    attrs, stride2 = DW_3X3, DW_3X3_STRIDE2
    for isa_name in _layout_isas(lib, monkeypatch, narrow="1"):
        wide = 6 if isa_name == "avx512" else 5
        assert conv_layout(lib, isa_name, [*attrs, 192], [1, 192, 28, 28], 192, 192 * 9) == wide
        assert conv_layout(lib, isa_name, [*stride2, 144], [1, 144, 56, 56], 144, 144 * 9) == wide  # 28 wide
        assert conv_layout(lib, isa_name, [*attrs, 384], [1, 384, 14, 14], 384, 384 * 9) == 5
        assert conv_layout(lib, isa_name, [*stride2, 576], [1, 576, 14, 14], 576, 576 * 9) == 5  # 7 wide
        assert conv_layout(lib, isa_name, [*attrs, 192], [1, 192, 28, 28], 192, 192 * 2) == 4
        # a 5x5 the grid takes; a dilated 3x3, a 7x7 and one channel short of every tap it does not
        assert conv_layout(lib, isa_name, [5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 192], [1, 192, 28, 28], 192, 192 * 25) == wide
        assert conv_layout(lib, isa_name, [3, 3, 1, 1, 2, 2, 2, 2, 2, 2, 192], [1, 192, 28, 28], 192, 192 * 9) == 5
        assert conv_layout(lib, isa_name, [7, 7, 1, 1, 1, 1, 3, 3, 3, 3, 192], [1, 192, 28, 28], 192, 192 * 49) == 5
        assert conv_layout(lib, isa_name, [*attrs, 192], [1, 192, 28, 28], 192, 192 * 9 - 1) == 5


# Channel blocks: channel counts below, at and across the vector widths (8, 16) and a block
# whose channels store different taps (each tap's mask then lacks lanes), strides, dilation,
# asymmetric and wide pads, a 1-D kernel's row, batches of 2.
BLOCK_GEOMETRIES = [
    ("7x7_maps", (3, 3), 7, 7, [1, 1], [1, 1, 1, 1], [1, 1]),
    ("14x13_stride2", (3, 3), 14, 13, [2, 2], [1, 1, 1, 1], [1, 1]),
    ("5x5_asymmetric", (5, 5), 9, 11, [1, 1], [2, 1, 2, 3], [1, 1]),
    ("3x3_dilated_wide_pads", (3, 3), 6, 5, [1, 1], [3, 2, 4, 1], [2, 2]),
    ("1x7_one_row", (1, 7), 1, 20, [1, 2], [0, 3, 0, 3], [1, 1]),
]


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("channels", [1, 7, 16, 17, 40])
@pytest.mark.parametrize("case", BLOCK_GEOMETRIES, ids=[c[0] for c in BLOCK_GEOMETRIES])
def test_channel_blocks_match_the_reference(case, channels, density, isa, threads, monkeypatch):
    name, (kh, kw), h, w, strides, pads, dilations = case
    rng, w4 = weights(f"blocks-{name}-{channels}-{density}", channels, kh, kw, density)
    if channels > 2:
        w4[1] = 0.0  # a channel with no nonzero: its bias only
    b = rng.standard_normal(channels).astype(np.float32)
    x = rng.standard_normal((2, channels, h, w)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=channels)
    want = conv_reference(x, w4, b, strides, pads, dilations, channels)
    for path in ("blocks", "1"):
        close(run(model, {"X": x}, threads, monkeypatch, path), want, kh * kw)


def without_z(model):
    """residual_model's CsrConv with its Z input dropped: the activation alone after the sum."""
    node = model.graph.node[0]
    del node.input[-1]
    keep = [i for i in model.graph.input if i.name != "Z"]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


@pytest.mark.parametrize("activation", [None, "Relu", "Clip", "HardSwish"])
@pytest.mark.parametrize("channels", [7, 16, 17, 40])
@pytest.mark.parametrize("case", BLOCK_GEOMETRIES[:3], ids=[c[0] for c in BLOCK_GEOMETRIES[:3]])
def test_channel_blocks_clamp_as_they_transpose_back(case, channels, activation, isa, threads, monkeypatch):
    """Without Z, a Relu or Clip is applied while the block's output is transposed back into
    the channels' planes (Kernels::dw_block_out), another activation after it; a NaN or an
    infinity in X passes through the clamp as the reference has it. X is placed right before
    an inaccessible page where the platform allows (planes of 49, 182 and 99 floats: the last
    pixels' loads are masked), and left as it was."""
    name, (kh, kw), h, w, strides, pads, dilations = case
    rng, w4 = weights(f"blocks-act-{name}-{channels}", channels, kh, kw, 0.6)
    b = rng.standard_normal(channels).astype(np.float32)
    x = rng.standard_normal((2, channels, h, w)).astype(np.float32) * 4
    x[0, 0, h // 2, w // 2] = np.nan
    x[1, channels - 1, 0, 0] = np.inf
    params = [-1.5, 2.0] if activation == "Clip" else None
    model = without_z(residual_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=channels,
                                     activation=activation, params=params))
    from tests.test_runtime_ops_hostile import conv_reference_csr
    from onnxprune.runtime_ops import csr_from_dense
    attrs = dict(kernel_shape=[kh, kw], strides=strides, pads=pads, dilations=dilations, group=channels)
    conv = conv_reference_csr(x, csr_from_dense(w4.reshape(channels, -1)), b, attrs)  # stored taps only
    with np.errstate(invalid="ignore"):
        if activation == "Relu":
            want = np.where(np.isnan(conv), conv, np.maximum(conv, 0.0))
        elif activation == "Clip":
            want = np.where(np.isnan(conv), conv, np.clip(conv, -1.5, 2.0))
        elif activation == "HardSwish":
            want = conv * np.clip(conv / 6 + 0.5, 0.0, 1.0)
        else:
            want = conv
    feeds = [x]
    buffers = None
    if sys.platform.startswith("linux"):
        from tests.test_runtime_ops_guarded import GuardedBuffers
        buffers = GuardedBuffers()
        feeds.append(buffers.place(x))
    try:
        for xs in feeds:
            y = run(model, {"X": xs}, threads, monkeypatch, "blocks")
            assert np.array_equal(np.isnan(y), np.isnan(want))
            assert np.array_equal(np.isposinf(y), np.isposinf(want))
            assert np.array_equal(np.isneginf(y), np.isneginf(want))
            fin = np.isfinite(want)
            close(y[fin], want[fin], kh * kw)
            assert np.array_equal(xs, x, equal_nan=True)
    finally:
        if buffers is not None:
            buffers.free()


def test_a_tap_a_channel_leaves_out_never_reads_its_input(isa, threads, monkeypatch):
    """In a channel block a tap is one vector of weights over the block's channels; a channel
    that does not store the tap must not read its input there (the op sums the stored entries
    only): an infinite input pixel reaches only the channels whose stored taps cover it."""
    from tests.test_runtime_ops_hostile import conv_reference_csr, op_model
    from onnxprune.runtime_ops import csr_from_dense
    c = 20
    rng, w4 = weights("blocks-inf", c, 3, 3, 1.0)
    w4[::2, :, 1, 1] = 0.0  # the even channels leave out the centre tap
    x = rng.standard_normal((1, c, 7, 7)).astype(np.float32)
    x[:, :, 3, 3] = np.inf  # read only through the centre tap at output (3, 3)
    x[:, :, 0, 0] = np.nan  # read by the other taps too
    csr = csr_from_dense(w4.reshape(c, -1))
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c)
    model, _ = op_model("CsrConv", x.shape, csr, **attrs)
    want = conv_reference_csr(x, csr, None, attrs)
    y = run(model, {"X": x}, threads, monkeypatch, "blocks")
    assert np.isfinite(y[0, ::2, 3, 3]).all() and np.isinf(y[0, 1::2, 3, 3]).all()
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.array_equal(np.isinf(y), np.isinf(want))
    fin = np.isfinite(want)
    close(y[fin], want[fin], 9)


def test_an_unknown_switch_value_is_refused(monkeypatch):
    rng, w4 = weights("switch", 4, 3, 3, 0.5)
    model = conv_model(w4, None, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=4)
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "yes")
    with pytest.raises(Exception, match="ONNXPRUNE_CONV_DEPTHWISE=yes is not one of 0, 1, bands, blocks, direct"):
        session(model, 1)


@pytest.mark.parametrize("width", [37, 4096])
def test_repeated_columns_are_summed_whichever_path_takes_them(width, isa, threads, monkeypatch):
    """A CSR row may name a column more than once (the op sums the entries): a 3x3 row of 4200
    entries. On a 37-wide map the direct path takes it (more taps than the kernel has); on a
    4096-wide one its mask table (4200 taps x a step per vector) would pass ops.cc kDwMaxMasks,
    and the band path takes the layer instead."""
    from tests.test_runtime_ops_hostile import op_model
    rng = np.random.default_rng(width)
    reps = 4200
    cols = np.concatenate([np.full(reps, 4), rng.integers(0, 9, 7)]).astype(np.int32)  # row 0; row 1 below
    vals = np.concatenate([np.full(reps, 1e-3), rng.standard_normal(7)]).astype(np.float32)
    csr = (vals, cols, np.array([0, reps, reps + 7], np.int32))
    w4 = np.zeros((2, 1, 3, 3))
    np.add.at(w4[0, 0].reshape(-1), cols[:reps], vals[:reps].astype(np.float64))
    np.add.at(w4[1, 0].reshape(-1), cols[reps:], vals[reps:].astype(np.float64))
    x = rng.standard_normal((1, 2, 3, width)).astype(np.float32)
    model, _ = op_model("CsrConv", x.shape, csr, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    want = conv_reference(x, w4, None, [1, 1], [1, 1, 1, 1], [1, 1], 2)
    close(run(model, {"X": x}, threads, monkeypatch, "1"), want, reps)
    close(run(model, {"X": x}, threads, monkeypatch, "blocks"), want, reps)  # one weight of their sum


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_weight_times_the_padding_is_nan_on_every_path(bad, isa, threads, monkeypatch):
    """ONNX's Conv multiplies the padding's zeros by every weight, and inf x 0 is NaN. The
    direct path never reads padding, so a layer with a non-finite weight takes the bands, and
    every path gives the reference's NaNs (22 of 60 outputs here, not 2 or 0)."""
    from tests.test_runtime_ops_hostile import op_model
    vals = np.array([bad, 1.0, 0.5], np.float32)
    cols = np.array([0, 4, 4], np.int16)  # tap (0, 0) of channel 0; the centre of channel 1
    csr = (vals, cols, np.array([0, 2, 3], np.int32))
    w4 = np.zeros((2, 1, 3, 3))
    w4[0, 0, 0, 0], w4[0, 0, 1, 1], w4[1, 0, 1, 1] = bad, 1.0, 0.5
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 20)).astype(np.float32)
    model, _ = op_model("CsrConv", x.shape, csr, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    want = conv_reference(x, w4, None, [1, 1], [1, 1, 1, 1], [1, 1], 2)
    for path in ("1", "bands", "0", "blocks"):
        y = run(model, {"X": x}, threads, monkeypatch, path)
        assert np.array_equal(np.isnan(y), np.isnan(want)), path
        close(y, want, 9)


def test_a_column_stride_past_the_row_sizes_the_phases_by_the_columns_there_are(lib, isa, threads, monkeypatch):
    """A column stride far past W (wide pads make it legal) leaves all but W column phases
    empty: the direct path holds only those (a buffer of sW x H x ceil(W / sW) floats was 2^36
    here, and the run failed for want of memory)."""
    from tests.test_runtime_ops_hostile import op_model
    h = 1 << 20
    x = np.random.default_rng(4).standard_normal((1, 1, h, 1)).astype(np.float32)
    csr = (np.array([2.0], np.float32), np.array([0], np.int16), np.array([0, 1], np.int32))
    attrs = dict(kernel_shape=[1, 1], strides=[1, 65536], pads=[0, 65536, 0, 65536], group=1)
    model, _ = op_model("CsrConv", x.shape, csr, **attrs)
    y = run(model, {"X": x}, threads, monkeypatch, "1")
    want = np.zeros((1, 1, h, 3), np.float32)
    want[..., 1] = 2.0 * x[..., 0]  # output column 1 reads X's one column; 0 and 2 read padding
    np.testing.assert_array_equal(y, want)
    monkeypatch.delenv("ONNXPRUNE_CONV_DEPTHWISE", raising=False)
    assert conv_layout(lib, "scalar", [1, 1, 1, 65536, 1, 1, 0, 65536, 0, 65536, 1], list(x.shape), 1, 1) == 4
