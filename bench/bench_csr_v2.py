"""File sizes of op contract v2 (uint8 column deltas, optional fp16 values) on the paper's models.

AlexNet (the 2012 network with its grouped conv2/4/5, 61M weights) and VGG-16's fc6 (25088 x
4096) get random N(0, 0.01) weights, each layer pruned at random to the density Han et al.
2015 report (AlexNet: conv1 84%, conv2 38, conv3 35, conv4 37, conv5 37, fc6 9, fc7 9, fc8 25;
VGG-16 fc6: 3%). Each model is lowered for size (`objective=size`, the pass behind
`onnxprune lower --lower-for size`) three ways: v1 (fp32 values, int16/int32 columns, what the
previous release wrote), v2 (the smaller of uint8 deltas and int16/int32 per layer) and v2 with
fp16 values; the table gives the saved file sizes against the dense file. Sizes depend only on
the seed, so they are reproducible on any machine. The lowered v2 models are run once in ONNX
Runtime and compared with the dense model (largest relative output change).

    python bench/bench_csr_v2.py [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from unittest import mock

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from onnxprune.core.graph import graph_from_model, graph_to_model  # noqa: E402
import onnxprune.passes.lower_to_sparse_ops as lowering_pass  # noqa: E402
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps  # noqa: E402
from onnxprune.runtime.check import max_relative_change, random_inputs, run_model  # noqa: E402
from onnxprune.runtime_ops import csr as csrmod  # noqa: E402

# name, weight shape, group, stride, pad, pool after, density (Han et al. 2015, Table 4)
ALEXNET_CONV = (("conv1", (96, 3, 11, 11), 1, 4, 0, True, 0.84),
                ("conv2", (256, 48, 5, 5), 2, 1, 2, True, 0.38),
                ("conv3", (384, 256, 3, 3), 1, 1, 1, False, 0.35),
                ("conv4", (384, 192, 3, 3), 2, 1, 1, False, 0.37),
                ("conv5", (256, 192, 3, 3), 2, 1, 1, True, 0.37))
ALEXNET_FC = (("fc6", 9216, 4096, 0.09), ("fc7", 4096, 4096, 0.09), ("fc8", 4096, 1000, 0.25))
VGG_FC6 = (("fc6", 25088, 4096, 0.03),)


def pruned(rng, shape, density: float) -> np.ndarray:
    w = (rng.standard_normal(shape) * 0.01).astype(np.float32)
    w[rng.random(shape, dtype=np.float32) >= density] = 0.0
    return w


def conv_part(rng, nodes, inits) -> str:
    x = "x"
    for name, shape, group, stride, pad, pool, density in ALEXNET_CONV:
        inits += [numpy_helper.from_array(pruned(rng, shape, density), f"{name}.W"),
                  numpy_helper.from_array(np.zeros(shape[0], np.float32), f"{name}.B")]
        nodes += [helper.make_node("Conv", [x, f"{name}.W", f"{name}.B"], [f"{name}.y"], name=name,
                                   kernel_shape=list(shape[2:]), strides=[stride] * 2, pads=[pad] * 4,
                                   group=group),
                  helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"])]
        x = f"{name}.r"
        if pool:
            nodes.append(helper.make_node("MaxPool", [x], [f"{name}.p"], kernel_shape=[3, 3], strides=[2, 2]))
            x = f"{name}.p"
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    return "flat"


def fc_part(rng, nodes, inits, layers, x: str) -> str:
    for i, (name, k, n, density) in enumerate(layers):
        inits += [numpy_helper.from_array(pruned(rng, (n, k), density), f"{name}.W"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"{name}.B")]
        nodes.append(helper.make_node("Gemm", [x, f"{name}.W", f"{name}.B"], [f"{name}.y"], name=name, transB=1))
        x = f"{name}.y"
        if i + 1 < len(layers):
            nodes.append(helper.make_node("Relu", [x], [f"{name}.r"]))
            x = f"{name}.r"
    return x


def model(kind: str, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if kind == "alexnet":
        x_shape = [1, 3, 227, 227]
        y = fc_part(rng, nodes, inits, ALEXNET_FC, conv_part(rng, nodes, inits))
    else:
        x_shape = [1, VGG_FC6[0][1]]
        y = fc_part(rng, nodes, inits, VGG_FC6 if kind == "vgg16-fc6" else ALEXNET_FC, "x")
    if kind == "alexnet-fc":
        x_shape = [1, ALEXNET_FC[0][1]]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def saved_bytes(m: onnx.ModelProto, folder: str, name: str) -> int:
    path = os.path.join(folder, name)
    onnx.save(m, path)
    return os.path.getsize(path)


def v1_csr(w_rows, values_dtype=np.float32, deltas=True):
    """What the previous release wrote: fp32 values, int16/int32 columns."""
    return csrmod.csr_from_dense(w_rows)


def lowered(dense: onnx.ModelProto, values: str, v1: bool = False):
    """``dense`` lowered for size; ``v1``: through the same pass with only the CSR builder
    replaced by the v1 one."""
    with mock.patch.object(lowering_pass, "compact_csr", v1_csr if v1 else csrmod.compact_csr):
        result = LowerToSparseOps({"objective": "size", "values": values})(graph_from_model(dense))
    return graph_to_model(result.graph, dense), result.stats


def measure(kind: str, seed: int, folder: str) -> dict:
    dense = model(kind, seed)
    dense_bytes = saved_bytes(dense, folder, f"{kind}.dense.onnx")
    feeds = random_inputs(dense, batch=1, seed=0)
    ref = run_model(dense, feeds)
    row = {"model": kind, "dense_bytes": dense_bytes, "forms": {}}
    for form, values, v1 in (("v1 fp32 int16/int32", "fp32", True), ("v2 fp32", "fp32", False),
                             ("v2 fp16", "fp16", False)):
        m, stats = lowered(dense, values, v1)
        size = saved_bytes(m, folder, f"{kind}.{form.replace(' ', '_').replace('/', '-')}.onnx")
        change = max_relative_change(ref, run_model(m, feeds))
        row["forms"][form] = {
            "bytes": size, "ratio": dense_bytes / size, "max_relative_output_change": change,
            "layers": {r["name"]: f"{r['index_dtype']}/{r['values_dtype']}" if r["lowered"] else "dense"
                       for r in stats["layers"]}}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--models", nargs="+", default=["alexnet", "alexnet-fc", "vgg16-fc6"],
                    choices=["alexnet", "alexnet-fc", "vgg16-fc6"])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.models:
            row = measure(kind, args.seed, folder)
            rows.append(row)
            print(f"{kind}: dense {row['dense_bytes'] / 1e6:.1f} MB")
            for form, f in row["forms"].items():
                change = "n/a" if f["max_relative_output_change"] is None else \
                    f"{f['max_relative_output_change']:.2e}"
                print(f"  {form:22s} {f['bytes'] / 1e6:7.2f} MB  {f['ratio']:5.2f}x  output change {change}")
                print(f"    {f['layers']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
