"""Reproduce Han et al. 2015, Table 1–3, on MNIST: LeNet-300-100 and LeNet-5.

For each network:

1. train it from scratch in PyTorch on the first 55,000 MNIST training images (the last 5,000
   are held out as the validation split used for every choice made during compression);
2. export it to ONNX (legacy exporter, layers named as in the paper: fc1/fc2/fc3,
   conv1/conv2/fc1/fc2) — from here on only the ONNX graph is used;
3. compress it with the real command line, ``onnxprune compress``, run as a subprocess:
   iterative prune → retrain to the paper's per-layer densities (Tables 2–3) with L2 weight
   decay, then dead-neuron removal; and a second, "stretch" run to lower densities.  Each
   round retrains with the rate rewound to the original peak and decayed to 0 by a cosine
   (``--retrain rewind``, the default; Renda et al. 2020) or, as the paper does, at a
   constant 1/10 of the original rate (``--retrain paper``);
4. measure top-1 error of the dense and compressed ONNX files on the 10,000 MNIST test images
   with ONNX Runtime (:func:`onnxprune.runtime.evaluate.evaluate`).

Inputs are pixel values scaled to [0, 1] (x / 255) with no mean/std normalisation, as Caffe's
LeNet examples do (scale 1/256); the ONNX models take float32 images of shape (N, 1, 28, 28).

    python bench/paper_mnist.py [--data PATH] [--out bench/out/mnist] [--quick]

Writes to ``--out``: ``train.npz`` / ``val.npz`` / ``test.npz`` (keys ``x``, ``y``),
``lenet300_dense.onnx``, ``lenet300_compressed.onnx``, ``lenet300_compress.json`` (the
``onnxprune compress`` report, with the per-iteration ``history``), the same for ``lenet5``,
the stretch runs as ``*_stretch_compressed.onnx`` / ``*_stretch_compress.json``,
``summary.json`` (test errors, wall times, machine, versions, commands) and ``results.md``
(the markdown tables that docs/RESULTS.md shows).  Without the data file it prints why and
exits with status 0 (nothing to do).  ``--quick`` runs every step on a small subset with one
epoch (for smoke tests; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist.npz"
DEFAULT_OUT = REPO / "bench" / "out" / "mnist"
VAL_SIZE = 5000  # the last 5,000 training images


# --- the paper's numbers (Han et al. 2015, Tables 1-3) -----------------------------------

@dataclasses.dataclass(frozen=True)
class PaperLayer:
    weights: str  # as printed in the paper
    flop: str
    act: float  # Act%: share of nonzero activations the layer outputs
    weights_pct: float  # Weights% remaining after pruning
    flop_pct: float  # FLOP% remaining after pruning


PAPER = {
    "lenet300": {
        "title": "LeNet-300-100",
        "error_ref": 1.64, "error_pruned": 1.59, "params_ref": "267K", "params_pruned": "22K",
        "ratio": "12×",
        "layers": {
            "fc1": PaperLayer("235K", "470K", 38, 8, 8),
            "fc2": PaperLayer("30K", "60K", 65, 9, 4),
            "fc3": PaperLayer("1K", "2K", 100, 26, 17),
        },
        "total": PaperLayer("266K", "532K", 46, 8, 8),
    },
    "lenet5": {
        "title": "LeNet-5",
        "error_ref": 0.80, "error_pruned": 0.77, "params_ref": "431K", "params_pruned": "36K",
        "ratio": "12×",
        "layers": {
            "conv1": PaperLayer("0.5K", "576K", 82, 66, 66),
            "conv2": PaperLayer("25K", "3200K", 72, 12, 10),
            "fc1": PaperLayer("400K", "800K", 55, 8, 6),
            "fc2": PaperLayer("5K", "10K", 100, 19, 10),
        },
        "total": PaperLayer("431K", "4586K", 77, 8, 16),
    },
}


# --- what this script runs -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """How one network is trained and compressed."""

    name: str  # file prefix: lenet300 | lenet5
    train_epochs: int
    train_lr: float  # peak rate of the dense training (cosine decay to 0); --original-lr
    train_batch: int
    weight_decay: float
    iterations: int  # prune+retrain rounds of `onnxprune compress`
    retrain_epochs: int  # epochs per round
    retrain_batch: int
    remaining: dict  # layer -> share of weights kept (the paper's Tables 2-3)
    stretch: dict  # layer -> share kept in the stretch run
    stretch_iterations: int


PLANS = {
    "lenet300": Plan(
        name="lenet300", train_epochs=20, train_lr=0.1, train_batch=128, weight_decay=5e-4,
        iterations=3, retrain_epochs=4, retrain_batch=64,
        remaining={"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
        stretch={"fc1": 0.05, "fc2": 0.07, "fc3": 0.20}, stretch_iterations=4,
    ),
    "lenet5": Plan(
        name="lenet5", train_epochs=8, train_lr=0.05, train_batch=128, weight_decay=5e-4,
        iterations=3, retrain_epochs=4, retrain_batch=64,
        remaining={"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
        stretch={"conv1": 0.66, "conv2": 0.10, "fc1": 0.05, "fc2": 0.15}, stretch_iterations=3,
    ),
}


def quick_plan(plan: Plan) -> Plan:
    """Every step, one epoch, one round: exercises the pipeline, not the result."""
    return dataclasses.replace(plan, train_epochs=1, iterations=1, retrain_epochs=1,
                               stretch_iterations=1)


# --- data ------------------------------------------------------------------------------------

def load_mnist(path, *, limit: dict | None = None):
    """MNIST as float32 (N, 1, 28, 28) in [0, 1] and int64 labels: train / val / test.

    val is the last ``VAL_SIZE`` training images (or the last tenth when ``limit`` shrinks
    the training set); ``limit`` = {"train": n, "test": m} keeps the first n / m images.
    """
    with np.load(path, allow_pickle=False) as d:
        x_train, y_train = d["x_train"], d["y_train"]
        x_test, y_test = d["x_test"], d["y_test"]
    if limit:
        x_train, y_train = x_train[:limit["train"]], y_train[:limit["train"]]
        x_test, y_test = x_test[:limit["test"]], y_test[:limit["test"]]
    n_val = VAL_SIZE if len(y_train) > 2 * VAL_SIZE else len(y_train) // 10

    def prep(x, y):
        return (x.astype(np.float32) / np.float32(255.0))[:, None, :, :], y.astype(np.int64)

    split = len(y_train) - n_val
    return {"train": prep(x_train[:split], y_train[:split]),
            "val": prep(x_train[split:], y_train[split:]),
            "test": prep(x_test, y_test)}


def write_splits(splits: dict, out: Path) -> dict:
    paths = {}
    for name, (x, y) in splits.items():
        paths[name] = out / f"{name}.npz"
        np.savez(paths[name], x=x, y=y)
    return paths


# --- the networks ----------------------------------------------------------------------------

def build(name: str):
    """LeNet-300-100 (784-300-100-10, ReLU) or Caffe's LeNet-5, freshly initialised."""
    from onnxprune.training import models

    return models.build(name)


def train_dense(net, train, val, plan: Plan, *, seed: int, log=print) -> list[dict]:
    """SGD with momentum 0.9, L2 ``weight_decay`` on the weights, cosine decay from ``train_lr``."""
    import math

    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    for m in net.modules():  # re-initialise under the seed (construction order may vary)
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": plan.weight_decay},
                           {"params": biases, "weight_decay": 0.0}],
                          lr=plan.train_lr, momentum=0.9)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    n = len(y)
    steps_per_epoch = math.ceil(n / plan.train_batch)
    total = plan.train_epochs * steps_per_epoch
    step = 0
    history = []
    for epoch in range(1, plan.train_epochs + 1):
        t0 = time.perf_counter()
        net.train()
        order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)
        loss_sum = 0.0
        for i in range(0, n, plan.train_batch):
            for g in opt.param_groups:
                g["lr"] = plan.train_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            b = torch.from_numpy(order[i:i + plan.train_batch])
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(b)
            step += 1
        acc = torch_accuracy(net, val)
        history.append({"epoch": epoch, "train_loss": loss_sum / n, "val_top1": acc,
                        "seconds": time.perf_counter() - t0})
        log(f"  epoch {epoch}/{plan.train_epochs}: loss {loss_sum / n:.4f}, "
            f"val error {100 * (1 - acc):.2f}% ({time.perf_counter() - t0:.1f} s)")
    net.eval()
    return history


def torch_accuracy(net, data) -> float:
    import torch

    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data[1]), 1000):
            logits = net(torch.from_numpy(data[0][i:i + 1000]))
            correct += int((logits.argmax(1).numpy() == data[1][i:i + 1000]).sum())
    return correct / len(data[1])


def export(net, path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose (faster)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


# --- onnxprune compress ----------------------------------------------------------------------

def onnxprune_exe() -> list[str]:
    """The installed ``onnxprune`` command beside this interpreter (else ``python -c``)."""
    exe = Path(sys.executable).parent / "onnxprune"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("onnxprune")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from onnxprune.cli import main; sys.exit(main())"]


def layer_target_args(remaining: dict) -> list[str]:
    """``--layer-target 'fc1*=0.92'`` per layer: the flag takes the pruned share."""
    args = []
    for layer, keep in remaining.items():
        args += ["--layer-target", f"{layer}.*={round(1.0 - keep, 6):g}"]
    return args


RETRAIN = {
    # learning-rate rewinding: each round restarts at the dense run's peak rate, cosine to 0
    "rewind": lambda plan: ["--lr", f"{plan.train_lr:g}", "--lr-schedule", "cosine"],
    # the paper's LeNet retraining: a constant 1/10 of the original rate
    "paper": lambda plan: ["--original-lr", f"{plan.train_lr:g}"],
}


def compress_args(dense: Path, out: Path, report: Path, paths: dict, plan: Plan, *,
                  remaining: dict, iterations: int, seed: int, retrain: str = "rewind") -> list[str]:
    return ["compress", str(dense), "-o", str(out),
            "--train", str(paths["train"]), "--val", str(paths["val"]),
            "--iterations", str(iterations), *layer_target_args(remaining),
            *RETRAIN[retrain](plan), "--weight-decay", f"{plan.weight_decay:g}",
            "--epochs", str(plan.retrain_epochs), "--batch-size", str(plan.retrain_batch),
            "--keep-best", "--seed", str(seed), "--json", str(report)]


def run_compress(args: list[str], threads: int, log=print) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = onnxprune_exe() + args
    log("  $ " + display_command(args, threads))
    t0 = time.perf_counter()
    # The command's human log (stderr) is passed on line by line as it runs.
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        for line in proc.stderr:
            if line.strip():
                log("    " + line.rstrip())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"onnxprune compress failed with exit code {proc.returncode}")
    return wall


def display_command(args: list[str], threads: int) -> str:
    rel = [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in args]
    return f"OMP_NUM_THREADS={threads} onnxprune " + " ".join(shlex.quote(a) for a in rel)


# --- measuring -------------------------------------------------------------------------------

def test_error(path: Path, test) -> float:
    from onnxprune.core import io
    from onnxprune.runtime.evaluate import evaluate

    model, _ = io.load(str(path))
    return 100.0 * (1.0 - evaluate(model, test)["top1"])


def test_predictions(path: Path, x) -> np.ndarray:
    """Predicted classes of the written model on ``x`` (ONNX Runtime)."""
    from onnxprune.core import io
    from onnxprune.runtime.check import run_model

    model, _ = io.load(str(path))
    return np.concatenate([run_model(model, {model.graph.input[0].name: x[i:i + 1000]})[0]
                           .argmax(1) for i in range(0, len(x), 1000)])


def mcnemar(dense_ok: np.ndarray, other_ok: np.ndarray) -> dict:
    """Paired comparison on the same test images: b = only the dense model right, c = only
    the other right; exact two-sided McNemar p = min(1, 2·P[Bin(b + c, ½) ≤ min(b, c)])."""
    import math

    b = int(np.sum(dense_ok & ~other_ok))
    c = int(np.sum(~dense_ok & other_ok))
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0 ** n if n else 1.0
    return {"only_dense_right": b, "only_other_right": c, "p_value": min(1.0, 2.0 * tail)}


def paired(dense: Path, other: Path, test) -> dict:
    x, y = test
    return mcnemar(test_predictions(dense, x) == y, test_predictions(other, x) == y)


def layer_key(row: dict) -> str:
    """The paper's layer name from a report row (weight ``fc1.weight`` → ``fc1``)."""
    return row["weight"].split(".")[0]


def activation_density(path: Path, x) -> dict:
    """What each layer outputs, as the paper's Act%: ``{layer: (nonzero share, values per
    sample)}`` of the tensor the next layer reads (after ReLU / pooling); the last layer's
    output is the graph output (the logits)."""
    import onnx

    from onnxprune.core import io
    from onnxprune.runtime.check import run_model
    from onnxprune.core.graph import find_layers, graph_from_model

    model, _ = io.load(str(path))
    layers, _ = find_layers(graph_from_model(model))
    keys = [layer.weight_name.split(".")[0] for layer in layers]
    reads = [layer.nodes[0].inputs[0].name for layer in layers[1:]]
    reads.append(model.graph.output[0].name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in dict.fromkeys(reads):
        if t not in have:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    outs = run_model(probe, {probe.graph.input[0].name: x})
    by_name = dict(zip([o.name for o in probe.graph.output], outs))
    return {k: (float(np.count_nonzero(by_name[t]) / by_name[t].size),
                int(by_name[t].size // by_name[t].shape[0]))
            for k, t in zip(keys, reads)}


def bias_count(path: Path) -> int:
    """Entries of the prunable layers' biases (kept dense; the paper's totals include them)."""
    from onnxprune.core import io
    from onnxprune.core.graph import find_layers, graph_from_model

    model, _ = io.load(str(path))
    graph = graph_from_model(model)
    layers, _ = find_layers(graph)
    total = 0
    for layer in layers:
        node = layer.nodes[0]
        if len(node.inputs) > 2 and getattr(node.inputs[2], "shape", None):
            total += int(np.prod(node.inputs[2].shape))
    return total


# --- tables ----------------------------------------------------------------------------------

def _k(n: float) -> str:
    return f"{n / 1e3:.1f}K" if n < 10e3 else f"{n / 1e3:.0f}K"


def layer_rows(report: dict, act: dict) -> list[dict]:
    """Per-layer numbers in the paper's Tables 2–3 layout from a compress report.

    ``flop_pct_dense_act``: FLOPs of the surviving weights with every input counted (the
    report's ``flops_remaining``).  ``flop_pct``: the same times the previous layer's Act%
    (the share of nonzero values the layer reads; the input image counts as dense) — the
    paper's FLOP% equals weights% × the previous layer's Act% in every row of Tables 2–3,
    within rounding.
    """
    rows = []
    reads = 1.0
    for r in report["layers"]:
        key = layer_key(r)
        dense_act = 100.0 * r["flops_remaining"] / r["flops"] if r["flops"] else float("nan")
        density, size = act[key]
        rows.append({"layer": key, "weights": r["params"], "nonzero": r["nonzero"],
                     "flops": r["flops"], "flops_remaining": r["flops_remaining"],
                     "act": 100.0 * density, "act_size": size,
                     "weights_pct": 100.0 * r["nonzero"] / r["params"],
                     "flop_pct_dense_act": dense_act, "flop_pct": dense_act * reads,
                     "flops_effective": (r["flops_remaining"] or 0) * reads})
        reads = density
    return rows


def layer_table(model: str, rows: list[dict]) -> str:
    paper = PAPER[model]
    head = ("| Layer | Weights | FLOP | Act% | Weights% | FLOP% | FLOP% (dense act.) "
            "| paper: Weights | FLOP | Act% | Weights% | FLOP% |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        p = paper["layers"].get(r["layer"])
        lines.append(
            f"| {r['layer']} | {_k(r['weights'])} | {_k(r['flops'])} | {r['act']:.0f}% "
            f"| {r['weights_pct']:.1f}% | {r['flop_pct']:.1f}% | {r['flop_pct_dense_act']:.1f}% "
            + (f"| {p.weights} | {p.flop} | {p.act:g}% | {p.weights_pct:g}% | {p.flop_pct:g}% |"
               if p else "| | | | | |"))
    w = sum(r["weights"] for r in rows)
    nz = sum(r["nonzero"] for r in rows)
    f = sum(r["flops"] for r in rows)
    fr = sum(r["flops_remaining"] for r in rows)
    fe = sum(r["flops_effective"] for r in rows)
    t = paper["total"]
    lines.append(
        f"| **Total** | {_k(w)} | {_k(f)} | {total_act(rows):.0f}% | {100 * nz / w:.1f}% "
        f"| {100 * fe / f:.1f}% | {100 * fr / f:.1f}% "
        f"| {t.weights} | {t.flop} | {t.act:g}% | {t.weights_pct:g}% | {t.flop_pct:g}% |")
    return "\n".join(lines)


def total_act(rows: list[dict]) -> float:
    """Nonzero share of all values the layers output (the paper's total Act% combines the
    layers this way: LeNet-300-100 (38·300 + 65·100 + 100·10) / 410 = 46%)."""
    n = sum(r["act_size"] for r in rows)
    return sum(r["act"] * r["act_size"] for r in rows) / n if n else float("nan")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def summary_table(results: dict) -> str:
    """Table 1 layout: error and parameters, dense and compressed, beside the paper."""
    head = ("| Network | Top-1 test error | Weights | Weights + biases | Compression rate "
            "| test images: only Ref right / only pruned right (McNemar p) "
            "| paper: error | paper: parameters | paper: rate |")
    lines = [head, "|" + "---|" * 9]
    for model, r in results.items():
        p = PAPER[model]
        title = p["title"]
        lines.append(f"| {title} Ref | {r['dense']['error']:.2f}% | {r['dense']['weights']:,} "
                     f"| {r['dense']['weights'] + r['dense']['biases']:,} | – | – "
                     f"| {p['error_ref']:.2f}% | {p['params_ref']} | – |")
        for run, label in (("compressed", "Pruned"), ("stretch", "Pruned, stretch")):
            if run not in r:
                continue
            c = r[run]
            paper = (f"| {p['error_pruned']:.2f}% | {p['params_pruned']} | {p['ratio']} |"
                     if run == "compressed" else "| | | |")
            pair = c.get("paired")
            pair = (f"{pair['only_dense_right']} / {pair['only_other_right']} "
                    f"(p {_p(pair['p_value'])})" if pair else "")
            lines.append(
                f"| {title} {label} | {c['error']:.2f}% | {c['nonzero']:,} "
                f"| {c['nonzero'] + c['biases']:,} | {c['ratio']:.1f}× | {pair} " + paper)
    return "\n".join(lines)


def history_table(report: dict) -> str:
    """Per-round validation error (the 5,000 held-out training images) from ``history``."""
    lines = ["| Stage | Nonzero weights | Val error after pruning | Val error after retraining |",
             "|---|---|---|---|"]
    for h in report["history"]:
        stage = h["stage"] if h["stage"] != "iteration" else f"round {h['iteration']}"
        before = h.get("top1_before_retrain")
        lines.append(f"| {stage} | {h['nonzero']:,} "
                     f"| {'' if before is None else f'{100 * (1 - before):.2f}%'} "
                     f"| {100 * (1 - h['top1']):.2f}% |")
    return "\n".join(lines)


# --- environment -----------------------------------------------------------------------------

def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    from onnxprune.core.stats import versions

    info["versions"] = versions()
    try:
        import torch

        info["versions"]["torch"] = torch.__version__
    except ImportError:
        pass
    return info


# --- the run ---------------------------------------------------------------------------------

def run_model(model: str, plan: Plan, splits: dict, paths: dict, out: Path, *, seed: int,
              threads: int, stretch: bool, retrain: str = "rewind", log=print) -> dict:
    t_model = time.perf_counter()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = os.getloadavg()[0]
    log(f"\n== {PAPER[model]['title']}: dense training ({plan.train_epochs} epochs) ==")
    net = build(model)
    t0 = time.perf_counter()
    train_hist = train_dense(net, splits["train"], splits["val"], plan, seed=seed, log=log)
    t_train = time.perf_counter() - t0
    dense = out / f"{model}_dense.onnx"
    export(net, dense)
    result = {"plan": dataclasses.asdict(plan), "retrain": retrain, "train_history": train_hist,
              "wall_seconds": {"dense_training": t_train}, "commands": {}}
    result["dense"] = {"path": str(dense), "error": test_error(dense, splits["test"]),
                       "biases": bias_count(dense)}
    log(f"  dense test error {result['dense']['error']:.2f}% ({t_train:.0f} s)")

    runs = [("compressed", plan.remaining, plan.iterations)]
    if stretch:
        runs.append(("stretch", plan.stretch, plan.stretch_iterations))
    for run, remaining, iterations in runs:
        stem = f"{model}_compressed" if run == "compressed" else f"{model}_stretch_compressed"
        report_path = out / (f"{model}_compress.json" if run == "compressed"
                             else f"{model}_stretch_compress.json")
        args = compress_args(dense, out / f"{stem}.onnx", report_path, paths, plan,
                             remaining=remaining, iterations=iterations, seed=seed,
                             retrain=retrain)
        log(f"\n== {PAPER[model]['title']}: onnxprune compress ({run}) ==")
        wall = run_compress(args, threads, log=log)
        report = json.loads(report_path.read_text())
        path = out / f"{stem}.onnx"
        act = activation_density(path, splits["test"][0])
        rows = layer_rows(report, act)
        nonzero = report["total"]["nonzero"]
        weights = report["total"]["params"]
        result["dense"]["weights"] = weights
        result[run] = {"path": str(path), "report": str(report_path),
                       "error": test_error(path, splits["test"]), "nonzero": nonzero,
                       "ratio": weights / nonzero, "biases": bias_count(path),
                       "val_error_dense": 100 * (1 - report["accuracy_dense"]["top1"]),
                       "val_error": 100 * (1 - report["accuracy_final"]["top1"]),
                       "remaining": remaining, "iterations": iterations,
                       "layers": rows, "activation_density": act,
                       "layer_table": layer_table(model, rows),
                       "history_table": history_table(report),
                       "paired": paired(dense, path, splits["test"])}
        result["commands"][run] = display_command(args, threads)
        result["wall_seconds"][run] = wall
        log(f"  test error {result['dense']['error']:.2f}% -> {result[run]['error']:.2f}%, "
            f"{weights:,} -> {nonzero:,} weights ({weights / nonzero:.1f}x), {wall:.0f} s")
    result["wall_seconds"]["total"] = time.perf_counter() - t_model
    # Other work on the machine slows every step: record the 1-minute load average.
    result["run"] = {"started": started, "load_average_start": load_start,
                     "load_average_end": os.getloadavg()[0]}
    return result


def results_markdown(summary: dict) -> str:
    m = summary["machine"]
    v = m["versions"]
    parts = [f"Run {m['date']} on {m['cpu']}, {m['cores']} cores; "
             + ", ".join(f"{k} {val}" for k, val in sorted(v.items()) if isinstance(val, str))
             + f"; {summary['threads']} training thread(s); "
             + ("**quick mode (subset, one epoch): not a result**" if summary["quick"]
                else "full MNIST (55,000 train / 5,000 val / 10,000 test)") + ".",
             "", "Retraining in each round: " + (
                 "the rate rewound to the dense run's peak and decayed to 0 by a cosine "
                 "(`--lr <peak> --lr-schedule cosine`)" if summary.get("retrain", "paper") == "rewind"
                 else "a constant 1/10 of the dense run's peak rate (`--original-lr <peak>`), "
                      "as in the paper") + ".",
             "", "### Table 1: error and parameters", "", summary_table(summary["models"]), ""]
    for model, r in summary["models"].items():
        title = PAPER[model]["title"]
        for run in ("compressed", "stretch"):
            if run not in r:
                continue
            label = "paper's densities" if run == "compressed" else "stretch"
            parts += [f"### {title}, {label}: per layer (test set)", "",
                      r[run]["layer_table"], "", "Rounds (validation split):", "",
                      r[run]["history_table"], "", f"`{r['commands'][run]}`", ""]
    parts += ["### Wall time (seconds)", "",
              ("| Network | dense training | compress (paper's densities) | compress (stretch) "
               "| total | run started | 1-min load average (start → end) |"),
              "|---|---|---|---|---|---|---|"]
    for model, r in summary["models"].items():
        w, run = r["wall_seconds"], r.get("run", {})
        parts.append(f"| {PAPER[model]['title']} | {w['dense_training']:.0f} "
                     f"| {w['compressed']:.0f} | "
                     + (f"{w['stretch']:.0f}" if "stretch" in w else "–")
                     + f" | {w['total']:.0f} | {run.get('started', '?')} "
                     f"| {run.get('load_average_start', float('nan')):.1f} → "
                     f"{run.get('load_average_end', float('nan')):.1f} |")
    total = sum(r["wall_seconds"]["total"] for r in summary["models"].values())
    parts += ["", f"All networks: {total:.0f} s ({total / 60:.1f} min).", ""]
    return "\n".join(parts)


def rewrite_tables(out: Path) -> int:
    """Re-measure every written model on ``out/test.npz`` and rewrite the tables."""
    path = out / "summary.json"
    if not path.is_file() or not (out / "test.npz").is_file():
        print(f"nothing to do: no summary.json / test.npz in {out}")
        return 0
    summary = json.loads(path.read_text())
    with np.load(out / "test.npz") as d:
        test = (d["x"], d["y"])
    for r in summary["models"].values():
        dense = Path(r["dense"]["path"])
        r["dense"]["error"] = test_error(dense, test)
        for run in ("compressed", "stretch"):
            if run in r:
                c = Path(r[run]["path"])
                r[run]["error"] = test_error(c, test)
                r[run]["paired"] = paired(dense, c, test)
    md = results_markdown(summary)
    (out / "results.md").write_text(md)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(md)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="mnist.npz (x_train, y_train, "
                    "x_test, y_test); default ../shared/data/mnist.npz beside the repository")
    ap.add_argument("--out", help="output folder (default bench/out/mnist, or "
                    "bench/out/mnist_quick with --quick)")
    ap.add_argument("--models", nargs="+", choices=sorted(PLANS), default=["lenet300", "lenet5"])
    ap.add_argument("--no-stretch", action="store_true", help="skip the stretch compress runs")
    ap.add_argument("--quick", action="store_true",
                    help="small subset, one epoch per step: checks the pipeline, not the paper")
    ap.add_argument("--retrain-epochs", type=int, metavar="N",
                    help="epochs per prune+retrain round, for every network (default: "
                         + ", ".join(f"{k} {v.retrain_epochs}" for k, v in PLANS.items()) + ")")
    ap.add_argument("--tables-only", action="store_true",
                    help="train nothing: re-measure the .onnx files already in --out on the "
                         "test split and rewrite results.md / summary.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain", choices=sorted(RETRAIN), default="rewind",
                    help="rewind: each round from the original peak rate, cosine to 0 (default); "
                         "paper: constant 1/10 of the original rate")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for training and retraining (default 1: on a shared "
                         "2-core machine one thread trains these small nets fastest)")
    args = ap.parse_args(argv)

    if not os.path.isfile(args.data):
        print(f"skipped: MNIST file {args.data} not found (give --data PATH to an npz with "
              "x_train, y_train, x_test, y_test)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else (DEFAULT_OUT.with_name("mnist_quick") if args.quick
                                           else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    if args.tables_only:
        return rewrite_tables(out)
    t0 = time.perf_counter()
    limit = {"train": 3000, "test": 1000} if args.quick else None
    splits = load_mnist(args.data, limit=limit)
    paths = write_splits(splits, out)
    print(f"data: {args.data}: {len(splits['train'][1])} train / {len(splits['val'][1])} val / "
          f"{len(splits['test'][1])} test; wrote {', '.join(str(p) for p in paths.values())}")
    summary = {"data": str(args.data), "quick": args.quick, "seed": args.seed,
               "retrain": args.retrain,
               "threads": args.threads, "machine": machine(), "models": {}}
    previous = out / "summary.json"
    if previous.is_file():
        # Networks not run this time keep their results from the last run into this folder
        # (so one network can be re-run alone); each carries its own run date.
        old = json.loads(previous.read_text())
        if (old.get("quick"), old.get("seed"), old.get("retrain", "paper")) == \
                (args.quick, args.seed, args.retrain):
            summary["models"] = {k: v for k, v in old.get("models", {}).items()
                                 if k in PLANS and k not in args.models}
    for model in args.models:
        plan = quick_plan(PLANS[model]) if args.quick else PLANS[model]
        if args.retrain_epochs is not None:
            plan = dataclasses.replace(plan, retrain_epochs=args.retrain_epochs)
        summary["models"][model] = run_model(model, plan, splits, paths, out, seed=args.seed,
                                             threads=args.threads, retrain=args.retrain,
                                             stretch=not args.no_stretch, log=print)
    summary["models"] = {k: summary["models"][k] for k in PLANS if k in summary["models"]}
    summary["wall_seconds"] = time.perf_counter() - t0
    md = results_markdown(summary)
    (out / "results.md").write_text(md)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print("\n" + md)
    print(f"wrote {out / 'results.md'} and {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
