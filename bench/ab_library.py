"""Two builds of the sparse-op library on one lowered model, side by side with ORT dense.

A kernel change is judged by the same lowered file run with the library before the change
(``--baseline-lib``, a copy of ``runtime_ops/_onnxprune_ops.so`` built from the earlier
commit) and with the installed one, in one process, the three sessions called in turn on the
same seeded inputs (medians; the first calls are warm-ups). The outputs of the two builds are
compared with each other and with the dense model's.

    # the baseline build, once: the library of an earlier commit, copied aside
    git stash && pip install -e . --no-deps --no-build-isolation \\
        && cp runtime_ops/_onnxprune_ops.so /tmp/base_ops.so && git stash pop \\
        && pip install -e . --no-deps --no-build-isolation
    python bench/ab_library.py --dense resnet50.dense.onnx --lowered resnet50.sparse.onnx \\
        --baseline-lib /tmp/base_ops.so --rounds 30
    # symbolic image sizes: --input-shape NAME=DIMS (repeatable), as on the CLI
    # two lowerings of one model on the installed library (e.g. with and without --winograd):
    python bench/ab_library.py --dense vgg16.dense.onnx --lowered vgg16.winograd.onnx \
        --baseline-lowered vgg16.sparse.onnx --rounds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from bench_models import machine  # noqa: E402  (CPU model and family, caches, date, load)
from onnxprune import runtime_ops  # noqa: E402
from onnxprune.core.errors import UsageError  # noqa: E402
from onnxprune.runtime.check import add_input_shape_option, input_shapes, random_inputs  # noqa: E402


def session(path: str, library: str | None, threads: int):
    ort = runtime_ops.import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # the sessions are called in turn: spinning workers of one would slow the other
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library:
        # a bare relative name would send dlopen to the library search path, not this folder
        opts.register_custom_ops_library(os.path.abspath(library))
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def print_differences(outs: dict[str, list], names) -> None:
    """Each of ``names``' largest difference from ``outs["dense"]``, relative to its largest value."""
    scale = max(float(np.abs(o).max()) for o in outs["dense"])
    for k in names:
        err = max(float(np.abs(a - b).max()) for a, b in zip(outs[k], outs["dense"])) / max(scale, 1e-12)
        print(f"{k}: max relative difference from dense {err:.1e}")


def time_swapped(sessions: dict, feeds: dict, rounds: int, a: str, b: str) -> dict[str, float]:
    """Median ms per call of each session after two warm-up calls each: ``dense`` first every
    round, ``a`` and ``b`` swapping places round by round, any other session last. A session
    called right after another that read the same input finds it warmer (a one-node 1x1
    CsrConv read its input 11-22% faster in third place than in second, the very same library
    in both)."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    rest = tuple(k for k in sessions if k not in ("dense", a, b))
    for _ in range(2):
        for s in sessions.values():
            s.run(None, feeds)
    for r in range(rounds):
        for k in (("dense", a, b) if r % 2 == 0 else ("dense", b, a)) + rest:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense", required=True, help="the model before lowering")
    ap.add_argument("--lowered", required=True, help="the lowered model (CsrGemm/CsrConv nodes)")
    base = ap.add_mutually_exclusive_group(required=True)
    base.add_argument("--baseline-lib", help="another build of _onnxprune_ops.so, running --lowered")
    base.add_argument("--baseline-lowered", help="another lowered file of the same model, run with the "
                      "installed library (two lowerings compared: e.g. with and without --winograd)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="for a symbolic batch dimension")
    add_input_shape_option(ap)
    args = ap.parse_args(argv)
    for flag, path in (("--baseline-lib", args.baseline_lib), ("--baseline-lowered", args.baseline_lowered)):
        if path is not None and not os.path.isfile(path):
            ap.error(f"{flag} {path}: no such file")
    import onnx

    try:
        feeds = random_inputs(onnx.load(args.dense, load_external_data=False), batch=args.batch, seed=1,
                              shapes=input_shapes(args))
    except UsageError as e:
        ap.error(str(e))
    sessions = {"dense": session(args.dense, None, args.threads),
                "baseline": session(args.baseline_lowered, runtime_ops.library_path(), args.threads)
                if args.baseline_lowered else session(args.lowered, args.baseline_lib, args.threads),
                "current": session(args.lowered, runtime_ops.library_path(), args.threads)}
    outs = {k: s.run(None, feeds) for k, s in sessions.items()}
    print_differences(outs, ("baseline", "current"))
    same = all(np.array_equal(a, b) for a, b in zip(outs["baseline"], outs["current"]))
    print(f"baseline and current outputs {'identical' if same else 'differ'}")
    ms = time_swapped(sessions, feeds, args.rounds, "baseline", "current")
    m = machine()
    print(f"{m.get('Model name', '?')}, lscpu family {m.get('CPU family', '?')}, {m['date']}, load "
          f"{m.get('load_average')}; {args.threads} thread(s), {args.rounds} rounds, medians")
    print(f"dense {ms['dense']:.2f} ms, baseline {ms['baseline']:.2f} ms ({ms['dense'] / ms['baseline']:.2f}x), "
          f"current {ms['current']:.2f} ms ({ms['dense'] / ms['current']:.2f}x); "
          f"current / baseline speed {ms['baseline'] / ms['current']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
