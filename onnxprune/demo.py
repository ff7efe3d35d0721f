"""``onnxprune demo``: the pipeline end to end on a model the package builds itself.

Builds LeNet-300-100 (784-300-100-10, Gemm + Relu) with He-initialised weights, prunes it with
the paper's per-layer targets (fc1 8%, fc2 9%, fc3 26% remaining), removes dead neurons, writes
the portable sparse file, and checks in ONNX Runtime that the written file computes exactly
what the masked dense graph computes.  No data and no network are needed.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import EXIT_OK, RuntimeFailure

PAPER_REMAINING = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}


def lenet_300_100(seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = (784, 300, 100, 10)
    nodes, inits = [], []
    x = "input"
    for i in range(3):
        w = (rng.standard_normal((sizes[i + 1], sizes[i])) * np.sqrt(2 / sizes[i])).astype(np.float32)
        b = np.zeros(sizes[i + 1], np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i + 1}.weight"),
                  numpy_helper.from_array(b, f"fc{i + 1}.bias")]
        out = f"fc{i + 1}_out" if i < 2 else "logits"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i + 1}.weight", f"fc{i + 1}.bias"], [out],
                                      name=f"fc{i + 1}", transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i + 1}"], name=f"relu{i + 1}"))
            x = f"relu{i + 1}"
    graph = helper.make_graph(
        nodes, "lenet_300_100",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnxprune-demo")
    model.ir_version = 8
    return model


def run_demo(args, console) -> int:
    from onnxprune import io
    from onnxprune.check import compare, random_inputs, run_model
    from onnxprune.cli import write_json
    from onnxprune.pipeline import run_pipeline
    from onnxprune.recipe import Recipe
    from onnxprune.report import format_table, layer_rows, totals

    model = lenet_300_100()
    recipe = Recipe(passes=[
        ("threshold-by-std", {"layers": [{k: _q_for(model, k, v)} for k, v in
                                         PAPER_REMAINING.items()]}),
        ("remove-dead-neurons", {}),
    ], emit="portable")
    result = run_pipeline(model, recipe, progress=console.progress)
    rows, _ = layer_rows(result.model)
    total = totals(rows)
    feeds = random_inputs(model, batch=8)
    dense_out = run_model(result.model, feeds)
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "lenet_300_100.onnx")
        io.save(model, dense_path)
        out_path = args.output or os.path.join(tmp, "lenet_300_100.pruned.onnx")
        written, _ = io.save_with_storage(result.model, out_path, storage="portable")
        reloaded, _ = io.load(written[0])
        cmp = compare(dense_out, run_model(reloaded, feeds), atol=1e-5, rtol=1e-5)
        dense_bytes = os.path.getsize(dense_path)
        out_bytes = sum(os.path.getsize(p) for p in written)
    console.info("LeNet-300-100 (He-initialised weights; the trained demo needs the torch extra)")
    console.info(format_table(rows, total))
    console.info(f"file: {dense_bytes / 1e6:.2f} MB dense -> {out_bytes / 1e6:.2f} MB portable sparse "
                 f"({dense_bytes / out_bytes:.1f}x smaller)")
    console.info(f"ONNX Runtime check, written file vs masked dense graph: max abs error "
                 f"{cmp['max_abs_error']:.2e}")
    report = {"command": "demo", "layers": rows, "total": total, "dense_bytes": dense_bytes,
              "output_bytes": out_bytes, "check": cmp}
    write_json(report, args.json)
    if not cmp["passed"]:
        raise RuntimeFailure("the written model does not match the pruned graph")
    return EXIT_OK


def _q_for(model, layer: str, remaining: float) -> float:
    """q that leaves ``remaining`` of the layer (per-layer target sparsity, solved here once)."""
    from onnxprune.masks import quality_for_sparsity

    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == f"{layer}.weight")
    return round(quality_for_sparsity(w, 1 - remaining), 4)
