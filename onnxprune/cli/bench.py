"""``onnxprune bench``: a pruned model, dense against lowered to ``ai.onnxprune`` ops, in one process.

For every requested (batch, threads):

* end to end — the dense model (sparse initializers densified) and the model lowered as
  ``onnxprune lower`` lowers it by default at that batch and thread count (each layer timed
  alone here and lowered where it wins, the dense model kept where the whole lowered one does
  not; the config's ``lowering`` holds those timings) run on the same seeded random inputs, in
  alternating order after warm-ups; medians are reported and the ratio is
  ``dense_ms / sparse_ms`` (> 1: the lowered model is faster; where nothing was lowered the
  two are one model, timed once: ``nothing_lowered``, ratio 1);
* per layer — every layer the ops can express, lowered or not (what ``force`` would give):
  a one-node model with the CSR op against a one-node dense model rebuilt from the same CSR
  arrays (``Gemm`` with transB=1 / ``MatMul`` (+ ``Add``) / ``Conv``), on an input of the shape
  that layer sees inside the model;
* correctness — the two models' outputs must agree within ``1e-4 · max|dense output|``
  (+ rtol 1e-4); a mismatch exits 3 after the report is written.

An input that is already lowered is benchmarked as given against the dense model rebuilt
from its CSR arrays.  A symbolic leading input dimension takes the requested batch; when the model fixes
its batch dimension that size is used and the report says so.  Any other symbolic dimension
(a detector's height and width) needs ``--input-shape NAME=DIMS`` or ``--data`` inputs, whose
leading dimension is then the batch; without them the command exits 2 naming the input.
"""

from __future__ import annotations

import argparse
import numpy as np
from onnxprune import __version__
from onnxprune.core.console import text_table
from onnxprune.core.errors import EXIT_OK, GateFailed
from onnxprune.runtime.lowering import lower_as_measured
from onnxprune.runtime.bench import (
    batch_dims, capture_shapes, compare_outputs, csr_nodes, csr_params, dense_from_lowered, error_text,
    densified_graph, is_lowered, lower_model, model_opset, node_attrs, one_node_pairs, rows_by_node,
    run_outputs, session_for, time_pair)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


def _thread_list(text: str) -> list[int]:
    from onnxprune.cli.args import THREADS_MAX

    values = _int_list(text)
    if any(v > THREADS_MAX for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be <= {THREADS_MAX}, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    from onnxprune.runtime.check import add_input_shape_option
    from onnxprune.cli.args import SEED_MAX, int_arg

    b = subparsers.add_parser("bench", help="time a pruned model dense vs lowered to sparse ops")
    b.add_argument("model", help="pruned .onnx model (dense or portable storage, or lowered)")
    b.add_argument("--batch", type=_int_list, default=None, metavar="B[,B...]",
                   help="batch sizes (default 1)")
    b.add_argument("--threads", type=_thread_list, default=[1], metavar="T[,T...]",
                   help="intra-op thread counts (default 1)")
    b.add_argument("--repeats", type=int_arg(1), default=20, metavar="N",
                   help="timed runs per model and case (median reported; default 20)")
    b.add_argument("--warmup", type=int_arg(1), default=3, metavar="N")
    b.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0,
                   help="seed of the random inputs")
    b.add_argument("--data", metavar="NPZ",
                   help="inputs instead of random ones: .npz of arrays named after the graph "
                        "inputs (or x); their leading dimension is the batch")
    add_input_shape_option(b)
    b.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    b.add_argument("--json", metavar="PATH|-", help="write a JSON report ('-' = stdout)")
    # as every other command (app.common): also accepted after the command name
    b.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print the traceback behind an internal error")
    b.add_argument("-q", "--quiet", action="store_true", help="no tables on stderr")
    b.set_defaults(func=cmd_bench)
    return b


def _given_feeds(model, args, shapes: dict) -> dict | None:
    """Inputs that fix the batch: the ``--data`` arrays, or random arrays when ``--input-shape``
    shapes every graph input; None when random inputs follow ``--batch``."""
    from onnxprune.runtime.check import graph_inputs, load_inputs, random_inputs

    if args.data:
        return load_inputs(args.data, model)
    names = [vi.name for vi in graph_inputs(model)]
    if shapes and all(n in shapes for n in names):
        return random_inputs(model, seed=args.seed, shapes=shapes, strict=True)
    return None


def cmd_bench(args, console) -> int:
    from onnxprune.core import io
    from onnxprune.runtime.check import input_shapes, random_feeds_hint, random_inputs, uninformative
    from onnxprune.cli.output import check_paths, input_files, write_json
    from onnxprune.core.graph import graph_to_model
    from onnxprune.core.stats import versions
    from onnxprune.passes.lower_to_sparse_ops.stream import flatten

    shapes = input_shapes(args)
    model, info = io.load(args.model)
    check_paths([*input_files(info), args.data], [("--json", args.json)])
    lowered_input = is_lowered(model)
    flat = flatten(model)
    if lowered_input:
        dense_base = None
    else:
        dense_base = graph_to_model(densified_graph(model), model)
    fixed, symbolic = batch_dims(model)
    notes = []
    batches = list(args.batch or [1])
    given = _given_feeds(model, args, shapes)
    # where the inputs set the batch, a note says so when --batch asked for another one
    if given is not None:
        first = next(iter(given.values()), None)
        used = [int(first.shape[0]) if first is not None and first.ndim else 1]
        if args.batch is not None and args.batch != used:
            notes.append(f"batch {used[0]} from {'--data' if args.data else '--input-shape'}; "
                         "--batch is not used")
        batches = used
    elif fixed and not symbolic:
        used = sorted(set(fixed.values()))
        if args.batch is not None and args.batch != used[:1]:
            notes.append(f"the model fixes its batch dimension ({', '.join(map(str, used))}); "
                         "using it instead of --batch")
        batches = used[:1]
    opset = model_opset(model)

    configs = []
    failed = []
    for batch in batches:
        feeds = given if given is not None else random_inputs(
            model, batch=batch, seed=args.seed, shapes=shapes, strict=True)
        # random inputs may not be what the model can run on: the error then says so
        with random_feeds_hint(None if given is not None else feeds):
            for threads in args.threads:
                if lowered_input:  # a streamed prefix timed as written, its nodes read flat
                    sparse_model, stats = model, None
                    xs = capture_shapes(flat, [n.input[0] for n in csr_nodes(flat)], feeds, threads)
                    dense_model = dense_from_lowered(flat, xs)
                else:  # lowered as `onnxprune lower` would, measured here on these inputs
                    dense_model = dense_base
                    sparse_model, stats, decision = lower_as_measured(dense_base, feeds, batch, threads)
                d_sess = session_for(dense_model.SerializeToString(), threads)
                s_sess = session_for(sparse_model.SerializeToString(), threads)
                ref_out = run_outputs(d_sess, feeds)
                check = compare_outputs(ref_out, run_outputs(s_sess, feeds))
                why = uninformative(ref_out, check["atol"])
                if why is not None and not any(why in n for n in notes):
                    notes.append(f"{why} on these inputs: the outputs' match says little, and "
                                 "the model may take another path on real ones (--data)")
                same = not csr_nodes(sparse_model)  # nothing lowered: one model, timed once
                dense_ms, sparse_ms = time_pair(d_sess, d_sess if same else s_sess, feeds, feeds,
                                                args.repeats, args.warmup)
                if same:  # a ratio of a model to itself is noise, not a speed-up
                    dense_ms = sparse_ms = (dense_ms + sparse_ms) / 2
                del d_sess, s_sess
                cfg = {"batch": batch, "threads": threads,
                       "lowering": None if lowered_input else decision,
                       "end_to_end": {"dense_ms": dense_ms, "sparse_ms": sparse_ms,
                                      "ratio": dense_ms / sparse_ms, "nothing_lowered": same,
                                      "lowered": [n.name for n in csr_nodes(sparse_model)]},
                       "correctness": check, "layers": []}
                if not check["passed"]:
                    failed.append(f"batch {batch}, threads {threads}: {error_text(check)}")
                if not args.no_layers:
                    cfg["layers"] = _layer_timings(flat if lowered_input else dense_base, stats,
                                                   lowered_input, feeds, batch, threads, opset, args)
                configs.append(cfg)

    report = {"command": "bench", "tool": {"name": "onnxprune", "version": __version__},
              "versions": versions(), "input": {"path": info.path, "bytes": info.file_bytes},
              "lowered_input": lowered_input, "repeats": args.repeats, "warmup": args.warmup,
              "seed": args.seed, "batch_fixed": bool(fixed and not symbolic),
              "notes": notes, "configs": configs,
              "status": "mismatch" if failed else "ok"}
    write_json(report, args.json)
    for n in notes:
        console.info(f"note: {n}")
    for cfg in configs:
        console.info(_format_config(cfg))
    if failed:
        raise GateFailed("lowered model's outputs differ from the dense model's: " +
                         "; ".join(failed))
    return EXIT_OK


def _layer_timings(base_model, stats, lowered_input, feeds, batch, threads, opset, args
                   ) -> list[dict]:
    """Every layer the ops can express, timed alone: dense one-node model vs CSR one-node model."""
    if lowered_input:
        forced = base_model
        decided = {n.name: {"lowered": True, "reason": "lowered in the input",
                            "estimated_speedup": None, "density": None} for n in csr_nodes(forced)}
    else:
        # each layer alone, as the dense model shapes its input (no transposed chains)
        forced, _ = lower_model(base_model, batch=batch, threads=threads, force=["*"],
                                **{"transposed-chains": False})
        decided = rows_by_node(stats["layers"])
    rows = []
    for node, inits, x_shape, x, d_sess, s_sess in one_node_pairs(
            forced, base_model, feeds, threads, opset, args.seed):
        dense_ms, sparse_ms = time_pair(d_sess, s_sess, x, x, args.repeats, args.warmup)
        nnz = int(np.prod(inits[node.input[1]].dims))
        row = decided.get(node.name, {})
        params = csr_params(node, inits, x_shape)
        op = row.get("op") or ("Conv" if node.op_type == "CsrConv" else
                               "MatMul" if node_attrs(node).get("matmul", 0) else "Gemm")
        rows.append({"name": node.name, "op": op, "input_shape": list(x_shape),
                     "nonzero": nnz, "density": nnz / params if params else None,
                     "lowered": bool(row.get("lowered")), "reason": row.get("reason"),
                     "estimated_speedup": row.get("estimated_speedup"),
                     "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                     "ratio": dense_ms / sparse_ms})
    return rows


def _format_config(cfg: dict) -> str:
    e2e, chk = cfg["end_to_end"], cfg["correctness"]
    word = "outputs match" if chk["passed"] else "OUTPUTS DIFFER"
    if e2e.get("nothing_lowered"):
        timed = [r for r in (cfg.get("lowering") or {}).get("layers") or () if r.get("speedup") is not None]
        why = "no layer won here" if timed else "no layer could be lowered"
        lines = [f"batch {cfg['batch']}, threads {cfg['threads']}: {e2e['dense_ms']:.3f} ms; "
                 f"nothing lowered ({why}), so the model runs as the dense one: 1.00x"]
    else:
        lines = [f"batch {cfg['batch']}, threads {cfg['threads']}: dense {e2e['dense_ms']:.3f} ms, "
                 f"sparse-ops {e2e['sparse_ms']:.3f} ms, {e2e['ratio']:.2f}x "
                 f"(lowered {len(e2e['lowered'])}: {', '.join(e2e['lowered']) or '-'}); "
                 f"{word} ({error_text(chk)})"]
    if cfg["layers"]:
        head = ["layer", "op", "density", "lowered", "est.", "dense ms", "csr ms", "ratio"]
        body = [[r["name"], r["op"], "-" if r["density"] is None else f"{r['density']:.1%}",
                 "yes" if r["lowered"] else "no",
                 "-" if r["estimated_speedup"] is None else f"{r['estimated_speedup']:.2f}x",
                 f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}", f"{r['ratio']:.2f}x"]
                for r in cfg["layers"]]
        lines.append(text_table(None, [head, *body], indent="  "))  # no rule under the head
    return "\n".join(lines)
