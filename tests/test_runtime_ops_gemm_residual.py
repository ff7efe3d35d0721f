"""CsrGemm's residual input Z (op-set 6): Y = activation(alpha · A · Wᵀ + beta · C + Z), Z of Y's
exact shape (runtime_ops/README.md). Every product path (batch 1, the K x 16..64 panels below
32 rows, the tiled path with the bias in the tile or after the transpose), Gemm and MatMul
style, against a float64 reference; Z of any other shape is refused, never broadcast."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, close, csr_inits, session, sparse_weight

lib, isa, threads = base.lib, base.isa, base.threads

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 6)]


def residual_gemm(w, *, matmul, bias=None, trans_a=0, alpha=1.0, beta=1.0, activation=None):
    """CsrGemm(X, CSR, [C], Z) -> Y; the bias slot is left empty ("") when ``bias`` is None."""
    inits, csr_names = csr_inits(w)
    inputs = ["X", *csr_names, "C" if bias is not None else "", "Z"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "C"))
    attrs = dict(matmul=1) if matmul else dict(transA=trans_a, alpha=alpha, beta=beta)
    if activation:
        attrs["activation"] = activation
    node = helper.make_node("CsrGemm", inputs, ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "gemm_residual",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _run(model, x, z, n_threads):
    x0, z0 = x.copy(), z.copy()
    (y,) = session(model, n_threads).run(None, {"X": x, "Z": z})
    assert np.array_equal(x, x0) and np.array_equal(z, z0)  # inputs untouched
    return y


# (name, n, k, density, x_shape, matmul, trans_a, alpha, beta, bias_shape)
CASES = [
    ("gemv", 37, 50, 0.2, (1, 50), 0, 0, 1.0, 1.0, (37,)),
    ("gemv_matmul_1d", 24, 40, 0.3, (40,), 1, 0, 1.0, 1.0, (24,)),
    ("gemv_alpha_no_bias", 24, 40, 0.3, (1, 40), 0, 0, -0.5, 1.0, None),
    ("panels_batch7", 29, 70, 0.1, (7, 70), 0, 0, 1.0, 1.0, (1, 29)),
    ("panels_transA_bias_matrix", 25, 31, 0.3, (31, 9), 0, 1, 1.5, 0.5, (9, 25)),
    # 32+ rows: the tiled path, bias in the tile (alpha 1, a bias over the features) ...
    ("tiled_bias_in_tile", 70, 96, 0.15, (2, 64, 96), 1, 0, 1.0, 1.0, (70,)),
    ("tiled_no_bias", 70, 96, 0.15, (3, 45, 96), 1, 0, 1.0, 1.0, None),
    # ... and after the transpose (alpha != 1, a bias that varies along M)
    ("tiled_alpha_bias_column", 30, 50, 0.3, (200, 50), 0, 0, 1.5, 1.0, (200, 1)),
    ("tiled_transA_bias_matrix", 30, 50, 0.3, (50, 40), 0, 1, -0.5, 2.0, (40, 30)),
    # several tasks over the thread pool, rows of W beyond one 64-row chunk
    ("tiled_parallel", 300, 128, 0.1, (1, 128, 128), 1, 0, 1.0, 1.0, (300,)),
]


@pytest.mark.parametrize("activation", [None, "Relu", "Gelu"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_z_is_added_before_the_activation(case, activation, isa, threads):
    name, n, k, density, x_shape, matmul, trans_a, alpha, beta, bias_shape = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = sparse_weight(rng, n, k, density)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32) if bias_shape is not None else None
    a = x.astype(np.float64)
    a = a.T if trans_a else a
    product = alpha * (a @ w.astype(np.float64).T)
    if bias is not None:
        product = product + beta * bias.astype(np.float64)
    z = (rng.standard_normal(product.shape) * 3).astype(np.float32)
    want = product + z
    if activation == "Relu":
        want = np.maximum(want, 0.0)
    elif activation == "Gelu":
        from math import erf, sqrt
        want = want * 0.5 * (1.0 + np.vectorize(erf)(want / sqrt(2.0)))
    model = residual_gemm(w, matmul=matmul, bias=bias, trans_a=trans_a, alpha=alpha, beta=beta,
                          activation=activation)
    y = _run(model, x, z, threads)
    assert y.shape == want.shape
    close(y, want, k)
    if activation == "Relu":  # Z moved outputs across zero: the activation came after it
        assert ((product > 0) != (want > 0)).any()


@pytest.mark.parametrize("matmul,x_shape,z_shape", [
    (1, (2, 40, 12), (1, 40, 8)),    # batch broadcast
    (1, (2, 40, 12), (40, 8)),       # rank
    (1, (2, 40, 12), (2, 40, 1)),    # feature broadcast
    (0, (5, 12), (5, 9)),            # width
    (0, (5, 12), (8,)),              # a bias-like vector
    (0, (1, 12), (8,)),              # batch 1: still (1, 8)
], ids=["batch_broadcast", "rank", "feature_broadcast", "width", "vector", "gemv_vector"])
def test_z_of_another_shape_is_refused_not_broadcast(matmul, x_shape, z_shape, isa):
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, 8, 12, 0.5)
    model = residual_gemm(w, matmul=matmul)
    x = rng.standard_normal(x_shape).astype(np.float32)
    with pytest.raises(Exception, match=r"Z must be a float32 tensor of the output.s shape \(.*\), got shape"):
        session(model, 1).run(None, {"X": x, "Z": np.zeros(z_shape, np.float32)})


def test_an_empty_output_ignores_z_of_its_shape(isa):
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, 8, 12, 0.5)
    y = _run(residual_gemm(w, matmul=1), np.zeros((0, 12), np.float32), np.zeros((0, 8), np.float32), 1)
    assert y.shape == (0, 8)
