"""CsrGemm with each batch transposed (op-set 8): matmul=3 writes X (..., S, K) as Y (..., N, S),
each batch's product transposed (a transformer's key heads as attention reads them), and
matmul=4 reads X given (..., K, S), each batch's rows transposed (the attention's context as
it comes out of Vᵀ·Pᵀ), writing Y (..., S, N) (runtime_ops/README.md). Every product path
(one row, the K x 16..64 panels below 32 rows, the tiled path with tiles across a batch's end,
bias and activation in the tile or after it with a residual Z of Y's shape), on every ISA and 1
and 2 threads, against a float64 reference; matmul=4 with batches of whole tiles reads X in
place, ending at an inaccessible page, and copies it where X starts off 64 bytes; a pair
through the head layout against the MatMuls it replaces; shapes and refusals."""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, close, csr_inits, session, sparse_weight
from tests.test_runtime_ops_transposed import _gelu, transposed_model

lib, isa, threads = base.lib, base.isa, base.threads

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 8)]


def heads_model(w, matmul, *, bias=None, z=False, activation=None, x_shape=None):
    return transposed_model(w, bias=bias, z=z, activation=activation, matmul=matmul, x_shape=x_shape)


def swap(a: np.ndarray) -> np.ndarray:
    """The last two axes swapped."""
    return np.swapaxes(a, -1, -2)


# (name, n, k, density, rows as X (..., S, K) gives them: leading dims + (S,), bias)
CASES = [
    ("one_row", 24, 40, 0.3, (1, 1), False),
    ("one_row_per_batch", 19, 33, 0.3, (5, 1), True),
    ("panels", 29, 70, 0.1, (7,), True),
    ("panels_batches", 21, 33, 0.3, (3, 9), False),
    ("panels_4d", 21, 33, 0.3, (2, 2, 5), True),
    ("tiled_one_batch", 70, 96, 0.15, (1, 128), True),
    ("tiled_batches", 70, 96, 0.15, (2, 64), True),
    ("tiled_batches_of_320", 50, 40, 0.2, (2, 320), True),  # in place in the widest tiles dividing 320
    ("tiled_ragged", 70, 300, 0.1, (3, 45), False),  # tiles across batch ends
    ("tiled_4d_ragged", 40, 64, 0.2, (2, 3, 37), True),
    ("tiled_parallel", 300, 128, 0.1, (2, 128), True),
    # Y^T summed where it lies (matmul 3): batches of whole 8-vector tiles, one run a row on
    # AVX-512; and two runs a row (tiles of 128 in batches of 256) over several K blocks
    ("tiled_whole_batches", 40, 40, 0.3, (4, 128), True),
    ("tiled_runs_k_blocks", 24, 1600, 0.1, (2, 256), True),
]


def _want(x_sk: np.ndarray, w, bias, activation, z=None, matmul=3) -> np.ndarray:
    """float64 reference: X given as (..., S, K), the product (..., S, N), then as matmul lays it out."""
    want = x_sk.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        want = want + bias
    if matmul == 3:
        want = swap(want)
    if z is not None:
        want = want + z
    if activation == "Relu":
        want = np.maximum(want, 0.0)
    elif activation == "Gelu":
        want = _gelu(want)
    return want


def at_offset(a: np.ndarray, offset: int) -> np.ndarray:
    """A C-ordered copy of ``a`` starting ``offset`` bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 64 + offset, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# matmul, and where X starts: on 64 bytes a transposed X whose batches are whole tiles is read
# in place (every batch's rows its tiles' planes), 16 bytes past takes copied planes
@pytest.mark.parametrize("matmul, x_at", [(3, 0), (4, 0), (4, 16)], ids=["matmul3", "matmul4", "matmul4_x_at_16"])
@pytest.mark.parametrize("activation", [None, "Relu", "Gelu"])
@pytest.mark.parametrize("with_z", [False, True], ids=["no_z", "z"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_batch_is_transposed(case, with_z, activation, matmul, x_at, isa, threads):
    name, n, k, density, rows, has_bias = case
    rng = np.random.default_rng(zlib.crc32(f"{name}{matmul}".encode()))
    w = sparse_weight(rng, n, k, density)
    x_sk = rng.standard_normal((*rows, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if has_bias else None
    x = at_offset(swap(x_sk), x_at) if matmul == 4 else x_sk
    y_shape = (*rows[:-1], n, rows[-1]) if matmul == 3 else (*rows, n)
    feeds = {"X": x}
    z = None
    if with_z:
        z = feeds["Z"] = (rng.standard_normal(y_shape) * 3).astype(np.float32)
    want = _want(x_sk, w, bias, activation, z, matmul)
    before = {key: v.copy() for key, v in feeds.items()}
    model = heads_model(w, matmul, bias=bias, z=with_z, activation=activation)
    (y,) = session(model, threads).run(None, feeds)
    assert all(np.array_equal(feeds[key], before[key]) for key in feeds)
    assert y.shape == y_shape
    close(y, want, k)


@pytest.mark.parametrize("batch", [1, 3])
def test_key_and_context_heads_compute_attention(batch, isa, threads):
    """The layout the lowering writes for one attention (passes/lower_to_sparse_ops/heads.py):
    the key product with matmul=3 reshaped to (B, H, D, S) is Kᵀ per head, the query's the
    same transposed back, and the output product with matmul=4 reads Vᵀ·Pᵀ reshaped to
    (B, N, S), against the untransposed MatMuls."""
    rng = np.random.default_rng(batch)
    s, heads, d = 40, 4, 8
    n = heads * d
    wq, wk, wv, wo = (sparse_weight(rng, n, n, 0.3) for _ in range(4))
    inits, nodes = [], []
    for tag, w, matmul in (("q", wq, 3), ("k", wk, 3), ("v", wv, 3)):
        i, names = csr_inits(w, prefix=f"{tag}.")
        inits += i
        nodes.append(helper.make_node("CsrGemm", ["X", *names], [f"{tag}T"], domain=DOMAIN, matmul=matmul))
        nodes.append(helper.make_node("Reshape", [f"{tag}T", "hT_shape"], [f"{tag}h"]))
    inits.append(numpy_helper.from_array(np.array([0, heads, d, -1], np.int64), "hT_shape"))
    inits.append(numpy_helper.from_array(np.array([0, n, -1], np.int64), "x_shape"))
    io, onames = csr_inits(wo, prefix="o.")
    inits += io
    nodes += [
        helper.make_node("Transpose", ["qh"], ["q"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kh"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
        helper.make_node("Transpose", ["p"], ["pT"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["vh", "pT"], ["ctxT"]),
        helper.make_node("Reshape", ["ctxT", "x_shape"], ["xT"]),
        helper.make_node("CsrGemm", ["xT", *onames], ["Y"], domain=DOMAIN, matmul=4),
    ]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    x = rng.standard_normal((batch, s, n)).astype(np.float32)
    (y,) = session(helper.make_model(graph, opset_imports=OPSETS), threads).run(None, {"X": x})

    def split(t):  # (B, S, N) -> (B, H, S, D)
        return t.reshape(batch, s, heads, d).transpose(0, 2, 1, 3)

    x64 = x.astype(np.float64)
    q, k, v = (split(x64 @ w.T) for w in (wq, wk, wv))
    scores = q @ swap(k)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(batch, s, n)
    close(y, ctx @ wo.T, n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mmap/mprotect through libc")
@pytest.mark.parametrize("s", [16, 32, 45, 64, 128, 130, 320])
def test_batches_read_in_place_stay_inside_them(s, isa, threads):
    """matmul=4 whose batches of S rows are each a whole number of tiles reads X's rows as the
    planes, in place, one batch's tiles inside that batch: X ends right before a PROT_NONE page,
    so a tile reading past it faults (S not whole tiles takes copied planes). X is left as it
    was."""
    from tests.test_runtime_ops_guarded import GuardedBuffers

    rng = np.random.default_rng(s)
    buffers = GuardedBuffers()
    try:
        for batch, k, n, density in ((1, 7, 70, 0.5), (1, 300, 130, 0.1), (2, 48, 40, 0.2), (3, 33, 50, 0.3),
                                     (5, 64, 100, 0.15)):
            w = sparse_weight(rng, n, k, density)
            bias = rng.standard_normal(n).astype(np.float32)
            xt = buffers.place(rng.standard_normal((batch, k, s)).astype(np.float32))
            before = xt.copy()
            (y,) = session(heads_model(w, 4, bias=bias), threads).run(None, {"X": xt})
            assert np.array_equal(xt, before)
            close(y, swap(xt).astype(np.float64) @ w.T.astype(np.float64) + bias, k)
    finally:
        buffers.free()


@pytest.mark.parametrize(
    "x_shape,matmul,expected",
    [(["b", 5, 20], 3, ["b", 7, 5]), (["b", 20, "s"], 4, ["b", "s", 7]), ([2, 3, 5, 20], 3, [2, 3, 7, 5]),
     ([20, 4], 4, [4, 7]), ([20], 3, [])],
    ids=["heads", "context", "4d", "2d", "rank1_unknown"],
)
def test_output_shape_is_inferred(x_shape, matmul, expected):
    """Through a Relu, so the shape reached the graph output only if ORT propagated it; X of
    rank 1 gives no shape (the kernel refuses it at run time)."""
    sess = session(base._shape_model("CsrGemm", x_shape, relu=True, matmul=matmul))
    assert sess.get_outputs()[0].shape == expected


def test_bad_ranks_and_z_shapes_are_refused():
    """X of rank 1 with matmul 3 or 4 (no batch of rows to transpose) and a Z of the
    untransposed shape are refused at run time with a message, not computed."""
    w = sparse_weight(np.random.default_rng(0), 8, 6, 0.5)
    for matmul in (3, 4):
        with pytest.raises(Exception, match="rank >= 2 with matmul = " + str(matmul)):
            session(heads_model(w, matmul)).run(None, {"X": np.ones(6, np.float32)})
    x = np.ones((2, 4, 6), np.float32)
    with pytest.raises(Exception, match="Z"):  # Z of the untransposed (..., S, N) shape
        session(heads_model(w, 3, z=True)).run(None, {"X": x, "Z": np.zeros((2, 4, 8), np.float32)})
    (y,) = session(heads_model(w, 3, z=True)).run(None, {"X": x, "Z": np.zeros((2, 8, 4), np.float32)})
    assert y.shape == (2, 8, 4)
