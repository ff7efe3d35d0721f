"""What folding activations or residual Adds into the CSR ops is worth on one pruned model.

The pruned (dense-stored) model is lowered twice by ``onnxprune.lower`` with the measured
decision: as shipped, and with the named activations left as nodes (the lowering's ``FOLDED``
set narrowed for that run only), or with ``Residual`` named, every residual Add (CsrConv's
and CsrGemm's input Z) left as a node, or with ``LRN`` named, every LRN left as ONNX Runtime's
(no rewrite, lrn.py); then a fourth model runs too, the dense one with its LRNs rewritten and
no layer lowered (the windows dense Convs), so that the layers' gain shows apart from the
rewrite's. The dense model and both lowered files then run in one
process, this build's library for both, calls alternating and the two lowered files swapping
places every round (as ``ab_library.py``), medians after warm-ups.

    python bench/ab_fold.py --pruned bert.dense.onnx --without Gelu --rounds 100
    python bench/ab_fold.py --pruned nudenet.dense.onnx --without Sigmoid,Swish \\
        --input-shape images=1x3x320x320 --rounds 60
    python bench/ab_fold.py --pruned bert.dense.onnx --without Residual --rounds 100
    python bench/ab_fold.py --pruned alexnet.dense.onnx --without LRN --rounds 40
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from ab_library import print_differences, session, time_swapped  # noqa: E402
from bench_models import machine  # noqa: E402
from onnxprune import runtime_ops  # noqa: E402
from onnxprune.core.errors import UsageError  # noqa: E402
from onnxprune.runtime.check import add_input_shape_option, input_shapes, random_inputs  # noqa: E402


RESIDUAL = "Residual"  # --without's name for the residual Add folds
LRN = "LRN"  # --without's name for the LRN rewrites


def lower(pruned: str, out: str, without: frozenset, threads: int, shapes: dict) -> None:
    """``onnxprune.lower`` with the activations in ``without`` (and the residual Adds, when it
    names ``Residual``) left as nodes."""
    import onnxprune
    from onnxprune.passes import lower_to_sparse_ops as lowering
    from onnxprune.passes.lower_to_sparse_ops import activations, lrn

    shipped, residual, eligibility = activations.FOLDED, lowering._residual, lrn.eligibility
    activations.FOLDED = shipped - without
    if RESIDUAL in without:
        lowering._residual = lambda *a, **k: None
    if LRN in without:
        lrn.eligibility = lambda *a, **k: "left as ONNX Runtime's LRN (ab_fold --without LRN)"
    try:
        onnxprune.lower(pruned, out, threads=threads, input_shapes=shapes or None)
    finally:
        activations.FOLDED, lowering._residual, lrn.eligibility = shipped, residual, eligibility


def rewrite_lrns_only(pruned: str, out: str) -> None:
    """The dense model with its LRNs rewritten and no layer lowered (the windows dense Convs)."""
    import onnx

    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes import LowerToSparseOps

    model = onnx.load(pruned)
    result = LowerToSparseOps({"decompose-lrn": ["*"], "never": ["*"]})(graph_from_model(model))
    onnx.save(graph_to_model(result.graph, model), out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pruned", required=True, help="the pruned model, weights stored dense")
    ap.add_argument("--without", required=True,
                    help=f"comma-separated activations not to fold, e.g. Gelu; {RESIDUAL}: the residual "
                         f"Adds; {LRN}: the LRN rewrites")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    add_input_shape_option(ap)
    args = ap.parse_args(argv)
    import onnx

    from onnxprune.passes.lower_to_sparse_ops.activations import FOLDED

    without = frozenset(a for a in args.without.split(",") if a)
    if not without or not without <= FOLDED | {RESIDUAL, LRN}:
        ap.error(f"--without: name activations the lowering folds ({', '.join(sorted(FOLDED))}), "
                 f"{RESIDUAL} or {LRN}")
    try:
        shapes = input_shapes(args)
        feeds = random_inputs(onnx.load(args.pruned, load_external_data=False), batch=1, seed=1, shapes=shapes)
    except UsageError as e:
        ap.error(str(e))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"unfolded": os.path.join(tmp, "unfolded.onnx"), "folded": os.path.join(tmp, "folded.onnx")}
        lower(args.pruned, files["unfolded"], without, args.threads, shapes)
        lower(args.pruned, files["folded"], frozenset(), args.threads, shapes)
        sessions = {"dense": session(args.pruned, None, args.threads)}
        if LRN in without:
            files["dense_rewritten"] = os.path.join(tmp, "dense_rewritten.onnx")
            rewrite_lrns_only(args.pruned, files["dense_rewritten"])
        sessions.update({k: session(p, runtime_ops.library_path(), args.threads) for k, p in files.items()})
        print_differences({k: s.run(None, feeds) for k, s in sessions.items()}, files)
        ms = time_swapped(sessions, feeds, args.rounds, "unfolded", "folded")
    m = machine()
    print(f"{m.get('Model name', '?')}, lscpu family {m.get('CPU family', '?')}, {m['date']}, load "
          f"{m.get('load_average')}; {args.threads} thread(s), {args.rounds} rounds, medians; "
          f"not folded: {', '.join(sorted(without))}")
    print(f"dense {ms['dense']:.2f} ms, unfolded {ms['unfolded']:.2f} ms ({ms['dense'] / ms['unfolded']:.2f}x), "
          f"folded {ms['folded']:.2f} ms ({ms['dense'] / ms['folded']:.2f}x); "
          f"folded / unfolded speed {ms['unfolded'] / ms['folded']:.3f}")
    if "dense_rewritten" in ms:
        print(f"dense with the LRNs rewritten {ms['dense_rewritten']:.2f} ms "
              f"({ms['dense'] / ms['dense_rewritten']:.2f}x of dense); folded against it: "
              f"{ms['dense_rewritten'] / ms['folded']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
