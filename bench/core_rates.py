"""The ceilings a sparse kernel of runtime_ops's design has on this core, measured.

A CSR tile loop does one vector load of the input per multiply-add (plus one broadcast weight
and one offset per nonzero), where a dense GEMM or convolution reuses each load from registers
many times. So the sparse loop's rate is bounded by how many vector loads the core serves per
cycle, from L1 or from L2, while ONNX Runtime's dense kernels run near the FMA units' peak; a
layer at density d can then run at most (sparse rate / dense rate) / d times faster than dense,
before any fixed cost (input copies, transposes, partial sums). This script measures both
sides on this core, 1 thread, and prints those ceilings for the issue's target cases:

* ``bench/core_rates.cc`` (compiled here with ``$CXX``, default ``c++``): the clock (a chain of
  dependent FMAs, 4 cycles each on Golden Cove, Zen 4 and Zen 5), the FMA units alone, FMAs
  each with one aligned L1 load, and the tile loop (V = 4, 8, 12 vectors) over a 32 KB (L1)
  and a 1 MB (L2) window;
* ONNX Runtime's dense Conv 3×3 64→64 on 56×56 and MatMul 128×768 · 768×3072, in this process.

    python bench/core_rates.py                 # pin it: taskset -c 1 python bench/core_rates.py
    python bench/core_rates.py --json rates.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from bench_models import machine  # noqa: E402  (CPU model and family, caches, date, load)

FMA_LATENCY_CYCLES = 4  # vfmadd on Golden Cove / Sapphire Rapids, Zen 4 and Zen 5


def native_rates(cxx: str, runs: int = 3) -> dict:
    """Compiles core_rates.cc and runs it ``runs`` times; the best of each figure (the highest
    rate, the shortest FMA chain: an interrupted run only ever reads slower). Rates in
    lane-FMA/s."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "core_rates")
        subprocess.run([cxx, "-O3", "-std=c++17", "-o", exe, os.path.join(HERE, "core_rates.cc")],
                       check=True, capture_output=True, text=True)
        results = [json.loads(subprocess.run([exe], check=True, capture_output=True, text=True).stdout)
                   for _ in range(runs)]
    best = dict(results[0])
    for r in results[1:]:
        for k, v in r.items():
            if isinstance(v, float):
                best[k] = min(best[k], v) if k == "chain_ns" else max(best[k], v)
    return best


def median_ms(session, feeds, rounds: int) -> float:
    """Median milliseconds of ``rounds`` calls of ``session`` on ``feeds``, after 5 warm-up calls."""
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def one_thread_session(model):
    """An ONNX Runtime CPU session of ``model`` (a ModelProto) on one intra-op thread."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def dense_rates(rounds: int) -> dict:
    """ONNX Runtime's dense multiply-adds per second (1 thread) on a convolution and a product
    of the issue's shapes: {name: (ms, lane-FMA/s)}."""
    rng = np.random.default_rng(0)
    cases = {
        "conv3x3_64_56": ((1, 64, 56, 56), (64, 64, 3, 3), 64 * 64 * 9 * 56 * 56),
        "matmul_128x768x3072": ((1, 128, 768), (768, 3072), 128 * 768 * 3072),
    }
    out = {}
    for name, (x_shape, w_shape, macs) in cases.items():
        w = numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W")
        if name.startswith("conv"):
            node = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        else:
            node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        s = one_thread_session(model)
        ms = median_ms(s, {"X": rng.standard_normal(x_shape).astype(np.float32)}, rounds)
        out[name] = (ms, macs / (ms * 1e-3))
    return out


# (case, density, dense kernel it is compared with, issue target)
TARGETS = [
    ("3x3 conv 64->64 on 56x56 @ 30%", 0.30, "conv3x3_64_56", 2.2),
    ("3x3 conv 64->64 on 56x56 @ 50%", 0.50, "conv3x3_64_56", 1.3),
    ("ResNet-50's convolutions @ 10%", 0.10, "conv3x3_64_56", 2.5),
    ("BERT-base products @ 10% (whole layer target)", 0.10, "matmul_128x768x3072", 4.5),
    ("VGG-16 convolutions @ ~30%", 0.30, "conv3x3_64_56", 2.0),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=60, help="timed calls of each dense kernel")
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args(argv)
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        print(f"core_rates: no C++ compiler {cxx!r} (set CXX)", file=sys.stderr)
        return 2
    rates = native_rates(cxx)
    if "error" in rates:
        print(f"core_rates: {rates['error']}", file=sys.stderr)
        return 1
    dense = dense_rates(a.rounds)
    info = machine()
    ghz = FMA_LATENCY_CYCLES / rates["chain_ns"]
    lanes = rates["lanes"]
    g = 1e9
    print(f"{info.get('Model name', '?')}, lscpu family {info.get('CPU family', '?')}, L1d {info.get('L1d cache')}, "
          f"L2 {info.get('L2 cache')}, {info.get('date')}, ONNX Runtime {info.get('onnxruntime')}, "
          f"load {info.get('load_average')}; 1 thread, {rates['isa']}")
    print(f"clock ~{ghz:.2f} GHz (dependent FMA {rates['chain_ns']:.3f} ns at {FMA_LATENCY_CYCLES} cycles); "
          f"FMA units {rates['regs'] / g:.1f} G lane-FMA/s ({rates['regs'] / lanes / (ghz * g):.2f} FMAs/cycle); "
          f"FMA + one L1 load each {rates['l1_load'] / g:.1f} G "
          f"({rates['l1_load'] / lanes / (ghz * g):.2f} loads/cycle)")
    l1 = max(rates[f"tile_l1_v{v}"] for v in (4, 8, 12))
    l2 = max(rates[f"tile_l2_v{v}"] for v in (4, 8, 12))
    print("tile loop (G lane-FMA/s), V = 4 / 8 / 12 vectors: window in L1 "
          + " / ".join(f"{rates[f'tile_l1_v{v}'] / g:.1f}" for v in (4, 8, 12))
          + ", in L2 " + " / ".join(f"{rates[f'tile_l2_v{v}'] / g:.1f}" for v in (4, 8, 12)))
    for name, (ms, rate) in dense.items():
        print(f"ONNX Runtime dense {name}: {ms:.3f} ms, {rate / g:.1f} G lane-FMA/s "
              f"({rate / lanes / (ghz * g):.2f} FMAs/cycle)")
    print("ceilings, (sparse loop rate / dense rate) / density, before any fixed cost:")
    rows = []
    for case, density, kernel, target in TARGETS:
        dense_rate = dense[kernel][1]
        c1, c2 = l1 / dense_rate / density, l2 / dense_rate / density
        rows.append({"case": case, "density": density, "target": target, "ceiling_l1": c1, "ceiling_l2": c2})
        verdict = "within reach" if c2 >= target else ("only with the window in L1" if c1 >= target else "out of reach")
        print(f"  {case}: window in L1 {c1:.2f}x, in L2 {c2:.2f}x; target {target}x: {verdict}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "native": rates, "clock_ghz": ghz,
                       "dense": {k: {"ms": v[0], "lane_fma_per_s": v[1]} for k, v in dense.items()},
                       "ceilings": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
