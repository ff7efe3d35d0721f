"""Kernel benchmark: ONNX Runtime dense ops vs onnxprune's native CSR ops, same process.

Models are built in code from random weights, magnitude-pruned per layer to a target density
(keep the largest |w|), so the numbers depend only on shapes and densities. Each case runs the
dense model (Gemm/Conv) and the lowered model (CsrGemm/CsrConv) under identical session
options, alternating call by call; times are medians over repeats of one `session.run`.
Batch-1 MLP rows also report the rate each side read its weights at (bytes / time, GB/s).

    python bench/bench_kernels.py                 # the standard table (few minutes)
    python bench/bench_kernels.py --quick         # fewer repeats
    python bench/bench_kernels.py --sweep         # add the single-layer grid behind the cost model
    python bench/bench_kernels.py --json out.json
    python bench/bench_kernels.py --warm          # add steady-state batch-1 rows
    python bench/bench_kernels.py --deepsparse-python .deepsparse-venv/bin/python  # + DeepSparse

Because the dense call runs between two sparse calls and streams far more than the L3 holds,
the CSR arrays come from memory on every sparse call, as they would inside a larger model.
That is the figure targets are judged on. ``--warm`` adds, for batch 1, the steady state of a
server that runs only this model: calls back to back in blocks, blocks alternating between the
two models; there a pruned layer whose CSR arrays fit in L3 (VGG fc6 at 4%: 24.7 MB) is read
from cache, which is the effect the paper counts on (its §1), while the dense one never fits.

With an interpreter that has DeepSparse 1.8 (``--deepsparse-python``, as in bench_models.py:
default ``$ONNXPRUNE_DEEPSPARSE_PYTHON`` or .deepsparse-venv/bin/python when present, ``none``
to skip), each case's dense pruned model, its input shape made static, is also timed there
(bench/deepsparse_ref.py, its own process and thread pool, outputs checked against ONNX
Runtime's): a row adds DeepSparse's median and the ratio of this process's dense time to it.
The two figures come from two processes, so read that ratio as indicative; the
onnxprune-against-dense ratio beside it is the same-process one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from bench_models import deepsparse_python, run_deepsparse  # noqa: E402
from onnxprune import runtime_ops  # noqa: E402

OPSET = [helper.make_opsetid("", 17), helper.make_opsetid(runtime_ops.DOMAIN, 1)]


def magnitude_prune(w: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the `density` fraction of entries with the largest magnitude."""
    keep = int(round(density * w.size))
    out = np.zeros_like(w)
    if keep:
        flat = np.abs(w).ravel()
        idx = np.argpartition(flat, w.size - keep)[w.size - keep:]
        out.ravel()[idx] = w.ravel()[idx]
    return out


def mlp_models(dims: list[int], densities: list[float], rng: np.random.Generator,
               values: str = "fp32") -> tuple[bytes, bytes, int, int]:
    """Dense (Gemm) and sparse (CsrGemm) versions of a ReLU MLP with the same pruned weights,
    plus the weight bytes each reads per call (dense matrices; CSR values + indices + row_ptr).
    ``values="fp16"``: the CSR stores float16 values (op contract v2); the weights are rounded
    to float16 first, so both models compute with the same numbers."""
    dense_nodes, sparse_nodes, dense_init, sparse_init = [], [], [], []
    dense_bytes = sparse_bytes = 0
    x = "X"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        w = magnitude_prune((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), densities[i])
        if values == "fp16":
            w = w.astype(np.float16).astype(np.float32)
        b = (0.01 * rng.standard_normal(n)).astype(np.float32)
        v, c, p = runtime_ops.csr_from_dense(w)
        if values == "fp16":
            v = v.astype(np.float16)
        dense_bytes += w.nbytes
        sparse_bytes += v.nbytes + c.nbytes + p.nbytes
        out = f"h{i}" if i < len(dims) - 2 else "Y"
        pre = out + "_pre" if out != "Y" else "Y"
        dense_init += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        sparse_init += [numpy_helper.from_array(a, f"{name}{i}") for a, name in ((v, "v"), (c, "c"), (p, "p"))]
        sparse_init.append(numpy_helper.from_array(b, f"B{i}"))
        dense_nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [pre], transB=1))
        sparse_nodes.append(
            helper.make_node("CsrGemm", [x, f"v{i}", f"c{i}", f"p{i}", f"B{i}"], [pre], domain=runtime_ops.DOMAIN)
        )
        if out != "Y":
            dense_nodes.append(helper.make_node("Relu", [pre], [out]))
            sparse_nodes.append(helper.make_node("Relu", [pre], [out]))
        x = out
    io = ([helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", dims[0]])],
          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", dims[-1]])])
    dense = helper.make_model(helper.make_graph(dense_nodes, "dense", *io, initializer=dense_init),
                              opset_imports=OPSET[:1])
    sparse = helper.make_model(helper.make_graph(sparse_nodes, "sparse", *io, initializer=sparse_init),
                               opset_imports=OPSET)
    return dense.SerializeToString(), sparse.SerializeToString(), dense_bytes, sparse_bytes


def conv_models(c_in: int, c_out: int, k: int, density: float, rng: np.random.Generator,
                stride: int = 1, group: int = 1, x_shape=None) -> tuple[bytes, bytes]:
    cg = c_in // group
    w = magnitude_prune((rng.standard_normal((c_out, cg, k, k)) / np.sqrt(cg * k * k)).astype(np.float32), density)
    b = (0.01 * rng.standard_normal(c_out)).astype(np.float32)
    v, c, p = runtime_ops.csr_from_dense(w.reshape(c_out, -1))
    attrs = dict(kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], group=group)
    io = ([helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    dense = helper.make_graph([helper.make_node("Conv", ["X", "W", "B"], ["Y"], **attrs)], "dense", *io,
                              initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    sparse = helper.make_graph(
        [helper.make_node("CsrConv", ["X", "v", "c", "p", "B"], ["Y"], domain=runtime_ops.DOMAIN, **attrs)],
        "sparse", *io,
        initializer=[numpy_helper.from_array(a, n) for a, n in ((v, "v"), (c, "c"), (p, "p"), (b, "B"))])
    return (helper.make_model(dense, opset_imports=OPSET[:1]).SerializeToString(),
            helper.make_model(sparse, opset_imports=OPSET).SerializeToString())


def make_session(model: bytes, threads: int, sparse: bool, env: dict | None = None) -> ort.InferenceSession:
    """A session of ``model``; ``env``: ONNXPRUNE_* settings in force while the library's kernels
    are created (they read them then), restored afterwards."""
    if env:
        with mock.patch.dict(os.environ, env):
            return make_session(model, threads, sparse)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # the sessions are called in turn: spinning workers of one would slow the other
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if sparse:
        opts.register_custom_ops_library(runtime_ops.library_path())
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def time_pair(dense: bytes, sparse: bytes, feed: dict, threads: int, repeats: int,
              block: int = 1, env: dict | None = None) -> tuple[float, float]:
    """Median ms of one run of each model.

    ``block=1`` (the default, what targets are judged on): the two sessions alternate call by
    call, so both see the same background load (this is usually a shared machine), and the
    dense call between two sparse ones evicts the CSR arrays from cache, as the rest of a real
    model would: the sparse figure is the from-memory one, not a warm-L3 best case.

    ``block=B > 1``: steady state, as a server running only this model sees it: calls back to
    back in blocks of B, the sessions alternating block by block; the first call of a block,
    which follows the other model, is not counted, so whatever of a model's weights the caches
    keep between its own calls (the CSR arrays of a pruned layer may fit in L3; dense ones of
    this size do not) stays there.

    ``env``: settings the sparse session's kernels are made under (make_session)."""
    t_dense, t_sparse = time_sessions([make_session(dense, threads, False), make_session(sparse, threads, True, env)],
                                      feed, repeats, block)
    return t_dense, t_sparse


def time_sessions(sessions: list, feed: dict, repeats: int, block: int = 1) -> list[float]:
    """Median ms of one run of each session, the sessions called in turn (time_pair). With more
    than two, every other round calls the ones after the first in reverse order, so each of them
    follows the first (the dense reference, which evicts their arrays) as often as the others:
    the session called right after it ran up to 20% slower than the same path called next."""
    for _ in range(3):
        for s in sessions:
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    budget = time.perf_counter() + 40.0
    counted = range(1, block) if block > 1 else range(1)
    order = list(range(len(sessions)))
    for round_ in range(max(2, -(-repeats // len(counted)))):
        turn = order if round_ % 2 == 0 or len(order) < 3 else order[:1] + order[:0:-1]
        for s, t in ((sessions[i], times[i]) for i in turn):
            for i in range(block):
                t0 = time.perf_counter()
                s.run(None, feed)
                if i in counted:
                    t.append(time.perf_counter() - t0)
        if time.perf_counter() > budget and len(times[0]) >= 5:
            break
    return [statistics.median(t) * 1e3 for t in times]


@dataclass
class Case:
    name: str
    kind: str  # "mlp" | "conv"
    spec: dict
    batches: list[int]
    targets: dict = field(default_factory=dict)  # batch -> minimum speed-up wanted


def standard_cases() -> list[Case]:
    return [
        Case("AlexNet FC 9216-4096-4096-1000 @ 9/9/25%", "mlp",
             dict(dims=[9216, 4096, 4096, 1000], densities=[0.09, 0.09, 0.25]), [1, 64], {1: 6.0, 64: 3.0}),
        Case("VGG-16 fc6 25088-4096 @ 4%", "mlp", dict(dims=[25088, 4096], densities=[0.04]), [1, 64], {1: 10.0}),
        Case("AlexNet FC @ 9/9/25%, fp16 values", "mlp",
             dict(dims=[9216, 4096, 4096, 1000], densities=[0.09, 0.09, 0.25], values="fp16"), [1], {1: 6.0}),
        Case("VGG-16 fc6 @ 4%, fp16 values", "mlp", dict(dims=[25088, 4096], densities=[0.04], values="fp16"), [1],
             {1: 10.0}),
        Case("LeNet-300-100 784-300-100-10 @ 8/9/26%", "mlp",
             dict(dims=[784, 300, 100, 10], densities=[0.08, 0.09, 0.26]), [1, 64], {1: 1.0, 64: 1.5}),
        Case("Conv 64->64 3x3 56x56 @ 10%", "conv", dict(c_in=64, c_out=64, k=3, hw=56, density=0.10), [1, 8]),
        Case("Conv 64->64 3x3 56x56 @ 30%", "conv", dict(c_in=64, c_out=64, k=3, hw=56, density=0.30), [1, 8],
             {1: 2.2}),
        Case("Conv 64->64 3x3 56x56 @ 50%", "conv", dict(c_in=64, c_out=64, k=3, hw=56, density=0.50), [1, 8],
             {1: 1.3}),
        Case("Conv 128->128 3x3 28x28 @ 10%", "conv", dict(c_in=128, c_out=128, k=3, hw=28, density=0.10), [1]),
        Case("Conv 256->256 3x3 14x14 @ 30%", "conv", dict(c_in=256, c_out=256, k=3, hw=14, density=0.30), [1, 8]),
        Case("Conv 512->512 3x3 7x7 @ 10%", "conv", dict(c_in=512, c_out=512, k=3, hw=7, density=0.10), [1]),
        # VGG-16's largest maps at the paper's densities: shifted copies band by band (ops.cc BandRows).
        Case("Conv 64->64 3x3 224x224 @ 22% (VGG conv1_2)", "conv",
             dict(c_in=64, c_out=64, k=3, hw=224, density=0.22), [1]),
        Case("Conv 128->128 3x3 112x112 @ 36% (VGG conv2_2)", "conv",
             dict(c_in=128, c_out=128, k=3, hw=112, density=0.36), [1]),
        Case("Conv 64->64 3x3 224x224 @ 10%", "conv", dict(c_in=64, c_out=64, k=3, hw=224, density=0.10), [1]),
        Case("Conv 64->256 1x1 56x56 @ 10%", "conv", dict(c_in=64, c_out=256, k=1, hw=56, density=0.10), [1]),
        Case("Conv 256->64 1x1 56x56 @ 10%", "conv", dict(c_in=256, c_out=64, k=1, hw=56, density=0.10), [1]),
        Case("Conv 256->512 1x1/2 56x56 @ 10%", "conv",
             dict(c_in=256, c_out=512, k=1, hw=56, density=0.10, stride=2), [1]),
        # BERT-base encoder MatMuls, sequence 128 (the rows of X), 10% density.
        Case("BERT-base 768->768 x128 @ 10%", "mlp", dict(dims=[768, 768], densities=[0.10]), [128]),
        Case("BERT-base 768->3072 x128 @ 10%", "mlp", dict(dims=[768, 3072], densities=[0.10]), [128]),
        Case("BERT-base 3072->768 x128 @ 10%", "mlp", dict(dims=[3072, 768], densities=[0.10]), [128]),
        # VGG-16's 28x28 layers (last, so the cases above keep the weights they had).
        Case("Conv 512->512 3x3 28x28 @ 27% (VGG conv4_2)", "conv",
             dict(c_in=512, c_out=512, k=3, hw=28, density=0.27), [1]),
    ]


def sweep_cases(values: str = "fp32") -> list[Case]:
    """The single-layer density grid; ``values="fp16"``: the CSRs store float16 values."""
    cases = []
    suffix = ", fp16 values" if values == "fp16" else ""
    for rows, cols in ((4096, 4096), (1024, 1024), (4096, 25088)):
        for d in (0.02, 0.05, 0.10, 0.20, 0.35, 0.50):
            cases.append(Case(f"FC {cols}->{rows} @ {d:.0%}{suffix}", "mlp",
                              dict(dims=[cols, rows], densities=[d], values=values), [1, 8, 64]))
    return cases


def static_input(model: bytes, shape: tuple) -> onnx.ModelProto:
    """The model with its input ``X`` given ``shape`` (DeepSparse compiles for fixed shapes)."""
    m = onnx.load_from_string(model)
    dims = m.graph.input[0].type.tensor_type.shape
    dims.Clear()
    for d in shape:
        dims.dim.add().dim_value = int(d)
    return m


def time_deepsparse(ds_py: str, dense: bytes, feed: dict, threads: int, repeats: int) -> dict:
    """DeepSparse's timing of the dense pruned model on ``feed`` (bench_models.run_deepsparse),
    its outputs compared with ONNX Runtime's."""
    ref_sess = make_session(dense, threads, False)
    ref = ref_sess.run(None, feed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dense.onnx")
        onnx.save(static_input(dense, feed["X"].shape), path)
        return run_deepsparse(ds_py, path, feed, ref, threads, repeats, tmp, timeout=600)


def with_winograd(sparse: bytes) -> bytes:
    """The CsrConv model ``sparse`` with its node computing by the Winograd path (winograd=1)."""
    model = onnx.load_from_string(sparse)
    for node in model.graph.node:
        node.attribute.append(helper.make_attribute("winograd", 1))
    return model.SerializeToString()


def winograd_eligible(case: Case) -> bool:
    """A conv case CsrConv's Winograd path takes: 3x3 at unit stride (conv_models: one group)."""
    return case.kind == "conv" and case.spec["k"] == 3 and case.spec.get("stride", 1) == 1


def run_case(case: Case, threads_list: list[int], repeats: int, rng: np.random.Generator,
             warm: bool = False, ds_py: str | None = None, winograd: bool = False,
             gemv_lanes: bool = False) -> list[dict]:
    dense_bytes = sparse_bytes = None
    wino = None
    if case.kind == "mlp":
        dense, sparse, dense_bytes, sparse_bytes = mlp_models(case.spec["dims"], case.spec["densities"], rng,
                                                              case.spec.get("values", "fp32"))
    else:
        s = case.spec
        dense, sparse = conv_models(s["c_in"], s["c_out"], s["k"], s["density"], rng, s.get("stride", 1))
        if winograd and winograd_eligible(case):
            wino = with_winograd(sparse)
    rows = []
    for batch in case.batches:
        if case.kind == "mlp":
            x = rng.standard_normal((batch, case.spec["dims"][0])).astype(np.float32)
        else:
            s = case.spec
            x = rng.standard_normal((batch, s["c_in"], s["hw"], s["hw"])).astype(np.float32)
        feed = {"X": x}
        for threads in threads_list:
            t_dense, t_sparse = time_pair(dense, sparse, feed, threads, repeats)
            target = case.targets.get(batch)
            rows.append(dict(case=case.name, batch=batch, threads=threads, dense_ms=round(t_dense, 4),
                             sparse_ms=round(t_sparse, 4), speedup=round(t_dense / t_sparse, 2),
                             target=target, met=None if target is None else bool(t_dense / t_sparse >= target)))
            r = rows[-1]
            rate = ""
            if dense_bytes is not None and batch == 1:
                # Batch 1 streams each weight once per call: bytes / time is the rate the
                # weights were read at (GB/s), the figure to hold against memory bandwidth.
                r["dense_gbps"] = round(dense_bytes / t_dense / 1e6, 2)
                r["sparse_gbps"] = round(sparse_bytes / t_sparse / 1e6, 2)
                r["dense_mb"], r["sparse_mb"] = round(dense_bytes / 1e6, 2), round(sparse_bytes / 1e6, 2)
                rate = f"  [{r['dense_gbps']:.1f} vs {r['sparse_gbps']:.1f} GB/s]"
            verdict = "" if target is None else (f"  target >= {target:g}x: " + ("met" if r["met"] else "MISSED"))
            ds = ""
            if ds_py is not None:
                r["deepsparse"] = time_deepsparse(ds_py, dense, feed, threads, repeats)
                if r["deepsparse"].get("status") == "ok":
                    ms = r["deepsparse"]["median_ms"]
                    ds = f"  DeepSparse {ms:.3f} ms ({t_dense / ms:.2f}x)"
                else:
                    ds = f"  DeepSparse {r['deepsparse'].get('status')}"
            wg = ""
            if wino is not None:
                w_dense, w_ms = time_pair(dense, wino, feed, threads, repeats)
                best = max(t_dense / t_sparse, w_dense / w_ms)
                r["winograd_ms"], r["winograd_speedup"] = round(w_ms, 4), round(w_dense / w_ms, 2)
                r["best_met"] = None if target is None else bool(best >= target)
                wg = (f"  winograd {w_ms:.3f} ms ({w_dense / w_ms:.2f}x)"
                      + ("" if target is None else f", best of both: {'met' if r['best_met'] else 'MISSED'}"))
            lanes = ""
            if gemv_lanes and case.kind == "mlp" and batch == 1:
                # The same sparse model with its batch-1 passes kept on the CSR (no lanes of
                # rows), the three sessions called in turn: the ratio of the two sparse ones
                # comes from one alternation, as its dense reference does.
                c_dense, c_default, c_ms = time_sessions(
                    [make_session(dense, threads, False), make_session(sparse, threads, True),
                     make_session(sparse, threads, True, {"ONNXPRUNE_GEMV_SELL": "0"})], feed, repeats)
                r["csr_pass_ms"], r["csr_pass_speedup"] = round(c_ms, 4), round(c_dense / c_ms, 2)
                r["lanes_over_csr_pass"] = round(c_ms / c_default, 3)
                lanes = (f"  CSR pass {c_ms:.3f} ms ({c_dense / c_ms:.2f}x; "
                         f"default {c_dense / c_default:.2f}x, default / CSR pass {r['lanes_over_csr_pass']:.2f})")
            print(f"{case.name:44s} b={batch:<3d} t={threads}  dense {t_dense:9.3f} ms  "
                  f"csr {t_sparse:9.3f} ms  {t_dense / t_sparse:6.2f}x{rate}{verdict}{wg}{lanes}{ds}", flush=True)
            if warm and batch == 1:
                w_dense, w_sparse = time_pair(dense, sparse, feed, threads, repeats, block=8)
                r["warm_dense_ms"], r["warm_sparse_ms"] = round(w_dense, 4), round(w_sparse, 4)
                r["warm_speedup"] = round(w_dense / w_sparse, 2)
                r["warm_met"] = None if target is None else bool(w_dense / w_sparse >= target)
                wmet = "" if target is None else (f"  (target >= {target:g}x: "
                                                  + ("met" if w_dense / w_sparse >= target else "missed")
                                                  + " in steady state)")
                print(f"{'  steady state (back-to-back calls)':44s} b={batch:<3d} t={threads}  dense "
                      f"{w_dense:9.3f} ms  csr {w_sparse:9.3f} ms  {w_dense / w_sparse:6.2f}x{wmet}",
                      flush=True)
    return rows


def machine_info() -> dict:
    info = {"python": platform.python_version(), "onnxruntime": ort.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "kernel_isa": os.environ.get("ONNXPRUNE_KERNEL_ISA") or "auto",
            "date": time.strftime("%Y-%m-%d")}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "L2 cache", "L3 cache"):
                info[key.strip()] = val.strip()
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--sweep", action="store_true", help="also run the single-layer density grid")
    ap.add_argument("--only-sweep", action="store_true", help="run just the single-layer density grid")
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default 1,2)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--match", metavar="TEXT", help="only the cases whose name contains TEXT")
    ap.add_argument("--warm", action="store_true",
                    help="also time batch 1 in steady state (each model called back to back), "
                         "besides the default call-by-call alternation")
    ap.add_argument("--deepsparse-python", metavar="PATH",
                    help="interpreter with deepsparse installed, to time each case's dense model there too "
                         "(default $ONNXPRUNE_DEEPSPARSE_PYTHON or .deepsparse-venv/bin/python when present; "
                         "'none' to skip)")
    ap.add_argument("--winograd", action="store_true",
                    help="also time each 3x3 unit-stride conv case's CsrConv with winograd=1 (its dense "
                         "reference timed beside it again)")
    ap.add_argument("--sweep-values", choices=["fp32", "fp16"], default="fp32",
                    help="the values the density grid's CSRs store (default fp32)")
    ap.add_argument("--gemv-lanes", action="store_true",
                    help="also time each batch-1 FC case with its CsrGemm passes kept on the CSR "
                         "(ONNXPRUNE_GEMV_SELL=0), beside the default choice of lanes of rows")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    ds_py = deepsparse_python(args.deepsparse_python)
    if ds_py is None and args.deepsparse_python not in (None, "none"):
        print(f"deepsparse: {args.deepsparse_python} is not an interpreter with deepsparse; column skipped",
              file=sys.stderr, flush=True)
    repeats = 10 if args.quick else 30
    rng = np.random.default_rng(args.seed)
    info = machine_info()
    info["loadavg_start"] = os.getloadavg()
    info["deepsparse_python"] = ds_py
    print(json.dumps(info), flush=True)
    cases = [] if args.only_sweep else standard_cases()
    if args.sweep or args.only_sweep:
        cases += sweep_cases(args.sweep_values)
    if args.match:
        cases = [c for c in cases if args.match in c.name]
    results = []
    for case in cases:
        results += run_case(case, threads, repeats, rng, warm=args.warm, ds_py=ds_py, winograd=args.winograd,
                            gemv_lanes=args.gemv_lanes)
    info["loadavg_end"] = os.getloadavg()
    print(f"load average: start {info['loadavg_start']}, end {info['loadavg_end']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
