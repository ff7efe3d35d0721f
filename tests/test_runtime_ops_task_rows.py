"""Rows per tile task (runtime_ops/src/ops.cc PoolSeen): CsrGemm's tiled product and CsrConv's
tiles give each task 64 output rows while the session's pool may have several threads, and 1024
(CsrGemm) or 512 (CsrConv) once three calls have run every task on the calling thread. The
split changes which rows share a task, never a row's order of sums, so every call's output is
the same float for float: the first calls' (64 rows), the later ones' (1024 or 512), and those
of ONNXPRUNE_TASK_ROWS forcing ragged splits (1, 7, 100, 512 rows) or one task for all (1024).
Layers of more rows than a task holds (1100 features, 600 channels), with bias, Z and an
activation, on every ISA, against a float64 reference; a bad ONNXPRUNE_TASK_ROWS is refused.
The larger tasks never leave a one-tile layer of more than 64 rows a single task
(onnxprune_ops_task_rows), so a pool's other threads can still be seen taking some, and a
wrong guess of one thread corrects itself."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import test_runtime_ops as base
from tests.test_runtime_ops import DOMAIN, close, conv_reference, csr_inits, session, sparse_weight
from tests.test_runtime_ops_residual import residual_model

lib, isa = base.lib, base.isa

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 7)]
CALLS = 6  # past PoolSeen::kCallsToTrust


def gemm_model(w, bias):
    inits, names = csr_inits(w)
    inits.append(numpy_helper.from_array(bias, "C"))
    node = helper.make_node("CsrGemm", ["X", *names, "C", "Z"], ["Y"], domain=DOMAIN, matmul=1, activation="Relu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None),
                                            helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS)


def _calls(model, feeds, threads):
    sess = session(model, threads)
    return [sess.run(None, feeds)[0] for _ in range(CALLS)]


def _gemm_case():
    rng = np.random.default_rng(11)
    n, k, m = 1100, 300, 100
    w = sparse_weight(rng, n, k, 0.1)
    bias = rng.standard_normal(n).astype(np.float32)
    feeds = {"X": rng.standard_normal((m, k)).astype(np.float32),
             "Z": rng.standard_normal((m, n)).astype(np.float32)}
    want = np.maximum(feeds["X"].astype(np.float64) @ w.T.astype(np.float64) + bias + feeds["Z"], 0.0)
    return gemm_model(w, bias), feeds, want, k


def _conv_case():
    rng = np.random.default_rng(12)
    w4 = rng.standard_normal((600, 40, 3, 3)).astype(np.float32)
    w4[rng.random(w4.shape) >= 0.2] = 0.0
    b = rng.standard_normal(600).astype(np.float32)
    x = rng.standard_normal((2, 40, 20, 20)).astype(np.float32)
    conv = conv_reference(x, w4, b, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    z = rng.standard_normal(conv.shape).astype(np.float32)
    model = residual_model(w4, b, strides=(1, 1), pads=(1, 1, 1, 1), activation="Relu")
    return model, {"X": x, "Z": z}, np.maximum(conv + z, 0.0), 40 * 9


@pytest.mark.parametrize("case", [_gemm_case, _conv_case], ids=["gemm", "conv"])
def test_every_split_of_the_rows_gives_the_same_output(case, isa, monkeypatch):
    model, feeds, want, k = case()
    monkeypatch.delenv("ONNXPRUNE_TASK_ROWS", raising=False)
    first = _calls(model, feeds, 1)
    close(first[0], want, k)
    for y in first[1:]:  # 64-row tasks, then 1024 or 512 once one thread is all the pool has shown
        assert np.array_equal(y, first[0])
    for threads in (2,):
        assert all(np.array_equal(y, first[0]) for y in _calls(model, feeds, threads))
    for rows in ("1", "7", "100", "512", "1024"):
        monkeypatch.setenv("ONNXPRUNE_TASK_ROWS", rows)
        for threads in (1, 2):
            assert all(np.array_equal(y, first[0]) for y in _calls(model, feeds, threads)), (rows, threads)


@pytest.mark.parametrize("bad", ["0", "1025", "-4", "64x", "many"])
def test_a_bad_task_rows_setting_is_refused(bad, monkeypatch):
    model, feeds, _, _ = _gemm_case()
    monkeypatch.setenv("ONNXPRUNE_TASK_ROWS", bad)
    with pytest.raises(Exception, match="ONNXPRUNE_TASK_ROWS"):
        session(model).run(None, feeds)


def _split(lib, asked, rows, tiles):
    f = lib.onnxprune_ops_task_rows
    f.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    f.restype = ctypes.c_int64
    return f(asked, rows, tiles)


def test_larger_tasks_leave_every_loop_of_more_than_64_rows_two_tasks(lib, monkeypatch):
    monkeypatch.delenv("ONNXPRUNE_TASK_ROWS", raising=False)
    for rows in range(1, 2100):
        assert _split(lib, 64, rows, 1) == 64
        assert _split(lib, 512, rows, 3) == 512  # several tiles: several tasks whatever the rows
        got = _split(lib, 512, rows, 1)
        assert 64 <= got <= 512 and got % 64 == 0, (rows, got)
        if rows > 64:
            assert -(-rows // got) >= 2, (rows, got)
        if rows >= 1024:
            assert got == 512
        got = _split(lib, 1024, rows, 1)  # CsrGemm's
        assert 64 <= got <= 1024 and got % 64 == 0 and (rows <= 64 or -(-rows // got) >= 2), (rows, got)
    monkeypatch.setenv("ONNXPRUNE_TASK_ROWS", "7")
    assert _split(lib, 7, 5000, 1) == 7  # forced: as is
    monkeypatch.setenv("ONNXPRUNE_TASK_ROWS", "1025")
    assert _split(lib, 64, 100, 1) == -1
