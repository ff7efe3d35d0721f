"""Sweep `onnxprune prune` over the third-party ONNX corpus and count the outcomes.

    python bench/corpus_sweep.py --markdown docs/corpus-counts.md --json /tmp/sweep.json

Sources and rules: tests/corpus.py.  The counts go into docs/RELIABILITY.md.  Exits 1 when
any run fails (crash, internal error, invalid output, changed outputs), listing the failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests import corpus

SOURCES = ("onnx-node", "onnx-data", "debian", "torch")


def _cases(source: str, workdir: str, max_params: int):
    if source == "onnx-node":
        return corpus.onnx_node_cases()
    if source == "onnx-data":
        return corpus.onnx_data_cases(max_params=max_params)
    if source == "debian":
        return corpus.debian_cases()
    return corpus.torch_cases(os.path.join(workdir, "torch-exports"))


def markdown(summary: dict, seconds: dict) -> str:
    outcomes = ("pruned", "dead-units-only", "unchanged", "refused", "skipped", "crash")
    lines = ["| source | models | input not runnable | runs | " + " | ".join(outcomes)
             + " | failing runs | time |",
             "|---" * (len(outcomes) + 6) + "|"]
    for source, runs in summary["runs"].items():
        failing = sum(1 for f in summary["failures"] if f["source"] == source)
        base = source.replace("-frozen", "").replace("-materialised", "")
        lines.append(
            f"| {source} | {summary['models'][source]} | {summary['not_runnable'].get(source, 0)}"
            f" | {sum(runs.values())} | " + " | ".join(str(runs.get(o, 0)) for o in outcomes)
            + f" | {failing} | {seconds.get(base, 0):.0f} s |")
    if summary["refusal_reasons"]:
        lines += ["", "| refusal (exit 4) | runs |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in summary["refusal_reasons"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", default=",".join(SOURCES),
                   help=f"comma-separated, from {', '.join(SOURCES)}")
    p.add_argument("--max-params", type=int, default=30_000_000,
                   help="materialised light architectures larger than this are left out "
                        "(AlexNet, ZFNet and VGG-19 need 61-143M weights)")
    p.add_argument("--json", help="write the summary (and every failure) as JSON")
    p.add_argument("--markdown", help="write the counts table as Markdown")
    args = p.parse_args(argv)
    results, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="onnxprune-sweep-") as work:
        for source in args.sources.split(","):
            t0 = time.perf_counter()
            n0 = len(results)
            results += corpus.sweep(_cases(source, work, args.max_params),
                                    os.path.join(work, source))
            seconds[source] = time.perf_counter() - t0
            print(f"{source}: {len(results) - n0} runs in {seconds[source]:.0f} s",
                  file=sys.stderr)
    summary = corpus.summarise(results)
    table = markdown(summary, seconds)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "seconds": seconds}, f, indent=1)
    for fail in summary["failures"]:
        print(f"FAIL {fail['name']} [{fail['config']}]: {'; '.join(fail['problems'])}",
              file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
