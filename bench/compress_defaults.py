"""Which defaults should ``onnxprune compress`` have?  Measured over seeds on MNIST.

The question a user asks: "I run ``onnxprune compress model.onnx --target-sparsity S`` and
nothing else — do I keep my accuracy?"  For each seed this trains a dense network exactly as
``bench/paper_mnist.py`` does (SGD, momentum 0.9, cosine from the peak rate; seed S), then runs
``onnxprune compress`` once per *configuration*: the bare command plus only the options being
compared (retraining schedule, allocation rule), with ``--seed S``.  Test error on the 10,000
MNIST test images is measured with ONNX Runtime for the dense and every compressed model.

    python bench/compress_defaults.py --seeds 0,1,2,3,4 --jobs 2
    python bench/compress_defaults.py --collect-only

Configurations are named in ``CONFIGS`` (label → extra ``compress`` arguments); ``--configs``
picks some.  Dense models are kept and reused (``<out>/seed<S>/<model>_dense.onnx``); a
configuration whose report exists is not run again unless ``--force``.  Writes
``<out>/defaults.md`` (per configuration: mean ± sd of the gap to dense, worst gap, seeds within
+0.10 pp, mean compression) and ``<out>/defaults.json``.  Without the data file it exits 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from paper_mnist import (DEFAULT_DATA, PAPER, PLANS, build, display_command, export,  # noqa: E402
                         load_mnist, machine, onnxprune_exe, test_error, train_dense, write_splits)

DEFAULT_OUT = REPO / "bench" / "out" / "defaults"
TOLERANCE_PP = 0.10  # the bound on the gap to dense with no options

# label -> extra compress arguments (on top of the bare command and --seed)
CONFIGS = {
    "bare": [],
    "paper-uniform": ["--lr-schedule", "constant", "--allocate", "uniform"],
    "cosine-uniform": ["--lr-schedule", "cosine", "--allocate", "uniform"],
    "rewind-uniform": ["--original-lr", "{peak}", "--lr-schedule", "rewind", "--allocate", "uniform"],
    "paper-size": ["--lr-schedule", "constant", "--allocate", "size"],
    "cosine-size": ["--lr-schedule", "cosine", "--allocate", "size"],
    "rewind-size": ["--original-lr", "{peak}", "--lr-schedule", "rewind", "--allocate", "size"],
    "cosine-global": ["--lr-schedule", "cosine", "--allocate", "global"],
    "rewind-global": ["--original-lr", "{peak}", "--lr-schedule", "rewind", "--allocate", "global"],
    "cosine-sensitivity": ["--lr-schedule", "cosine", "--allocate", "sensitivity"],
    "rewind-sensitivity": ["--original-lr", "{peak}", "--lr-schedule", "rewind",
                           "--allocate", "sensitivity"],
    # the defaults with one more option each
    "bare-keep-best": ["--keep-best"],
    "bare-epochs3": ["--epochs", "3"],
    # the accuracy budget instead of a sparsity
    "auto-0.3": ["--target-sparsity", "auto", "--max-accuracy-drop", "0.3"],
    # beyond the paper: >= 20x fewer weights
    "moon-20x": ["--target-sparsity", "0.955", "--iterations", "4", "--epochs", "4"],
    "moon-20x-regrow": ["--target-sparsity", "0.955", "--iterations", "4", "--epochs", "4",
                        "--regrow"],
}


def dense_job(data: str, out: Path, model: str, seed: int) -> dict:
    """Train (or reuse) the dense network of one seed; returns its path and test error."""
    import torch

    torch.set_num_threads(1)
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}_dense.onnx"
    meta = folder / f"{model}_dense.json"
    splits = load_mnist(data)
    if not (path.is_file() and meta.is_file()):
        net = build(model)
        t0 = time.perf_counter()
        train_dense(net, splits["train"], splits["val"], PLANS[model], seed=seed, log=lambda *_: None)
        tmp = path.with_suffix(".tmp.onnx")
        export(net, tmp)
        os.replace(tmp, path)
        meta.write_text(json.dumps({"seconds": time.perf_counter() - t0,
                                    "error": test_error(path, splits["test"])}))
    return {"path": str(path), **json.loads(meta.read_text())}


def compress_job(out: Path, paths: dict, model: str, seed: int, label: str, target: float,
                 force: bool) -> dict:
    folder = out / f"seed{seed}"
    report = folder / f"{model}_{label}.json"
    result = folder / f"{model}_{label}.result.json"
    if result.is_file() and not force:
        return json.loads(result.read_text())
    dense = folder / f"{model}_dense.onnx"
    extra = [a.replace("{peak}", f"{PLANS[model].train_lr:g}") for a in CONFIGS[label]]
    args = ["compress", str(dense), "-o", str(folder / f"{model}_{label}.onnx"),
            "--train", str(paths["train"]), "--val", str(paths["val"]),
            "--target-sparsity", f"{target:g}", *extra, "--seed", str(seed),
            "--json", str(report), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(onnxprune_exe() + args, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{model} seed {seed} {label}: exit {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")
    rep = json.loads(report.read_text())
    with __import__("numpy").load(paths["test"]) as d:
        test = (d["x"], d["y"])
    res = {"model": model, "seed": seed, "label": label, "wall_seconds": wall,
           "command": display_command(args, 1),
           "error": test_error(folder / f"{model}_{label}.onnx", test),
           "ratio": rep["total"]["params"] / max(1, rep["total"]["nonzero"]),
           "val_error_dense": 100 * (1 - rep["accuracy_dense"]["top1"]),
           "val_error": 100 * (1 - rep["accuracy_final"]["top1"]),
           "layers": {row["name"]: row.get("sparsity") for row in rep.get("layers", [])}}
    result.write_text(json.dumps(res, indent=1))
    return res


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def table(dense: dict, results: list[dict], models: list[str], target: float) -> str:
    lines = []
    for model in models:
        rows = [r for r in results if r["model"] == model]
        if not rows:
            continue
        de = [dense[(model, s)]["error"] for s in sorted({r["seed"] for r in rows})]
        md, sd = mean_sd(de)
        lines += [f"#### {PAPER[model]['title']}, `--target-sparsity {target:g}`", "",
                  f"Dense test error {md:.2f} ± {sd:.2f}% over {len(de)} seeds.", "",
                  "| configuration | seeds | mean gap (pp) | worst gap | seeds ≤ +0.10 pp "
                  "| compression | test error | per-seed gaps |",
                  "|---|---|---|---|---|---|---|---|"]
        order = [label for label in CONFIGS if any(r["label"] == label for r in rows)]
        for label in order:
            rs = sorted((r for r in rows if r["label"] == label), key=lambda r: r["seed"])
            gaps = [r["error"] - dense[(model, r["seed"])]["error"] for r in rs]
            mg, sg = mean_sd(gaps)
            me, _ = mean_sd([r["error"] for r in rs])
            mr, _ = mean_sd([r["ratio"] for r in rs])
            ok = sum(g <= TOLERANCE_PP + 1e-9 for g in gaps)
            lines.append(f"| {label} | {len(rs)} | {mg:+.2f} ± {sg:.2f} | {max(gaps):+.2f} | "
                         f"{ok} of {len(rs)} | {mr:.1f}× | {me:.2f}% | "
                         + " ".join(f"{g:+.2f}" for g in gaps) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--models", nargs="+", choices=sorted(PLANS), default=["lenet300"])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--target", type=float, default=0.92, help="--target-sparsity (default 0.92)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dense-only", action="store_true", help="train the dense models, stop")
    ap.add_argument("--collect-only", action="store_true", help="run nothing, tabulate")
    ap.add_argument("--force", action="store_true", help="re-run configurations already done")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"skipped: MNIST file {args.data} not found (give --data PATH)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    paths = {k: out / f"{k}.npz" for k in ("train", "val", "test")}
    if not all(p.is_file() for p in paths.values()):
        write_splits(load_mnist(args.data), out)
    dense, results, failed = {}, [], []
    with cf.ProcessPoolExecutor(max(1, args.jobs)) as ex:
        jobs = {ex.submit(dense_job, args.data, out, m, s): (m, s)
                for m in args.models for s in seeds}
        for fut in cf.as_completed(jobs):
            dense[jobs[fut]] = fut.result()
            print(f"dense {jobs[fut]}: {dense[jobs[fut]]['error']:.2f}%", flush=True)
        if args.dense_only:
            return 0
        todo = [(m, s, c) for m in args.models for s in seeds for c in args.configs]
        futs = {}
        for m, s, c in todo:
            done = out / f"seed{s}" / f"{m}_{c}.result.json"
            if args.collect_only:
                if done.is_file():
                    results.append(json.loads(done.read_text()))
                continue
            futs[ex.submit(compress_job, out, paths, m, s, c, args.target, args.force)] = (m, s, c)
        failed = []
        for fut in cf.as_completed(futs):
            try:
                r = fut.result()
            except Exception as e:  # one failed run is reported; the others still count
                failed.append(futs[fut])
                print(f"failed {futs[fut]}: {e}", flush=True)
                continue
            results.append(r)
            gap = r["error"] - dense[(r["model"], r["seed"])]["error"]
            print(f"{r['model']} seed {r['seed']} {r['label']}: {r['error']:.2f}% ({gap:+.2f} pp), "
                  f"{r['ratio']:.1f}x, {r['wall_seconds']:.0f} s", flush=True)
    md = f"Run on {machine()['cpu']} ({machine()['date']}).\n\n" + table(dense, results, args.models, args.target)
    (out / "defaults.md").write_text(md + "\n")
    (out / "defaults.json").write_text(json.dumps(
        {"dense": {f"{m}/{s}": v for (m, s), v in dense.items()}, "results": results}, indent=1) + "\n")
    print(md)
    return 1 if not args.collect_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
