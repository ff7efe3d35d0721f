"""A residual CNN with BatchNorm on Fashion-MNIST, compressed with and without labels.

1. Train a small ResNet-style network (stem conv 1→16, two residual stages 16 and 32 channels
   of two basic blocks each — conv-BN-ReLU-conv-BN plus the identity or a 1×1 strided
   projection — global average pooling, fc 32→10) in PyTorch on the first 55,000 Fashion-MNIST
   training images (the last 5,000 are the validation split), export it to ONNX, and export its
   *embedding* (the same network without the classifier: one 32-vector output) separately.
2. Compress the classifier with ``onnxprune compress --target-sparsity 0.8``: with labels, and
   label-free (``--objective match``: the train/val files hold the images only).
3. Compress the embedding label-free the same way, then apply the *dense* classifier head
   (fc, taken from the dense network) to the compressed embedding's output.
4. Test accuracy of every model on the 10,000 test images with ONNX Runtime.

    python bench/fashion_mnist.py [--data DIR] [--out bench/out/fashion] [--quick]
        [--runs labels match embedding]

``--data``: a folder with the four ``*-idx?-ubyte.gz`` files (default: Debian's
``dataset-fashion-mnist`` location, /usr/share/datasets/fashion-mnist).  Without them it says
why and exits 0.  Writes ``summary.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from paper_mnist import display_command, machine, onnxprune_exe  # noqa: E402

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO / "bench" / "out" / "fashion"
VAL_SIZE = 5000
TARGET = 0.8


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian dims after a 4-byte magic whose last byte is the rank."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def load(data: Path, quick: bool) -> dict:
    x = read_idx(data / "train-images-idx3-ubyte.gz")
    y = read_idx(data / "train-labels-idx1-ubyte.gz")
    xt = read_idx(data / "t10k-images-idx3-ubyte.gz")
    yt = read_idx(data / "t10k-labels-idx1-ubyte.gz")
    if quick:
        x, y, xt, yt = x[:3000], y[:3000], xt[:1000], yt[:1000]
    n_val = VAL_SIZE if len(y) > 2 * VAL_SIZE else len(y) // 10

    def prep(a, b):  # [0, 1], centred on the training mean (0.286) and scaled by its std (0.353)
        return (((a.astype(np.float32) / 255.0) - 0.286) / 0.353)[:, None], b.astype(np.int64)

    split = len(y) - n_val
    return {"train": prep(x[:split], y[:split]), "val": prep(x[split:], y[split:]),
            "test": prep(xt, yt)}


def build(seed: int):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return torch.relu(h + (x if self.proj is None else self.proj(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU())
            self.stage1 = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1))
            self.stage2 = nn.Sequential(Block(16, 32, 2), Block(32, 32, 1))
            self.fc = nn.Linear(32, 10)

        def embed(self, x):
            return self.stage2(self.stage1(self.stem(x))).mean((2, 3))

        def forward(self, x):
            return self.fc(self.embed(x))

    torch.manual_seed(seed)
    return ResNet()


def train(net, splits, *, epochs: int, lr: float, seed: int, log=print) -> None:
    """SGD, momentum 0.9, weight decay 5e-4 on conv/fc weights, cosine from ``lr``, batch 128."""
    import torch
    import torch.nn.functional as F

    decay = [p for n, p in net.named_parameters() if p.dim() > 1]
    rest = [p for n, p in net.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                           {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=0.9)
    x, y = (torch.from_numpy(a) for a in splits["train"])
    n, batch = len(y), 128
    total, step = epochs * math.ceil(n / batch), 0
    for epoch in range(1, epochs + 1):
        net.train()
        t0 = time.perf_counter()
        order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)
        for i in range(0, n, batch):
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            b = torch.from_numpy(order[i:i + batch])
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        log(f"  epoch {epoch}/{epochs}: loss {float(loss.detach()):.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()


def export(module, path: Path, output: str, keep_bn: bool) -> None:
    """ONNX, opset 17, batch axis free. Eval-mode export folds BatchNorm into the convolutions
    unless ``keep_bn`` (constant folding off: BatchNormalization nodes stay in the graph)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                          input_names=["image"], output_names=[output], opset_version=17,
                          do_constant_folding=not keep_bn,
                          dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}})


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    from onnxprune.core import io
    from onnxprune.runtime.check import run_model

    model, _ = io.load(str(path))
    name = model.graph.input[0].name
    return np.concatenate([run_model(model, {name: x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(1) == y))


def compress(model: Path, out: Path, train: Path, val: Path, extra: list[str], original_lr: float,
             log=print) -> dict:
    report = out.with_suffix(".json")
    args = ["compress", str(model), "-o", str(out), "--train", str(train), "--val", str(val),
            "--target-sparsity", f"{TARGET:g}", "--original-lr", f"{original_lr:g}", "--json", str(report),
            "-q", *extra]
    log("  $ " + display_command(args, 1))
    t0 = time.perf_counter()
    proc = subprocess.run(onnxprune_exe() + args, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode not in (0, 3):
        raise SystemExit(f"compress failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    rep = json.loads(report.read_text())
    return {"command": display_command(args, 1), "wall_seconds": time.perf_counter() - t0,
            "ratio": rep["total"]["params"] / max(1, rep["total"]["nonzero"]),
            "params": rep["total"]["params"], "nonzero": rep["total"]["nonzero"],
            "objective": rep.get("objective"), "report": str(report)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--quick", action="store_true", help="a small subset, 1 epoch: smoke test only")
    ap.add_argument("--epochs", type=int, default=8, help="dense training epochs (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-images", type=int, default=20000, metavar="N",
                    help="images every compress run retrains on (the first N of the training "
                         "split; default 20000, to fit a 2-core machine)")
    ap.add_argument("--round-epochs", type=int, default=2,
                    help="compress --epochs: retraining epochs per round (default 2)")
    ap.add_argument("--original-lr", type=float, default=0.001,
                    help="compress --original-lr (default 0.001): the export folds BatchNorm "
                         "into the convolutions, and the folded network diverged when retrained "
                         "at 0.01 (4,000 images, one epoch: loss NaN) but not at 0.001")
    ap.add_argument("--keep-bn", action="store_true",
                    help="export with the BatchNormalization nodes kept (constant folding off) "
                         "instead of folded into the convolutions")
    ap.add_argument("--bn-statistics", choices=("keep", "update"),
                    help="compress --bn-statistics for every run (default: compress's)")
    ap.add_argument("--runs", nargs="+", choices=("labels", "match", "embedding"),
                    default=["labels", "match", "embedding"])
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "train-images-idx3-ubyte.gz").is_file():
        print(f"skipped: Fashion-MNIST not found in {data} (Debian: apt install dataset-fashion-mnist)")
        return 0
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load(data, args.quick)
    paths = {}
    for name, (x, y) in splits.items():
        keep = args.retrain_images if name == "train" else len(x)
        stem = f"{name}{keep}" if name == "train" else name
        paths[name] = out / f"{stem}.npz"
        paths[name + "_x"] = out / f"{stem}_inputs.npz"  # no labels: the label-free runs
        # Written once (then read by runs that may be going on in other processes).
        for path, arrays in ((paths[name], {"x": x[:keep], "y": y[:keep]}),
                             (paths[name + "_x"], {"x": x[:keep]})):
            if not path.is_file():
                np.savez(path.with_suffix(".tmp.npz"), **arrays)
                os.replace(path.with_suffix(".tmp.npz"), path)
    dense, embed = out / "resnet_dense.onnx", out / "embed_dense.onnx"
    previous = out / "summary.json"
    done = json.loads(previous.read_text())["runs"] if previous.is_file() else {}
    summary = {"machine": machine(), "seed": args.seed, "target_sparsity": TARGET,
               "runs": {k: v for k, v in done.items() if k not in args.runs},
               "retrain_images": min(args.retrain_images, len(splits["train"][1])),
               "original_lr": args.original_lr, "keep_bn": args.keep_bn,
               "bn_statistics": args.bn_statistics}
    if not dense.is_file():
        net = build(args.seed)
        print(f"== dense training ({args.epochs} epochs) ==")
        t0 = time.perf_counter()
        train(net, splits, epochs=1 if args.quick else args.epochs, lr=0.1, seed=args.seed)
        summary["dense_training_seconds"] = time.perf_counter() - t0
        export(net, dense, "logits", args.keep_bn)

        class Embed(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.n = n

            def forward(self, x):
                return self.n.embed(x)

        export(Embed(net), embed, "embedding", args.keep_bn)
        np.savez(out / "head.npz", w=net.fc.weight.detach().numpy(), b=net.fc.bias.detach().numpy())
    if not (out / "head.npz").is_file():  # the classifier head, from the dense graph's Gemm
        from onnx import numpy_helper

        from onnxprune.core import io

        proto, _ = io.load(str(dense))
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        gemm = [n for n in proto.graph.node if n.op_type == "Gemm"][-1]
        np.savez(out / "head.npz", w=inits[gemm.input[1]], b=inits[gemm.input[2]])
    head = np.load(out / "head.npz")
    xt, yt = splits["test"]

    def head_acc(path):  # the dense classifier head on an embedding model's output
        return accuracy(run_onnx(path, xt) @ head["w"].T + head["b"], yt)

    summary["dense"] = {"test_acc": accuracy(run_onnx(dense, xt), yt), "embed_head_acc": head_acc(embed)}
    print(f"dense test accuracy {summary['dense']['test_acc']:.2f}% "
          f"(embedding + head {summary['dense']['embed_head_acc']:.2f}%)")
    extra = ["--iterations", "1", "--epochs", "1"] if args.quick else \
        ["--epochs", str(args.round_epochs)]
    if args.bn_statistics:
        extra += ["--bn-statistics", args.bn_statistics]
    plan = {"labels": (dense, paths["train"], paths["val"], []),
            "match": (dense, paths["train_x"], paths["val_x"], ["--objective", "match"]),
            "embedding": (embed, paths["train_x"], paths["val_x"], ["--objective", "match"])}
    for run in args.runs:
        model, tr, va, more = plan[run]
        print(f"== compress: {run} ==")
        res = compress(model, out / f"{run}_compressed.onnx", tr, va, more + extra, args.original_lr)
        res["test_acc"] = (head_acc if run == "embedding" else
                           lambda p: accuracy(run_onnx(p, xt), yt))(out / f"{run}_compressed.onnx")
        base = summary["dense"]["embed_head_acc" if run == "embedding" else "test_acc"]
        res["drop_pp"] = base - res["test_acc"]
        summary["runs"][run] = res
        print(f"  {res['ratio']:.1f}x fewer weights, test accuracy {base:.2f}% -> "
              f"{res['test_acc']:.2f}% ({res['drop_pp']:+.2f} pp drop), {res['wall_seconds']:.0f} s")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"Run {summary['machine']['date']} on {summary['machine']['cpu']}.", "",
             "| run | data | compression | test accuracy (dense → compressed) | drop (pp) |",
             "|---|---|---|---|---|"]
    for run, r in summary["runs"].items():
        base = summary["dense"]["embed_head_acc" if run == "embedding" else "test_acc"]
        what = {"labels": "images + labels", "match": "images only",
                "embedding": "images only; dense head applied"}[run]
        lines.append(f"| {run} | {what} | {r['ratio']:.1f}× | {base:.2f}% → {r['test_acc']:.2f}% "
                     f"| {r['drop_pp']:+.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
