"""``onnxprune demo``: the paper's method end to end on real handwritten digits.

1. train LeNet-300-100 (784-300-100-10) in PyTorch on scikit-learn's bundled handwritten
   digits (1797 real 8×8 scans, resized to MNIST's 28×28; no network, no external files);
2. export it to ONNX — from here on onnxprune sees only the ONNX graph;
3. ``compress``: prune → retrain, iterated 3 times, to the paper's per-layer densities for
   LeNet-300-100 (Table 2: fc1 8%, fc2 9%, fc3 26% of the weights remain), then remove dead
   neurons;
4. print test accuracy before and after (measured with ONNX Runtime on the written graph) and
   the per-layer table in the layout of the paper's Table 2.

Needs the ``demo`` extra (torch CPU wheel and scikit-learn).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from onnxprune.core.console import text_table
from onnxprune.core.errors import EXIT_OK, UsageError

PAPER_REMAINING = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}


def digits_28x28(seed: int = 0):
    """scikit-learn's digits, bilinearly resized to 28×28 in [0, 1], split 80/20 by class."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.stack([zoom(img / 16.0, 3.5, order=1) for img in d.images]).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    return (x[~test], y[~test]), (x[test], y[test])


def train_lenet_300_100(train, epochs: int = 30, seed: int = 0):
    import torch
    from torch import nn

    from onnxprune.training.models import build

    torch.manual_seed(seed)
    model = build("lenet300")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    return model


def export(model, path: str) -> None:
    import torch

    # The layers carry the paper's names, so the table reads like Table 2.
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 28, 28),), path, dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def activation_density(model, x) -> dict[str, float]:
    """Share of nonzero inputs each layer sees on ``x`` (the paper's Act% column)."""
    import onnx

    from onnxprune.runtime.check import run_model
    from onnxprune.core.graph import find_layers, graph_from_model

    layers, _ = find_layers(graph_from_model(model))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = {}
    for layer in layers:
        node = layer.nodes[0]
        names[layer.name] = node.inputs[0].name
    have = {o.name for o in probe.graph.output}
    for t in dict.fromkeys(names.values()):
        if t not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    outs = run_model(probe, {probe.graph.input[0].name: x})
    by_name = dict(zip([o.name for o in probe.graph.output], outs))
    return {layer: float(np.count_nonzero(by_name[t]) / by_name[t].size)
            for layer, t in names.items() if t in by_name}


def paper_table(rows, act: dict[str, float]) -> str:
    headers = ["Layer", "Weights", "FLOP", "Act%", "Weights%", "FLOP%", "paper Weights%"]
    body = []
    for r in rows:
        key = next((k for k in PAPER_REMAINING if r["name"].startswith(k) or
                    r["weight"].startswith(k)), None)
        body.append([
            key or r["name"], f"{r['params'] / 1e3:.0f}K", f"{r['flops'] / 1e3:.0f}K" if r["flops"] else "-",
            f"{100 * act.get(r['name'], float('nan')):.0f}%",
            f"{100 * r['nonzero'] / r['params']:.1f}%",
            f"{100 * r['flops_remaining'] / r['flops']:.1f}%" if r["flops"] else "-",
            f"{100 * PAPER_REMAINING[key]:.0f}%" if key else "-",
        ])
    p = sum(r["params"] for r in rows)
    nz = sum(r["nonzero"] for r in rows)
    f = sum(r["flops"] or 0 for r in rows)
    fr = sum(r["flops_remaining"] or 0 for r in rows)
    body.append(["Total", f"{p / 1e3:.0f}K", f"{f / 1e3:.0f}K", "", f"{100 * nz / p:.1f}%",
                 f"{100 * fr / f:.1f}%" if f else "-", "8%"])
    return text_table(headers, body[:-1], footer=body[-1])


def run_demo(args, console) -> int:
    try:
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise UsageError(f"the demo needs PyTorch and scikit-learn ({e.name} is missing): "
                         "pip install 'onnxprune[demo]'") from None
    from onnxprune.core import io
    from onnxprune.cli.output import check_paths, write_json
    from onnxprune.training.compress import Schedule, compress
    from onnxprune.runtime.datasets import Dataset
    from onnxprune.core.graph import graph_from_model, infer_shapes
    from onnxprune.core.stats import graph_rows
    from onnxprune.training.torch_bridge import FinetuneConfig

    # Before minutes of training: the outputs must be writable and distinct.
    check_paths([], [("-o", args.output), ("--json", args.json)], models=[args.output])
    t0 = time.perf_counter()
    train, test = digits_28x28()
    console.info(f"data: scikit-learn handwritten digits resized to 28x28, "
                 f"{len(train[1])} train / {len(test[1])} test")
    net = train_lenet_300_100(train)
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = os.path.join(tmp, "lenet_300_100.onnx")
        export(net, dense_path)
        model, info = io.load(dense_path)
        schedule = Schedule(iterations=3, layer_targets=tuple(
            (f"{k}*", 1.0 - v) for k, v in PAPER_REMAINING.items()))
        config = FinetuneConfig(epochs=4, batch_size=64, original_lr=0.1, seed=0)

        def on_stage(rec):
            label = rec["stage"] if rec["stage"] != "iteration" else f"iteration {rec['iteration']}"
            before = rec.get("top1_before_retrain")
            extra = f", {100 * before:.2f}% before retraining" if before is not None else ""
            console.info(f"  {label}: {rec['nonzero']:>6}/{rec['params']} weights, "
                         f"test top-1 {100 * rec['top1']:.2f}%{extra}")

        def on_progress(i, epoch, step, total, metrics):
            if total:
                console.progress(f"iteration {i} epoch {epoch + 1}", min(step, total), total)

        console.info("compress: prune -> retrain x3 to the paper's densities, then remove dead neurons")
        result = compress(model, Dataset(*train), Dataset(*test), schedule=schedule,
                          finetune_config=config, on_stage=on_stage, on_progress=on_progress)
        out_path = args.output or os.path.join(tmp, "lenet_300_100.pruned.onnx")
        records: list[dict] = []
        io.save_with_storage(result.model, out_path, storage="portable", records=records)
        dense_bytes = os.path.getsize(dense_path)
        out_bytes = sum(r["bytes"] for r in records)
        symbols: dict = {}
        shapes = infer_shapes(model, symbols=symbols)
        before, _ = graph_rows(graph_from_model(model), shapes, with_std=False, symbols=symbols)
        after = {r["weight"]: r for r in graph_rows(graph_from_model(result.model), shapes,
                                                    with_std=False, symbols=symbols)[0]}
        rows = [{**r, "weight_shape": after[r["weight"]]["weight_shape"],
                 "original_shape": r["weight_shape"], "nonzero": after[r["weight"]]["nonzero"],
                 "flops_remaining": after[r["weight"]]["flops_remaining"]} for r in before]
        act = activation_density(result.model, test[0])
    acc0, acc1 = result.dense_accuracy["top1"], result.final_accuracy["top1"]
    nz = sum(r["nonzero"] for r in rows)
    params = sum(r["params"] for r in rows)
    console.info("")
    console.info(paper_table(rows, act))
    console.info(f"\ntest top-1 (ONNX Runtime): dense {100 * acc0:.2f}% -> pruned {100 * acc1:.2f}% "
                 f"({len(test[1])} test digits)")
    console.info(f"weights: {params} -> {nz} ({params / nz:.1f}x fewer); file {dense_bytes / 1e6:.2f} MB "
                 f"-> {out_bytes / 1e6:.2f} MB portable sparse; {time.perf_counter() - t0:.0f} s")
    if args.output:
        console.info(f"wrote {', '.join(r['path'] for r in records)}")
    else:
        console.info("the pruned model was not kept (it lived in a temporary folder); "
                     "pass -o PATH to keep it")
    write_json({"command": "demo", "accuracy_dense": result.dense_accuracy,
                "accuracy_pruned": result.final_accuracy, "layers": rows,
                "activation_density": act, "history": result.history,
                "dense_bytes": dense_bytes, "output_bytes": out_bytes,
                "wall_seconds": time.perf_counter() - t0}, args.json)
    if args.json not in (None, "-"):
        console.info(f"wrote the report to {args.json}")
    return EXIT_OK
