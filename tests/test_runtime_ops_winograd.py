"""CsrConv's Winograd path (``winograd=1``, runtime_ops/README.md); tests/test_lower_winograd.py
has the lowering that picks it.

Every output is compared with a float64 direct convolution over shapes that cross the path's
edges: maps that are not multiples of the 4 x 4 output tile, rows of more than 16 tiles (the
input transform's vector), asymmetric pads up to 2, channel counts that are not multiples of
the products' 8 rows, batches, the three index encodings and float16 values, bias, fused
activations and the residual Z, on 1 and 2 threads. The rounding differs from the direct sum
(the transforms scale by up to 8 and 1/24), so the bound is relative to the output's size.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime_ops import compact_csr
from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, conv_reference, session

lib, threads = base.lib, base.threads

# Winograd F(4x4, 3x3) in float32 against float64, as a share of the largest output: measured
# 0.4e-6 - 1.9e-5 on the layers of bench/winograd_probe.py and here; the direct path 1e-7.
WINOGRAD_BOUND = 1e-4

# (name, batch, c_in, c_out, h, w, pads, density)
CASES = [
    ("56x56_64ch", 1, 64, 64, 56, 56, [1, 1, 1, 1], 0.3),
    ("odd_map_asym_pads", 2, 5, 9, 13, 7, [1, 0, 2, 1], 0.5),
    ("no_pads_dense", 1, 3, 8, 10, 11, [0, 0, 0, 0], 1.0),
    ("one_pixel", 1, 17, 3, 1, 1, [1, 1, 1, 1], 0.7),
    ("pads_2", 3, 8, 16, 5, 23, [2, 2, 2, 2], 0.4),
    ("wide_rows_of_21_tiles", 1, 6, 10, 9, 83, [1, 1, 1, 1], 0.6),
    ("several_tasks_and_a_tail", 2, 12, 24, 30, 30, [1, 1, 1, 1], 0.35),
    ("empty_weights", 1, 4, 5, 8, 8, [1, 1, 1, 1], 0.0),
    ("one_output_row", 1, 7, 9, 3, 40, [0, 1, 0, 1], 0.5),
    # AVX2's products over 200 channels: two tasks of 32 tiles each (a 24-tile and an 8-tile
    # product; pads_2 and one_output_row take the 16-tile one)
    ("many_channels", 1, 200, 12, 30, 30, [1, 1, 1, 1], 0.3),
]


def _weights(name, c_out, c_in, density):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w4 = rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)
    w4[rng.random(w4.shape) >= density] = 0.0
    return rng, w4


def _model(w4, b, pads, *, winograd=1, index="int16", values="fp32", act=None, residual=False,
           constant=True):
    """One CsrConv node over w4 (3x3, unit strides) with the given encoding; the CSR arrays
    are initializers, or graph inputs fed at run time (``constant=False``)."""
    rows = w4.reshape(w4.shape[0], -1)
    v, c, p = compact_csr(rows, np.float16 if values == "fp16" else np.float32, deltas=index == "uint8")
    if index == "int32" and c.dtype == np.int16:
        c = c.astype(np.int32)
    arrays = [numpy_helper.from_array(a, n) for a, n in ((v, "values"), (c, "col_idx"), (p, "row_ptr"))]
    inputs = ["X", "values", "col_idx", "row_ptr", "B" if b is not None else ""]
    inits = arrays if constant else []
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    if not constant:
        graph_inputs += [helper.make_tensor_value_info(a.name, a.data_type, list(a.dims)) for a in arrays]
    if residual:
        inputs.append("Z")
        graph_inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=pads, dilations=[1, 1], group=1)
    if winograd is not None:
        attrs["winograd"] = winograd
    if act is not None:
        attrs["activation"] = act
    node = helper.make_node("CsrConv", inputs, ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "wino", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    opset = 5 if residual else 2 if act else 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, opset)])
    feeds = {} if constant else {a.name: numpy_helper.to_array(a) for a in arrays}
    return model, feeds


def _relative_error(y, ref):
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture(params=["avx512", "avx2"])
def wino_isa(request, monkeypatch, lib) -> str:
    """The vector ISAs the path runs on (16 and 8 tiles a vector), each forced in turn;
    skipped where the CPU lacks it."""
    return base.use_isa(request.param, monkeypatch, lib)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("index", ["int16", "int32", "uint8"])
def test_winograd_matches_the_float64_reference(wino_isa, case, index, lib, threads):
    name, batch, c_in, c_out, h, w, pads, density = case
    rng, w4 = _weights(name, c_out, c_in, density)
    b = rng.standard_normal(c_out).astype(np.float32)
    model, feeds = _model(w4, b, pads, index=index)
    x = rng.standard_normal((batch, c_in, h, w)).astype(np.float32)
    (y,) = session(model, threads).run(None, {"X": x, **feeds})
    ref = conv_reference(x, w4, b, [1, 1], pads, [1, 1], 1)
    assert y.shape == ref.shape
    assert _relative_error(y, ref) <= WINOGRAD_BOUND


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Gelu", None])
@pytest.mark.parametrize("residual", [False, True])
def test_activation_and_residual_are_applied_after_the_transform(wino_isa, act, residual, lib, threads):
    rng, w4 = _weights(f"act-{act}-{residual}", 12, 10, 0.4)
    b = rng.standard_normal(12).astype(np.float32)
    model, _ = _model(w4, b, [1, 1, 1, 1], act=act, residual=residual)
    x = rng.standard_normal((2, 10, 19, 26)).astype(np.float32)
    ref = conv_reference(x, w4, b, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    feeds = {"X": x}
    if residual:
        feeds["Z"] = rng.standard_normal(ref.shape).astype(np.float32)
        ref = ref + feeds["Z"]
    if act == "Relu":
        ref = np.maximum(ref, 0)
    elif act == "Sigmoid":
        ref = 1 / (1 + np.exp(-ref))
    elif act == "Gelu":
        from math import erf
        ref = 0.5 * ref * (1 + np.vectorize(erf)(ref / np.sqrt(2)))
    (y,) = session(model, threads).run(None, feeds)
    np.testing.assert_allclose(y, ref, rtol=0, atol=WINOGRAD_BOUND * max(1.0, float(np.max(np.abs(ref)))))


def test_float16_values_and_weights_given_at_run_time(wino_isa, lib, threads):
    rng, w4 = _weights("fp16-runtime", 16, 9, 0.5)
    w16 = w4.astype(np.float16).astype(np.float32)  # what float16 values hold
    x = rng.standard_normal((1, 9, 22, 17)).astype(np.float32)
    ref = conv_reference(x, w16, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    for constant in (True, False):
        model, feeds = _model(w4, None, [1, 1, 1, 1], values="fp16", constant=constant)
        sess = session(model, threads)
        for _ in range(2):  # the second run of constant arrays reads the kept transformed weights
            (y,) = sess.run(None, {"X": x, **feeds})
            assert _relative_error(y, ref) <= WINOGRAD_BOUND


def test_the_kept_weights_follow_the_input_s_shape(wino_isa, lib):
    """The transformed weights are made for X's channel count; a new spatial size reuses them
    and a wrong channel count is refused as by the direct path."""
    rng, w4 = _weights("shapes", 8, 6, 0.5)
    model, _ = _model(w4, None, [1, 1, 1, 1])
    sess = session(model)
    for h, w in ((8, 8), (21, 5), (8, 8)):
        x = rng.standard_normal((1, 6, h, w)).astype(np.float32)
        (y,) = sess.run(None, {"X": x})
        assert _relative_error(y, conv_reference(x, w4, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)) <= WINOGRAD_BOUND
    with pytest.raises(Exception, match="col_idx|channels|columns"):
        sess.run(None, {"X": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)})


def test_the_path_runs_on_the_vector_isas_and_the_direct_path_on_the_portable_one(lib, monkeypatch):
    """Under the portable ISA the node computes exactly what the direct path does; under AVX2 and
    AVX-512 it computes by the transforms (a different rounding, so not the same bits)."""
    rng, w4 = _weights("isa", 16, 16, 0.5)
    x = rng.standard_normal((1, 16, 20, 20)).astype(np.float32)
    with_w, _ = _model(w4, None, [1, 1, 1, 1])
    without, _ = _model(w4, None, [1, 1, 1, 1], winograd=None)
    for isa in ("scalar", "avx2", "avx512"):
        if lib.onnxprune_ops_cpu_has(isa.encode()) != 1:
            continue
        monkeypatch.setenv("ONNXPRUNE_KERNEL_ISA", isa)
        (a,) = session(with_w).run(None, {"X": x})
        (b,) = session(without).run(None, {"X": x})
        if isa == "scalar":
            assert np.array_equal(a, b)
        else:
            assert not np.array_equal(a, b)
            assert _relative_error(a, b) <= WINOGRAD_BOUND


@pytest.mark.parametrize("attrs, message", [
    (dict(winograd=2), "winograd must be 0 or 1"),
    (dict(winograd=-1), "winograd must be 0 or 1"),
    (dict(winograd=1.0), "winograd must be an int"),
    (dict(winograd=1, strides=[2, 2]), "winograd=1 needs"),
    (dict(winograd=1, dilations=[2, 2], pads=[2, 2, 2, 2]), "winograd=1 needs"),
    (dict(winograd=1, kernel_shape=[5, 5], pads=[2, 2, 2, 2]), "winograd=1 needs"),
    (dict(winograd=1, group=2), "winograd=1 needs"),
])
def test_a_winograd_attribute_the_path_cannot_take_is_refused(attrs, message):
    k = attrs.get("kernel_shape", [3, 3])
    group = attrs.get("group", 1)
    w4 = np.ones((4, 4 // group, *k), np.float32)
    model, _ = _model(w4, None, [1, 1, 1, 1], winograd=None)
    node = model.graph.node[0]
    for key in ("kernel_shape", "strides", "dilations", "pads", "group"):
        if key in attrs:
            kept = [a for a in node.attribute if a.name != key]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(helper.make_attribute(key, attrs[key]))
    node.attribute.append(helper.make_attribute("winograd", attrs["winograd"]))
    with pytest.raises(Exception, match=message):
        session(model)


def test_a_1d_convolution_may_not_ask_for_winograd():
    model, _ = _model(np.ones((2, 3, 3, 3), np.float32), None, [1, 1, 1, 1], winograd=None)
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name not in ("kernel_shape", "strides", "pads", "dilations")]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("kernel_shape", [3]), helper.make_attribute("pads", [1, 1]),
                                  helper.make_attribute("winograd", 1)])
    # a 1-D CsrConv of 3 x 9 columns: the weight rows hold C_in * k = 9 entries
    w = np.ones((2, 9), np.float32)
    v, c, p = compact_csr(w)
    for t, a in zip(model.graph.initializer, (v, c, p)):
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    model.opset_import[1].version = 4
    with pytest.raises(Exception, match="winograd=1 needs"):
        session(model)


def test_below_a_sixteenth_of_the_dense_weight_the_direct_path_runs(wino_isa, lib):
    """The transformed weights are the dense layer's size whatever the nonzeros: a node storing
    less than 1/16 of its dense weight keeps none and computes exactly as winograd=0 does."""
    rng = np.random.default_rng(5)
    w4 = np.zeros((40, 30, 3, 3), np.float32)
    flat = w4.reshape(-1)
    few = rng.choice(flat.size, flat.size // 16 - 1, replace=False)
    flat[few] = rng.standard_normal(few.size)
    x = rng.standard_normal((1, 30, 12, 12)).astype(np.float32)
    runs = {}
    for wino in (1, None):
        model, _ = _model(w4, None, [1, 1, 1, 1], winograd=wino)
        (runs[wino],) = session(model).run(None, {"X": x})
    assert np.array_equal(runs[1], runs[None])
    flat[rng.choice(np.setdiff1d(np.arange(flat.size), few), 2, replace=False)] = 1.0  # now 1/16 or more
    for wino in (1, None):
        model, _ = _model(w4, None, [1, 1, 1, 1], winograd=wino)
        (runs[wino],) = session(model).run(None, {"X": x})
    assert not np.array_equal(runs[1], runs[None])
    assert _relative_error(runs[1], conv_reference(x, w4, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)) <= WINOGRAD_BOUND


def test_a_task_scratch_over_8_mib_is_allocated_per_task(wino_isa, lib, threads):
    """36 (C_in + C_out) 48 floats over 8 MiB: the scratch is allocated per task, not kept."""
    rng, w4 = _weights("wide", 1232, 4, 0.5)
    model, _ = _model(w4, None, [1, 1, 1, 1])
    x = rng.standard_normal((1, 4, 13, 29)).astype(np.float32)
    assert 36 * (4 + 1232) * 48 * 4 > 8 << 20
    (y,) = session(model, threads).run(None, {"X": x})
    assert _relative_error(y, conv_reference(x, w4, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)) <= WINOGRAD_BOUND


def _tiles_holding(y_shape, pads, positions):
    """Outputs of the 4x4 tiles whose 6x6 windows of the padded input hold any of `positions`
    (image, channel, row, column of X)."""
    mask = np.zeros(y_shape, bool)
    for img, _, i, j in positions:
        pi, pj = i + pads[0], j + pads[1]
        for ty in range(max(0, (pi - 5 + 3) // 4), pi // 4 + 1):
            for tx in range(max(0, (pj - 5 + 3) // 4), pj // 4 + 1):
                mask[img, :, 4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4] = True
    return mask


def test_a_nan_in_x_stays_in_the_tiles_that_read_it(wino_isa, threads):
    """Lanes are tiles in every step (padding lanes masked or overwritten), so a NaN or inf
    reaches only the outputs of the tiles whose windows hold it: every other output is finite
    and the clean run's, bit for bit."""
    rng, w4 = _weights("nan-tiles", 5, 6, 0.6)
    pads = [1, 2, 0, 1]
    model, _ = _model(w4, rng.standard_normal(5).astype(np.float32), pads)
    sess = session(model, threads)
    x = rng.standard_normal((2, 6, 17, 23)).astype(np.float32)
    (clean,) = sess.run(None, {"X": x})
    positions = [(0, 2, 9, 0), (1, 5, 16, 22), (1, 0, 4, 11)]
    for p, v in zip(positions, (np.nan, np.inf, np.nan)):
        x[p] = v
    (y,) = sess.run(None, {"X": x})
    inside = _tiles_holding(y.shape, pads, positions)
    assert inside.any() and not inside.all()
    assert np.all(np.isfinite(y[~inside]))
    assert np.array_equal(y[~inside], clean[~inside])
    assert not np.all(np.isfinite(y[inside]))
