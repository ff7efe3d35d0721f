"""CsrGemm's transposed output (op-set 7, matmul=2): MatMul semantics on X (..., K) with Y
written as (N, M), M the product of X's leading dims, so that a second CsrGemm reads it as
Gemm-style X given transposed (transA=1) with no transpose in between (runtime_ops/README.md).
Every product path (one row, the K x 16..64 panels below 32 rows, the tiled path with the
bias and activation in the tile, or after it with a residual Z of Y's (N, M) shape), on every
ISA and 1 and 2 threads, against a float64 reference; a pair of nodes against two MatMuls;
X^T read in place (transA=1 with M a whole number of tiles) ending at an inaccessible page;
products of different pack sizes in turn, sharing the calling thread's pack buffer; other
matmul values and Z of another shape are refused."""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, close, csr_inits, session, sparse_weight

lib, isa, threads = base.lib, base.isa, base.threads

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 7)]


def _gelu(v):
    from math import erf
    return 0.5 * v * (1.0 + np.vectorize(erf)(v / np.sqrt(2.0)))


def transposed_model(w, *, bias=None, z=False, activation=None, matmul=2, x_shape=None):
    inits, names = csr_inits(w)
    inputs = ["X", *names, "C" if bias is not None else ""]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "C"))
    if z:
        inputs.append("Z")
    while inputs and inputs[-1] == "":
        inputs.pop()
    attrs = {"matmul": matmul}
    if activation:
        attrs["activation"] = activation
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if z:
        graph_inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    graph = helper.make_graph([helper.make_node("CsrGemm", inputs, ["Y"], domain=DOMAIN, **attrs)], "t",
                              graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    # op-set 8 defines matmul 3 and 4 (test_runtime_ops_heads.py)
    opsets = OPSETS if matmul <= 2 else [OPSETS[0], helper.make_opsetid(DOMAIN, 8)]
    return helper.make_model(graph, opset_imports=opsets)


# (name, n, k, density, x_shape, bias)
CASES = [
    ("one_row_1d", 37, 50, 0.2, (50,), True),
    ("one_row", 24, 40, 0.3, (1, 1, 40), False),
    ("panels", 29, 70, 0.1, (7, 70), True),
    ("panels_3d", 21, 33, 0.3, (2, 9, 33), False),
    ("tiled", 70, 96, 0.15, (2, 64, 96), True),
    ("tiled_ragged", 70, 300, 0.1, (3, 45, 300), False),
    ("tiled_parallel", 300, 128, 0.1, (1, 128, 128), True),
]


@pytest.mark.parametrize("activation", [None, "Relu", "Gelu"])
@pytest.mark.parametrize("with_z", [False, True], ids=["no_z", "z"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_y_is_the_product_transposed(case, with_z, activation, isa, threads):
    name, n, k, density, x_shape, has_bias = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = sparse_weight(rng, n, k, density)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    m = int(np.prod(x_shape[:-1]))
    want = x.reshape(m, k).astype(np.float64) @ w.astype(np.float64).T  # (M, N)
    if bias is not None:
        want = want + bias
    want = want.T  # (N, M)
    feeds = {"X": x}
    if with_z:
        feeds["Z"] = (rng.standard_normal((n, m)) * 3).astype(np.float32)
        want = want + feeds["Z"]
    if activation == "Relu":
        want = np.maximum(want, 0.0)
    elif activation == "Gelu":
        want = _gelu(want)
    before = {key: v.copy() for key, v in feeds.items()}
    (y,) = session(transposed_model(w, bias=bias, z=with_z, activation=activation), threads).run(None, feeds)
    assert all(np.array_equal(feeds[key], before[key]) for key in feeds)
    assert y.shape == (n, m)
    close(y, want, k)


@pytest.mark.parametrize("rows", [1, 5, 128])
def test_a_pair_reads_the_transposed_output_as_it_lies(rows, isa, threads):
    """fc1 (matmul=2, Gelu) then fc2 (transA=1, Gemm style) compute the two MatMuls."""
    rng = np.random.default_rng(rows)
    w1, w2 = sparse_weight(rng, 96, 40, 0.2), sparse_weight(rng, 24, 96, 0.2)
    b1, b2 = rng.standard_normal(96).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    i1, n1 = csr_inits(w1, prefix="a.")
    i2, n2 = csr_inits(w2, prefix="b.")
    inits = i1 + i2 + [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(b2, "b2")]
    nodes = [helper.make_node("CsrGemm", ["X", *n1, "b1"], ["H"], domain=DOMAIN, matmul=2, activation="Relu"),
             helper.make_node("CsrGemm", ["H", *n2, "b2"], ["Y"], domain=DOMAIN, transA=1)]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    x = rng.standard_normal((rows, 40)).astype(np.float32)
    (y,) = session(helper.make_model(graph, opset_imports=OPSETS), threads).run(None, {"X": x})
    h = np.maximum(x.astype(np.float64) @ w1.T + b1, 0.0)
    close(y, h @ w2.T + b2, 96)


def gemm_model(w, bias, trans_a):
    inits, names = csr_inits(w)
    inits.append(numpy_helper.from_array(bias, "C"))
    graph = helper.make_graph(
        [helper.make_node("CsrGemm", ["X", *names, "C"], ["Y"], domain=DOMAIN, transA=trans_a)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mmap/mprotect through libc")
@pytest.mark.parametrize("m", [32, 45, 64, 96, 128, 130, 192, 256])
def test_transposed_x_read_in_place_stays_inside_it(m, isa, threads):
    """transA=1 with M a whole number of tiles reads X^T's rows as the product's planes, in
    place: X ends right before a PROT_NONE page, so a tile reading past it faults; M not a
    whole number of tiles (45, 130) takes the copied planes. X is left as it was."""
    from tests.test_runtime_ops_guarded import GuardedBuffers

    rng = np.random.default_rng(m)
    buffers = GuardedBuffers()
    try:
        for k, n, density in ((7, 70, 0.5), (300, 130, 0.1)):
            w = sparse_weight(rng, n, k, density)
            bias = rng.standard_normal(n).astype(np.float32)
            xt = buffers.place(rng.standard_normal((k, m)).astype(np.float32))
            before = xt.copy()
            (y,) = session(gemm_model(w, bias, 1), threads).run(None, {"X": xt})
            assert np.array_equal(xt, before)
            close(y, xt.T.astype(np.float64) @ w.T.astype(np.float64) + bias, k)
    finally:
        buffers.free()


@pytest.mark.parametrize("m", [64, 192, 256])
def test_an_empty_inner_dimension_read_in_place_gives_the_bias(m):
    """K = 0 with transA=1 and M whole tiles: X (0, M) has no floats (its data pointer may be
    null), no tile reads it, and Y is the bias in every row."""
    w = np.zeros((5, 0), np.float32)
    bias = np.arange(5, dtype=np.float32)
    (y,) = session(gemm_model(w, bias, 1)).run(None, {"X": np.zeros((0, m), np.float32)})
    assert np.array_equal(y, np.tile(bias, (m, 1)))


def test_products_of_different_pack_sizes_in_turn():
    """One session runs products whose packed X grow and shrink (K 300, 20, 7, then 300 again,
    ragged M so the planes have padding): each packs into the calling thread's kept buffer
    over the last one's floats, and every output matches the reference, run after run."""
    rng = np.random.default_rng(5)
    dims = [300, 20, 7, 300, 16]
    ws = [sparse_weight(rng, dims[i + 1], dims[i], 0.3) for i in range(len(dims) - 1)]
    inits, nodes = [], []
    for i, w in enumerate(ws):
        init, names = csr_inits(w, prefix=f"l{i}.")
        inits += init
        nodes.append(helper.make_node("CsrGemm", [f"h{i}", *names], [f"h{i + 1}"], domain=DOMAIN, matmul=1))
    graph = helper.make_graph(nodes, "grow_shrink", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(f"h{len(ws)}", TensorProto.FLOAT, None)],
                              initializer=inits)
    sess = session(helper.make_model(graph, opset_imports=OPSETS), 2)
    for rows in (45, 100, 45, 33):
        x = rng.standard_normal((rows, dims[0])).astype(np.float32)
        want = x.astype(np.float64)
        for w in ws:
            want = want @ w.T.astype(np.float64)
        (y,) = sess.run(None, {"h0": x})
        np.testing.assert_allclose(y, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_other_matmul_values_and_z_shapes_are_refused():
    w = sparse_weight(np.random.default_rng(0), 8, 6, 0.5)
    with pytest.raises(Exception, match="attribute matmul must be 0, 1, 2, 3 or 4"):
        session(transposed_model(w, matmul=5))
    x = np.ones((4, 6), np.float32)
    with pytest.raises(Exception, match="Z"):  # Z of the untransposed (M, N) shape
        session(transposed_model(w, z=True)).run(None, {"X": x, "Z": np.zeros((4, 8), np.float32)})
    (y,) = session(transposed_model(w, z=True)).run(None, {"X": x, "Z": np.zeros((8, 4), np.float32)})
    assert y.shape == (8, 4)


def test_shape_inference_bounds_the_declared_leading_dims():
    """Shape inference multiplies X's declared leading dims into M: dims whose product leaves
    int64 (2^40 x 2^40) give up on the output shape instead of wrapping (a signed overflow,
    which the sanitizer build aborts on); the session is made all the same."""
    w = sparse_weight(np.random.default_rng(0), 8, 6, 0.5)
    model = transposed_model(w)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, [1 << 40, 1 << 40, 6]))
    sess = session(model)
    assert sess.get_inputs()[0].shape == [1 << 40, 1 << 40, 6]
