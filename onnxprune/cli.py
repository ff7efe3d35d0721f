"""The ``onnxprune`` command line.

Exit codes (DESIGN.md §4): 0 ok · 1 runtime failure · 2 usage/config error · 3 a quality gate
failed · 4 input rejected as invalid or unsafe.  Errors print one line on stderr, never a
traceback.  ``--json PATH|-`` writes the machine-readable report (``-`` = stdout); human tables
go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from onnxprune import __version__
from onnxprune.console import Console, paint
from onnxprune.errors import (EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, GateFailed,
                              OnnxPruneError, UsageError)


# --------------------------------------------------------------------------- helpers


def _float_arg(lo=None, hi=None, hi_open=False, lo_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        return v
    return parse


def _int_arg(lo: int = 1):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _layer_arg(text):
    glob, sep, q = text.rpartition("=")
    if not sep or not glob:
        raise argparse.ArgumentTypeError(f"expected GLOB=Q, got {text!r}")
    return glob, _float_arg(0.0)(q)


def write_atomic(path: str, data: bytes | str, *, label: str = "") -> dict:
    """Write ``data`` to ``path`` via a temporary file in the same folder (flushed, fsynced,
    renamed), so a reader never sees a partial file; returns ``{"path", "bytes", "sha256"}``.
    ``label`` starts the error message (e.g. ``"--json: "``)."""
    import hashlib

    blob = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"{label}cannot write {path}: {e.strerror}") from None
    return {"path": path, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def write_json(report: dict, dest: str | None) -> None:
    """Write the report to ``dest`` atomically (``-`` = stdout)."""
    if dest is None:
        return
    text = json.dumps(report, indent=2, sort_keys=False, default=_json_default) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise UsageError(f"--json: folder {folder} does not exist")
    write_atomic(dest, text, label="--json: ")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _check_json_dest(dest: str | None, outputs: list[str]) -> None:
    if dest in (None, "-"):
        return
    for out in outputs:
        if os.path.abspath(dest) == os.path.abspath(out):
            raise UsageError("--json must not be the same path as the model output")


# --------------------------------------------------------------------------- prune


def _recipe_from_args(args):
    from onnxprune.recipe import default_recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else default_recipe()
    overrides = {}
    threshold_opts = recipe.pass_options("threshold-by-std")
    if args.quality is not None or args.conv_quality is not None or args.fc_quality is not None:
        from onnxprune.passes.threshold_by_std import DEFAULT_QUALITY, _check_quality

        base = _check_quality("quality", (threshold_opts or {}).get("quality", DEFAULT_QUALITY))
        if args.quality is not None:
            base = {"conv": args.quality, "fc": args.quality}
        if args.conv_quality is not None:
            base["conv"] = args.conv_quality
        if args.fc_quality is not None:
            base["fc"] = args.fc_quality
        overrides["quality"] = base
    if args.layer:
        overrides["layers"] = [{g: q} for g, q in args.layer]
    if args.skip:
        overrides["skip"] = list(args.skip)
    if args.min_params is not None:
        overrides["min-params"] = args.min_params
    if args.target_sparsity is not None:
        overrides["target-sparsity"] = args.target_sparsity
    if args.target_scope is not None:
        overrides["target-scope"] = args.target_scope
    if overrides:
        for i, (name, opts) in enumerate(recipe.passes):
            if name == "threshold-by-std":
                merged = dict(opts)
                merged.update(overrides)
                recipe.passes[i] = (name, merged)
                break
        else:
            raise UsageError("threshold options were given but the recipe has no "
                             "threshold-by-std pass")
    if args.no_remove_dead_neurons:
        recipe.passes = [(n, o) for n, o in recipe.passes if n != "remove-dead-neurons"]
    if args.emit is not None:
        recipe.emit = args.emit
    _apply_lowering_args(recipe, args)
    if args.min_sparsity is not None:
        recipe.gates["min-sparsity"] = args.min_sparsity
    if args.max_size_mb is not None:
        recipe.gates["max-size-mb"] = args.max_size_mb
    # Validate the merged options now, before any model is read.
    recipe.build_passes()
    return recipe


def _apply_lowering_args(recipe, args) -> None:
    """--expected-batch / --threads / --lower-for become options of the lowering pass."""
    from onnxprune.recipe import LOWERING_PASS

    given = {k: v for k, v in (("batch", args.expected_batch), ("threads", args.threads),
                               ("objective", args.lower_for))
             if v is not None}
    if not given:
        return
    if recipe.emit != "sparse-ops":
        raise UsageError("--expected-batch, --threads and --lower-for only apply to "
                         "--emit sparse-ops")
    for i, (name, opts) in enumerate(recipe.passes):
        if name == LOWERING_PASS:
            recipe.passes[i] = (name, {**opts, **given})
            return
    recipe.passes.append((LOWERING_PASS, given))


def cmd_prune(args, console: Console) -> int:
    from onnxprune import io
    from onnxprune.pipeline import run_pipeline
    from onnxprune.graph import graph_from_model, infer_shapes
    from onnxprune.report import format_table, graph_rows, totals, versions

    recipe = _recipe_from_args(args)
    _check_json_dest(args.json, [args.output, args.output + ".data"])
    if not args.in_place and os.path.exists(args.output) and os.path.exists(args.model) and \
            os.path.samefile(args.output, args.model):
        raise UsageError(f"refusing to overwrite the input ({args.model}); choose another -o "
                         "or pass --in-place")
    model, info = io.load(args.model, lazy=True)
    io.check_output_path(args.output, info, in_place=args.in_place)
    graph = graph_from_model(model, info)
    shapes = infer_shapes(model)
    # Nonzero counts before pruning come from the threshold pass where it ran (saves a pass
    # over every weight of a large model); the rest are counted below.
    before_rows, notes = graph_rows(graph, shapes, with_std=False, count=False)
    result = run_pipeline(model, recipe, progress=console.progress, graph=graph)
    after_rows = before_rows if result.already_applied else \
        graph_rows(result.graph, shapes, with_std=False)[0]

    threshold_stats = {}
    dead_stats = None
    for p in result.passes:
        if p["name"] == "threshold-by-std":
            threshold_stats = {r["name"]: r for r in p["stats"]["layers"]}
            notes = notes + [n for n in p["stats"]["notes"] if n not in notes]
        if p["name"] == "remove-dead-neurons":
            dead_stats = p["stats"]
    for r in before_rows:
        t = threshold_stats.get(r["name"], {})
        if t.get("nonzero_before") is not None:
            r["nonzero"] = t["nonzero_before"]
    if any(r["nonzero"] is None for r in before_rows):
        counted = {r["weight"]: r for r in graph_rows(graph_from_model(model, info), shapes,
                                                      with_std=False)[0]}
        for r in before_rows:
            if r["nonzero"] is None:
                r.update({k: counted[r["weight"]][k] for k in ("nonzero", "density",
                                                               "flops_remaining")})
    after_by_weight = {r["weight"]: r for r in after_rows}
    rows = []
    for r in before_rows:
        a = after_by_weight.get(r["weight"], r)
        t = threshold_stats.get(r["name"], {})
        rows.append({
            **r,
            "final_shape": a["weight_shape"],
            "nonzero": a["nonzero"],
            "density": (a["nonzero"] / r["params"]) if r["params"] and a["nonzero"] is not None else None,
            "flops_remaining": a["flops_remaining"],
            "quality": t.get("quality"),
            "std": t.get("std", r["std"]),
            "threshold": t.get("threshold"),
            "skipped": t.get("skipped") or r["skipped"],
        })
    if recipe.emit == "sparse-ops":
        _count_lowered_weights(rows, result.passes)
    total = totals(rows)

    outputs: list[dict] = []
    if result.already_applied:
        written, sparse = io.save_with_storage(
            model, args.output, storage=recipe.storage, source=info, in_place=args.in_place,
            records=outputs)
    else:
        written, sparse = io.save_graph(
            result.graph, model, args.output, storage=recipe.storage, source=info,
            in_place=args.in_place, metadata=result.metadata, records=outputs,
            progress=console.progress)
    out_bytes = sum(o["bytes"] for o in outputs)

    gates = []
    if recipe.gates.get("min-sparsity") is not None:
        actual = total["sparsity"] or 0.0
        gates.append({"name": "min-sparsity", "required": recipe.gates["min-sparsity"],
                      "actual": actual, "passed": actual >= recipe.gates["min-sparsity"]})
    if recipe.gates.get("max-size-mb") is not None:
        actual = out_bytes / 1e6
        gates.append({"name": "max-size-mb", "required": recipe.gates["max-size-mb"],
                      "actual": actual, "passed": actual <= recipe.gates["max-size-mb"]})
    failed = [g for g in gates if not g["passed"]]

    report = {
        "command": "prune",
        "status": "gate-failed" if failed else "ok",
        "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(),
        "input": {"path": info.path, "bytes": info.file_bytes},
        "outputs": outputs,
        "emit": recipe.emit,
        "sparse_initializers": sparse,
        "recipe": recipe.normalised(),
        "recipe_sha256": recipe.sha256,
        "already_applied": result.already_applied,
        "layers": rows,
        "total": total,
        "size": {"input_bytes": info.file_bytes, "output_bytes": out_bytes,
                 "ratio": info.file_bytes / out_bytes if out_bytes else None},
        "passes": result.passes,
        "dead_neurons": dead_stats,
        "notes": notes,
        "gates": gates,
    }
    if recipe.emit == "sparse-ops":
        report["sparse_ops"] = _sparse_ops_report(result.passes, rows, out_bytes)
    write_json(report, args.json)

    if not rows:
        console.info("no prunable layer found (Gemm/MatMul/Conv/ConvTranspose with a constant "
                     "floating-point weight); the model was written unchanged")
    elif result.already_applied:
        console.info("this recipe was already applied to the input (metadata stamp); "
                     "nothing changed")
    if rows:
        console.info(format_table(rows, total))
    for n in notes:
        console.info(f"note: {n['node'] or '<unnamed>'} ({n['op']}): {n['reason']}")
    if report.get("sparse_ops"):
        console.info(_format_sparse_ops(report["sparse_ops"]))
    console.info(f"wrote {', '.join(o['path'] for o in outputs)} "
                 f"({info.file_bytes / 1e6:.2f} MB -> {out_bytes / 1e6:.2f} MB, {recipe.emit})")
    for g in gates:
        word = paint("PASS", "green") if g["passed"] else paint("FAIL", "red")
        console.info(f"gate {g['name']}: {word} (required {g['required']:g}, "
                     f"actual {g['actual']:.4g})")
    if failed:
        raise GateFailed("quality gate failed: " + "; ".join(
            f"{g['name']} required {g['required']:g}, got {g['actual']:.4g}" for g in failed))
    return EXIT_OK


def _count_lowered_weights(rows: list[dict], passes: list[dict]) -> None:
    """Lowered weights are CSR arrays now, invisible to find_layers: take their counts from
    the lowering pass."""
    from onnxprune.recipe import LOWERING_PASS

    stats = next((p["stats"] for p in passes if p["name"] == LOWERING_PASS), {"layers": []})
    by_weight = {r["weight"]: r for r in stats["layers"] if r["lowered"]}
    for row in rows:
        low = by_weight.get(row["weight"])
        if low is None:
            continue
        row["final_shape"] = low["weight_shape"]
        row["nonzero"] = low["nonzero"]
        row["density"] = low["nonzero"] / row["params"] if row["params"] else None
        if row["flops"] is not None and row["params"]:
            row["flops_remaining"] = row["flops"] * low["nonzero"] // row["params"]


def _sparse_ops_report(passes: list[dict], rows: list[dict], out_bytes: int) -> dict:
    from onnxprune.passes.lower_to_sparse_ops import size_summary
    from onnxprune.recipe import LOWERING_PASS

    stats = next((p["stats"] for p in passes if p["name"] == LOWERING_PASS), {"layers": []})
    return {"lowered": [r["name"] for r in stats["layers"] if r["lowered"]],
            "layers": stats["layers"], "sizes": size_summary(stats, rows, out_bytes)}


def _format_sparse_ops(sp: dict) -> str:
    lines = []
    for r in sp["layers"]:
        est = "" if r["estimated_speedup"] is None else f", est. {r['estimated_speedup']:.2f}x"
        word = "lowered" if r["lowered"] else "dense  "
        lines.append(f"sparse-ops: {word} {r['name']} ({r['reason']}{est})")
    z = sp["sizes"]
    lines.append(f"sizes: sparse-ops {z['sparse_ops_bytes'] / 1e6:.2f} MB, dense "
                 f"~{z['dense_bytes_estimated'] / 1e6:.2f} MB, portable "
                 f"~{z['portable_bytes_estimated'] / 1e6:.2f} MB ({z['method']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- inspect


def cmd_inspect(args, console: Console) -> int:
    from onnxprune import io
    from onnxprune.pipeline import read_stamp
    from onnxprune.report import file_record, format_table, layer_rows, totals, versions

    model, info = io.load(args.model, lazy=True)
    rows, notes = layer_rows(model, info)
    total = totals(rows)
    report = {
        "command": "inspect",
        "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(),
        "input": {**file_record(info.path), "total_bytes": info.file_bytes,
                  "data_files": list(info.data_files)},
        "stamp": read_stamp(model),
        "layers": rows,
        "total": total,
        "notes": notes,
    }
    write_json(report, args.json)
    if rows:
        console.info(format_table(rows, total))
    else:
        console.info("no prunable layer found")
    for n in notes:
        console.info(f"note: {n['node'] or '<unnamed>'} ({n['op']}): {n['reason']}")
    return EXIT_OK


# --------------------------------------------------------------------------- check


def cmd_check(args, console: Console) -> int:
    from onnxprune import io
    from onnxprune.check import compare, input_shapes, load_inputs, random_inputs, run_model
    from onnxprune.report import versions

    shapes = input_shapes(args)
    ref, _ = io.load(args.reference)
    cand, _ = io.load(args.candidate)
    if args.data:
        feeds = load_inputs(args.data, ref)
        source = args.data
    else:
        feeds = random_inputs(ref, batch=args.batch, seed=args.seed, shapes=shapes, strict=True)
        source = f"random (seed {args.seed}, batch {args.batch})"
    out_ref = run_model(ref, feeds)
    out_cand = run_model(cand, feeds)
    result = compare(out_ref, out_cand, args.atol, args.rtol)
    report = {"command": "check", "tool": {"name": "onnxprune", "version": __version__},
              "versions": versions(), "reference": args.reference, "candidate": args.candidate,
              "inputs": source, **result}
    write_json(report, args.json)
    if "reason" in result:
        console.info(result["reason"])
    else:
        console.info(f"max abs error {result['max_abs_error']:.3g} on {source} "
                     f"(atol {args.atol:g}, rtol {args.rtol:g})")
    if not result["passed"]:
        hint = ""
        if "atol_that_passes" in result and all("max_abs_error" in o for o in result["outputs"]):
            hint = f"; would pass with --atol {result['atol_that_passes']:.3g}"
        raise GateFailed(f"outputs differ beyond tolerance{hint}")
    console.info(paint("PASS", "green"))
    return EXIT_OK


# --------------------------------------------------------------------------- demo


def cmd_demo(args, console: Console) -> int:
    from onnxprune.demo import run_demo

    return run_demo(args, console)


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default is exit 2 too; keep the one-line form
        self.print_usage(sys.stderr)
        print(f"onnxprune: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from onnxprune.recipe import EMIT_FORMS

    p = _Parser(prog="onnxprune", description=(
        "Prune ONNX models by per-layer quality x std thresholds (Han et al., NIPS 2015). "
        "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 quality gate failed, "
        "4 input rejected."))
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(sp):
        sp.add_argument("--json", metavar="PATH|-", help="write a JSON report ('-' = stdout)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no tables or progress on stderr")

    pr = sub.add_parser("prune", help="prune a model by quality x std thresholds")
    pr.add_argument("model", help="input .onnx model")
    pr.add_argument("-o", "--output", required=True, help="output .onnx path")
    pr.add_argument("--recipe", metavar="FILE", help="YAML recipe (flags below override it)")
    pr.add_argument("--quality", type=_float_arg(0.0), metavar="Q",
                    help="quality parameter for every layer (defaults: conv 0.5, fc 1.0)")
    pr.add_argument("--conv-quality", type=_float_arg(0.0), metavar="Q")
    pr.add_argument("--fc-quality", type=_float_arg(0.0), metavar="Q")
    pr.add_argument("--layer", type=_layer_arg, action="append", metavar="GLOB=Q",
                    help="per-layer quality by name glob (repeatable; the last match wins)")
    pr.add_argument("--skip", action="append", metavar="GLOB", help="never prune these layers")
    pr.add_argument("--min-params", type=int, metavar="N", help="leave layers smaller than N")
    pr.add_argument("--target-sparsity", type=_float_arg(0.0, 1.0, hi_open=True), metavar="S",
                    help="solve q for this pruned share instead of using --quality")
    pr.add_argument("--target-scope", choices=("per-layer", "global"),
                    help="per-layer: each layer reaches the target; global: one q, total reaches it")
    pr.add_argument("--no-remove-dead-neurons", action="store_true",
                    help="keep shapes; only zero weights")
    pr.add_argument("--emit", choices=EMIT_FORMS,
                    help="portable (default): standard ops, sparse initializers where smaller; "
                         "dense: plain initializers; sparse-ops: pruned layers lowered to "
                         "onnxprune's CSR ops where they run faster")
    pr.add_argument("--expected-batch", type=int, metavar="N",
                    help="sparse-ops: batch size the model will be served at (default 1)")
    pr.add_argument("--threads", type=int, metavar="N",
                    help="sparse-ops: intra-op threads the model will run with (default 1)")
    pr.add_argument("--lower-for", choices=("speed", "size"),
                    help="sparse-ops: lower where the kernel is faster (default), or wherever "
                         "the CSR form is smaller (the compact file)")
    pr.add_argument("--min-sparsity", type=_float_arg(0.0, 1.0), metavar="S",
                    help="gate: fail (exit 3) if less than S of the weights are zero")
    pr.add_argument("--max-size-mb", type=_float_arg(0.0), metavar="M",
                    help="gate: fail (exit 3) if the output exceeds M MB (10^6 bytes)")
    pr.add_argument("--in-place", action="store_true", help="allow -o to be the input")
    common(pr)
    pr.set_defaults(func=cmd_prune)

    ins = sub.add_parser("inspect", help="per-layer table: params, nonzero, density, FLOPs")
    ins.add_argument("model")
    common(ins)
    ins.set_defaults(func=cmd_inspect)

    from onnxprune.check import add_input_shape_option

    ch = sub.add_parser("check", help="compare two models' outputs in ONNX Runtime")
    ch.add_argument("reference")
    ch.add_argument("candidate")
    ch.add_argument("--data", metavar="NPZ", help="inputs (.npz keyed by input name, or x)")
    ch.add_argument("--atol", type=_float_arg(0.0), default=1e-4)
    ch.add_argument("--rtol", type=_float_arg(0.0), default=1e-3)
    ch.add_argument("--batch", type=int, default=2, help="batch size for random inputs")
    ch.add_argument("--seed", type=int, default=0)
    add_input_shape_option(ch)
    common(ch)
    ch.set_defaults(func=cmd_check)

    from onnxprune.bench import add_parser as add_bench_parser
    add_bench_parser(sub)

    from onnxprune.cli_training import add_parsers as add_training_parsers

    add_training_parsers(sub, common)
    from onnxprune.cli_analysis import add_parsers as add_analysis_parsers
    add_analysis_parsers(sub, common)

    de = sub.add_parser("demo", help="train LeNet-300-100 on bundled digits and compress it "
                        "(needs the demo extra)")
    de.add_argument("-o", "--output", help="where to write the pruned model (default: a temp dir)")
    common(de)
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    # Before anything can import ONNX Runtime: it sends nothing (README's promise).
    from onnxprune.runtime_ops import disable_telemetry

    disable_telemetry()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    console = Console(quiet=getattr(args, "quiet", False))
    try:
        return args.func(args, console)
    except OnnxPruneError as e:
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxprune: error: out of memory", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as e:  # a bug: one line, no traceback, exit 1
        print(f"onnxprune: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
