"""Seed study for the MNIST reproduction: is the pruned net's test error systematically
different from the dense reference's, or is one seed's difference noise?

Runs ``bench/paper_mnist.py --no-stretch --seed S`` for each seed (dense training and the
paper's-densities compression; each seed in its own folder, ``--jobs`` at a time, one torch
thread each) and tabulates, per network, the dense and pruned test errors of every seed, their
mean and standard deviation, the per-seed gaps and the pooled paired counts (test images only
the reference gets right / only the pruned net gets right).

    python bench/paper_mnist_seeds.py --seeds 1,2,3,4 --retrain rewind --jobs 2
    python bench/paper_mnist_seeds.py --seeds 1,2,3,4 --collect-only --include bench/out/mnist

Folders: ``bench/out/mnist_<retrain>_seed<S>``; ``--include`` adds finished
``paper_mnist.py`` output folders (e.g. the seed-0 main run) to the table.  Writes
``bench/out/mnist_seeds_<retrain>.md`` and prints it.  Without the data file it exits 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from paper_mnist import DEFAULT_DATA, PAPER, PLANS, RETRAIN  # noqa: E402

OUT_ROOT = REPO / "bench" / "out"


def folder(root: Path, retrain: str, seed: int) -> Path:
    return root / f"mnist_{retrain}_seed{seed}"


def run_seed(seed: int, args) -> tuple[int, int]:
    out = folder(Path(args.out_root), args.retrain, seed)
    done = out / "summary.json"
    if done.is_file() and not args.force:
        have = json.loads(done.read_text())
        if set(args.models) <= set(have.get("models", {})) and have.get("retrain", "paper") == args.retrain:
            return seed, 0
    cmd = [sys.executable, str(REPO / "bench" / "paper_mnist.py"), "--data", args.data,
           "--out", str(out), "--models", *args.models, "--no-stretch", "--seed", str(seed),
           "--retrain", args.retrain, "--threads", "1"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "run.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    return seed, code


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def table(summaries: list[tuple[str, dict]], models: list[str]) -> str:
    lines = []
    for model in models:
        rows = [(label, s["models"][model]) for label, s in summaries if model in s.get("models", {})
                and "compressed" in s["models"][model]]
        if not rows:
            continue
        lines += [f"#### {PAPER[model]['title']}", "",
                  "| seed | retraining | dense test error | pruned test error | gap (pp) "
                  "| compression | only ref right / only pruned right | dense val error | pruned val error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        dense, pruned, gaps, b, c = [], [], [], 0, 0
        for label, r in rows:
            d, p = r["dense"]["error"], r["compressed"]["error"]
            pr = r["compressed"]["paired"]
            dense.append(d), pruned.append(p), gaps.append(p - d)
            b, c = b + pr["only_dense_right"], c + pr["only_other_right"]
            lines.append(f"| {label} | {r.get('retrain', 'paper')} | {d:.2f}% | {p:.2f}% | {p - d:+.2f} "
                         f"| {r['compressed']['ratio']:.1f}× | {pr['only_dense_right']} / {pr['only_other_right']} "
                         f"| {r['compressed']['val_error_dense']:.2f}% | {r['compressed']['val_error']:.2f}% |")
        (md, sd), (mp, sp), (mg, sg) = mean_sd(dense), mean_sd(pruned), mean_sd(gaps)
        mg = 0.0 if abs(mg) < 0.005 else mg  # no "-0.00" from rounding
        lines.append(f"| **mean ± sd ({len(rows)} seeds)** | | {md:.2f} ± {sd:.2f}% | {mp:.2f} ± {sp:.2f}% "
                     f"| {mg:+.2f} ± {sg:.2f} | | {b} / {c} (pooled) | | |")
        lines.append("")
        worse = sum(g > 0 for g in gaps)
        lines.append(f"Pruned worse than its reference on {worse} of {len(gaps)} seeds; "
                     f"pooled over seeds the reference alone is right on {b} test images and the "
                     f"pruned net alone on {c}.")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seeds", default="1,2,3,4", help="comma-separated seeds to run")
    ap.add_argument("--models", nargs="+", choices=sorted(PLANS), default=["lenet300", "lenet5"])
    ap.add_argument("--retrain", choices=sorted(RETRAIN), default="rewind")
    ap.add_argument("--jobs", type=int, default=2, help="seeds trained at once (default 2)")
    ap.add_argument("--out-root", default=str(OUT_ROOT))
    ap.add_argument("--include", action="append", default=[], metavar="DIR",
                    help="also tabulate a finished paper_mnist.py output folder")
    ap.add_argument("--collect-only", action="store_true", help="run nothing, tabulate")
    ap.add_argument("--force", action="store_true", help="re-run seeds that already have results")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.collect_only:
        if not os.path.isfile(args.data):
            print(f"skipped: MNIST file {args.data} not found (give --data PATH)")
            return 0
        failed = []
        with cf.ThreadPoolExecutor(max(1, args.jobs)) as ex:
            futures = [ex.submit(run_seed, s, args) for s in seeds]
            for fut in cf.as_completed(futures):
                seed, code = fut.result()
                print(f"seed {seed}: " + ("ok" if code == 0 else f"failed (exit {code}; see run.log)"))
                if code:
                    failed.append(seed)
                    for other in futures:
                        other.cancel()  # seeds not started yet; running ones finish
        if failed:
            return 1
    summaries, have = [], set()
    found = [(f"{Path(extra).name}", Path(extra) / "summary.json") for extra in args.include]
    found += [("", folder(Path(args.out_root), args.retrain, seed) / "summary.json") for seed in seeds]
    for where, path in found:
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        if s.get("retrain", "paper") != args.retrain or s.get("seed") in have:
            print(f"not pooled: {path} (retrain {s.get('retrain', 'paper')}, seed {s.get('seed')})")
            continue
        have.add(s.get("seed"))
        summaries.append((f"{s.get('seed')}" + (f" ({where})" if where else ""), s))
    md = table(summaries, args.models)
    target = Path(args.out_root) / f"mnist_seeds_{args.retrain}.md"
    target.write_text(md + "\n")
    print(md)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
