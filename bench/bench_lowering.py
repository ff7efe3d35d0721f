"""End-to-end benchmark of lowered models: `onnxprune prune --emit sparse-ops` vs the dense
pruned model, both in ONNX Runtime in the same process.

The model is the AlexNet FC stack 9216-4096-4096-1000 (Gemm + Relu, random N(0, 1/K) weights),
pruned by the CLI with per-layer quality q so that fc6/fc7/fc8 keep 9/9/25% of their weights
(for Gaussian weights |w| < q·σ prunes erf(q/√2), so q = √2·erfinv(pruned share)).  For every
(batch, threads) the sparse-ops file is produced with --expected-batch/--threads and
--decide model, so the cost model decides per layer for that case.  Times are medians of `session.run` after warm-ups,
dense and lowered alternating; the lowered outputs are checked against the dense ones.

    python bench/bench_lowering.py                       # batch 1,64 x threads 1,2
    python bench/bench_lowering.py --repeats 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from statistics import NormalDist

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from onnxprune.runtime.bench import compare_outputs, run_outputs, session_for, time_pair  # noqa: E402
from onnxprune.cli import main as cli  # noqa: E402

DIMS = (9216, 4096, 4096, 1000)
NAMES = ("fc6", "fc7", "fc8")
KEEP = (0.09, 0.09, 0.25)


def alexnet_fc(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (name, k, n) in enumerate(zip(NAMES, DIMS[:-1], DIMS[1:])):
        w = (rng.standard_normal((n, k), dtype=np.float32) / np.float32(math.sqrt(k)))
        inits += [numpy_helper.from_array(w, f"{name}.weight"),
                  numpy_helper.from_array((0.01 * rng.standard_normal(n)).astype(np.float32),
                                          f"{name}.bias")]
        y = "y" if i == len(NAMES) - 1 else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y],
                                      name=name, transB=1))
        if y != "y":
            nodes.append(helper.make_node("Relu", [y], [f"{name}_relu"], name=f"{name}_relu"))
            x = f"{name}_relu"
    g = helper.make_graph(nodes, "alexnet_fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", DIMS[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", DIMS[-1]])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def quality_for_keep(keep: float) -> float:
    """q with P(|w| < q·σ) = 1 − keep for Gaussian w."""
    return NormalDist().inv_cdf(1 - keep / 2)


def prune(src: str, out: str, emit: str, extra=()) -> dict:
    layers = [f"--layer={n}={quality_for_keep(k):.6f}" for n, k in zip(NAMES, KEEP)]
    report = out + ".json"
    code = cli(["prune", src, "-o", out, "--emit", emit, "--no-remove-dead-neurons", "-q",
                "--json", report, *layers, *extra])
    if code != 0:
        raise SystemExit(f"prune --emit {emit} failed with exit code {code}")
    with open(report) as f:
        return json.load(f)


def machine() -> dict:
    info = {"python": platform.python_version()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key in ("Model name", "CPU(s)", "L2 cache", "L3 cache"):
                info[key] = value.strip()
    except OSError:
        pass
    import onnxruntime

    info.update(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, numpy=np.__version__)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]

    results = {"machine": machine(), "command": " ".join(["bench_lowering.py", *sys.argv[1:]]),
               "sizes": {}, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "alexnet_fc.onnx")
        onnx.save(alexnet_fc(), src)
        dense_path, portable_path = os.path.join(tmp, "dense.onnx"), os.path.join(tmp, "portable.onnx")
        rep = prune(src, dense_path, "dense")
        prune(src, portable_path, "portable")
        densities = {r["name"]: r["density"] for r in rep["layers"]}
        results["densities"] = densities
        results["sizes"]["dense"] = os.path.getsize(dense_path)
        results["sizes"]["portable"] = os.path.getsize(portable_path)
        dense_bytes = onnx.load(dense_path).SerializeToString()
        rng = np.random.default_rng(1)
        for batch in batches:
            feeds = {"x": rng.standard_normal((batch, DIMS[0]), dtype=np.float32)}
            for threads in thread_counts:
                path = os.path.join(tmp, f"sparse-b{batch}-t{threads}.onnx")
                srep = prune(src, path, "sparse-ops",
                             ["--expected-batch", str(batch), "--threads", str(threads),
                              "--decide", "model"])
                results["sizes"][f"sparse-ops (batch {batch}, threads {threads})"] = \
                    os.path.getsize(path)
                d_sess = session_for(dense_bytes, threads)
                with open(path, "rb") as f:
                    s_sess = session_for(f.read(), threads)
                check = compare_outputs(run_outputs(d_sess, feeds), run_outputs(s_sess, feeds))
                dense_ms, sparse_ms = time_pair(d_sess, s_sess, feeds, feeds, args.repeats,
                                                args.warmup)
                case = {"batch": batch, "threads": threads, "dense_ms": round(dense_ms, 4),
                        "sparse_ms": round(sparse_ms, 4), "ratio": round(dense_ms / sparse_ms, 2),
                        "lowered": srep["sparse_ops"]["lowered"],
                        "estimated": {r["name"]: r["estimated_speedup"]
                                      for r in srep["sparse_ops"]["layers"]},
                        "max_abs_error": check["max_abs_error"], "passed": check["passed"]}
                results["cases"].append(case)
                print(f"batch {batch:3d} threads {threads}: dense {dense_ms:8.3f} ms  "
                      f"sparse-ops {sparse_ms:8.3f} ms  {dense_ms / sparse_ms:5.2f}x  "
                      f"lowered {','.join(case['lowered']) or '-'}  "
                      f"{'ok' if check['passed'] else 'MISMATCH'}", flush=True)
                del d_sess, s_sess
    for k, v in results["sizes"].items():
        print(f"size {k}: {v / 1e6:.2f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(c["passed"] for c in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
