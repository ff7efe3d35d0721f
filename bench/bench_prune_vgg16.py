"""Benchmark: `onnxprune prune` on a VGG-16-shaped model (138M parameters, external data).

Times `onnxprune prune` against plain `onnx.load` + `onnx.save` of the same model, each in a
fresh subprocess of the same run (alternating, median of --repeats), and records each one's
peak RSS (ru_maxrss of the child).  Targets (docs/BENCHMARKS.md): prune ≤ 2.0× load+save time;
peak RSS ≤ 3× the weight bytes.

    python bench/bench_prune_vgg16.py [--workdir DIR] [--repeats 3] [--json out.json]
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_vgg16(path: str, seed: int = 0) -> int:
    """Write a VGG-16-shaped model with random weights and external data; returns weight bytes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin, i = "input", 3, 0
    for v in VGG16:
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2], name=f"pool{i}"))
            x = f"pool{i}"
            continue
        i += 1
        w = rng.standard_normal((v, cin, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2 / (cin * 9)))
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"),
                  numpy_helper.from_array(np.zeros(v, np.float32), f"conv{i}.bias")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"],
                                      pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x, cin = f"r{i}", v
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten"))
    x = "flat"
    for j, (fin, fout) in enumerate(((25088, 4096), (4096, 4096), (4096, 1000)), start=6):
        w = rng.standard_normal((fout, fin), dtype=np.float32) * np.float32(np.sqrt(2 / fin))
        inits += [numpy_helper.from_array(w, f"fc{j}.weight"),
                  numpy_helper.from_array(np.zeros(fout, np.float32), f"fc{j}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{j}.weight", f"fc{j}.bias"], [f"f{j}"],
                                      transB=1, name=f"fc{j}"))
        x = f"f{j}"
        if j < 8:
            nodes.append(helper.make_node("Relu", [x], [f"fr{j}"], name=f"fcrelu{j}"))
            x = f"fr{j}"
    graph = helper.make_graph(
        nodes, "vgg16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)
    return weight_bytes


BASELINE = """
import onnx, sys, os
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,
          location=os.path.basename(sys.argv[2]) + '.data', size_threshold=1024)
"""

# Every measured child reports its own peak RSS (VmHWM) on exit.  ru_maxrss from wait4 is not
# usable: on Linux a child inherits the parent's high-water mark through fork.
HWM_PRELUDE = """
import atexit, os, sys
def _report_hwm():
    with open('/proc/self/status') as f:
        hwm = next(l for l in f if l.startswith('VmHWM'))
    with open(os.environ['ONNXPRUNE_BENCH_HWM'], 'w') as out:
        out.write(str(int(hwm.split()[1]) * 1024))
atexit.register(_report_hwm)
"""

PRUNE = HWM_PRELUDE + """
import runpy
sys.argv = ['onnxprune'] + sys.argv[1:]
runpy.run_module('onnxprune.cli', run_name='__main__')
"""


def timed(cmd: list[str], hwm_file: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    env = dict(os.environ, ONNXPRUNE_BENCH_HWM=hwm_file)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stderr.decode()}")
    with open(hwm_file) as f:
        return wall, int(f.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--prune-args", default="",
                    help="extra flags for onnxprune prune")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="onnxprune-bench-")
    src = os.path.join(work, "vgg16.onnx")
    for p in (src, src + ".data"):
        if os.path.exists(p):
            os.unlink(p)
    t0 = time.perf_counter()
    # Built in a child so that this process stays small (children copy its page tables).
    weight_bytes = int(subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
         f"import bench_prune_vgg16 as b; print(b.build_vgg16({src!r}))"],
        check=True, capture_output=True, text=True).stdout)
    print(f"built {src}: {weight_bytes / 1e6:.0f} MB of weights in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    hwm = os.path.join(work, "hwm")
    base_cmd = [sys.executable, "-c", HWM_PRELUDE + BASELINE, src, os.path.join(work, "copy.onnx")]
    prune_cmd = [sys.executable, "-c", PRUNE, "prune", src, "-o",
                 os.path.join(work, "pruned.onnx"), "-q", "--json",
                 os.path.join(work, "report.json"), *args.prune_args.split()]
    base, prune = [], []
    import glob

    for _ in range(args.repeats):
        # onnx.save appends to an existing external-data file: start every run from nothing.
        for p in [os.path.join(work, "copy.onnx"), os.path.join(work, "copy.onnx.data"),
                  os.path.join(work, "pruned.onnx"),
                  *glob.glob(os.path.join(work, "pruned.onnx.*.data"))]:
            if os.path.exists(p):
                os.unlink(p)
        base.append(timed(base_cmd, hwm))
        prune.append(timed(prune_cmd, hwm))
    bt = statistics.median(t for t, _ in base)
    pt = statistics.median(t for t, _ in prune)
    brss = max(r for _, r in base)
    prss = max(r for _, r in prune)
    report = json.load(open(os.path.join(work, "report.json")))
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "weight_bytes": weight_bytes,
        "load_save_s": bt, "prune_s": pt, "time_ratio": pt / bt,
        "load_save_peak_rss": brss, "prune_peak_rss": prss,
        "prune_rss_over_weights": prss / weight_bytes,
        "output_bytes": report["size"]["output_bytes"],
        "input_bytes": report["size"]["input_bytes"],
        "sparsity": report["total"]["sparsity"],
        "runs": {"load_save": base, "prune": prune},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"prune / (load+save) time: {pt:.2f} s / {bt:.2f} s = {pt / bt:.2f}x (target <= 2.0x)\n"
          f"prune peak RSS: {prss / 1e6:.0f} MB = {prss / weight_bytes:.2f}x weights "
          f"(target <= 3x); load+save peak RSS {brss / 1e6:.0f} MB", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
