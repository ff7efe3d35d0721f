"""The paper's figures for the LeNets on full MNIST (Han et al. 2015, Figs. 4, 5, 6 and 7).

    python bench/paper_figures.py [--mnist ../shared/data/mnist.npz] [--models bench/out/mnist]
                                  [--work bench/out/figures] [--img docs/img]

* Fig. 4 — the mask of LeNet-300-100's fc1 after compression (``onnxprune report``), with the
  784 inputs in row-major pixel order so the 28 image rows show as 28 bands.
* Fig. 5 — accuracy loss against the share of parameters pruned for LeNet-300-100: dense
  models trained with L2 and with L1 regularisation, pruned with one q for all layers (the q
  that prunes the given share of all weights), without retraining, with one retraining (same
  regulariser), and iteratively (prune → retrain, raising the share step by step, L2).
* Fig. 6 — sensitivity of LeNet-5's conv and fc layers (``onnxprune sensitivity``): one layer
  pruned at a time, accuracy on the validation set.
* Fig. 7 — LeNet-300-100 fc1's weight histogram before and after (``onnxprune report``).

Models: ``lenet300_dense.onnx``, ``lenet300_compressed.onnx``, ``lenet300_compress.json``,
``lenet5_dense.onnx`` and ``val.npz``/``test.npz`` are taken from ``--models`` when present
(bench/paper_mnist.py writes them); whatever is missing is trained here and cached in
``--work``.  Fig. 5 always trains its own two dense models, as it compares regularisers.
Accuracy is always measured with ONNX Runtime on the ONNX graph.  Every PNG gets its numbers
beside it (.json, and .csv for curves).  Data: 55,000 training / 5,000 validation images
(the last 5,000 of MNIST's training set) and the 10,000 test images, scaled to [0, 1].
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def load_mnist(path: str, work: str) -> dict[str, str]:
    """Write train/val/test .npz (float32 in [0, 1], N×1×28×28) once; return their paths."""
    paths = {k: os.path.join(work, f"{k}.npz") for k in ("train", "val", "test")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    with np.load(path) as z:
        xtr, ytr, xte, yte = z["x_train"], z["y_train"], z["x_test"], z["y_test"]

    def prep(x):
        return (x.astype(np.float32) / 255.0)[:, None, :, :]

    np.savez(paths["train"], x=prep(xtr[:55000]), y=ytr[:55000].astype(np.int64))
    np.savez(paths["val"], x=prep(xtr[55000:]), y=ytr[55000:].astype(np.int64))
    np.savez(paths["test"], x=prep(xte), y=yte.astype(np.int64))
    return paths


def npz(path: str):
    from onnxprune.runtime.datasets import load_npz

    return load_npz(path)


# --------------------------------------------------------------------------- models


def to_onnx(net, kind: str):
    """The trained torch net as a plain ONNX graph with the paper's layer names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    nodes, inits = [], []

    def gemm(name, x, out):
        inits.extend([numpy_helper.from_array(p[f"{name}.weight"], f"{name}.weight"),
                      numpy_helper.from_array(p[f"{name}.bias"], f"{name}.bias")])
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out],
                                      name=name, transB=1))

    def conv(name, x, out):
        inits.extend([numpy_helper.from_array(p[f"{name}.weight"], f"{name}.weight"),
                      numpy_helper.from_array(p[f"{name}.bias"], f"{name}.bias")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [out],
                                      name=name, kernel_shape=[5, 5]))

    if kind == "lenet300":
        nodes.append(helper.make_node("Flatten", ["image"], ["flat"], name="flatten"))
        gemm("fc1", "flat", "h1")
        nodes.append(helper.make_node("Relu", ["h1"], ["a1"], name="relu1"))
        gemm("fc2", "a1", "h2")
        nodes.append(helper.make_node("Relu", ["h2"], ["a2"], name="relu2"))
        gemm("fc3", "a2", "logits")
    else:
        conv("conv1", "image", "c1")
        nodes.append(helper.make_node("MaxPool", ["c1"], ["p1"], name="pool1",
                                      kernel_shape=[2, 2], strides=[2, 2]))
        conv("conv2", "p1", "c2")
        nodes.append(helper.make_node("MaxPool", ["c2"], ["p2"], name="pool2",
                                      kernel_shape=[2, 2], strides=[2, 2]))
        nodes.append(helper.make_node("Flatten", ["p2"], ["flat"], name="flatten"))
        gemm("fc1", "flat", "h1")
        nodes.append(helper.make_node("Relu", ["h1"], ["a1"], name="relu1"))
        gemm("fc2", "a1", "logits")
    graph = helper.make_graph(
        nodes, kind,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_dense(kind: str, train, *, epochs: int, l2: float, l1: float, seed: int = 0):
    """SGD with momentum; L2 (weight decay) and L1 act on layer weights only, as in the
    fine-tune bridge, so dense training and retraining use the same regulariser."""
    import torch
    from torch import nn

    from onnxprune.training.models import build

    torch.manual_seed(seed)
    net = build(kind)
    # Caffe's LeNet-5 solver uses 0.01: with no activation between the convs, 0.1 diverges.
    lr = 0.1 if kind == "lenet300" else 0.01
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    others = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": l2},
                           {"params": others, "weight_decay": 0.0}], lr=lr, momentum=0.9)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            if l1:
                loss = loss + l1 * sum(w.abs().sum() for w in weights)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def dense_model(kind: str, name: str, work: str, train, *, epochs, l2, l1, val=None):
    import onnx

    from onnxprune.runtime.evaluate import evaluate

    # The file name carries the settings, so a rerun with other settings never reuses it.
    path = os.path.join(work, f"{name}_e{epochs}.onnx")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        net = train_dense(kind, train, epochs=epochs, l2=l2, l1=l1)
        model = to_onnx(net, kind)
        if val is not None:
            acc = evaluate(model, val)["top1"]
            if acc < 0.95:  # a diverged run must not become a figure
                raise SystemExit(f"{name}: validation top-1 {100 * acc:.2f}% after training; "
                                 "not using it")
        onnx.save(model, path)
        log(f"trained {name} ({epochs} epochs, L2 {l2:g}, L1 {l1:g}) in "
            f"{time.perf_counter() - t0:.0f} s")
    return path


# --------------------------------------------------------------------------- helpers


def cli(*argv: str) -> None:
    from onnxprune.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"onnxprune {' '.join(map(str, argv))} exited {code}")


def dump_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def copy(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)


def prune_global(model, share: float):
    """One q for every layer, solved so that ``share`` of all weights are zero."""
    from onnxprune.passes import ThresholdByStd

    from onnxprune.core.graph import graph_from_model, graph_to_model

    r = ThresholdByStd({"target-sparsity": share, "target-scope": "global"})(
        graph_from_model(model))
    return graph_to_model(r.graph, model), r.stats["global_quality"]


def pruned_share(model) -> float:
    from onnxprune.core.graph import find_layers, graph_from_model, weight_values

    layers, _ = find_layers(graph_from_model(model))
    n = sum(layer.params for layer in layers)
    nz = sum(int(np.count_nonzero(weight_values(layer))) for layer in layers)
    return 1.0 - nz / n


# --------------------------------------------------------------------------- Fig. 5


def figure5(work, img, data, shares, retrain_epochs, dense_epochs):
    import onnx

    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.analysis.figures import tradeoff_png
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune

    train, val, test = data["train"], data["val"], data["test"]
    regs = {"L2": {"l2": 5e-4, "l1": 0.0}, "L1": {"l2": 0.0, "l1": 2e-5}}
    tag = f"d{dense_epochs}_r{retrain_epochs}"
    cache = os.path.join(work, f"fig5_points_{tag}.json")
    points = read_json(cache) if os.path.exists(cache) else {}

    def save():
        dump_json(cache, points)

    dense_acc = {}
    for reg, r in regs.items():
        path = dense_model("lenet300", f"lenet300_{reg.lower()}", work, train,
                           epochs=dense_epochs, val=val, **r)
        model = onnx.load(path)
        dense_acc[reg] = evaluate(model, test)["top1"]
        cfg = FinetuneConfig(epochs=retrain_epochs, batch_size=64, original_lr=0.1,
                             weight_decay=r["l2"], l1=r["l1"], seed=0)
        for s in shares:
            key = f"{reg}|{s}"
            if key in points:
                continue
            t0 = time.perf_counter()
            pruned, q = prune_global(model, s)
            before = evaluate(pruned, test)["top1"]
            after = evaluate(finetune(pruned, train, val, config=cfg).model, test)["top1"]
            points[key] = {"reg": reg, "share": s, "q": q, "pruned": pruned_share(pruned),
                           "dense": dense_acc[reg], "no_retrain": before, "retrain": after}
            save()
            log(f"fig5 {reg} {100 * s:.0f}%: q {q:.3f}, no retrain {100 * before:.2f}%, "
                f"retrained {100 * after:.2f}% ({time.perf_counter() - t0:.0f} s)")
    # Iterative: prune to each share in turn, retraining in between (L2, as the paper).
    model = onnx.load(dense_model("lenet300", "lenet300_l2", work, train, epochs=dense_epochs,
                                  **regs["L2"]))
    cfg = FinetuneConfig(epochs=retrain_epochs, batch_size=64, original_lr=0.1,
                         weight_decay=5e-4, seed=0)
    chain = os.path.join(work, f"fig5_iterative_{tag}")
    os.makedirs(chain, exist_ok=True)
    for s in shares:
        key = f"iter|{s}"
        step = os.path.join(chain, f"{s}.onnx")
        if key in points and os.path.exists(step):
            model = onnx.load(step)
            continue
        t0 = time.perf_counter()
        pruned, q = prune_global(model, s)
        model = finetune(pruned, train, val, config=cfg).model
        onnx.save(model, step)
        acc = evaluate(model, test)["top1"]
        points[key] = {"reg": "L2", "share": s, "q": q, "pruned": pruned_share(model),
                       "dense": dense_acc["L2"], "iterative": acc}
        save()
        log(f"fig5 iterative {100 * s:.0f}%: {100 * acc:.2f}% ({time.perf_counter() - t0:.0f} s)")

    def series(label, reg, field, prefix=None):
        pts = [p for k, p in points.items() if k.startswith(prefix or reg + "|")
               and p["share"] in shares]
        return {"label": label, "points": sorted(
            ({"pruned": p["pruned"], "top1": p[field],
              "drop_pp": 100 * (p["dense"] - p[field])} for p in pts),
            key=lambda p: p["pruned"])}

    all_series = [series("L2 regularization w/o retrain", "L2", "no_retrain"),
                  series("L1 regularization w/o retrain", "L1", "no_retrain"),
                  series("L1 regularization w/ retrain", "L1", "retrain"),
                  series("L2 regularization w/ retrain", "L2", "retrain"),
                  series("L2 regularization w/ iterative prune and retrain", "L2", "iterative",
                         prefix="iter|")]
    title = "LeNet-300-100 on MNIST (test set)"
    with open(os.path.join(img, "fig5_lenet300_tradeoff.png"), "wb") as f:
        # The paper's window: drops beyond 4.5 points leave the plot.
        f.write(tradeoff_png(all_series, title=title + ", zoomed as the paper",
                             ylim=(-0.5, 5.0), xlim=(45.0, 100.0)))
    with open(os.path.join(img, "fig5_lenet300_tradeoff_full.png"), "wb") as f:
        f.write(tradeoff_png(all_series, title=title))
    dump_json(os.path.join(img, "fig5_lenet300_tradeoff.json"), {
        "model": "LeNet-300-100", "metric": "MNIST test top-1", "dense_top1": dense_acc,
        "regularization": regs, "retrain_epochs": retrain_epochs, "dense_epochs": dense_epochs,
        "series": all_series})
    with open(os.path.join(img, "fig5_lenet300_tradeoff.csv"), "w", newline="") as f:
        out = csv.writer(f)  # floats as repr: they read back bit-identical
        out.writerow(["series", "pruned", "top1", "drop_pp"])
        out.writerows([s["label"], p["pruned"], p["top1"], p["drop_pp"]]
                      for s in all_series for p in s["points"])
    return all_series, dense_acc


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", default=os.path.join(REPO, "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--models", default=os.path.join(REPO, "bench", "out", "mnist"),
                    help="trained models and histories from bench/paper_mnist.py, if any")
    ap.add_argument("--work", default=os.path.join(REPO, "bench", "out", "figures"))
    ap.add_argument("--img", default=os.path.join(REPO, "docs", "img"))
    ap.add_argument("--shares", default="0.5,0.7,0.8,0.9,0.93,0.95,0.97,0.98",
                    help="Fig. 5: shares of all weights pruned")
    ap.add_argument("--retrain-epochs", type=int, default=3)
    ap.add_argument("--dense-epochs", type=int, default=12)
    ap.add_argument("--lenet5-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--only", choices=("4", "5", "6"), action="append",
                    help="make only these figures (4 includes 7)")
    args = ap.parse_args(argv)
    if not os.path.exists(args.mnist):
        print(f"MNIST not found at {args.mnist} (give --mnist)", file=sys.stderr)
        return 2
    import torch

    # One thread: on a shared 2-core machine oversubscribed threads only spin.
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.img, exist_ok=True)
    t_start = time.perf_counter()
    paths = load_mnist(args.mnist, args.work)
    data = {k: npz(p) for k, p in paths.items()}
    only = set(args.only or ("4", "5", "6"))
    theirs = {f: os.path.join(args.models, f) for f in (
        "lenet300_dense.onnx", "lenet300_compressed.onnx", "lenet300_compress.json",
        "lenet5_dense.onnx", "val.npz", "test.npz")}
    have = {f: p for f, p in theirs.items() if os.path.exists(p)}
    summary = {"timings_s": {}, "sources": {}}

    if "6" in only:  # Fig. 6: LeNet-5 sensitivity
        t0 = time.perf_counter()
        if "lenet5_dense.onnx" in have:
            dense5 = have["lenet5_dense.onnx"]
            val5 = have.get("val.npz") or have.get("test.npz")
            summary["sources"]["fig6"] = "bench/out/mnist (bench/paper_mnist.py)"
        else:
            dense5 = dense_model("lenet5", "lenet5_dense", args.work, data["train"],
                                 epochs=args.lenet5_epochs, l2=5e-4, l1=0.0, val=data["val"])
            val5 = paths["val"]
            summary["sources"]["fig6"] = "trained by bench/paper_figures.py"
        out = os.path.join(args.work, "sensitivity_lenet5")
        cli("sensitivity", dense5, "--val", val5, "-o", out, "--budget", "0.5", "-q",
            "--json", os.path.join(args.work, "sensitivity_lenet5_run.json"))
        for ext in ("png", "json", "csv"):
            copy(os.path.join(out, f"sensitivity.{ext}"),
                 os.path.join(args.img, f"fig6_lenet5_sensitivity.{ext}"))
        copy(os.path.join(out, "recipe.yaml"), os.path.join(args.img, "fig6_lenet5_recipe.yaml"))
        run = read_json(os.path.join(args.work, "sensitivity_lenet5_run.json"))
        summary["fig6"] = {"evaluations": run["evaluations"], "points": run["points"],
                           "wall_seconds": run["wall_seconds"]}
        summary["timings_s"]["fig6"] = time.perf_counter() - t0
        log(f"fig6 done ({summary['timings_s']['fig6']:.0f} s)")

    if "4" in only:  # Figs. 4 and 7 (and the compress run's own Fig. 5) via `onnxprune report`
        t0 = time.perf_counter()
        if all(f in have for f in ("lenet300_dense.onnx", "lenet300_compressed.onnx",
                                   "lenet300_compress.json")):
            dense3 = have["lenet300_dense.onnx"]
            comp3 = have["lenet300_compressed.onnx"]
            hist3 = have["lenet300_compress.json"]
            summary["sources"]["fig4"] = "bench/out/mnist (bench/paper_mnist.py)"
        else:
            dense3 = dense_model("lenet300", "lenet300_l2", args.work, data["train"],
                                 epochs=args.dense_epochs, l2=5e-4, l1=0.0)
            comp3 = os.path.join(args.work, "lenet300_compressed.onnx")
            hist3 = os.path.join(args.work, "lenet300_compress.json")
            if not os.path.exists(hist3):
                # The paper's Table 2 densities: fc1 8%, fc2 9%, fc3 26% of the weights remain.
                cli("compress", dense3, "-o", comp3, "--train", paths["train"],
                    "--val", paths["test"], "--iterations", "3", "--epochs", "2",
                    "--original-lr", "0.1", "--layer-target", "fc1=0.92",
                    "--layer-target", "fc2=0.91", "--layer-target", "fc3=0.74",
                    "-q", "--json", hist3)
            summary["sources"]["fig4"] = "compressed by bench/paper_figures.py"
        out = os.path.join(args.work, "report_lenet300")
        cli("report", comp3, "--baseline", dense3, "--history", hist3, "--layer", "fc1*",
            "-o", out, "-q")
        copy(os.path.join(out, "mask.png"), os.path.join(args.img, "fig4_lenet300_fc1_mask.png"))
        copy(os.path.join(out, "histogram.png"),
             os.path.join(args.img, "fig7_lenet300_fc1_histogram.png"))
        rep = read_json(os.path.join(out, "report.json"))
        mask = rep["figures"]["mask"]
        per_pixel = np.asarray(mask["kept_per_col"])
        if per_pixel.size == 784:
            grid = per_pixel.reshape(28, 28)
            mask["kept_per_pixel_28x28"] = grid.tolist()
            # Share of kept connections that come from the central 20×20 pixels (the digits
            # are size-normalised into a 20×20 box in the middle of the 28×28 image).
            mask["share_from_central_20x20"] = float(grid[4:24, 4:24].sum() / grid.sum())
            mask["share_of_pixels_central_20x20"] = 400 / 784
        dump_json(os.path.join(args.img, "fig4_lenet300_fc1_mask.json"),
                  {"model": os.path.basename(comp3), **mask})
        dump_json(os.path.join(args.img, "fig7_lenet300_fc1_histogram.json"),
                  {"model": os.path.basename(comp3), "baseline": os.path.basename(dense3),
                   **rep["figures"]["histogram"]})
        summary["fig4_table"] = rep["table"]["cells"]
        summary["fig4_tradeoff"] = rep["figures"]["tradeoff"].get("series")
        summary["timings_s"]["fig4"] = time.perf_counter() - t0
        log(f"fig4/7 done ({summary['timings_s']['fig4']:.0f} s)")

    if "5" in only:
        t0 = time.perf_counter()
        shares = [float(s) for s in args.shares.split(",")]
        figure5(args.work, args.img, data, shares, args.retrain_epochs, args.dense_epochs)
        summary["timings_s"]["fig5"] = time.perf_counter() - t0
        log(f"fig5 done ({summary['timings_s']['fig5']:.0f} s)")

    summary["timings_s"]["total"] = time.perf_counter() - t_start
    dump_json(os.path.join(args.work, "summary.json"), summary)
    log(f"all done in {summary['timings_s']['total']:.0f} s; figures in {args.img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
