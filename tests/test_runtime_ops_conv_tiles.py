"""CsrConv's tiled kernel: the paths the small geometry tests do not reach.

The kernel computes runs of consecutive output positions, splits the input channels into
blocks sized to the L1 cache (partial sums kept between blocks), writes whole tiles straight
into the output when no column is discarded, and keeps a per-shape plan for constant weights.
Each case below is chosen to take one of those paths, and every output is compared with the
float64 reference on every instruction set the CPU has, with 1 and 2 threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, OPSETS, close, conv_model, conv_reference, session

# The library and thread-count fixtures of the main native-op tests.
lib, threads = base.lib, base.threads


@pytest.fixture(params=[*base.ISAS, "avx512-narrow"])
def isa(request, monkeypatch, lib) -> str:
    """The main tests' instruction sets, and AVX-512 sessions that run a convolution on the
    AVX2 tiles where those compute fewer positions (ONNXPRUNE_CONV_NARROW=1, the default on a
    core that splits 512-bit FMAs): every case here runs on both kinds of AVX-512 session."""
    return base.use_isa(request.param, monkeypatch, lib)


def _quantum(isa, ow):
    """The row quantum of the shifted copies a session of the `isa` fixture plans for OW (ops.cc
    RowQuantum): 8 floats on AVX-512 too where narrow tiles are allowed and 16-float rows would
    compute 1.1x more positions (kNarrowGain)."""
    narrow = os.environ.get("ONNXPRUNE_CONV_NARROW") == "1"
    if isa == "avx512" and narrow and -(-ow // 16) * 16 >= 1.1 * -(-ow // 8) * 8:
        return 8
    return {"avx512": 16, "avx2": 8, "scalar": 1}[isa]


def _weights(name, c_out, cg, kh, kw, density):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w4 = rng.standard_normal((c_out, cg, kh, kw)).astype(np.float32)
    w4[rng.random(w4.shape) >= density] = 0.0
    return rng, w4


# (name, c_in, c_out, k, h, w, strides, pads, group, density)
BLOCKED = [
    # 3x3 over 96 channels: several L1-sized channel blocks, partial sums between them.
    ("3x3_96ch_blocks", 96, 24, 3, 30, 30, [1, 1], [1, 1, 1, 1], 1, 0.3),
    # 1x1, no padding: Wq = OW, whole tiles written into Y; 13 x 17 = 221 positions leave a
    # partial last tile that goes through the buffer; 256 channels in blocks.
    ("1x1_direct_partial_tile", 256, 20, 1, 13, 17, [1, 1], [0, 0, 0, 0], 1, 0.2),
    # Strided 1x1 projection (ResNet downsampling): one row phase and one column copy.
    ("1x1_stride2_projection", 64, 32, 1, 14, 14, [2, 2], [0, 0, 0, 0], 1, 0.25),
    # 7x7 stride 2 stem on a small image; few channels, wide reach.
    ("7x7_stem_stride2", 3, 16, 7, 40, 36, [2, 2], [3, 3, 3, 3], 1, 0.5),
    # Small map (7x7): the narrowest tile; 512 channels in blocks.
    ("3x3_7x7_map_512ch", 512, 16, 3, 7, 7, [1, 1], [1, 1, 1, 1], 1, 0.1),
    # Groups with 16 channels each, blocks inside each group's channels.
    ("3x3_groups", 64, 32, 3, 12, 12, [1, 1], [1, 1, 1, 1], 4, 0.4),
]


@pytest.mark.parametrize("case", BLOCKED, ids=[c[0] for c in BLOCKED])
def test_tiled_conv_matches_the_reference(case, isa, threads):
    name, c_in, c_out, k, h, w, strides, pads, group, density = case
    rng, w4 = _weights(name, c_out, c_in // group, k, k, density)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=[1, 1], group=group)
    _, y = session(model, threads).run(None, {"X": x})
    close(y, conv_reference(x, w4, b, strides, pads, [1, 1], group), (c_in // group) * k * k)


# The two input layouts (ops.cc ShiftedCopies): at 20% density and above the kernel reads kW
# column-shifted copies with rows rounded up to 8 floats (aligned loads), below it (or where the
# rounding widens the rows by over 10%) one copy per column phase. Each geometry runs at 10% and
# 45%, under the gate and with each layout forced, with
# strides, dilations, asymmetric pads, groups, output widths that are not multiples of 8, a
# non-square kernel, a padded 1x1, and a kernel wider than 16 columns (always phase copies).
# (name, c_in, c_out, (kh, kw), h, w, strides, pads, dilations, group)
LAYOUTS = [
    ("3x3_asymmetric_pads", 12, 10, (3, 3), 11, 19, [1, 1], [1, 0, 2, 1], [1, 1], 1),
    ("3x3_stride2_dilation2_groups", 16, 8, (3, 3), 17, 21, [2, 2], [2, 1, 0, 2], [2, 2], 2),
    ("5x3_mixed_strides_dilations", 9, 7, (5, 3), 23, 19, [1, 2], [2, 3, 1, 0], [1, 3], 1),
    ("1x1_padded", 24, 16, (1, 1), 9, 13, [1, 1], [1, 2, 0, 1], [1, 1], 1),
    ("1x17_wider_than_16", 6, 5, (1, 17), 5, 40, [1, 1], [0, 8, 0, 8], [1, 1], 1),
    ("3x3_one_output_column", 8, 6, (3, 3), 9, 3, [1, 2], [1, 0, 1, 0], [1, 1], 1),
]


@pytest.mark.parametrize("density", [0.1, 0.45])
@pytest.mark.parametrize("case", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_both_input_layouts_match_the_reference(case, density, isa, threads, monkeypatch):
    """The gate's layout at each density, then each layout forced (ONNXPRUNE_CONV_COPIES), so
    both run on every ISA whatever the gate picks there.
    Each matches the reference, and the two agree to float32 rounding (not bit for bit: their
    rows differ in length, so a plane's last tile may be a one-vector tile in one layout, which
    sums its nonzeros in four interleaved partial sums, and a wider tile in the other)."""
    name, c_in, c_out, (kh, kw), h, w, strides, pads, dilations, group = case
    rng, w4 = _weights(f"{name}{density}", c_out, c_in // group, kh, kw, density)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=dilations, group=group)
    ys = {}
    for copies in ("", "shifted", "phase"):
        monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", copies)
        _, ys[copies] = session(model, threads).run(None, {"X": x})
    ref = conv_reference(x, w4, b, strides, pads, dilations, group)
    for y in ys.values():
        close(y, ref, (c_in // group) * kh * kw)
    scale = float(np.abs(ys["phase"]).max())
    np.testing.assert_allclose(ys["shifted"], ys["phase"], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(ys[""], ys["phase"], rtol=1e-5, atol=1e-6 * scale)


# Strided layers copy every stride-th column of X into their input copies (kernels.h
# `strided`; vectorized for stride 2, masked at a row's end so that it reads no float past the
# last one it keeps). Widths 1 to 37 give copy rows of every length up to 19 outputs, the pads
# shift the first column read, and a stride of 3 takes the portable loop.
@pytest.mark.parametrize("sw", [2, 3])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 2, 1, 0]], ids=["pad1", "pad_left2"])
def test_strided_copies_of_every_row_length_match_the_reference(pads, sw, isa, threads):
    rng, w4 = _weights(f"strided_{sw}_{pads}", 6, 5, 3, 3, 0.5)
    b = rng.standard_normal(6).astype(np.float32)
    for w in range(1, 38):
        x = rng.standard_normal((1, 5, 4, w)).astype(np.float32)
        if (w + pads[1] + pads[3] - 3) < 0:
            continue  # the kernel is wider than the padded row: the op refuses it
        model = conv_model(w4, b, strides=[2, sw], pads=pads, dilations=[1, 1], group=1)
        _, y = session(model, threads).run(None, {"X": x})
        close(y, conv_reference(x, w4, b, [2, sw], pads, [1, 1], 1), 5 * 9)


# A stride-2 layer whose kernel covers both column phases fills the two phase copies' rows in
# one pass over each input row (ops.cc FillCopyRowPair, kernels.h `deinterleave`: 16 pairs a
# step on AVX-512, 8 on AVX2, a masked or portable tail), the copy columns that only one of the
# two copies holds (the pads' edges) one by one. Input widths 1 to 75 give copy rows of 1 to
# 39 columns, so every tail length and up to two whole AVX-512 steps; the pads move which
# copy starts with a padding column and where each one's input ends. Grouped (8 input channels
# per group) and depthwise layers take the whole-image copies and the bands. Phase copies are
# forced: at this density the gate would pick the column-shifted ones for the first two.
@pytest.mark.parametrize("kw,pads", [(3, [1, 1, 1, 1]), (2, [0, 0, 0, 0]), (5, [2, 3, 1, 0]), (4, [1, 0, 2, 3])],
                         ids=["3x3_pad1", "2x2_nopad", "5x5_pads2301", "4x4_pads1023"])
@pytest.mark.parametrize("layer", ["dense", "grouped", "depthwise"])
def test_stride2_paired_copies_of_every_row_length_match_the_reference(kw, pads, layer, isa, threads, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", "phase")
    c_in, c_out, group = {"dense": (3, 4, 1), "grouped": (16, 4, 2), "depthwise": (5, 5, 5)}[layer]
    rng, w4 = _weights(f"paired_{kw}_{pads}_{layer}", c_out, c_in // group, 3, kw, 0.6)
    b = rng.standard_normal(c_out).astype(np.float32)
    model = conv_model(w4, b, strides=[2, 2], pads=pads, dilations=[1, 1], group=group)
    sess = session(model, threads)
    for w in range(1, 76):
        if w + pads[1] + pads[3] < kw:
            continue  # the kernel is wider than the padded row: the op refuses it
        x = rng.standard_normal((1, c_in, 5, w)).astype(np.float32)
        _, y = sess.run(None, {"X": x})
        close(y, conv_reference(x, w4, b, [2, 2], pads, [1, 1], group), (c_in // group) * 3 * kw)


def _layout(lib, isa_name, k, x, c_out, density, pads, strides=(1, 1)):
    """The layout CsrConv plans (ops.cc CsrConvKernel::Layout): in place, phase, shifted, bands
    or strips."""
    nnz = int(density * c_out * x[1] * k[0] * k[1])
    code = base.conv_layout(lib, isa_name, [*k, *strides, 1, 1, *pads, 1], x, c_out, nnz)
    return {-1: "refused", 0: "in place", 1: "phase", 2: "shifted", 7: "bands", 8: "strips"}[code]


# (k, x, c_out, density, pads, the AVX2 gate's layout (rows rounded to 8 floats), the AVX-512
# gate's (rounded to 16), the portable path's: its rows are not rounded)
GATE = [
    ((3, 3), (1, 64, 56, 56), 64, 0.3, (1, 1, 1, 1), "shifted", "strips", "shifted"),  # AVX-512: 64 for 58
    ((3, 3), (1, 64, 54, 54), 64, 0.3, (1, 1, 1, 1), "shifted", "phase", "shifted"),  # AVX-512: 64 for 56
    ((3, 3), (1, 64, 56, 56), 64, 0.1, (1, 1, 1, 1), "phase", "phase", "phase"),      # too sparse for kW copies
    ((3, 3), (1, 256, 13, 13), 384, 0.35, (1, 1, 1, 1), "shifted", "shifted", "shifted"),  # 16 columns for 15
    ((3, 3), (1, 256, 14, 14), 256, 0.3, (1, 1, 1, 1), "shifted", "shifted", "shifted"),   # 16 for 16
    ((3, 3), (1, 256, 4, 4), 256, 0.3, (1, 1, 1, 1), "phase", "phase", "shifted"),    # 8 (16) columns for 6
    ((5, 1), (1, 256, 512, 1), 512, 0.2, (0, 0, 0, 0), "phase", "phase", "shifted"),  # magika: 8 (16) for 1
    ((3, 3), (1, 64, 224, 224), 64, 0.22, (1, 1, 1, 1), "phase", "phase", "phase"),   # 39 MB of copies
    ((1, 1), (1, 256, 13, 13), 64, 0.3, (0, 0, 0, 0), "in place", "in place", "in place"),
]


@pytest.mark.parametrize("case", GATE, ids=lambda c: f"{c[0][0]}x{c[0][1]}_{c[1][2]}x{c[1][3]}_{c[3]}")
def test_the_layout_gate_takes_shifted_copies_only_where_they_pay(case, lib, monkeypatch):
    """Shifted copies need 20% density, copies within 8 x L2 and rows widened by at most 12.5%
    by the rounding to the vector width (8 floats on AVX2, 16 on AVX-512), and
    ONNXPRUNE_CONV_COPIES overrides the gate but not an in-place 1x1."""
    k, x, c_out, density, pads, avx2, avx512, portable = case
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")  # the whole image's copies (bands below)
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")  # AVX-512's own rows (narrow tiles: below)
    if lib.onnxprune_ops_cpu_has(b"avx2") == 1:
        assert _layout(lib, "avx2", k, x, c_out, density, pads) == avx2
    if lib.onnxprune_ops_cpu_has(b"avx512") == 1:
        assert _layout(lib, "avx512", k, x, c_out, density, pads) == avx512
    assert _layout(lib, "scalar", k, x, c_out, density, pads) == portable
    monkeypatch.setenv("ONNXPRUNE_CONV_STRIPS", "0")  # whole rows: the shifted copies' layout without strips
    for forced in ("shifted", "phase"):
        monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", forced)
        assert _layout(lib, "scalar", k, x, c_out, density, pads) == ("in place" if avx2 == "in place" else forced)
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES")
    if lib.onnxprune_ops_cpu_has(b"avx512") == 1:
        assert _layout(lib, "avx512", k, x, c_out, density, pads) == ("shifted" if avx512 == "strips" else avx512)


def test_copies_go_band_by_band_where_the_image_s_outgrow_the_budget(lib, monkeypatch):
    """Layout 7 (ops.cc BandRows): the whole image's copies (shifted or phase) past the budget,
    a band of at least 8 output rows (and 4 x the rows a band copies twice) dividing OH, at most
    OH / 2, whose copies fit it; otherwise the whole image's copies, shifted or phase as the gate
    says. Column strips off (ONNXPRUNE_CONV_STRIPS=0): they would take the wide shifted layers
    below on AVX-512, band by band or not (test_column_strips_*)."""
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_STRIPS", "0")
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")  # AVX-512's own rows and 20% gate, on any CPU
    row = 3 * 64 * 64 * 4  # one copy row of 64 channels' shifted copies, 56 columns rounded to 64
    for isa_name in ("avx512", "scalar"):
        if isa_name != "scalar" and lib.onnxprune_ops_cpu_has(isa_name.encode()) != 1:
            continue
        case = ((3, 3), (1, 64, 56, 56), 64, 0.3, (1, 1, 1, 1))
        monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(18 * row))  # 14 + 2 rows fit (planes padded to 72 lines)
        assert _layout(lib, isa_name, *case) == "bands"  # also the portable 56-float rows
        if isa_name == "avx512":
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(9 * row))  # 7 + 2: too short a band
            assert _layout(lib, isa_name, *case) == "shifted"
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(58 * row))  # the whole image fits
            assert _layout(lib, isa_name, *case) == "shifted"
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
            assert _layout(lib, isa_name, *case) == "shifted"
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(18 * row))
            assert _layout(lib, isa_name, (3, 3), (1, 64, 56, 56), 64, 0.1, (1, 1, 1, 1)) == "phase"  # 58 rows fit
            # bands of 28 rows of 58-float phase rows
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(30 * 64 * 64 * 4))
            assert _layout(lib, isa_name, (3, 3), (1, 64, 56, 56), 64, 0.1, (1, 1, 1, 1)) == "bands"
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(18 * row))
            assert _layout(lib, isa_name, (3, 3), (1, 64, 14, 14), 64, 0.3, (1, 1, 1, 1)) == "shifted"  # OH / 2 < 8
            # VGG-16's conv1_2 in 2 MiB: bands of 8 rows, where its 39 MB of copies were phase copies
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(2 << 20))
            assert _layout(lib, isa_name, (3, 3), (1, 64, 224, 224), 64, 0.22, (1, 1, 1, 1)) == "bands"
            # a 5x5 kernel copies 4 rows twice: bands of at least 16
            assert _layout(lib, isa_name, (5, 5), (1, 32, 60, 60), 32, 0.3, (2, 2, 2, 2)) == "bands"
            monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(18 * 5 * 32 * 64 * 4))  # 14 + 4 rows: no band of 20
            assert _layout(lib, isa_name, (5, 5), (1, 32, 60, 60), 32, 0.3, (2, 2, 2, 2)) == "shifted"
    # a prime OH near 2^31 over an empty X: the band search takes the divisors up to its square
    # root (not a billion candidates) before the copies' size refuses the shape
    monkeypatch.delenv("ONNXPRUNE_CONV_BAND_BYTES")
    assert _layout(lib, "scalar", (1, 1), (1, 1, 2**31 - 1, 0), 1, 1.0, (0, 1, 0, 0)) == "refused"
    for bad in ("many", "-1", " 5", "+5", "99999999999999999999", ""):
        monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", bad)
        want = "shifted" if bad == "" else "refused"  # empty: the L2 size, as unset
        assert _layout(lib, "scalar", (3, 3), (1, 8, 9, 9), 4, 0.5, (1, 1, 1, 1)) == want, bad


def _phases(k, d, s):
    """ops.cc UsedPhases: the distinct phases (i * d) % s of an axis with k taps."""
    return len({(i * d) % s for i in range(k)})


def _spread(floats):
    """ops.cc SpreadPlane: a band's copy plane padded to P 16-float lines, P = 8 (mod 16)."""
    lines = -(-floats // 16)
    return (lines + (8 - lines % 16) % 16) * 16


def _conv_or_residual(w4, b, x, conv, rng, strides, pads, dil, group, residual):
    """The conv model (residual None), or the one adding Z then applying `residual` (Relu or
    HardSwish), with its feeds (Z drawn from rng) and the expected output; conv is the reference
    without Z."""
    from tests.test_runtime_ops_residual import residual_model
    feeds = {"X": x}
    if residual is None:
        return conv_model(w4, b, strides=strides, pads=pads, dilations=dil, group=group), feeds, conv
    z = rng.standard_normal(conv.shape).astype(np.float32)
    feeds["Z"] = z
    model = residual_model(w4, b, strides=strides, pads=pads, dilations=dil, group=group, activation=residual)
    want = conv + z
    want = np.maximum(want, 0.0) if residual == "Relu" else want * np.clip(want / 6 + 0.5, 0.0, 1.0)
    return model, feeds, want


@contextlib.contextmanager
def _x_before_a_guard_page(feeds, x):
    """feeds["X"] holds x right before an inaccessible page where the platform allows it."""
    buffers = None
    if sys.platform.startswith("linux"):
        from tests.test_runtime_ops_guarded import GuardedBuffers
        buffers = GuardedBuffers()
        feeds["X"] = buffers.place(x)
    try:
        yield
    finally:
        if buffers is not None:
            buffers.free()


# (name, c_in, c_out, (kh, kw), h, w, strides, pads, dilations, group, the band's output rows)
BANDS = [
    ("3x3_bands_of_10", 12, 20, (3, 3), 40, 37, [1, 1], [1, 1, 1, 1], [1, 1], 1, 10),
    ("3x3_bands_of_20_partial_tiles", 12, 20, (3, 3), 40, 37, [1, 1], [1, 1, 1, 1], [1, 1], 1, 20),
    ("3x3_stride2", 8, 16, (3, 3), 79, 30, [2, 2], [1, 1, 1, 1], [1, 1], 1, 20),
    ("5x5_asymmetric_pads", 6, 10, (5, 5), 35, 23, [1, 1], [2, 1, 1, 3], [1, 1], 1, 17),
    ("3x3_dilation2", 6, 8, (3, 3), 36, 20, [1, 1], [2, 2, 2, 2], [2, 2], 1, 18),
    ("3x3_groups", 16, 24, (3, 3), 32, 19, [1, 1], [1, 1, 1, 1], [1, 1], 4, 8),
    ("3x1_pad_past_the_kernel", 4, 6, (3, 1), 30, 9, [1, 1], [3, 0, 1, 0], [1, 1], 1, 8),
]


@pytest.mark.parametrize("copies", ["shifted", "phase"])
@pytest.mark.parametrize("residual", [None, "Relu", "HardSwish"])
@pytest.mark.parametrize("case", BANDS, ids=[c[0] for c in BANDS])
def test_bands_of_copies_match_the_reference(case, residual, copies, lib, isa, threads, monkeypatch):
    """ONNXPRUNE_CONV_BAND_BYTES set to a few copy rows: the layer runs band by band (layout 7,
    checked through the layout probe) on shifted or phase copies, two images, with Z and an
    activation finished in the tiles or after them; the same as the reference and as the whole
    image's copies, X placed right before an inaccessible page where the platform allows, and
    left as it was."""
    name, c_in, c_out, (kh, kw), h, w, strides, pads, dil, group, band = case
    rng, w4 = _weights(f"bands-{name}", c_out, c_in // group, kh, kw, 0.5)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, strides, pads, dil, group)
    quantum = _quantum(isa, conv.shape[3])
    row_phases = _phases(kh, dil[0], strides[0])
    if copies == "shifted":
        planes, wq = row_phases * kw * c_in, (conv.shape[3] + quantum - 1) // quantum * quantum
    else:
        planes = row_phases * _phases(kw, dil[1], strides[1]) * c_in
        wq = -(-(w + pads[1] + pads[3]) // strides[1])
    reach = (kh - 1) * dil[0] // strides[0]
    budget = planes * _spread((band + reach) * wq) * 4  # that band fits, no larger one
    monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", copies)
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(budget))
    attrs = [kh, kw, *strides, *dil, *pads, group]
    assert base.conv_layout(lib, isa, attrs, list(x.shape), c_out, int(np.count_nonzero(w4))) == 7
    model, feeds, want = _conv_or_residual(w4, b, x, conv, rng, strides, pads, dil, group, residual)
    with _x_before_a_guard_page(feeds, x):
        y = session(model, threads).run(None, feeds)[-1]
        close(y, want, (c_in // group) * kh * kw)
        monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
        whole = session(model, threads).run(None, feeds)[-1]
        close(y, whole, (c_in // group) * kh * kw)
        assert np.array_equal(feeds["X"], x)


# Column strips (ops.cc StripGeometry, layout 8): shifted copies of rows wider than 32 floats
# that split into 16-float strips, at least 16 input channels a group, unit column stride.
# (name, c_in, c_out, (kh, kw), h, w, strides, pads, dilations, group, the band's output rows or 0)
STRIPS = [
    # 48 columns: three whole strips, each tile written where it lies in Y (OW a multiple of 16)
    ("3x3_three_strips", 16, 12, (3, 3), 30, 48, [1, 1], [1, 1, 1, 1], [1, 1], 1, 0),
    # 40 columns: AVX-512 rows of 48, the last strip 8 columns of Y (through the task buffer)
    ("3x3_partial_last_strip", 20, 10, (3, 3), 22, 40, [1, 1], [1, 1, 1, 1], [1, 1], 1, 0),
    # bands of 10 rows over strips: partial tiles at every strip's band end
    ("3x3_strips_in_bands", 16, 12, (3, 3), 40, 64, [1, 1], [1, 1, 1, 1], [1, 1], 1, 10),
    ("5x5_asymmetric_pads_dilation2", 16, 8, (5, 5), 31, 70, [1, 1], [3, 5, 1, 2], [2, 2], 1, 0),
    ("3x3_groups_of_16", 32, 16, (3, 3), 18, 64, [1, 1], [1, 1, 1, 1], [1, 1], 2, 0),
    # row stride 2 (two row phases), column stride 1
    ("3x3_row_stride2", 16, 8, (3, 3), 33, 64, [2, 1], [1, 1, 1, 1], [1, 1], 1, 0),
    # padding past the kernel: whole strips of padding columns on either side
    ("3x1_pads_past_the_kernel", 16, 6, (3, 1), 12, 20, [1, 1], [1, 18, 1, 20], [1, 1], 1, 0),
]


@pytest.mark.parametrize("residual", [None, "Relu", "HardSwish"])
@pytest.mark.parametrize("case", STRIPS, ids=[c[0] for c in STRIPS])
def test_column_strips_match_the_reference(case, residual, lib, isa, threads, monkeypatch):
    """Shifted copies (forced) in column strips, two images, with Z and an activation finished
    in the tiles where they lie in Y (a clamp) or row by row (HardSwish), band by band where
    the case says: the layout probe says strips wherever the rows split into 16-float strips on
    that ISA, and the output equals the reference and the whole rows' (ONNXPRUNE_CONV_STRIPS=0),
    X placed right before an inaccessible page and left as it was."""
    name, c_in, c_out, (kh, kw), h, w, strides, pads, dil, group, band = case
    rng, w4 = _weights(f"strips-{name}", c_out, c_in // group, kh, kw, 0.5)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    conv = conv_reference(x, w4, b, strides, pads, dil, group)
    quantum = _quantum(isa, conv.shape[3])
    wq = (conv.shape[3] + quantum - 1) // quantum * quantum
    monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", "shifted")
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    if band:
        reach = (kh - 1) * dil[0] // strides[0]
        monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", str(_phases(kh, dil[0], strides[0]) * kw * c_in *
                                                            _spread((band + reach) * wq) * 4))
    else:
        monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    attrs = [kh, kw, *strides, *dil, *pads, group]
    layout = base.conv_layout(lib, isa, attrs, list(x.shape), c_out, int(np.count_nonzero(w4)))
    assert layout == (8 if wq > 32 and wq % 16 == 0 else 7 if band else 2)
    model, feeds, want = _conv_or_residual(w4, b, x, conv, rng, strides, pads, dil, group, residual)
    with _x_before_a_guard_page(feeds, x):
        y = session(model, threads).run(None, feeds)[-1]
        close(y, want, (c_in // group) * kh * kw)
        monkeypatch.setenv("ONNXPRUNE_CONV_STRIPS", "0")
        assert base.conv_layout(lib, isa, attrs, list(x.shape), c_out, int(np.count_nonzero(w4))) in (2, 7)
        rows = session(model, threads).run(None, feeds)[-1]
        close(y, rows, (c_in // group) * kh * kw)
        assert np.array_equal(feeds["X"], x)


def test_column_strips_follow_their_rule_and_their_setting(lib, monkeypatch):
    """Strips on AVX-512 for shifted rows wider than 32 floats with 16 or more input channels a
    group; whole rows for 32-float rows, fewer channels, phase copies, column strides; on AVX2
    only where the 8-float rows split into 16-float strips; ONNXPRUNE_CONV_STRIPS 0 or 1, and
    anything else refused."""
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")
    pad1 = (1, 1, 1, 1)
    if lib.onnxprune_ops_cpu_has(b"avx512") == 1:
        assert _layout(lib, "avx512", (3, 3), (1, 64, 56, 56), 64, 0.3, pad1) == "strips"
        assert _layout(lib, "avx512", (3, 3), (1, 64, 28, 28), 64, 0.3, pad1) == "shifted"  # 32-float rows
        assert _layout(lib, "avx512", (3, 3), (1, 8, 56, 56), 64, 0.3, pad1) == "shifted"  # 8 channels
        assert _layout(lib, "avx512", (3, 3), (1, 64, 56, 56), 64, 0.1, pad1) == "phase"
        # 16 channels: two row phases' shifted copies (2.4 MB) within 8 L2s of 512 KiB and up
        assert _layout(lib, "avx512", (3, 3), (1, 16, 112, 112), 64, 0.3, pad1, strides=(1, 2)) != "strips"
        assert _layout(lib, "avx512", (3, 3), (1, 16, 112, 112), 64, 0.3, pad1, strides=(2, 1)) == "strips"
    if lib.onnxprune_ops_cpu_has(b"avx2") == 1:
        assert _layout(lib, "avx2", (3, 3), (1, 64, 56, 56), 64, 0.3, pad1) == "shifted"  # 56-float rows
        assert _layout(lib, "avx2", (3, 3), (1, 64, 48, 48), 64, 0.3, pad1) == "strips"
    assert _layout(lib, "scalar", (3, 3), (1, 64, 48, 48), 64, 0.3, pad1) == "strips"
    for value, want in (("1", "strips"), ("", "strips"), ("0", "shifted"), ("yes", "refused"), (" 1", "refused")):
        monkeypatch.setenv("ONNXPRUNE_CONV_STRIPS", value)
        assert _layout(lib, "scalar", (3, 3), (1, 64, 48, 48), 64, 0.3, pad1) == want, value


# (k, x, c_out, density, whether AVX-512 sessions hand the layer to the AVX2 tiles where
# ONNXPRUNE_CONV_NARROW allows it): they do where the 8-float rows compute at least 1.1x fewer
# positions (ops.cc kNarrowGain). Each case's two layouts differ, so the probe tells which
# tiles planned it.
NARROW = [
    ((3, 3), (1, 64, 56, 56), 64, 0.3, True),     # 56 positions a row, not 64 (strips of 16)
    ((3, 3), (1, 512, 7, 7), 512, 0.3, True),     # 8 shifted columns, not 9 phase ones
    ((3, 3), (1, 64, 54, 54), 64, 0.3, False),    # 56 shifted columns against 56 phase ones
    ((3, 3), (1, 16, 120, 120), 64, 0.3, False),  # 120 against 128 (strips of 16): 1.07x
]


@pytest.mark.parametrize("case", NARROW, ids=lambda c: f"{c[1][2]}x{c[1][3]}")
def test_narrow_tiles_take_the_layers_they_compute_in_fewer_positions(case, lib, monkeypatch):
    if lib.onnxprune_ops_cpu_has(b"avx512") != 1:
        pytest.skip("CPU lacks avx512")
    k, x, c_out, density, narrow = case
    pad1 = (1, 1, 1, 1)
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")
    wide, avx2 = (_layout(lib, name, k, x, c_out, density, pad1) for name in ("avx512", "avx2"))
    assert wide != avx2
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "1")
    assert _layout(lib, "avx512", k, x, c_out, density, pad1) == (avx2 if narrow else wide)
    assert _layout(lib, "avx2", k, x, c_out, density, pad1) == avx2


@pytest.mark.parametrize("x, c_out", [((1, 64, 56, 56), 64), ((1, 512, 7, 7), 512), ((1, 128, 28, 28), 128)],
                         ids=["56x56", "7x7", "28x28"])
def test_on_narrow_cores_the_gate_takes_shifted_copies_below_20_percent(x, c_out, lib, monkeypatch):
    """ops.cc kNarrowShiftedMinDensity: an AVX-512 session on a core that splits 512-bit
    operations takes shifted copies at 10% and 2% density (the sizes and the widening still
    gate them); other sessions keep phase copies below 20%."""
    if lib.onnxprune_ops_cpu_has(b"avx512") != 1:
        pytest.skip("CPU lacks avx512")
    pad1 = (1, 1, 1, 1)
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_STRIPS", "0")
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    for density in (0.1, 0.02):
        monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "1")
        assert _layout(lib, "avx512", (3, 3), x, c_out, density, pad1) == "shifted"
        assert _layout(lib, "avx2", (3, 3), x, c_out, density, pad1) == "phase"
        monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")
        assert _layout(lib, "avx512", (3, 3), x, c_out, density, pad1) == "phase"
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "1")  # 39 MB of copies: past 8 L2s at any density
    assert _layout(lib, "avx512", (3, 3), (1, 64, 224, 224), 64, 0.1, pad1) == "phase"


def test_narrow_tiles_leave_depthwise_layers_and_refuse_nothing_more(lib, monkeypatch):
    """Depthwise layers keep AVX-512's plan even through the input copies (where the AVX2
    tiles would take a 7 x 7 map in shifted copies, not phase ones); and where the AVX2 plan
    would outgrow the size limits (kW shifted copies of a huge padded input whose AVX-512 rows
    take one phase copy) the layer keeps the plan it is accepted with instead of being refused."""
    if lib.onnxprune_ops_cpu_has(b"avx512") != 1:
        pytest.skip("CPU lacks avx512")
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    monkeypatch.setenv("ONNXPRUNE_CONV_DEPTHWISE", "0")  # through the copies, like any grouped layer
    pad1, x = [1, 1, 1, 1], [1, 512, 7, 7]
    dw = [3, 3, 1, 1, 1, 1, *pad1, 512]
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "0")
    wide, avx2 = (base.conv_layout(lib, name, dw, x, 512, 256 * 9) for name in ("avx512", "avx2"))
    assert (wide, avx2) == (1, 2)  # phase copies of 9 columns, shifted copies of 8
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "1")
    assert base.conv_layout(lib, "avx512", dw, x, 512, 256 * 9) == wide
    monkeypatch.delenv("ONNXPRUNE_CONV_DEPTHWISE")
    monkeypatch.delenv("ONNXPRUNE_CONV_BAND_BYTES")
    huge = [3, 3, 1, 1, 1, 1, 65536, 1, 65536, 1, 1]  # 131072 padded rows of 9 (or 3 x 8) columns
    for h, w in ((0, 7), (2, 7), (2, 8)):
        got = []
        for value in ("0", "1"):
            monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", value)
            got.append(base.conv_layout(lib, "avx512", huge, [1, 1024, h, w], 1, 2764))
        assert got == [7, 7], (h, w)  # phase copies band by band, either way


def _splits_wide_fma() -> bool | None:
    """What /proc/cpuinfo says of ops.cc CpuSplitsWideFma (AMD family 25 with AVX-512), None
    where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n")[0]
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "vendor_id" not in fields or "cpu family" not in fields:
        return None
    return (fields["vendor_id"] == "AuthenticAMD" and fields["cpu family"] == "25"
            and "avx512f" in fields.get("flags", "").split())


def test_narrow_tiles_follow_the_cpu_and_their_setting(lib, monkeypatch):
    """Unset, ONNXPRUNE_CONV_NARROW follows the CPU (a Zen 4 class core narrows); 0 and 1
    force it; anything else is refused, by the probe and by a session."""
    if lib.onnxprune_ops_cpu_has(b"avx512") != 1:
        pytest.skip("CPU lacks avx512")
    monkeypatch.setenv("ONNXPRUNE_CONV_BAND_BYTES", "0")
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    monkeypatch.delenv("ONNXPRUNE_CONV_STRIPS", raising=False)
    k, x, pad1 = (3, 3), (1, 64, 56, 56), (1, 1, 1, 1)
    got = {}
    for value in ("", "0", "1", "yes", " 1"):
        monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", value)
        got[value] = _layout(lib, "avx512", k, x, 64, 0.3, pad1)
    assert (got["0"], got["1"], got["yes"], got[" 1"]) == ("strips", "shifted", "refused", "refused")
    splits = _splits_wide_fma()
    if splits is not None:
        assert got[""] == ("shifted" if splits else "strips")
    monkeypatch.setenv("ONNXPRUNE_CONV_NARROW", "yes")
    w4 = np.ones((2, 3, 3, 3), np.float32)
    with pytest.raises(Exception, match="ONNXPRUNE_CONV_NARROW=yes is not one of 0, 1"):
        session(conv_model(w4, np.zeros(2, np.float32), strides=[1, 1], pads=[1, 1, 1, 1],
                           dilations=[1, 1], group=1), 1)


def test_the_layout_probe_refuses_what_the_op_refuses(lib, monkeypatch):
    monkeypatch.delenv("ONNXPRUNE_CONV_COPIES", raising=False)
    assert _layout(lib, "scalar", (0, 3), (1, 8, 9, 9), 4, 0.5, (1, 1, 1, 1)) == "refused"  # kernel 0
    assert _layout(lib, "scalar", (5, 5), (1, 8, 2, 2), 4, 0.5, (0, 0, 0, 0)) == "refused"  # kernel > input
    assert _layout(lib, "mmx", (3, 3), (1, 8, 9, 9), 4, 0.5, (1, 1, 1, 1)) == "refused"
    monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", "diagonal")
    assert _layout(lib, "scalar", (3, 3), (1, 8, 9, 9), 4, 0.5, (1, 1, 1, 1)) == "refused"


def test_an_unknown_copies_layout_is_refused(lib, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CONV_COPIES", "diagonal")
    w4 = np.ones((2, 3, 3, 3), np.float32)
    with pytest.raises(Exception, match="ONNXPRUNE_CONV_COPIES=diagonal is not one of shifted, phase"):
        session(conv_model(w4, np.zeros(2, np.float32), strides=[1, 1], pads=[1, 1, 1, 1],
                           dilations=[1, 1], group=1), 1)


# Unpadded 1x1 convolutions with stride 1 read X in place (no input copy); the last,
# partial tile is moved back to end at the plane's end. Planes from below one tile (copied as
# before) through exactly one or several tiles to one position past them, with groups and a
# stride that moves over a single output row (still one phase).
IN_PLACE_PLANES = [(7, 7), (8, 8), (1, 65), (5, 13), (12, 16), (13, 15), (1, 191), (16, 12)]


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("plane", IN_PLACE_PLANES, ids=[f"{h}x{w}" for h, w in IN_PLACE_PLANES])
def test_1x1_reading_x_in_place_matches_the_reference(plane, group, isa, threads):
    h, w = plane
    rng, w4 = _weights(f"in_place_{h}x{w}_{group}", 24, 40 // group, 1, 1, 0.6)
    b = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((3, 40, h, w)).astype(np.float32)
    strides = [2, 1] if h == 1 else [1, 1]  # one output row: the row stride never moves
    model = conv_model(w4, b, strides=strides, pads=[0, 0, 0, 0], dilations=[1, 1], group=group)
    x_before = x.copy()
    _, y = session(model, threads).run(None, {"X": x})
    close(y, conv_reference(x, w4, b, strides, [0, 0, 0, 0], [1, 1], group), (40 // group))
    assert np.array_equal(x, x_before)


# A 1x1 kernel's input copies (a plane narrower than the tiles, which the tiles may not read
# in place, or a strided or padded layer) have each channel's plane rounded up to the vector
# width (PlanPhases), so tile loads start on vector boundaries; the rounding is zeros the
# tiles read and drop. Many input channels split into channel blocks, and batch 2 reuses the
# copies.
ALIGNED_1X1 = [((7, 7), 600, [1, 1], [0, 0, 0, 0]), ((3, 5), 300, [1, 1], [0, 0, 0, 0]),
               ((1, 9), 64, [1, 1], [0, 0, 0, 0]), ((6, 5), 17, [1, 1], [0, 0, 0, 0]),
               ((14, 14), 96, [2, 2], [0, 0, 0, 0]), ((13, 11), 40, [2, 3], [1, 0, 0, 2]),
               ((9, 9), 33, [1, 1], [1, 1, 1, 1])]


@pytest.mark.parametrize("plane,c_in,strides,pads", ALIGNED_1X1,
                         ids=["7x7_600ch", "3x5_300ch", "1x9_64ch", "6x5_17ch", "14x14_s2", "13x11_s23_pads",
                              "9x9_pad1"])
def test_1x1_copies_on_aligned_planes_match_the_reference(plane, c_in, strides, pads, isa, threads):
    h, w = plane
    rng, w4 = _weights(f"aligned_{h}x{w}_{c_in}_{strides}", 20, c_in, 1, 1, 0.5)
    b = rng.standard_normal(20).astype(np.float32)
    x = rng.standard_normal((2, c_in, h, w)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=[1, 1], group=1)
    _, y = session(model, threads).run(None, {"X": x})
    close(y, conv_reference(x, w4, b, strides, pads, [1, 1], 1), c_in)


@pytest.mark.parametrize("c_in,group", [(130, 2), (66, 3)], ids=["130ch_g2", "66ch_g3"])
def test_grouped_1x1_on_aligned_planes_matches_the_reference(c_in, group, isa, threads):
    """The aligned planes of a 1x1 layer copy whole channel planes, in tasks of 64 channels that
    cut across the groups: each group's tiles must still read only their own channels."""
    rng, w4 = _weights(f"aligned_grouped_{c_in}_{group}", 6 * group, c_in // group, 1, 1, 0.5)
    b = rng.standard_normal(6 * group).astype(np.float32)
    x = rng.standard_normal((2, c_in, 7, 7)).astype(np.float32)
    model = conv_model(w4, b, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=group)
    _, y = session(model, threads).run(None, {"X": x})
    close(y, conv_reference(x, w4, b, [1, 1], [0, 0, 0, 0], [1, 1], group), c_in // group)


def _shuffled_conv_model(w4, b, pads, index_dtype, rng):
    """CsrConv whose rows list their nonzeros in a random column order (the contract only
    recommends ascending columns): the channel-block passes then take them out of block, and
    every nonzero must still be counted exactly once."""
    c_out = w4.shape[0]
    flat = w4.reshape(c_out, -1)
    values, cols, row_ptr = [], [], [0]
    for r in range(c_out):
        nz = np.flatnonzero(flat[r])
        nz = nz[rng.permutation(len(nz))]
        values.extend(flat[r, nz])
        cols.extend(nz)
        row_ptr.append(len(values))
    inits = [numpy_helper.from_array(np.asarray(values, np.float32), "v"),
             numpy_helper.from_array(np.asarray(cols, index_dtype), "c"),
             numpy_helper.from_array(np.asarray(row_ptr, np.int32), "p"),
             numpy_helper.from_array(b, "B")]
    node = helper.make_node("CsrConv", ["X", "v", "c", "p", "B"], ["Y"], domain=DOMAIN,
                            kernel_shape=list(w4.shape[2:]), pads=pads)
    graph = helper.make_graph([node], "shuffled", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


# Rows that list their nonzeros in a random column order, each entry counted once: 12 output
# channels over 128 inputs (one task); and 150 over 160 at batch 2, three tasks of 64, 64 and
# 22 rows over several channel blocks, whose entries the plan stores in the order the passes
# take them (ops.cc TaskOrder).
SHUFFLED = [("shuffled", 12, 128, (20, 22), 1, [1, 1, 1, 1]), ("row_groups", 150, 160, (9, 11), 2, [1, 0, 1, 2])]


@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
@pytest.mark.parametrize("case", SHUFFLED, ids=[c[0] for c in SHUFFLED])
def test_unordered_columns_are_each_counted_once(case, isa, threads, index_dtype):
    name, c_out, c_in, (h, w), nb, pads = case
    rng, w4 = _weights(name, c_out, c_in, 3, 3, 0.3)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((nb, c_in, h, w)).astype(np.float32)
    sess = session(_shuffled_conv_model(w4, b, pads, index_dtype, rng), threads)
    y = sess.run(None, {"X": x})[0]
    close(y, conv_reference(x, w4, b, [1, 1], pads, [1, 1], 1), c_in * 9)


def test_the_kept_plan_follows_the_input_shape(isa):
    """One session, constant weights, inputs of changing size: each run is planned for its own
    shape (the kept plan is replaced, never misapplied), also with runs from two threads."""
    rng, w4 = _weights("shapes", 8, 20, 3, 3, 0.4)
    b = rng.standard_normal(8).astype(np.float32)
    model = conv_model(w4, b, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    sess = session(model, 2)
    shapes = [(1, 20, 9, 9), (2, 20, 31, 17), (1, 20, 9, 9), (1, 20, 4, 64), (3, 20, 2, 2)]
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = [conv_reference(x, w4, b, [1, 1], [1, 1, 1, 1], [1, 1], 1) for x in inputs]
    for x, ref in zip(inputs, expected):
        close(sess.run(None, {"X": x})[1], ref, 180)

    _concurrently(lambda i: close(sess.run(None, {"X": inputs[i]})[1], expected[i], 180),
                  [[0, 1, 2, 3, 4] * 3, [4, 3, 1, 0, 2] * 3])


def _concurrently(check, orders):
    """``check(i)`` for every i of each order, the orders in threads at the same time (one
    session shared, as a server would); the first failure of any thread is raised."""
    failures = []

    def worker(order):
        try:
            for i in order:
                check(i)
        except Exception as err:  # noqa: BLE001 - re-raised below
            failures.append(err)

    pool = [threading.Thread(target=worker, args=(o,)) for o in orders]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures, failures[0]


def test_float16_values_through_blocks(isa):
    """fp16 values (op contract v2) on the blocked path: widened once, then the same tiles."""
    rng, w4 = _weights("fp16_blocks", 16, 96, 3, 3, 0.3)
    w4 = w4.astype(np.float16).astype(np.float32)  # representable exactly as float16
    b = rng.standard_normal(16).astype(np.float32)
    v, c, p = runtime_ops.csr_from_dense(w4.reshape(16, -1))
    inits = [numpy_helper.from_array(v.astype(np.float16), "v"), numpy_helper.from_array(c, "c"),
             numpy_helper.from_array(p, "p"), numpy_helper.from_array(b, "B")]
    node = helper.make_node("CsrConv", ["X", "v", "c", "p", "B"], ["Y"], domain=DOMAIN, kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "fp16", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    x = rng.standard_normal((1, 96, 26, 26)).astype(np.float32)
    y = session(helper.make_model(graph, opset_imports=OPSETS)).run(None, {"X": x})[0]
    close(y, conv_reference(x, w4, b, [1, 1], [1, 1, 1, 1], [1, 1], 1), 96 * 9)


# --- CsrGemm on the same tiles (batch x sequence >= 32 rows) ----------------------------------


def _matmul_model(v, c, p, n, k, bias):
    inits = [numpy_helper.from_array(v, "v"), numpy_helper.from_array(c, "c"), numpy_helper.from_array(p, "p"),
             numpy_helper.from_array(bias, "B")]
    node = helper.make_node("CsrGemm", ["X", "v", "c", "p", "B"], ["Y"], domain=DOMAIN, matmul=1)
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


@pytest.mark.parametrize("encoding", ["int16", "uint8_deltas_fp16"])
def test_tiled_matmul_blocks_k_and_follows_the_sequence_length(isa, encoding):
    """[B, S, K] inputs with S changing between runs (the plan is per row count), K wide enough
    for several L2-sized blocks, compact CSR (op contract v2) too; two threads at once."""
    rng, w = _weights("mm_" + encoding, 24, 5000, 1, 1, 0.05)
    w = w.reshape(24, 5000)
    if encoding == "int16":
        v, c, p = runtime_ops.csr_from_dense(w)
    else:
        w = w.astype(np.float16).astype(np.float32)  # exactly representable: the reference is exact
        v, c, p = runtime_ops.compact_csr(w, np.float16)
        assert (v.dtype, c.dtype) == (np.float16, np.uint8)  # 5% density: deltas are the smaller
    bias = rng.standard_normal(24).astype(np.float32)
    sess = session(_matmul_model(v, c, p, 24, 5000, bias), 2)
    inputs = [rng.standard_normal(s).astype(np.float32) for s in [(1, 128, 5000), (2, 33, 5000), (1, 200, 5000)]]
    expected = [x.astype(np.float64) @ w.T.astype(np.float64) + bias for x in inputs]
    for x, ref in zip(inputs, expected):
        close(sess.run(None, {"X": x})[0], ref, 5000)
    _concurrently(lambda i: close(sess.run(None, {"X": inputs[i]})[0], expected[i], 5000),
                  [[0, 1, 2] * 2, [2, 1, 0] * 2])


# The tile tasks' up-front pass over their entries (ops.cc ChooseTouch: ONNXPRUNE_TOUCH_ENTRIES,
# by CPU vendor when unset) reads them and changes nothing: with and without it the tiled
# convolution and the tiled product (MatMul over 64 rows, on the convolution tiles) give the
# same floats, and a value other than 0 or 1 fails the run that makes the plan.
def test_the_entries_pass_changes_no_output(lib, monkeypatch):
    rng, w4 = _weights("touch", 96, 96, 3, 3, 0.2)
    b = rng.standard_normal(96).astype(np.float32)
    x = rng.standard_normal((1, 96, 20, 20)).astype(np.float32)
    conv = conv_model(w4, b, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    w2 = np.ascontiguousarray(w4.reshape(96, -1)[:, :200])  # N = 96, K = 200
    mm, feeds = base.matmul_model(w2, (64, 200), bias_shape=(96,))
    outs = {}
    for value in ["1", "0", ""]:
        monkeypatch.setenv("ONNXPRUNE_TOUCH_ENTRIES", value)
        outs[value] = (session(conv, 2).run(None, {"X": x})[1], *session(mm, 2).run(None, feeds))
    for value in ["0", ""]:
        np.testing.assert_array_equal(outs[value][0], outs["1"][0])
        np.testing.assert_array_equal(outs[value][2], outs["1"][2])
    close(outs["1"][0], conv_reference(x, w4, b, [1, 1], [1, 1, 1, 1], [1, 1], 1), 96 * 9)
    close(outs["1"][2], outs["1"][1], 200)
    monkeypatch.setenv("ONNXPRUNE_TOUCH_ENTRIES", "2")
    with pytest.raises(Exception, match="ONNXPRUNE_TOUCH_ENTRIES=2 is not one of 0, 1"):
        session(conv, 1).run(None, {"X": x})
