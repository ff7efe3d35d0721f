"""How fast a Winograd F(4×4, 3×3) dense path would run the denser 3×3 layers on this core.

DeepSparse runs 3×3 layers at unit stride from about 20% density as dense layers with a fast
algorithm, twice ONNX Runtime's direct dense speed on a Zen 4 class core (docs/BENCHMARKS.md,
`bench/bench_kernels.py --deepsparse-python`), which is where it leads onnxprune's sparse
kernels. This script measures a plain version of that algorithm here, 1 thread, beside ONNX
Runtime's dense convolution of the same layer in this process:

* ``bench/winograd_probe.cc`` (compiled here with ``$CXX``, default ``c++``; AVX-512F only,
  H a multiple of 4, pads 1; tiles in chunks of 48 or all at once, whichever is faster, no
  blocking over channels): the median call, its three steps (input transform, 36 products,
  output transform) and its error against a float64 direct convolution, relative to the
  largest output (F(4×4, 3×3) errs ~10× more than a direct float32 sum);
* ONNX Runtime's `Conv` of the same shape, random weights, median of ``--rounds`` calls.

    python bench/winograd_probe.py                       # pin it: taskset -c 1 python ...
    python bench/winograd_probe.py --layers 64x64x56,512x512x28 --json probe.json

Not a kernel of the library: the measurement that sized one. The library's own path is
``CsrConv``'s ``winograd=1`` (runtime_ops/src/winograd.cc, ``onnxprune lower --winograd``),
timed by ``bench/bench_kernels.py --winograd`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from bench_models import machine  # noqa: E402  (CPU model and family, caches, date, load)
from core_rates import median_ms, one_thread_session  # noqa: E402

# C x K x H: bench_kernels' 3x3 cases at unit stride, VGG-16's conv1_2, conv2_2 and conv4_2 among them
DEFAULT_LAYERS = "64x64x56,256x256x56,512x512x28,128x128x112,64x64x224"


def parse_layers(text: str) -> list[tuple[int, int, int]]:
    layers = []
    for item in text.split(","):
        try:
            c, k, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--layers item {item!r} is not CxKxH") from None
        if not (1 <= c <= 4096 and 8 <= k <= 4096 and k % 8 == 0 and 4 <= h <= 512 and h % 4 == 0):
            raise ValueError(f"--layers item {item!r}: need C in 1..4096, K a multiple of 8 up to 4096, "
                             "H a multiple of 4 up to 512")
        layers.append((c, k, h))
    return layers


def ort_dense_ms(c: int, k: int, h: int, rounds: int) -> float:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32), "W")
    node = helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, h, h])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"X": rng.standard_normal((1, c, h, h)).astype(np.float32)}
    return median_ms(one_thread_session(model), feeds, rounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default=DEFAULT_LAYERS, help=f"CxKxH,... (default {DEFAULT_LAYERS})")
    p.add_argument("--rounds", type=int, default=30, help="timed calls of each ONNX Runtime layer")
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args(argv)
    try:
        layers = parse_layers(a.layers)
    except ValueError as e:
        p.error(str(e))
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        print(f"winograd_probe: no C++ compiler {cxx!r} (set CXX)", file=sys.stderr)
        return 2
    info = machine()
    print(f"{info.get('Model name', '?')}, lscpu family {info.get('CPU family', '?')}, L1d {info.get('L1d cache')}, "
          f"L2 {info.get('L2 cache')}, {info.get('date')}, ONNX Runtime {info.get('onnxruntime')}, "
          f"load {info.get('load_average')}; 1 thread")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "winograd_probe")
        subprocess.run([cxx, "-O3", "-std=c++17", "-o", exe, os.path.join(HERE, "winograd_probe.cc")],
                       check=True, capture_output=True, text=True)
        for c, k, h in layers:
            run = subprocess.run([exe, str(c), str(k), str(h)], capture_output=True, text=True, check=False)
            out = json.loads(run.stdout) if run.stdout.strip() else {"error": run.stderr.strip()}
            if "error" in out:
                print(f"winograd_probe: {out['error']}", file=sys.stderr)
                return 1
            dense = ort_dense_ms(c, k, h, a.rounds)
            row = {"layer": f"{c}x{k}x{h}", "ort_dense_ms": round(dense, 4), **out,
                   "speedup_vs_ort": round(dense / out["median_ms"], 3)}
            rows.append(row)
            print(f"3x3 {c} -> {k} on {h}x{h}: ONNX Runtime {dense:.3f} ms, Winograd F(4x4,3x3) "
                  f"{out['median_ms']:.3f} ms ({row['speedup_vs_ort']:.2f}x; input {out['input_ms']:.3f}, "
                  f"products {out['products_ms']:.3f} at {out['products_lane_fma_per_s'] / 1e9:.1f} G lane-FMA/s, "
                  f"output {out['output_ms']:.3f}); error {out['rel_err']:.1e} of the largest output", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "layers": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
