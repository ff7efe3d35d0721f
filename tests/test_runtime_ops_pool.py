"""onnxprune's MaxPool (op-set 9): ONNX MaxPool in NCHW, checked against a numpy reference and
ONNX Runtime's own MaxPool on the same input, on every ISA the CPU has and 1 and 2 threads, with
X placed right before an inaccessible page; its refusals; its output shape."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxprune import runtime_ops
from tests import test_runtime_ops as base
from tests.test_runtime_ops_conv_tiles import _x_before_a_guard_page

lib, isa, threads = base.lib, base.isa, base.threads
DOMAIN = runtime_ops.DOMAIN
LOWEST = np.finfo(np.float32).min


def pool_model(x_shape, domain: str = DOMAIN, outputs: int = 1, **attrs):
    attrs = {k: v for k, v in attrs.items() if v != []}  # an empty list is no attribute
    node = helper.make_node("MaxPool", ["x"], ["y", "i"][:outputs], domain=domain, **attrs)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if outputs > 1:
        outs.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              outs)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(DOMAIN, 9)] if domain == DOMAIN else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def extent(n: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: int) -> int:
    span = n + p0 + p1 - (k - 1) * d - 1
    out = -(-span // s) + 1 if ceil_mode else span // s + 1
    if ceil_mode and (out - 1) * s >= n + p0:  # the last window must start inside X or its leading pad
        out -= 1
    return out


def reference(x: np.ndarray, kernel, strides, dilations, pads, ceil_mode: int) -> np.ndarray:
    """MaxPool by its definition: the largest tap inside X per window, float32's lowest where
    none is (as ONNX Runtime gives it)."""
    rank = len(kernel)
    sp = x.shape[2:]
    outs = [extent(sp[a], kernel[a], strides[a], dilations[a], pads[a], pads[a + rank], ceil_mode) for a in range(rank)]
    y = np.full(x.shape[:2] + tuple(outs), LOWEST, np.float32)
    for o in itertools.product(*(range(n) for n in outs)):
        for t in itertools.product(*(range(k) for k in kernel)):
            at = [o[a] * strides[a] - pads[a] + t[a] * dilations[a] for a in range(rank)]
            if all(0 <= at[a] < sp[a] for a in range(rank)):
                idx = (slice(None), slice(None), *at)
                y[(slice(None), slice(None), *o)] = np.maximum(y[(slice(None), slice(None), *o)], x[idx])
    return y


# (x shape, kernel, strides, dilations, pads, ceil_mode): planes of at most 1024 padded pixels
# go kLanes channels at a time, 2 x 2 / 2 windows inside X from 14 x 14 in one pass over row
# pairs, the rest row by row (ops.cc MaxPoolKernel)
CASES = [
    ((1, 64, 28, 28), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 0),      # VGG's: one pass over row pairs
    ((2, 3, 17, 35), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 0),       # odd sides: the last row and column dropped
    ((1, 5, 17, 35), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 1),       # ceil: partial last windows
    ((1, 4, 9, 40), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 0),        # 20 outputs a row: a masked tail
    ((1, 64, 56, 56), [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 0),      # ResNet's
    ((1, 8, 27, 27), [3, 3], [2, 2], [1, 1], [0, 0, 0, 0], 0),       # AlexNet's
    ((1, 3, 13, 13), [3, 3], [2, 2], [1, 1], [0, 0, 0, 0], 1),       # GoogLeNet's, ceil
    ((1, 6, 20, 20), [5, 5], [1, 1], [1, 1], [2, 2, 2, 2], 0),       # YOLO's SPPF
    ((2, 4, 11, 19), [3, 2], [3, 1], [2, 3], [1, 0, 2, 1], 0),       # stride 3, dilations, uneven pads
    ((1, 2, 9, 31), [4, 3], [2, 3], [1, 2], [3, 2, 0, 1], 1),
    ((1, 3, 1, 1), [1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 0),
    ((1, 2, 3, 3), [2, 2], [1, 1], [3, 3], [1, 1, 1, 1], 0),         # windows of padding only
    ((2, 5, 50), [3], [2], [1], [1, 1], 0),                          # 1-D
    ((1, 3, 33), [4], [3], [2], [2, 3], 1),
    ((1, 20, 7, 7), [2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 0),        # a partial block of channels
    ((1, 3, 40, 40), [3, 2], [3, 1], [2, 3], [1, 0, 2, 1], 0),       # row by row: stride 3, dilations
    ((1, 2, 33, 70), [4, 3], [2, 3], [1, 2], [3, 2, 0, 1], 1),
    ((1, 2, 45, 45), [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 0),       # row by row at stride 1
    ((1, 3, 1500), [4], [3], [2], [2, 3], 1),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}-p{c[4]}-c{c[5]}" for c in CASES])
def test_max_pool_matches_the_reference_and_onnx_runtime(case, isa, threads):
    shape, kernel, strides, dilations, pads, ceil_mode = case
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads, ceil_mode=ceil_mode)
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., ::3] = -np.inf  # -inf inside a window loses to any finite tap, and wins over none
    want = reference(x, kernel, strides, dilations, pads, ceil_mode)
    feeds: dict = {}
    with _x_before_a_guard_page(feeds, x):
        got = base.session(pool_model(list(shape), **attrs), threads).run(None, {"x": feeds["X"]})[0]
    np.testing.assert_array_equal(got, want)
    # ONNX Runtime's own MaxPool gives -inf or -FLT_MAX for a window of -inf taps, by its path
    # (its NCHWc pool, which it runs for channels a multiple of 8 or 16, the latter): compared
    # on finite inputs
    x = np.where(np.isinf(x), np.float32(-3e38), x)
    ours = base.session(pool_model(list(shape), **attrs), threads).run(None, {"x": x})[0]
    ort = runtime_ops.import_onnxruntime()
    theirs = ort.InferenceSession(pool_model(list(shape), domain="", **attrs).SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_max_pool_declares_its_output_shape(lib):
    s = base.session(pool_model([1, 8, 17, 35], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1))
    assert s.get_outputs()[0].shape == [1, 8, 9, 18]
    s = base.session(pool_model(["n", 4, 50], kernel_shape=[3], strides=[2]))
    assert s.get_outputs()[0].shape == ["n", 4, 24]


@pytest.mark.parametrize("attrs, message", [
    ({}, "kernel_shape must be"),
    ({"kernel_shape": [2, 2, 2]}, "kernel_shape must be"),
    ({"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "each pad must be smaller than the kernel"),
    ({"kernel_shape": [2, 2], "pads": [0, 0, 0]}, "pads must be four ints"),
    ({"kernel_shape": [2, 2], "strides": [0, 1]}, "strides must be two ints"),
    ({"kernel_shape": [2, 2], "dilations": [1, 1 << 40]}, "dilations must be two ints"),
    ({"kernel_shape": [1 << 20, 2]}, "kernel_shape must be"),
    ({"kernel_shape": [2, 2], "ceil_mode": 2}, "ceil_mode must be 0 or 1"),
    ({"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, "auto_pad is not supported"),
    ({"kernel_shape": [2, 2], "strides": 2.0}, "strides must be two ints"),
])
def test_max_pool_refuses_attributes_out_of_bounds(lib, attrs, message):
    with pytest.raises(Exception, match=message):
        base.session(pool_model([1, 2, 8, 8], **attrs))


def test_max_pool_refuses_inputs_it_cannot_pool(lib):
    s = base.session(pool_model(None, kernel_shape=[5, 5]))
    with pytest.raises(Exception, match="does not fit the padded input"):
        s.run(None, {"x": np.zeros((1, 2, 3, 8), np.float32)})
    with pytest.raises(Exception, match="X must be a 4-D float32 NCHW tensor"):
        s.run(None, {"x": np.zeros((2, 8, 8), np.float32)})
    empty = s.run(None, {"x": np.zeros((0, 2, 8, 8), np.float32)})[0]
    assert empty.shape == (0, 2, 4, 4)
    # pads alone would size an output from an empty plane: an X with no element, of any height
    # (a 2^47-row plane once overflowed the padded block's size)
    s = base.session(pool_model(None, kernel_shape=[1, 3], strides=[65503, 1], pads=[0, 2, 0, 2]))
    for rows in (5, 1 << 47):
        with pytest.raises(Exception, match="has an empty plane but the output does not"):
            s.run(None, {"x": np.empty((1, 1, rows, 0), np.float32)})


def test_max_pool_has_no_indices_output(lib):
    with pytest.raises(Exception):
        base.session(pool_model([1, 2, 8, 8], outputs=2, kernel_shape=[2, 2]))


HOSTILE = st.one_of(st.integers(-3, 6), st.sampled_from([0, 65536, 65537, 1 << 31, 1 << 62, -(1 << 62)]))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(rank=st.sampled_from([1, 2]), data=st.data(), isa=st.sampled_from(["avx512", "avx2", "scalar"]),
       bad=st.sampled_from([None, None, None, "kernel_shape", "strides", "dilations", "pads", "ceil_mode"]))
def test_max_pool_refuses_or_matches_the_reference_on_hostile_attributes(lib, rank, data, isa, bad):
    """Random attributes on random small inputs, one of them (or none) drawn from anything at
    all (out of bounds, of another length): a session refuses them at creation or on the run
    with an error, or computes the reference (never a crash: X sits before an inaccessible
    page)."""
    if lib.onnxprune_ops_cpu_has(isa.encode()) != 1:
        return

    def ints(name, good, n):
        if name != bad:
            return data.draw(st.lists(good, min_size=n, max_size=n))
        return data.draw(st.lists(HOSTILE, min_size=0, max_size=2 * n + 1))

    attrs = {"kernel_shape": ints("kernel_shape", st.integers(1, 4), rank),
             "strides": ints("strides", st.integers(1, 3), rank),
             "dilations": ints("dilations", st.integers(1, 3), rank),
             "pads": ints("pads", st.integers(0, 3), 2 * rank),
             "ceil_mode": data.draw(st.integers(-2, 3) if bad == "ceil_mode" else st.integers(0, 1))}
    shape = [data.draw(st.sampled_from([1, 2, 1, 0])), data.draw(st.integers(1, 3))] + \
        [data.draw(st.integers(1, 12)) for _ in range(rank)]
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    feeds: dict = {}
    saved = os.environ.get("ONNXPRUNE_KERNEL_ISA")
    os.environ["ONNXPRUNE_KERNEL_ISA"] = isa  # read when the kernel is created
    try:
        with _x_before_a_guard_page(feeds, x):
            try:
                got = base.session(pool_model(shape, **attrs)).run(None, {"x": feeds["X"]})[0]
            except Exception as e:  # refused
                assert "MaxPool" in str(e)
                return
    finally:
        if saved is None:
            del os.environ["ONNXPRUNE_KERNEL_ISA"]
        else:
            os.environ["ONNXPRUNE_KERNEL_ISA"] = saved
    ks = attrs["kernel_shape"]
    st_, di = attrs["strides"] or [1] * rank, attrs["dilations"] or [1] * rank  # [] was left out: the default
    pa = attrs["pads"] or [0] * 2 * rank
    assert len(ks) == rank and min(ks + st_ + di) >= 1 and max(ks + st_ + di) <= 65536
    assert all(0 <= p < ks[i % rank] for i, p in enumerate(pa)) and attrs["ceil_mode"] in (0, 1)
    if 0 in got.shape:
        return
    np.testing.assert_array_equal(got, reference(x, ks, st_, di, pa, attrs["ceil_mode"]))
