"""CsrGemm's batch-1 pass in lanes of rows (runtime_ops/src/sell.h; ONNXPRUNE_GEMV_SELL).

On AVX-512 a constant CSR at batch 1 may be copied into slices of 16 rows by 64 columns and
run a step of 16 lanes at a time. These tests force that layout (ONNXPRUNE_GEMV_SELL=1) and
compare it with a float64 reference over the stored nonzeros, on every ISA the CPU has (the
other ISAs keep the CSR pass, which must give the same sums), and check the rule that picks it
against an independent count of the layout's lanes.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime_ops import csr_from_dense, delta8_from_csr
from onnxprune.runtime_ops.csr import columns_of
from tests.test_runtime_ops import (DOMAIN, GEMM_CASES, OPSETS, _csr_reference, _gemv_only_model, close,  # noqa: F401
                                    lib, session, sparse_weight, test_csr_gemm_matches_dense_gemm, use_isa)

BATCH1_CASES = [c for c in GEMM_CASES if c[4] == 1]


@pytest.fixture(params=["avx512", "avx2", "scalar"])
def isa(request, monkeypatch, lib) -> str:  # noqa: F811
    return use_isa(request.param, monkeypatch, lib)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request) -> int:
    return request.param


@pytest.fixture
def lanes(monkeypatch) -> None:
    monkeypatch.setenv("ONNXPRUNE_GEMV_SELL", "1")


def test_batch1_cases_cover_the_layouts_edges():
    # partial groups, empty rows, int32 columns, wide X, transposed X, bias and alpha
    names = {c[0] for c in BATCH1_CASES}
    assert {"batch1", "fully_zero_layer_batch1", "parallel_gemv", "blocked_gemv_2_blocks",
            "blocked_gemv_4_blocks_int32", "blocked_gemv_transA"} <= names


@pytest.mark.parametrize("case", BATCH1_CASES, ids=[c[0] for c in BATCH1_CASES])
def test_batch1_in_lanes_matches_dense_gemm(case, isa, threads, lanes):
    test_csr_gemm_matches_dense_gemm(case, isa, threads)


def _encodings(w: np.ndarray):
    """The CSR of w in each stored form: int16 and int32 columns, uint8 deltas with float16
    values (and the reference weights those values round to)."""
    v, c, p = csr_from_dense(w, np.int16 if w.shape[1] <= 32767 else None)
    yield "int16_or_int32", v, c, p
    v, c, p = csr_from_dense(w, np.int32)
    yield "int32", v, c, p
    v, c, p = csr_from_dense(w.astype(np.float16).astype(np.float32))
    yield "delta8_fp16", *delta8_from_csr(v.astype(np.float16), c, p)


SHAPES = [
    # rows, columns, density: groups of 16 rows and blocks of 64 columns, whole and partial
    (1, 1, 1.0), (15, 63, 0.3), (16, 64, 0.5), (17, 65, 0.2), (37, 200, 0.05), (33, 130, 1.0),
    (40, 9216, 0.09), (64, 128, 0.0), (100, 700, 0.6),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{k}@{d}" for r, k, d in SHAPES])
def test_lanes_match_the_stored_sums(shape, isa, threads, lanes):
    rows, k, density = shape
    rng = np.random.default_rng(rows * 1000 + k)
    w = sparse_weight(rng, rows, k, density, empty_rows=(rows // 2,) if rows > 2 else ())
    x = rng.standard_normal((1, k)).astype(np.float32)
    for name, v, c, p in _encodings(w):
        (y,) = session(_gemv_only_model(k, v, c, p), threads).run(None, {"X": x})
        close(y[0], _csr_reference(v, columns_of(c, p), p, x[0]), k)


def test_lanes_keep_non_finite_x_out_of_rows_without_its_column(isa, lanes):
    # Rows 0-19 share lanes; only row 3 stores column 64, where x is inf, and only row 5
    # column 0, where x is NaN. Those are the first columns of their blocks, the ones a
    # padding lane's index byte points at: the padding lanes must contribute nothing.
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, 20, 130, 0.4)
    w[:, 64] = 0.0
    w[:, 0] = 0.0
    w[3, 64] = 1.0
    w[5, 0] = 2.0
    v, c, p = csr_from_dense(w)
    x = rng.standard_normal((1, 130)).astype(np.float32)
    x[0, 64], x[0, 0] = np.inf, np.nan
    (y,) = session(_gemv_only_model(130, v, c, p)).run(None, {"X": x})
    assert np.isposinf(y[0, 3]) and np.isnan(y[0, 5])
    others = np.delete(np.arange(20), [3, 5])
    assert np.all(np.isfinite(y[0, others]))
    close(y[0, others], _csr_reference(v, c, p, x[0])[others], 130)


def test_lanes_read_x_only_below_its_width(isa, lanes):
    # The CSR reaches column 69 (its last block holds 6 columns): an X of exactly 70 columns is
    # read no further, and a wider one (the width is symbolic) with NaN past column 69 leaves
    # every output finite.
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, 18, 70, 0.5)
    w[0, 69] = 1.0
    v, c, p = csr_from_dense(w)
    model = _gemv_only_model(70, v, c, p)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "k"
    s = session(model)
    for k in (70, 200, 70):
        x = rng.standard_normal((1, k)).astype(np.float32)
        x[0, 70:] = np.nan
        (y,) = s.run(None, {"X": x})
        assert np.all(np.isfinite(y))
        close(y[0], w.astype(np.float64) @ x[0, :70].astype(np.float64), 70)


@pytest.mark.parametrize("repeats", [40, 300])
def test_repeated_columns_add_up(repeats, isa, lanes):
    # A row may store one column many times (the entries add up). 40 repeats take 40 steps of
    # that row's slice; 300 exceed what a slice records and the CSR pass runs instead.
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, 17, 90, 0.3)
    v, c, p = csr_from_dense(w)
    extra = rng.standard_normal(repeats).astype(np.float32)
    row = 9
    v = np.concatenate([v[:p[row]], extra, v[p[row]:]])
    c = np.concatenate([c[:p[row]], np.full(repeats, 33, c.dtype), c[p[row]:]])
    p = p.copy()
    p[row + 1:] += repeats
    x = rng.standard_normal((1, 90)).astype(np.float32)
    (y,) = session(_gemv_only_model(90, v, c, p)).run(None, {"X": x})
    close(y[0], _csr_reference(v, c, p, x[0]), 90 + repeats)


def test_gemv_sell_setting_is_checked(monkeypatch):
    rng = np.random.default_rng(8)
    v, c, p = csr_from_dense(sparse_weight(rng, 4, 100, 0.5))
    monkeypatch.setenv("ONNXPRUNE_GEMV_SELL", "yes")
    with pytest.raises(Exception, match="ONNXPRUNE_GEMV_SELL=yes is not one of 0, 1"):
        session(_gemv_only_model(100, v, c, p))


# ---------------------------------------------------------------------------------------------
# The rule: lanes where their bytes are at most 1.4x the CSR's


def _gemv_lanes(so, v, c, p, extent: int, use: int) -> int:
    f = so.onnxprune_ops_gemv_lanes
    f.restype = ctypes.c_int64
    f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64,
                  ctypes.c_int64, ctypes.c_int]
    value_kind = 1 if v.dtype == np.float16 else 0
    index_kind = {np.dtype(np.int16): 0, np.dtype(np.int32): 1, np.dtype(np.uint8): 2}[c.dtype]
    return f(v.ctypes.data, value_kind, c.ctypes.data, index_kind, p.ctypes.data, len(p) - 1, extent, use)


def _expected_lanes(w: np.ndarray) -> int:
    """16 x the steps: per group of 16 rows and block of 64 columns, its fullest row's entries."""
    rows, k = w.shape
    nz = np.zeros(((rows + 15) // 16 * 16, (k + 63) // 64 * 64), bool)
    nz[:rows, :k] = w != 0
    per_row_block = nz.reshape(nz.shape[0], -1, 64).sum(axis=2)
    return int(per_row_block.reshape(-1, 16, per_row_block.shape[1]).max(axis=1).sum()) * 16


RULE_CASES = [
    # rows, columns, density, float16 values, index dtype, whether the rule takes the lanes
    (1000, 4096, 0.25, False, np.int16, True),    # 1.17x the CSR's bytes
    (1000, 4096, 0.25, True, np.int16, True),
    (1024, 4096, 0.09, True, np.int16, True),     # ~1.3x
    (1024, 4096, 0.09, False, np.int16, False),   # ~1.45x
    (512, 16384, 0.04, False, np.int16, False),   # ~1.8x
    (1000, 4096, 0.25, False, np.int32, True),
    (1000, 4096, 0.25, True, np.uint8, False),    # 3 bytes an entry stored: the lanes are 1.4x+
]


@pytest.mark.parametrize("case", RULE_CASES, ids=[f"{r}x{k}@{d}{'-fp16' if h else ''}-{np.dtype(i).name}"
                                                  for r, k, d, h, i, _ in RULE_CASES])
def test_rule_takes_the_lanes_by_their_bytes(case, lib):  # noqa: F811
    rows, k, density, half, index, taken = case
    rng = np.random.default_rng(9)
    w = sparse_weight(rng, rows, k, density)
    if half:
        w = w.astype(np.float16).astype(np.float32)
    if index == np.uint8:
        v, c, p = csr_from_dense(w)
        v, c, p = delta8_from_csr(v.astype(np.float16) if half else v, c, p)
    else:
        v, c, p = csr_from_dense(w, index)
        v = v.astype(np.float16) if half else v
    expected = _expected_lanes(w)
    vbytes = 2 if half else 4
    ratio = expected * (vbytes + 1) / (len(v) * (vbytes + c.itemsize))
    assert (ratio <= 1.4) == taken, ratio
    assert _gemv_lanes(lib, v, c, p, k, 1) == (expected if taken else 0)
    assert _gemv_lanes(lib, v, c, p, k, 2) == expected  # =1: wherever it can
    assert _gemv_lanes(lib, v, c, p, k, 0) == 0


def test_rule_refuses_layouts_far_larger_than_the_csr(lib):  # noqa: F811
    # One entry per row, each in a block of its own: 16 lanes for each entry, more than 4 per
    # entry even when asked for; and more (group, block) pairs than entries: nothing is sized
    # by them.
    w = np.zeros((400, 25600), np.float32)
    w[np.arange(400), np.arange(400) * 64] = 1.0
    v, c, p = csr_from_dense(w)
    assert _expected_lanes(w) == 16 * 400
    assert _gemv_lanes(lib, v, c, p, 25600, 2) == 0
    w[:, :64] = 1.0  # 64 more entries a row: 80 steps a group for its 1040 entries
    v, c, p = csr_from_dense(w)
    assert _gemv_lanes(lib, v, c, p, 25600, 2) == _expected_lanes(w) == 16 * (25 * 80 - 1)
    w = np.zeros((40000, 9000), np.float32)
    w[np.arange(0, 40000, 5), np.arange(8000)] = 1.0
    v, c, p = csr_from_dense(w)
    assert _gemv_lanes(lib, v, c, p, 9000, 2) == 0


def test_other_isas_ignore_the_setting(monkeypatch, lib):  # noqa: F811
    # AVX2 and scalar sessions keep the CSR pass whatever the setting: bit-identical outputs
    # with and without it.
    rng = np.random.default_rng(10)
    w = sparse_weight(rng, 40, 300, 0.4)
    v, c, p = csr_from_dense(w)
    x = rng.standard_normal((1, 300)).astype(np.float32)
    for name in ("avx2", "scalar"):
        use_isa(name, monkeypatch, lib)
        outs = []
        for setting in ("0", "1"):
            monkeypatch.setenv("ONNXPRUNE_GEMV_SELL", setting)
            outs.append(session(_gemv_only_model(300, v, c, p)).run(None, {"X": x})[0])
        np.testing.assert_array_equal(outs[0], outs[1])


def test_lanes_serve_a_matmul_of_one_row(isa, lanes):
    # MatMul style (matmul=1) over X of shape (1, 1, K): one row of X, the same batch-1 pass.
    rng = np.random.default_rng(11)
    w = sparse_weight(rng, 50, 160, 0.3)
    v, c, p = csr_from_dense(w)
    inits = [numpy_helper.from_array(a, n) for a, n in zip((v, c, p), ("values", "col_idx", "row_ptr"))]
    node = helper.make_node("CsrGemm", ["X", "values", "col_idx", "row_ptr"], ["Y"], domain=DOMAIN, matmul=1)
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 160])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSETS)
    x = rng.standard_normal((1, 1, 160)).astype(np.float32)
    (y,) = session(model).run(None, {"X": x})
    assert y.shape == (1, 1, 50)
    close(y[0, 0], w.astype(np.float64) @ x[0, 0].astype(np.float64), 160)


def test_rule_probe_refuses_what_a_validated_csr_could_not_hold(lib):  # noqa: F811
    # The test export checks its arrays as validation would: a negative column, one at or past
    # the extent, a row_ptr that falls or starts past 0 give -1 (not a write outside the plan's
    # counters); the same arrays made valid give the count.
    w = np.zeros((4, 64), np.float32)
    w[:, 5] = 1.0
    v, c, p = csr_from_dense(w)
    assert _gemv_lanes(lib, v, c, p, 64, 2) == _expected_lanes(w) == 16
    for bad_col in (-30000, -1, 64, 200):
        cc = c.copy()
        cc[2] = bad_col
        assert _gemv_lanes(lib, v, cc, p, 64, 2) == -1
    pp = p.copy()
    pp[2] = 0
    assert _gemv_lanes(lib, v, c, pp, 64, 2) == -1
    assert _gemv_lanes(lib, v, c, p + 1, 64, 2) == -1
    dv, dc, dp = delta8_from_csr(v, c, p)
    assert _gemv_lanes(lib, dv, dc, dp, 64, 2) == 16
    assert _gemv_lanes(lib, dv, dc, dp, 5, 2) == -1  # deltas decoded: column 5 is past an extent of 5

