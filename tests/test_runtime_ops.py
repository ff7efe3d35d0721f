"""Native sparse ops (ai.onnxprune CsrGemm / CsrConv) against stock ONNX Runtime and numpy.

Every numeric case builds one model holding both the dense op (Gemm / MatMul / Conv over the
masked weight) and our CSR op fed the same inputs, runs it once, and compares the two outputs
with each other and with a float64 numpy reference. Each case runs on every kernel path the
CPU has (ONNXPRUNE_KERNEL_ISA, read when a kernel is created) with 1 and 2 intra-op threads.
"""

from __future__ import annotations

import ctypes
import re
import glob
import os
import zlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime_ops import csr_from_dense, dense_from_csr

DOMAIN = runtime_ops.DOMAIN
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
ISAS = ["avx512", "avx2", "scalar"]


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    so = ctypes.CDLL(runtime_ops.library_path())
    so.onnxprune_ops_domain.restype = ctypes.c_char_p
    so.onnxprune_ops_best_isa.restype = ctypes.c_char_p
    so.onnxprune_ops_api_version.restype = ctypes.c_uint32
    so.onnxprune_ops_cpu_has.argtypes = [ctypes.c_char_p]
    so.onnxprune_ops_abi_probe.argtypes = [ctypes.c_void_p]
    so.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    so.RegisterCustomOps.restype = ctypes.c_void_p
    return so


def conv_layout(so: ctypes.CDLL, isa_name: str, attrs, x_shape, c_out: int, nnz: int) -> int:
    """``onnxprune_ops_conv_layout``: the input layout CsrConv plans (0 X in place, 1 phase
    copies, 2 shifted copies, 3 depthwise band by band, 4 depthwise reading X directly, 5
    depthwise channel blocks, 6 the depthwise grid, 7 input copies band by band, 8 column
    strips, -1 refused); ``attrs`` kH, kW, sH, sW, dH, dW, pads t/l/b/r, group."""
    f = so.onnxprune_ops_conv_layout
    f.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
                  ctypes.c_int64, ctypes.c_int64]
    return f(isa_name.encode(), (ctypes.c_int64 * 11)(*attrs), (ctypes.c_int64 * 4)(*x_shape), c_out, nnz)


def isa_settings(isa: str) -> tuple[str, dict[str, str]]:
    """An ISA parameter of these tests as the instruction set's name and the settings a session
    (or the layout probe) reads for it: ONNXPRUNE_KERNEL_ISA, and ONNXPRUNE_CONV_NARROW, on for
    "avx512-narrow" (AVX-512 sessions that run a convolution on the AVX2 tiles where those
    compute fewer positions) and off otherwise, so that "avx512" takes its own tiles on every
    core."""
    name = isa.removesuffix("-narrow")
    return name, {"ONNXPRUNE_KERNEL_ISA": name, "ONNXPRUNE_CONV_NARROW": "1" if name != isa else "0"}


def use_isa(isa: str, monkeypatch, lib) -> str:
    """Skip where the CPU lacks `isa`'s instruction set, else set its settings (isa_settings)."""
    name, settings = isa_settings(isa)
    if lib.onnxprune_ops_cpu_has(name.encode()) != 1:
        pytest.skip(f"CPU lacks {name}")
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return name


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch, lib) -> str:
    # the narrow tiles' sessions ("avx512-narrow") run in test_runtime_ops_conv_tiles
    return use_isa(request.param, monkeypatch, lib)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request) -> int:
    return request.param


def session(model, threads: int = 1) -> ort.InferenceSession:
    return runtime_ops.InferenceSession(model.SerializeToString(), runtime_ops.session_options(threads))


def sparse_weight(rng, n: int, k: int, density: float, empty_rows=()) -> np.ndarray:
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random((n, k)) >= density] = 0.0
    for r in empty_rows:
        w[r] = 0.0
    return w


def csr_inits(w2d: np.ndarray, index_dtype=None, prefix: str = "") -> tuple[list, list[str]]:
    v, c, p = csr_from_dense(w2d, index_dtype)
    names = [prefix + "values", prefix + "col_idx", prefix + "row_ptr"]
    return [numpy_helper.from_array(a, n) for a, n in zip((v, c, p), names)], names


def close(actual: np.ndarray, expected: np.ndarray, k: int) -> None:
    # fp32 sums of k products: error grows ~ sqrt(k) * eps * |terms|
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=2e-5 * max(1.0, np.sqrt(k)) * 4)


# ---------------------------------------------------------------------------------------------
# Library identity and the C API declarations


def test_domain_defined_once_in_both_languages(lib):
    assert lib.onnxprune_ops_domain().decode() == DOMAIN == "ai.onnxprune"


def test_library_targets_api_17_and_runtime_serves_it(lib):
    assert lib.onnxprune_ops_api_version() == 17
    major, minor = (int(x) for x in ort.__version__.split(".")[:2])
    assert (major, minor) >= (1, 17)


def test_library_exports_only_the_intended_symbols():
    import subprocess

    out = subprocess.run(["nm", "-D", "--defined-only", runtime_ops.library_path()], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm unavailable")
    names = {line.split()[-1] for line in out.stdout.splitlines() if " T " in line}
    assert "RegisterCustomOps" in names
    assert all(n == "RegisterCustomOps" or n.startswith("onnxprune_ops_") or n.startswith("_") for n in names), names


def _ort_api_base() -> int:
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*"))) + sorted(
        glob.glob(os.path.join(capi, "libonnxruntime*.dylib"))
    )
    if not libs:
        pytest.skip("no libonnxruntime shared library next to the Python bindings")
    ortlib = ctypes.CDLL(libs[0])
    ortlib.OrtGetApiBase.restype = ctypes.c_void_p
    return ortlib.OrtGetApiBase()


def test_abi_probe_against_installed_runtime(lib):
    # Calls CreateStatus/GetErrorCode/GetErrorMessage/ReleaseStatus and
    # CreateCustomOpDomain/CustomOpDomain_Add/ReleaseCustomOpDomain through our declared slots.
    assert lib.onnxprune_ops_abi_probe(_ort_api_base()) == 0


def test_refuses_runtime_older_than_api_17(lib):
    """A runtime that cannot serve API 17 gets a clear error status, built from the v1 table."""
    seen = {}
    create_status_t = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)
    get_api_t = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)
    version_t = ctypes.CFUNCTYPE(ctypes.c_void_p)
    version_text = ctypes.create_string_buffer(b"1.16.3")

    @create_status_t
    def create_status(code, msg):
        seen["code"], seen["msg"] = code, msg.decode()
        return 0xBAD

    v1_table = (ctypes.c_void_p * 3)(ctypes.cast(create_status, ctypes.c_void_p).value, None, None)

    @get_api_t
    def get_api(version):
        seen.setdefault("asked", []).append(version)
        return ctypes.addressof(v1_table) if version == 1 else None

    @version_t
    def version_string():
        return ctypes.addressof(version_text)

    base = (ctypes.c_void_p * 2)(ctypes.cast(get_api, ctypes.c_void_p).value,
                                 ctypes.cast(version_string, ctypes.c_void_p).value)
    status = lib.RegisterCustomOps(None, ctypes.addressof(base))
    assert status == 0xBAD
    assert seen["asked"][0] == 17
    assert seen["code"] == 1  # ORT_FAIL
    assert "API version 17" in seen["msg"] and "1.16.3" in seen["msg"]


def test_forcing_an_unknown_isa_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_KERNEL_ISA", "sse9")
    rng = np.random.default_rng(0)
    model, _ = gemm_model(sparse_weight(rng, 4, 6, 0.5), m=2)
    with pytest.raises(Exception, match="ONNXPRUNE_KERNEL_ISA=sse9"):
        session(model)


# ---------------------------------------------------------------------------------------------
# CsrGemm


def gemm_model(w, *, m, trans_a=0, alpha=1.0, beta=1.0, bias_shape=None, index_dtype=None, seed=0,
               csr_as_inputs=False):
    """Model with Y_dense = Gemm(X, W, C) and Y_sparse = CsrGemm(X, csr(W), C); returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    n, k = w.shape
    x = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    inits, csr_names = csr_inits(w, index_dtype)
    inputs = ["X", *csr_names]
    dense_inputs = ["X", "W"]
    feeds = {"X": x}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))]
    if csr_as_inputs:
        for t in inits:
            arr = numpy_helper.to_array(t)
            feeds[t.name] = arr
            graph_inputs.append(helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                              list(arr.shape)))
        inits = []
    inits.append(numpy_helper.from_array(w, "W"))
    if bias_shape is not None:
        c = rng.standard_normal(bias_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(c, "C"))
        inputs.append("C")
        dense_inputs.append("C")
    attrs = dict(alpha=alpha, beta=beta, transA=trans_a)
    nodes = [
        helper.make_node("Gemm", dense_inputs, ["Y_dense"], transB=1, **attrs),
        helper.make_node("CsrGemm", inputs, ["Y_sparse"], domain=DOMAIN, **attrs),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y_dense", "Y_sparse")]
    graph = helper.make_graph(nodes, "gemm", graph_inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS), feeds


def gemm_reference(w, x, trans_a, alpha, beta, c):
    a = x.astype(np.float64).T if trans_a else x.astype(np.float64)
    y = alpha * a @ w.astype(np.float64).T
    if c is not None:
        y = y + beta * c.astype(np.float64)
    return y


GEMM_CASES = [
    # (name, n, k, density, m, trans_a, alpha, beta, bias_shape, index_dtype, empty_rows)
    ("batch1", 37, 50, 0.2, 1, 0, 1.0, 1.0, (37,), None, ()),
    ("batch2_int32", 37, 50, 0.2, 2, 0, 1.0, 1.0, None, np.int32, ()),
    ("odd_batch3_empty_rows", 29, 70, 0.1, 3, 0, 1.0, 1.0, (1, 29), None, (0, 5, 28)),
    ("batch17_alpha_beta", 40, 33, 0.3, 17, 0, 0.5, -2.0, (40,), None, ()),
    ("batch64_bias_matrix", 48, 96, 0.15, 64, 0, 1.0, 0.7, (64, 48), None, ()),
    ("batch100_bias_column", 21, 40, 0.25, 100, 0, 1.0, 1.0, (100, 1), np.int16, ()),
    ("scalar_bias", 9, 13, 0.5, 5, 0, 1.0, 3.0, (), None, ()),
    ("transA_batch1", 25, 31, 0.3, 1, 1, 1.5, 1.0, (25,), None, ()),
    ("transA_batch7_int32", 25, 31, 0.3, 7, 1, 1.0, 0.5, (7, 25), np.int32, ()),
    ("transA_batch70", 33, 65, 0.2, 70, 1, 1.0, 1.0, (33,), None, ()),
    # 32+ rows take the tiled path: alpha, beta and a full bias matrix there too.
    ("tiled_transA_alpha_beta", 30, 50, 0.3, 40, 1, -0.5, 2.0, (40, 30), None, (4,)),
    ("tiled_alpha_bias_column", 30, 50, 0.3, 200, 0, 1.5, 1.0, (200, 1), np.int32, ()),
    ("fully_zero_layer", 16, 24, 0.0, 4, 0, 1.0, 1.0, (16,), None, ()),
    ("fully_zero_layer_batch1", 16, 24, 0.0, 1, 0, 1.0, 1.0, None, np.int32, ()),
    ("beta0_ignores_bias", 12, 20, 0.4, 6, 0, 1.0, 0.0, (12,), None, ()),
    # Big enough to split over the thread pool (several tasks per call).
    ("parallel_gemv", 512, 2048, 0.3, 1, 0, 1.0, 1.0, (512,), None, ()),
    ("parallel_spmm", 256, 512, 0.3, 130, 0, 1.0, 1.0, (256,), None, ()),
    # The tiled path splits K into blocks of about an L1's planes (a few hundred here, fewer
    # with wider tiles): 1500 columns take several passes over each row, the last block short.
    ("tiled_k_blocks", 70, 1500, 0.1, 33, 0, 1.0, 1.0, (33, 70), None, (3,)),
    ("tiled_k_blocks_wide_tile", 40, 3001, 0.1, 224, 0, 1.0, 1.0, (40,), None, ()),
    ("wide_rows_need_int32", 8, 33000, 0.01, 3, 0, 1.0, 1.0, (8,), None, ()),
    # Batch 1 with x wider than L1 takes the column-blocked path (K > 7680): 2 and 4 blocks,
    # row groups of 16 with a partial last group, empty rows, int16 and int32 indices.
    ("blocked_gemv_2_blocks", 37, 9216, 0.05, 1, 0, 1.0, 1.0, (37,), None, (0, 16, 36)),
    ("blocked_gemv_4_blocks_int32", 21, 20000, 0.02, 1, 0, 1.0, 1.0, None, np.int32, (5,)),
    ("blocked_gemv_wide_int32", 8, 33000, 0.03, 1, 0, 1.0, 1.0, (8,), None, ()),
    ("blocked_gemv_parallel", 600, 9000, 0.1, 1, 0, 2.0, 1.0, (600,), None, ()),
    ("blocked_gemv_transA", 19, 8000, 0.3, 1, 1, 1.0, 1.0, (19,), None, ()),
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=[c[0] for c in GEMM_CASES])
def test_csr_gemm_matches_dense_gemm(case, isa, threads):
    name, n, k, density, m, trans_a, alpha, beta, bias_shape, index_dtype, empty_rows = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across PYTHONHASHSEED
    w = sparse_weight(rng, n, k, density, empty_rows)
    model, feeds = gemm_model(w, m=m, trans_a=trans_a, alpha=alpha, beta=beta, bias_shape=bias_shape,
                              index_dtype=index_dtype)
    if name == "wide_rows_need_int32":
        assert csr_from_dense(w)[1].dtype == np.int32
    y_dense, y_sparse = session(model, threads).run(None, feeds)
    c = None
    for t in model.graph.initializer:
        if t.name == "C":
            c = numpy_helper.to_array(t)
    ref = gemm_reference(w, feeds["X"], trans_a, alpha, beta, c if beta != 0 else None)
    assert y_sparse.shape == y_dense.shape == (m, n)
    close(y_sparse, ref, k)
    close(y_sparse, y_dense, k)


def _gemv_only_model(k: int, v: np.ndarray, c: np.ndarray, p: np.ndarray):
    inits = [numpy_helper.from_array(a, n) for a, n in zip((v, c, p), ("values", "col_idx", "row_ptr"))]
    node = helper.make_node("CsrGemm", ["X", "values", "col_idx", "row_ptr"], ["Y"], domain=DOMAIN)
    graph = helper.make_graph([node], "gemv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _csr_reference(v, c, p, x):
    """Sum over the stored nonzeros only (a dense product would turn 0 * inf into NaN)."""
    rows = np.repeat(np.arange(len(p) - 1), np.diff(p))
    y = np.zeros(len(p) - 1, np.float64)
    np.add.at(y, rows, v.astype(np.float64) * x.astype(np.float64)[c.astype(np.int64)])
    return y


BLOCKED_GEMV_CASES = [c for c in GEMM_CASES if c[0].startswith("blocked_gemv")]


@pytest.fixture(params=["1", "0"], ids=["block_order", "in_place"])
def gemv_blocks(request, monkeypatch) -> str:
    """ONNXPRUNE_GEMV_BLOCKS: a constant CSR read copied in block order (the default) or where
    it lies, by the column-blocked batch-1 pass."""
    monkeypatch.setenv("ONNXPRUNE_GEMV_BLOCKS", request.param)
    return request.param


@pytest.mark.parametrize("case", BLOCKED_GEMV_CASES, ids=[c[0] for c in BLOCKED_GEMV_CASES])
def test_blocked_gemv_in_place_matches_dense_gemm(case, isa, threads, monkeypatch):
    # The default setting is what test_csr_gemm_matches_dense_gemm runs; this is the other one.
    monkeypatch.setenv("ONNXPRUNE_GEMV_BLOCKS", "0")
    test_csr_gemm_matches_dense_gemm(case, isa, threads)


@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
def test_blocked_gemv_accepts_columns_in_any_order(index_dtype, isa, threads, gemv_blocks):
    # Ascending columns are only recommended; the column-blocked batch-1 path must still
    # consume every nonzero exactly once when a row's columns are shuffled.
    rng = np.random.default_rng(21)
    w = sparse_weight(rng, 40, 12000, 0.05, empty_rows=(7,))
    v, c, p = csr_from_dense(w, index_dtype)
    for r in range(len(p) - 1):
        order = rng.permutation(p[r + 1] - p[r]) + p[r]
        v[p[r]:p[r + 1]], c[p[r]:p[r + 1]] = v[order], c[order]
    x = rng.standard_normal((1, 12000)).astype(np.float32)
    (y,) = session(_gemv_only_model(12000, v, c, p), threads).run(None, {"X": x})
    close(y[0], _csr_reference(v, c, p, x[0]), 12000)


def test_blocked_gemv_masks_lanes_past_a_block(isa, gemv_blocks):
    # Lanes past a column block are loaded then masked out; an inf at such a column must not
    # reach rows that never reference it, while rows that do reference it see it.
    rng = np.random.default_rng(22)
    k = 9216
    w = sparse_weight(rng, 33, k, 0.05)
    hot = 4700  # just past the first of two 4608-column blocks
    w[:, hot] = 0.0
    w[3, 4608:hot] = 0.0  # the inf column is the first one past the block boundary in row 3
    w[3, hot] = 1.0
    v, c, p = csr_from_dense(w)
    x = rng.standard_normal((1, k)).astype(np.float32)
    x[0, hot] = np.inf
    (y,) = session(_gemv_only_model(k, v, c, p)).run(None, {"X": x})
    assert np.isposinf(y[0, 3])
    others = np.delete(np.arange(33), 3)
    assert np.all(np.isfinite(y[0, others]))
    close(y[0, others], _csr_reference(v, c, p, x[0])[others], k)


def test_block_ordered_gemv_serves_x_of_any_width(isa, gemv_blocks):
    # Without a `columns` attribute X may widen between runs: the copy's blocks split the
    # CSR's 9216 columns (two of 4608) whatever X's width, and every run reads the columns the
    # CSR names. Rows of 40 (two groups of 16 and one of 8), fp16 values and uint8 deltas
    # (copied as int16 columns), an empty row and one whose columns reach the end.
    rng = np.random.default_rng(23)
    w = sparse_weight(rng, 40, 9216, 0.05, empty_rows=(17,))
    w[33, 9000:9216] = 1.0
    v, c, p = runtime_ops.compact_csr(w.astype(np.float16).astype(np.float32), np.float16)
    assert v.dtype == np.float16 and c.dtype == np.uint8
    model = _gemv_only_model(9216, v, c, p)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "k"
    s = session(model)
    for k in (9216, 12000, 9216):
        x = rng.standard_normal((1, k)).astype(np.float32)
        (y,) = s.run(None, {"X": x})
        ref = w.astype(np.float16).astype(np.float64) @ x[0, :9216].astype(np.float64)
        close(y[0], ref, 9216)


def test_wide_and_very_sparse_gemv_keeps_the_in_place_pass(isa, threads):
    # 40000 rows over 9000 columns: 80000 segments of (group, block, row) for some 9000
    # nonzeros, so no block-ordered copy is made; the result is the same either way.
    rng = np.random.default_rng(24)
    n, k = 40000, 9000
    rows = rng.integers(0, n, 9000)
    cols = rng.integers(0, k, 9000)
    w = np.zeros((n, k), np.float32)
    w[rows, cols] = rng.standard_normal(9000).astype(np.float32)
    v, c, p = csr_from_dense(w)
    x = rng.standard_normal((1, k)).astype(np.float32)
    (y,) = session(_gemv_only_model(k, v, c, p), threads).run(None, {"X": x})
    close(y[0], _csr_reference(v, c, p, x[0]), k)


def test_gemv_blocks_setting_is_checked(monkeypatch):
    rng = np.random.default_rng(25)
    v, c, p = csr_from_dense(sparse_weight(rng, 4, 9216, 0.01))
    monkeypatch.setenv("ONNXPRUNE_GEMV_BLOCKS", "yes")
    with pytest.raises(Exception, match="ONNXPRUNE_GEMV_BLOCKS=yes is not one of 0, 1"):
        session(_gemv_only_model(9216, v, c, p))


def matmul_model(w, x_shape, *, bias_shape=None, alpha=1.0, seed=0):
    rng = np.random.default_rng(seed)
    n, k = w.shape
    x = rng.standard_normal(x_shape).astype(np.float32)
    inits, csr_names = csr_inits(w)
    inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "WT"))
    inputs = ["X", *csr_names]
    nodes = [helper.make_node("MatMul", ["X", "WT"], ["MM"])]
    dense_out = "MM"
    if bias_shape is not None:
        c = rng.standard_normal(bias_shape).astype(np.float32)
        inits.append(numpy_helper.from_array(c, "C"))
        inputs.append("C")
        nodes.append(helper.make_node("Add", ["MM", "C"], ["MMC"]))
        dense_out = "MMC"
    nodes.append(helper.make_node("Identity", [dense_out], ["Y_dense"]))
    nodes.append(helper.make_node("CsrGemm", inputs, ["Y_sparse"], domain=DOMAIN, matmul=1, alpha=alpha))
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in ("Y_dense", "Y_sparse")],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS), {"X": x}


@pytest.mark.parametrize(
    "x_shape,bias_shape",
    [((2, 3, 40), (24,)), ((40,), None), ((1, 40), (1, 24)), ((5, 1, 2, 40), (1, 1, 24)), ((0, 40), (24,)),
     ((64, 40), None)],
    ids=["3d_bias", "1d", "2d_batch1", "4d", "empty_batch", "2d_batch64"],
)
def test_csr_gemm_matmul_mode_nd(x_shape, bias_shape, isa, threads):
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, 24, 40, 0.25, empty_rows=(3,))
    model, feeds = matmul_model(w, x_shape, bias_shape=bias_shape)
    y_dense, y_sparse = session(model, threads).run(None, feeds)
    assert y_sparse.shape == tuple(x_shape[:-1]) + (24,)
    close(y_sparse, y_dense, 40)


def test_csr_gemm_matmul_mode_alpha(isa):
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, 10, 12, 0.5)
    model, feeds = matmul_model(w, (2, 4, 12), bias_shape=(10,), alpha=-0.25)
    y_dense, y_sparse = session(model).run(None, feeds)
    c = numpy_helper.to_array([t for t in model.graph.initializer if t.name == "C"][0])
    close(y_sparse, -0.25 * (feeds["X"].astype(np.float64) @ w.T.astype(np.float64)) + c, 12)


# ---------------------------------------------------------------------------------------------
# CsrConv


def conv_model(w4, b, *, strides, pads, dilations, group=1, index_dtype=None):
    c_out = w4.shape[0]
    inits, csr_names = csr_inits(w4.reshape(c_out, -1), index_dtype)
    inits.append(numpy_helper.from_array(w4, "W"))
    attrs = dict(kernel_shape=list(w4.shape[2:]), strides=strides, pads=pads, dilations=dilations, group=group)
    dense_inputs, sparse_inputs = ["X", "W"], ["X", *csr_names]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "B"))
        dense_inputs.append("B")
        sparse_inputs.append("B")
    nodes = [helper.make_node("Conv", dense_inputs, ["Y_dense"], **attrs),
             helper.make_node("CsrConv", sparse_inputs, ["Y_sparse"], domain=DOMAIN, **attrs)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in ("Y_dense", "Y_sparse")],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def conv_reference(x, w4, b, strides, pads, dilations, group):
    """Direct float64 convolution (NCHW), independent of any runtime."""
    n, c, h, wd = x.shape
    co, cg, kh, kw = w4.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, co, oh, ow))
    og = co // group
    for r in range(co):
        g = r // og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * dilations[0]: i * dilations[0] + strides[0] * (oh - 1) + 1: strides[0],
                           j * dilations[1]: j * dilations[1] + strides[1] * (ow - 1) + 1: strides[1]]
                y[:, r] += np.einsum("nchw,c->nhw", patch, w4[r, :, i, j].astype(np.float64))
        if b is not None:
            y[:, r] += b[r]
    return y


CONV_CASES = [
    # (name, batch, c_in, c_out, kh, kw, h, w, strides, pads, dilations, group, bias, density, index_dtype, empty_rows)
    ("3x3_same_batch1", 1, 3, 8, 3, 3, 10, 11, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 0.5, None, ()),
    ("3x3_same_batch3_int32", 3, 4, 6, 3, 3, 9, 7, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 0.3, np.int32, ()),
    ("stride2_asym_pads", 3, 4, 8, 3, 3, 10, 11, [2, 2], [1, 0, 2, 1], [1, 1], 1, True, 0.4, None, (2,)),
    ("stride_2x3_dilation_2x1_nobias", 2, 4, 8, 3, 2, 13, 11, [2, 3], [0, 1, 2, 1], [2, 1], 1, False, 0.4, None, ()),
    ("dilation2_batch1", 1, 5, 7, 3, 3, 12, 12, [1, 1], [2, 2, 2, 2], [2, 2], 1, True, 0.3, None, ()),
    ("1x1_pointwise", 3, 16, 12, 1, 1, 6, 5, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, 0.2, None, (0, 11)),
    ("5x5_no_pad_wide", 1, 2, 4, 5, 5, 9, 40, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, 0.6, None, ()),
    ("group2", 2, 4, 8, 3, 3, 10, 11, [1, 1], [1, 1, 1, 1], [1, 1], 2, True, 0.5, None, ()),
    ("fully_zero", 3, 4, 5, 3, 3, 8, 8, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 0.0, None, ()),
    ("parallel_64ch_28x28", 1, 32, 32, 3, 3, 28, 28, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 0.3, None, ()),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_csr_conv_matches_dense_conv(case, isa, threads):
    (name, batch, c_in, c_out, kh, kw, h, wd, strides, pads, dil, group, with_bias, density, index_dtype,
     empty_rows) = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across PYTHONHASHSEED
    w4 = rng.standard_normal((c_out, c_in // group, kh, kw)).astype(np.float32)
    w4[rng.random(w4.shape) >= density] = 0.0
    for r in empty_rows:
        w4[r] = 0.0
    b = rng.standard_normal(c_out).astype(np.float32) if with_bias else None
    x = rng.standard_normal((batch, c_in, h, wd)).astype(np.float32)
    model = conv_model(w4, b, strides=strides, pads=pads, dilations=dil, group=group, index_dtype=index_dtype)
    y_dense, y_sparse = session(model, threads).run(None, {"X": x})
    ref = conv_reference(x, w4, b, strides, pads, dil, group)
    assert y_sparse.shape == y_dense.shape == ref.shape
    k = (c_in // group) * kh * kw
    close(y_sparse, ref, k)
    close(y_sparse, y_dense, k)


CONV1D_CASES = [
    # (name, batch, c_in, c_out, k, length, stride, pads, dilation, group, bias, density, index_dtype)
    ("k3_same", 2, 8, 6, 3, 31, 1, [1, 1], 1, 1, True, 0.4, None),
    ("k3_stride2_whisper", 1, 16, 16, 3, 40, 2, [1, 1], 1, 1, True, 0.3, np.int32),
    ("k10_stride5_no_pad_one_channel", 2, 1, 8, 10, 103, 5, [0, 0], 1, 1, False, 0.5, None),
    ("k16_group4_asym_pads", 1, 8, 12, 16, 29, 1, [8, 7], 1, 4, True, 0.3, None),
    ("k5_dilation3_stride2", 3, 6, 4, 5, 37, 2, [2, 0], 3, 1, True, 0.5, None),
    ("k1_pointwise_batch3", 3, 12, 10, 1, 9, 1, [0, 0], 1, 1, False, 0.3, None),
    ("wide_600_positions", 1, 32, 24, 3, 600, 1, [1, 1], 1, 1, True, 0.25, None),
    ("fully_zero", 2, 4, 5, 3, 8, 1, [1, 1], 1, 1, True, 0.0, None),
]


@pytest.mark.parametrize("case", CONV1D_CASES, ids=[c[0] for c in CONV1D_CASES])
def test_csr_conv_1d_matches_dense_conv1d(case, isa, threads):
    """op-set 4: kernel_shape [k] on X (N, C, L), against ONNX Runtime's 1-D Conv and the
    float64 reference of the same kernel as 1 x k over a height of 1."""
    name, batch, c_in, c_out, k, length, stride, pads, dil, group, with_bias, density, index_dtype = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w3 = rng.standard_normal((c_out, c_in // group, k)).astype(np.float32)
    w3[rng.random(w3.shape) >= density] = 0.0
    b = rng.standard_normal(c_out).astype(np.float32) if with_bias else None
    x = rng.standard_normal((batch, c_in, length)).astype(np.float32)
    model = conv_model(w3, b, strides=[stride], pads=pads, dilations=[dil], group=group, index_dtype=index_dtype)
    y_dense, y_sparse = session(model, threads).run(None, {"X": x})
    ref = conv_reference(x[:, :, None, :], w3[:, :, None, :], b, [1, stride], [0, pads[0], 0, pads[1]],
                         [1, dil], group)[:, :, 0, :]
    assert y_sparse.shape == y_dense.shape == ref.shape
    close(y_sparse, ref, (c_in // group) * k)
    close(y_sparse, y_dense, (c_in // group) * k)


@pytest.mark.parametrize("x_shape, attrs, message", [
    ([1, 4, 9, 9], dict(kernel_shape=[3]), "X must be a 3-D float32 (N, C, L) tensor for a 1-D kernel_shape"),
    ([1, 4, 9], dict(kernel_shape=[3, 3]), "X must be a 4-D float32 NCHW tensor"),
    ([1, 4, 9], dict(kernel_shape=[3], strides=[1, 1]), "strides must be one int"),
    ([1, 4, 9], dict(kernel_shape=[3], dilations=[1, 1]), "dilations must be one int"),
    ([1, 4, 9], dict(kernel_shape=[3], pads=[1, 1, 1, 1]), "pads must be two ints [begin, end]"),
    ([1, 4, 9], dict(kernel_shape=[3, 3, 3]), "kernel_shape must be [kH, kW], or [k] for a 1-D"),
])
def test_conv_rank_and_attribute_ranks_must_agree(x_shape, attrs, message):
    rng = np.random.default_rng(5)
    k = 4 * int(np.prod(attrs["kernel_shape"]))
    inits, names = csr_inits(sparse_weight(rng, 3, k, 0.5))
    graph = helper.make_graph([helper.make_node("CsrConv", ["X", *names], ["Y"], domain=DOMAIN, **attrs)], "c",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    with pytest.raises(Exception, match=re.escape(message)):
        session(helper.make_model(graph, opset_imports=OPSETS)).run(None, {"X": np.ones(x_shape, np.float32)})


# ---------------------------------------------------------------------------------------------
# Output shape inference (OrtCustomOp::InferOutputShapeFn): ORT knows the output shape before
# running, so downstream nodes and session.get_outputs() see it.


def _shape_model(op, x_shape, *, relu=False, **attrs):
    """X -> op (CSR of a 7-row weight) [-> Relu] -> Y, with Y declared without a shape."""
    rng = np.random.default_rng(3)
    k = 20 if op == "CsrGemm" else 3 * int(np.prod(attrs["kernel_shape"]))
    inits, names = csr_inits(sparse_weight(rng, 7, k, 0.3))
    out = "Z" if relu else "Y"
    nodes = [helper.make_node(op, ["X", *names], [out], domain=DOMAIN, **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["Z"], ["Y"]))
    graph = helper.make_graph(nodes, "shape", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


@pytest.mark.parametrize(
    "x_shape,attrs,expected",
    [(["batch", 20], {}, ["batch", 7]), ([3, 20], {}, [3, 7]), ([20, "m"], dict(transA=1), ["m", 7]),
     (["a", 2, 20], dict(matmul=1), ["a", 2, 7]), ([20], dict(matmul=1), [7])],
    ids=["symbolic_batch", "fixed", "transA", "matmul_3d", "matmul_1d"],
)
def test_csr_gemm_output_shape_is_inferred(x_shape, attrs, expected):
    # Through a Relu: the shape reaches the graph output only if ORT propagated it downstream.
    sess = session(_shape_model("CsrGemm", x_shape, relu=True, **attrs))
    assert sess.get_outputs()[0].shape == expected
    assert sess.get_outputs()[0].type == "tensor(float)"


@pytest.mark.parametrize(
    "x_shape,attrs,expected",
    [(["n", 3, 10, 11], dict(pads=[1, 1, 1, 1]), ["n", 7, 10, 11]),
     ([2, 3, 10, 11], dict(strides=[2, 3], pads=[1, 0, 2, 1]), [2, 7, 6, 4]),
     ([1, 3, 12, 12], dict(dilations=[2, 2]), [1, 7, 8, 8]),
     (["n", 3, 10], dict(kernel_shape=[3], pads=[1, 1]), ["n", 7, 10]),
     ([2, 3, 11], dict(kernel_shape=[3], strides=[2], pads=[1, 0], dilations=[2]), [2, 7, 4])],
    ids=["same", "strided_asym_pads", "dilated", "1d_same", "1d_strided_dilated"],
)
def test_csr_conv_output_shape_is_inferred(x_shape, attrs, expected):
    attrs = {"kernel_shape": [3, 3], **attrs}
    sess = session(_shape_model("CsrConv", x_shape, relu=True, **attrs))
    assert sess.get_outputs()[0].shape == expected
    if all(isinstance(d, int) for d in x_shape):
        (y,) = sess.run(None, {"X": np.ones(x_shape, np.float32)})
        assert list(y.shape) == expected


@pytest.mark.parametrize(
    "op,x_shape,attrs",
    [("CsrGemm", None, {}), ("CsrGemm", [None, 20], {}), ("CsrGemm", [2, 3, 20], {}),
     ("CsrConv", ["n", 3, "h", "w"], dict(kernel_shape=[3, 3])), ("CsrConv", [1, 3, 2, 2], dict(kernel_shape=[3, 3])),
     ("CsrConv", [1, 3, 9, 9], dict(kernel_shape=[3])), ("CsrConv", [1, 3, 9, 9, 9], dict(kernel_shape=[3, 3]))],
    ids=["unknown_rank", "unnamed_dim", "gemm_rank3", "symbolic_spatial", "kernel_larger_than_input",
         "1d_kernel_on_4d_x", "2d_kernel_on_5d_x"],
)
def test_shape_inference_leaves_underivable_shapes_unknown(op, x_shape, attrs):
    # No shape (rather than a wrong one or a load failure); errors, if any, come at run time.
    sess = session(_shape_model(op, x_shape, **attrs))
    assert sess.get_outputs()[0].shape == []


def test_shape_inference_with_unknown_input_shape_still_runs(isa):
    sess = session(_shape_model("CsrGemm", None))
    x = np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32)
    (y,) = sess.run(None, {"X": x})
    assert y.shape == (4, 7)


# ---------------------------------------------------------------------------------------------
# Malformed input is an ORT error with a message, never a crash


def _tamper(model, name, array):
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return model
    raise KeyError(name)


def _base_gemm(index_dtype=None):
    rng = np.random.default_rng(11)
    w = sparse_weight(rng, 6, 10, 0.5)
    return gemm_model(w, m=3, bias_shape=(6,), index_dtype=index_dtype), csr_from_dense(w, index_dtype)


@pytest.mark.parametrize(
    "field,mutate,message",
    [
        ("row_ptr", lambda v, c, p: np.concatenate([[1], p[1:]]).astype(np.int32), "row_ptr\\[0\\] must be 0"),
        ("row_ptr", lambda v, c, p: np.where(np.arange(len(p)) == 3, p[4] + 1, p).astype(np.int32),
         "non-decreasing"),
        ("row_ptr", lambda v, c, p: np.concatenate([p[:-1], [p[-1] - 1]]).astype(np.int32), "number of nonzeros"),
        ("col_idx", lambda v, c, p: np.where(np.arange(len(c)) == 2, 10, c).astype(c.dtype), "input column 10"),
        ("col_idx", lambda v, c, p: np.where(np.arange(len(c)) == 1, -3, c).astype(c.dtype), "negative index"),
        ("col_idx", lambda v, c, p: c[:-1], "as many entries as values"),
        ("col_idx", lambda v, c, p: c.astype(np.int64), "int16 or int32"),
    ],
    ids=["rowptr_start", "rowptr_decreasing", "rowptr_end", "col_too_big", "col_negative", "col_length", "col_int64"],
)
def test_inconsistent_csr_initializers_fail_cleanly(field, mutate, message):
    (model, feeds), (v, c, p) = _base_gemm()
    _tamper(model, field, mutate(v, c, p))
    with pytest.raises(Exception, match=message):
        session(model).run(None, feeds)


def test_inconsistent_csr_fed_at_run_time_is_validated_each_run():
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, 6, 10, 0.5)
    model, feeds = gemm_model(w, m=2, bias_shape=(6,), csr_as_inputs=True)
    sess = session(model)
    y_dense, y_sparse = sess.run(None, feeds)
    close(y_sparse, y_dense, 10)
    bad = dict(feeds)
    bad["col_idx"] = feeds["col_idx"].copy()
    bad["col_idx"][-1] = 12
    with pytest.raises(Exception, match="input column 12"):
        sess.run(None, bad)
    bad = dict(feeds)
    bad["row_ptr"] = feeds["row_ptr"].copy()
    bad["row_ptr"][-1] += 5
    with pytest.raises(Exception, match="number of nonzeros"):
        sess.run(None, bad)


def test_wrong_shapes_and_attributes_fail_cleanly():
    rng = np.random.default_rng(2)
    w = sparse_weight(rng, 6, 10, 0.5)
    model, feeds = gemm_model(w, m=3, bias_shape=(4,))
    with pytest.raises(Exception, match="does not broadcast"):
        session(model).run(None, feeds)
    model, feeds = gemm_model(w, m=3, bias_shape=(6,))
    sess = session(model)
    with pytest.raises(Exception):
        sess.run(None, {"X": np.zeros((3, 9), np.float32)})
    model, _ = matmul_model(w, (2, 10))
    for node in model.graph.node:
        if node.op_type == "CsrGemm":
            node.attribute.append(helper.make_attribute("transA", 1))
    with pytest.raises(Exception, match="transA"):
        session(model)


@pytest.mark.parametrize("op", ["CsrGemm", "CsrConv"])
def test_the_recorded_width_is_bounded_and_checked_on_every_run(op):
    """``columns`` (the K the lowering records): a value outside [1, 2^31-1] or below the CSR's
    largest column is refused at session creation; a run whose X gives another K is refused."""
    rng = np.random.default_rng(6)
    if op == "CsrGemm":
        w, attrs, x_ok, x_bad = sparse_weight(rng, 5, 12, 0.6), dict(matmul=1), (2, 12), (2, 13)
    else:
        w = rng.standard_normal((5, 4 * 9)).astype(np.float32)
        attrs, x_ok, x_bad = dict(kernel_shape=[3, 3], pads=[1] * 4), (1, 4, 6, 6), (1, 5, 6, 6)
    w[:, -1] = 1.0  # the last column is used: K - 1 is the largest column index
    k = w.shape[1]

    def model(columns):
        inits, names = csr_inits(w)
        node = helper.make_node(op, ["X", *names], ["Y"], domain=DOMAIN, columns=columns, **attrs)
        graph = helper.make_graph([node], "cols", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
        return helper.make_model(graph, opset_imports=OPSETS)

    sess = session(model(k))
    sess.run(None, {"X": np.ones(x_ok, np.float32)})
    with pytest.raises(Exception, match=f"but attribute columns is {k}"):
        sess.run(None, {"X": np.ones(x_bad, np.float32)})
    for bad, message in ((0, "columns must be an int"), (-1, "columns must be an int"),
                         (2**31, "columns must be an int"), (k - 1, f"but attribute columns is {k - 1}")):
        with pytest.raises(Exception, match=message):
            session(model(bad))


def test_conv_column_range_is_checked_against_the_input_channels():
    rng = np.random.default_rng(4)
    w4 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = conv_model(w4, None, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    # Keep only the CSR node: stock Conv would reject the channel mismatch first.
    del model.graph.node[0]
    del model.graph.output[0]
    sess = session(model)
    sess.run(None, {"X": np.ones((1, 3, 5, 5), np.float32)})
    with pytest.raises(Exception, match="C_in/group"):
        sess.run(None, {"X": np.ones((1, 2, 5, 5), np.float32)})


# ---------------------------------------------------------------------------------------------
# Python helpers


def test_csr_from_dense_roundtrip_and_index_types():
    rng = np.random.default_rng(0)
    w = sparse_weight(rng, 7, 300, 0.1, empty_rows=(0, 6))
    v, c, p = csr_from_dense(w)
    assert v.dtype == np.float32 and c.dtype == np.int16 and p.dtype == np.int32
    assert p[0] == 0 and p[-1] == len(v) == np.count_nonzero(w) and p[1] == 0
    assert np.all(np.diff(p) >= 0)
    np.testing.assert_array_equal(dense_from_csr(v, c, p, 300), w)
    assert csr_from_dense(w, np.int32)[1].dtype == np.int32
    wide = np.zeros((2, 32769), np.float32)
    wide[1, 32768] = 1.0
    v, c, p = csr_from_dense(wide)
    assert c.dtype == np.int32 and c[0] == 32768
    with pytest.raises(ValueError, match="int32"):
        csr_from_dense(wide, np.int16)
    assert csr_from_dense(np.zeros((3, 32768), np.float32))[1].dtype == np.int16
    with pytest.raises(ValueError):
        csr_from_dense(np.zeros(5, np.float32))


def test_session_options_helper_sets_threads():
    opts = runtime_ops.session_options(2)
    assert opts.intra_op_num_threads == 2


def _anon_huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


def _can_collapse() -> bool:
    """Whether this process can turn anonymous memory into a transparent huge page at all."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size = 8 << 20
    addr = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    if addr in (None, ctypes.c_void_p(-1).value):
        return False
    try:
        start = (addr + (2 << 20) - 1) & ~((2 << 20) - 1)
        ctypes.memset(addr, 1, size)
        libc.madvise(ctypes.c_void_p(start), 2 << 20, 14)  # MADV_HUGEPAGE
        return libc.madvise(ctypes.c_void_p(start), 2 << 20, 25) == 0  # MADV_COLLAPSE
    finally:
        libc.munmap(ctypes.c_void_p(addr), size)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux only")
def test_constant_csr_arrays_are_offered_huge_pages():
    # Kernel creation asks for huge pages under the constant CSR arrays (best effort, in
    # place); ONNXPRUNE_HUGEPAGES=0 turns that off. Skipped where the kernel cannot do it.
    # Measured in a fresh process: in this one, memory an earlier test had in huge pages can
    # be reused by the "off" session's arrays and read as growth.
    import json
    import subprocess
    import sys

    mode = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not os.path.exists(mode) or "[madvise]" not in open(mode).read():
        pytest.skip("measured only where huge pages are given on request (THP mode madvise)")
    if not _can_collapse():
        pytest.skip("transparent huge pages cannot be collapsed in this environment")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "ONNXPRUNE_HUGEPAGES"}
    done = subprocess.run([sys.executable, "-c", "import json, tests.test_runtime_ops as t; "
                           "print(json.dumps(t.huge_page_growth()))"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    off_kb, on_kb = json.loads(done.stdout.strip().splitlines()[-1])
    assert off_kb < 2048
    assert on_kb >= 8 * 1024  # most of the 18 MiB, in 2 MiB pages


def huge_page_growth() -> tuple[int, int]:
    """AnonHugePages growth (KiB) of this process while creating a session over 18 MiB of CSR
    arrays with ONNXPRUNE_HUGEPAGES=0, then without it; the two sessions' outputs are checked
    equal and against the reference."""
    rng = np.random.default_rng(23)
    nnz, k = 3 << 20, 4096  # 12 MiB of values, 6 MiB of int16 indices
    c = np.sort(rng.integers(0, k, nnz)).astype(np.int16)
    v = rng.standard_normal(nnz).astype(np.float32)
    p = np.linspace(0, nnz, 769).astype(np.int32)  # 768 rows
    model = _gemv_only_model(k, v, c, p)
    x = rng.standard_normal((1, k)).astype(np.float32)
    os.environ["ONNXPRUNE_HUGEPAGES"] = "0"
    before = _anon_huge_kb()
    off = session(model)
    off_kb = _anon_huge_kb() - before
    del os.environ["ONNXPRUNE_HUGEPAGES"]
    before = _anon_huge_kb()
    on = session(model)
    on_kb = _anon_huge_kb() - before
    (y_off,), (y_on,) = off.run(None, {"X": x}), on.run(None, {"X": x})
    np.testing.assert_array_equal(y_on, y_off)
    close(y_on[0], _csr_reference(v, c, p, x[0]), k)
    return off_kb, on_kb
