"""ONNX Runtime's fused SkipLayerNormalization against the Add and LayerNormalization it replaces.

A transformer sublayer ends in ``LayerNorm(Add(MatMul(x) + b, x))``; ONNX Runtime's graph
optimizer fuses the residual Add and the LayerNorm into its contrib ``SkipLayerNormalization``.
A lowered model whose ``CsrGemm`` reads the residual as its input ``Z`` (op-set 6,
runtime_ops/README.md) leaves only the LayerNormalization. This script times, in one process
with the calls alternating, (1) ``Add`` + ``LayerNormalization`` as two nodes (graph
optimizations at the basic level, so they stay two) and (2) the ``SkipLayerNormalization``
ONNX Runtime makes of them at its default level, on ``(1, rows, hidden)`` float32 inputs::

    python bench/ab_skip_layernorm.py                      # BERT-base shapes: 128 x 768
    python bench/ab_skip_layernorm.py --rows 384 --hidden 1024 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from bench_models import machine  # noqa: E402  (CPU model and family, caches, date, load)


def add_layernorm(rows: int, hidden: int) -> onnx.ModelProto:
    x, s = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, rows, hidden]) for n in ("x", "s"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    rng = np.random.default_rng(0)
    g = numpy_helper.from_array((rng.random(hidden) + 0.5).astype(np.float32), "g")
    b = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b")
    nodes = [helper.make_node("Add", ["x", "s"], ["a"]),
             helper.make_node("LayerNormalization", ["a", "g", "b"], ["y"], axis=-1, epsilon=1e-12)]
    return helper.make_model(helper.make_graph(nodes, "add_ln", [x, s], [y], [g, b]),
                             opset_imports=[helper.make_opsetid("", 17)])


def session(model: onnx.ModelProto, level, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128, help="batch x sequence (default 128)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args(argv)
    model = add_layernorm(a.rows, a.hidden)
    basic = session(model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, a.threads)
    fused = session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, a.threads)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((1, a.rows, a.hidden)).astype(np.float32) for n in ("x", "s")}
    y0, y1 = basic.run(None, feeds)[0], fused.run(None, feeds)[0]
    diff = float(np.abs(y0 - y1).max())
    times: dict[str, list[float]] = {"add_layernorm": [], "skip_layernorm": []}
    for r in range(a.rounds + 20):
        for name, s in (("add_layernorm", basic), ("skip_layernorm", fused)):
            t = time.perf_counter()
            s.run(None, feeds)
            if r >= 20:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    info = machine()
    print(f"{info.get('Model name', '?')}, lscpu family {info.get('CPU family', '?')}, {info.get('date')}, "
          f"ONNX Runtime {info.get('onnxruntime')}, load {info.get('load_average')}; {a.threads} thread(s), "
          f"(1, {a.rows}, {a.hidden}), {a.rounds} rounds, medians")
    print(f"Add + LayerNormalization {med['add_layernorm']:.4f} ms, SkipLayerNormalization "
          f"{med['skip_layernorm']:.4f} ms: the fused op at {med['add_layernorm'] / med['skip_layernorm']:.2f}x "
          f"the speed of the two nodes; outputs differ by {diff:.1e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "rows": a.rows, "hidden": a.hidden, "threads": a.threads,
                       "median_ms": med, "max_abs_difference": diff}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
