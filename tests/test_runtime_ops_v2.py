"""Op contract v2 (runtime_ops/README.md "v2"): uint8 column deltas with filler entries and
float16 values, against a float64 numpy reference, on every kernel path.

The reference is computed from the stored arrays (float16 values widened exactly), so the
only difference left is float32 summation: the tolerance is relative to sum |w| |x|.
v1 arrays (float32 values, int16/int32 columns) run through the same properties.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from onnxprune.runtime_ops.csr import columns_of, compact_csr, csr_from_dense, delta8_from_csr, dense_from_csr
from tests.test_runtime_ops_hostile import PROPERTY, conv_reference_csr, cpu_isas, op_model, run_in_process

ISAS = ["avx512", "avx2", "scalar"]
INDEXES = ["int16", "int32", "delta8"]
VALUES = [np.float32, np.float16]
# Densities 0-100%, with the sparse end (long gaps, so filler entries) well covered.
DENSITIES = [0.0, 0.002, 0.01, 0.05, 0.09, 0.3, 0.7, 1.0]


def sparse_matrix(rng, rows: int, cols: int, density: float) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= density] = 0.0
    return w


def encode(w: np.ndarray, index: str, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of `w` with the given index encoding and value type."""
    v, c, p = csr_from_dense(w, np.int32 if index == "int32" else None)
    if index == "int16" and c.dtype != np.int16:
        c = c.astype(np.int32)  # too wide for int16: the int32 path then
    v = v.astype(values)
    if index == "delta8":
        v, c, p = delta8_from_csr(v, c, p)
    return v, c, p


def reference_rows(csr, k: int) -> np.ndarray:
    """The stored matrix, float64 (N, k), fillers and float16 values decoded exactly."""
    v, c, p = csr
    w = np.zeros((len(p) - 1, k))
    np.add.at(w, (np.repeat(np.arange(len(p) - 1), np.diff(p)), columns_of(c, p)), v.astype(np.float64))
    return w


def assert_close(y, ref, scale):
    """|y - ref| within float32 summation error of a sum whose terms total `scale`."""
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= 1e-5 * (scale + 1.0)), float(np.max(err / (scale + 1.0)))


# --- encodings (pure numpy) ----------------------------------------------------------------

@pytest.mark.parametrize("density", DENSITIES)
def test_delta8_round_trips_and_bridges_long_gaps(density):
    rng = np.random.default_rng(3)
    w = sparse_matrix(rng, 7, 2000, density)
    w[0] = 0.0
    w[0, [0, 255, 256, 1000, 1999]] = [1, 2, 3, 4, 5]  # gaps 0, 255, 1, 744, 999
    v, d, p = delta8_from_csr(*csr_from_dense(w))
    assert d.dtype == np.uint8 and p.dtype == np.int32
    np.testing.assert_array_equal(dense_from_csr(v, d, p, 2000), w)
    # Row 0: 744 = 255 + 255 + 234 (two fillers), 999 = 3 x 255 + 234 (three fillers).
    np.testing.assert_array_equal(d[p[0]:p[1]], [0, 255, 1, 255, 255, 234, 255, 255, 255, 234])
    np.testing.assert_array_equal(v[p[0]:p[1]], [1, 2, 3, 0, 0, 4, 0, 0, 0, 5])


def test_compact_csr_picks_the_smaller_index_encoding():
    rng = np.random.default_rng(4)
    dense9 = sparse_matrix(rng, 64, 4096, 0.09)  # gaps ~11: 1 byte per entry wins
    assert compact_csr(dense9)[1].dtype == np.uint8
    sparse = np.zeros((64, 30000), np.float32)
    sparse[:, ::3000] = 1.0  # gaps of 3000: 11 fillers per entry, int16 is smaller
    assert compact_csr(sparse)[1].dtype == np.int16
    v, c, p = compact_csr(dense9, np.float16)
    assert v.dtype == np.float16
    np.testing.assert_array_equal(dense_from_csr(v, c, p, 4096), dense9.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        compact_csr(np.full((1, 3), 1e5, np.float32), np.float16)


def test_half_to_float_conversion_is_exact_on_every_path():
    # Every finite float16 bit pattern, subnormals included, as one row of weights against a
    # one-hot x: each output is exactly one stored value.
    bits = np.arange(0, 0x7C00, dtype=np.uint16)
    halves = np.concatenate([bits, bits | 0x8000]).view(np.float16)
    halves = halves[halves != 0]
    n = len(halves)
    v, c, p = halves, np.zeros(n, np.int16), np.arange(n + 1, dtype=np.int32)
    model, feeds = op_model("CsrGemm", [1, 1], (v, c, p))
    feeds["X"] = np.ones((1, 1), np.float32)
    for isa in cpu_isas():
        y = run_in_process(model, feeds, isa, 1)
        np.testing.assert_array_equal(y[0], halves.astype(np.float32))


# --- CsrGemm --------------------------------------------------------------------------------

@st.composite
def gemm_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # k above 7680 takes the batch-1 column-blocked path (a constant CSR copied in block order,
    # CSR inputs read in place; 12000 makes three blocks); gaps over 255 take fillers.
    k = draw(st.sampled_from([1, 5, 33, 300, 1000, 8000, 12000]))
    n = draw(st.sampled_from([1, 3, 17, 40]))
    w = sparse_matrix(rng, n, k, draw(st.sampled_from(DENSITIES)))
    csr = encode(w, draw(st.sampled_from(INDEXES)), draw(st.sampled_from(VALUES)))
    m = draw(st.sampled_from([1, 1, 2, 17, 70]))
    style = draw(st.sampled_from(["gemm", "gemm_transA", "matmul"]))
    return rng, csr, k, m, style


@PROPERTY
@given(case=gemm_cases(), isa=st.sampled_from(ISAS), threads=st.sampled_from([1, 2]),
       csr_as_inputs=st.booleans())
def test_csr_gemm_v2_matches_the_float64_reference(case, isa, threads, csr_as_inputs):
    assume(isa in cpu_isas())
    rng, csr, k, m, style = case
    w = reference_rows(csr, k)
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    attrs = {}
    if style == "matmul":
        x = rng.standard_normal((2, m, k) if m > 1 else (k,)).astype(np.float32)
        attrs["matmul"] = 1
        x2 = x.reshape(-1, k)
    else:
        x2 = rng.standard_normal((m, k)).astype(np.float32)
        x = x2.T.copy() if style == "gemm_transA" else x2
        attrs.update(transA=int(style == "gemm_transA"), alpha=0.5)
    model, feeds = op_model("CsrGemm", x.shape, csr, bias, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = x
    y = run_in_process(model, feeds, isa, threads)
    assert y is not None, "a valid v2 CSR was refused"
    alpha = attrs.get("alpha", 1.0)
    ref = alpha * (x2.astype(np.float64) @ w.T) + bias
    scale = np.abs(x2.astype(np.float64)) @ np.abs(w).T * alpha + np.abs(bias)
    assert_close(y.reshape(ref.shape), ref, scale)


# --- CsrConv --------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    group = draw(st.sampled_from([1, 1, 2, 4]))
    c_in = group * draw(st.sampled_from([1, 2, 3]))
    c_out = group * draw(st.sampled_from([1, 2, 5]))
    ks = [draw(st.sampled_from([1, 2, 3, 5])) for _ in range(2)]
    attrs = {"kernel_shape": ks, "strides": [draw(st.sampled_from([1, 2, 3])) for _ in range(2)],
             "dilations": [draw(st.sampled_from([1, 2])) for _ in range(2)],
             "pads": [draw(st.sampled_from([0, 1, 2])) for _ in range(4)], "group": group}
    h, wd = (max(draw(st.integers(1, 19)), (ks[a] - 1) * attrs["dilations"][a] + 1) for a in (0, 1))
    x = rng.standard_normal((draw(st.sampled_from([1, 2])), c_in, h, wd)).astype(np.float32)
    w = sparse_matrix(rng, c_out, (c_in // group) * ks[0] * ks[1], draw(st.sampled_from(DENSITIES)))
    csr = encode(w, draw(st.sampled_from(INDEXES)), draw(st.sampled_from(VALUES)))
    return rng, x, csr, attrs


@PROPERTY
@given(case=conv_cases(), isa=st.sampled_from([*ISAS, "avx512-narrow"]), threads=st.sampled_from([1, 2]),
       csr_as_inputs=st.booleans())
def test_csr_conv_v2_matches_the_float64_reference(case, isa, threads, csr_as_inputs):
    assume(isa.removesuffix("-narrow") in cpu_isas())
    rng, x, csr, attrs = case
    v, c, p = csr
    absolute = (v, columns_of(c, p), p)  # the reference reads plain columns
    bias = rng.standard_normal(len(p) - 1).astype(np.float32)
    model, feeds = op_model("CsrConv", x.shape, csr, bias, csr_as_inputs=csr_as_inputs, **attrs)
    feeds["X"] = x
    y = run_in_process(model, feeds, isa, threads)
    assert y is not None, "a valid v2 CSR was refused"
    ref = conv_reference_csr(x, absolute, bias, attrs)
    scale = conv_reference_csr(np.abs(x), (np.abs(v.astype(np.float64)), absolute[1], p), np.abs(bias), attrs)
    assert_close(y, ref, scale)


# --- hostile uint8 deltas -------------------------------------------------------------------

def delta_gemm(k: int, deltas, row_ptr, csr_as_inputs: bool):
    d = np.asarray(deltas, np.uint8)
    v = np.ones(len(d), np.float16)
    model, feeds = op_model("CsrGemm", [1, k], (v, d, np.asarray(row_ptr, np.int32)),
                            csr_as_inputs=csr_as_inputs)
    feeds["X"] = np.ones((1, k), np.float32)
    return model, feeds


@pytest.mark.parametrize("csr_as_inputs", [False, True])
@pytest.mark.parametrize("isa", ISAS)
def test_deltas_running_past_k_are_refused(isa, csr_as_inputs):
    if isa not in cpu_isas():
        pytest.skip(f"no {isa} here")
    # Row 1's deltas sum to 40 + 255 + 255 = 550: column 550 of an x with 550 entries.
    ok = run_in_process(*delta_gemm(551, [3, 4, 40, 255, 255], [0, 2, 5], csr_as_inputs), isa, 1)
    np.testing.assert_array_equal(ok, [[2.0, 3.0]])
    assert run_in_process(*delta_gemm(550, [3, 4, 40, 255, 255], [0, 2, 5], csr_as_inputs), isa, 1) is None
    # Many short rows, one long: every row's running sum is checked, not only the first.
    deltas = [1] * 64 + [200] * 40
    rows = list(range(0, 65)) + [104]
    assert run_in_process(*delta_gemm(7999, deltas, rows, csr_as_inputs), isa, 1) is None
    assert run_in_process(*delta_gemm(8001, deltas, rows, csr_as_inputs), isa, 1) is not None


@pytest.mark.parametrize("row_ptr", [[0, 3, 2], [1, 2, 5], [0, 2, 6], [0, 2, 4], [0, -1, 5], [0, 2, 2**31 - 1]])
def test_inconsistent_delta_row_ptr_is_refused(row_ptr):
    for csr_as_inputs in (False, True):
        model, feeds = delta_gemm(600, [3, 4, 40, 255, 255], row_ptr, csr_as_inputs)
        assert run_in_process(model, feeds, cpu_isas()[0], 1) is None


def test_deltas_beyond_int32_columns_are_refused():
    # 2^31 / 255 deltas of 255 in one row: the decoded column passes int32 whatever K is.
    n = (2**31) // 255 + 1
    v, d, p = np.zeros(n, np.float16), np.full(n, 255, np.uint8), np.array([0, n], np.int32)
    model, feeds = op_model("CsrGemm", [1, 4], (v, d, p))
    feeds["X"] = np.ones((1, 4), np.float32)
    assert run_in_process(model, feeds, cpu_isas()[0], 1) is None


def test_other_value_and_index_types_are_refused():
    w = np.eye(4, dtype=np.float32)
    v, c, p = csr_from_dense(w)
    for bad in ((v.astype(np.float64), c, p), (v, c.astype(np.int8), p), (v, c.astype(np.uint16), p)):
        model, feeds = op_model("CsrGemm", [1, 4], bad)
        feeds["X"] = np.ones((1, 4), np.float32)
        assert run_in_process(model, feeds, cpu_isas()[0], 1) is None


# --- v1 files -------------------------------------------------------------------------------

def test_v1_and_v2_encodings_of_one_matrix_give_the_same_output():
    """A v1 model (float32 values, int16 or int32 columns) loads as before, and the v2
    encodings of the same weights compute the same product."""
    rng = np.random.default_rng(11)
    w = sparse_matrix(rng, 50, 9000, 0.01)
    x = rng.standard_normal((3, 9000)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    for m in (1, 3):
        outs = []
        for index in INDEXES:
            model, feeds = op_model("CsrGemm", [m, 9000], encode(w, index, np.float32))
            feeds["X"] = x[:m]
            outs.append(run_in_process(model, feeds, cpu_isas()[0], 1))
        for y in outs:
            np.testing.assert_allclose(y, ref[:m], rtol=1e-4, atol=1e-4)
        assert outs[2].dtype == np.float32
