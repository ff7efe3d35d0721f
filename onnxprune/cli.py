"""The ``onnxprune`` command line.

Exit codes (DESIGN.md §4): 0 ok · 1 runtime failure · 2 usage/config error · 3 a quality gate
failed · 4 input rejected as invalid or unsafe.  Errors print one line on stderr, never a
traceback (``--debug`` or ``ONNXPRUNE_DEBUG=1`` adds the traceback of an internal error, for
a bug report).  ``--json PATH|-`` writes the machine-readable report (``-`` = stdout); human tables
go to stderr.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import tempfile
import traceback

from onnxprune import __version__
from onnxprune.console import Console, paint, printable
from onnxprune.errors import (EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, GateFailed,
                              OnnxPruneError, RuntimeFailure, UsageError)

# An error line is cut here: a message quotes paths and values from the user's files.
MAX_ERROR_CHARS = 2000
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# Set to 1, as --debug: an internal error prints its traceback too (read only when one happens).
DEBUG_ENV = "ONNXPRUNE_DEBUG"


# --------------------------------------------------------------------------- helpers


def float_arg(lo=None, hi=None, hi_open=False, lo_open=False):
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


def int_arg(lo: int = 1, hi: int | None = None):
    """An integer option in [lo, hi]: counts (batch, threads, epochs) start at 1, seeds at 0."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}, got {v}")
        return v
    return parse


# Seeds go to numpy and torch generators, which take 0 .. 2^32-1 (torch up to 2^64-1).
SEED_MAX = 2**32 - 1
# ONNX Runtime stores a thread count in a C int; far above any machine's cores anyway.
THREADS_MAX = 4096


def layer_arg(text):
    glob, sep, q = text.rpartition("=")
    if not sep or not glob:
        raise argparse.ArgumentTypeError(f"expected GLOB=Q, got {text!r}")
    return glob, float_arg(0.0)(q)


def write_atomic(path: str, data: bytes | str, *, label: str = "") -> dict:
    """Write ``data`` to ``path`` via a temporary file in the same folder (flushed, fsynced,
    renamed), so a reader never sees a partial file; returns ``{"path", "bytes", "sha256"}``.
    ``label`` starts the error message (e.g. ``"--json: "``)."""
    import hashlib

    blob = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(f"{label}cannot write {path}", e) from None
    return {"path": path, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


# A write that fails for a reason the user chose (the path) is a usage error; one that fails for
# the machine's state (disk full, I/O error) is a runtime failure.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def _write_error(what: str, e: OSError) -> OnnxPruneError:
    cls = UsageError if e.errno in _PATH_ERRNOS else RuntimeFailure
    return cls(f"{what}: {e.strerror or e}")


def write_json(report: dict, dest: str | None) -> None:
    """Write the report to ``dest`` atomically (``-`` = stdout).  The text is strict JSON: a
    NaN or infinite number is written as null (JSON has no word for it)."""
    if dest is None:
        return
    text = json.dumps(_strict(report), indent=2, sort_keys=False, default=json_default,
                      allow_nan=False) + "\n"
    if dest == "-":
        _write_stdout(text)
        return
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise UsageError(f"--json: folder {folder} does not exist")
    write_atomic(dest, text, label="--json: ")


def _strict(o):
    """``o`` with every non-finite float replaced by None (containers copied, rest as is)."""
    import math

    import numpy as np

    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(o):
        return None
    return o


def json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_stdout(text: str) -> None:
    """``--json -``: a closed stdout is refused up front (see check_paths); a full or broken one
    is a runtime failure, after which stdout is pointed at /dev/null so that the interpreter's
    own flush at exit does not print a second error."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        why = e.strerror if isinstance(e, OSError) and e.strerror else "stdout is closed"
        raise RuntimeFailure(f"--json -: cannot write the report to stdout: {why}") from None


# --------------------------------------------------------------------------- paths


def same_file(a: str, b: str) -> bool:
    """One file under two names: ``os.path.samefile`` when both exist (hard links and symbolic
    links included), the same real path otherwise (a file not written yet)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _writes_data_file(model_out: str, path: str) -> bool:
    """Whether ``path`` is a name the model writer may create or delete beside ``model_out``:
    ``<model>.data`` or ``<model>.<hex>.data`` in the same folder (io.data_file_name)."""
    a, b = os.path.realpath(model_out), os.path.realpath(path)
    if os.path.dirname(a) != os.path.dirname(b):
        return False
    return re.fullmatch(re.escape(os.path.basename(a)) + r"\.([0-9a-f]+\.)?data",
                        os.path.basename(b)) is not None


def input_files(info) -> list[str]:
    """The files a loaded model was read from: the .onnx and its external-data files."""
    return [info.path, *info.data_files]


def check_paths(reads, writes, *, models=(), replaceable=(), in_place: bool = False,
                new_folder: str | None = None) -> None:
    """Refuse (exit 2), before any output is written, a command whose outputs would overwrite
    one of its inputs or each other.  The one check every command runs.

    ``reads``: every file the command reads (models with their data files, recipe, data sets,
    teacher, baseline, history); ``writes``: (option, path) pairs for every file it writes
    (``-`` is stdout); ``models``: written model paths, which also write and may delete
    ``<model>[.<hex>].data`` beside them; ``replaceable``: the input model's files, which a
    model output may replace when ``in_place`` (``prune --in-place``).  Each written file's
    folder must exist and be writable, and its name must fit the file system; ``new_folder``
    is an output folder the command creates just before writing (its parent must be writable).
    Only a report may go to stdout: ``-o -`` is refused.
    """
    reads = [r for r in reads if r]
    writes = [(opt, w) for opt, w in writes if w]
    models = [m for m in models if m]
    replaceable = [r for r in replaceable if r]
    for i, (opt, w) in enumerate(writes):
        if w == "-":
            if opt == "-o":
                raise UsageError("-o -: outputs are files; give a path (only --json takes -)")
            if sys.stdout is None:
                raise UsageError(f"{opt} -: stdout is closed")
            continue
        is_model = any(w == m for m in models)
        _check_writable(opt, w, is_model, new_folder)
        for r in reads:
            if not (same_file(w, r) or (is_model and _writes_data_file(w, r))):
                continue
            may_replace = is_model and any(same_file(r, x) for x in replaceable)
            if may_replace and in_place:
                continue
            hint = " or pass --in-place" if may_replace else ""
            raise UsageError(f"refusing to overwrite the input {r} with {opt} {w}; "
                             f"choose another path{hint}")
        for opt2, w2 in writes[i + 1:]:
            if w2 != "-" and (same_file(w, w2) or (is_model and _writes_data_file(w, w2))):
                raise UsageError(f"{opt} {w} and {opt2} {w2} are the same file; choose another")


def _check_writable(opt: str, path: str, is_model: bool, new_folder: str | None = None) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if new_folder is not None and folder == os.path.abspath(new_folder) and \
            not os.path.exists(folder):
        folder = os.path.dirname(folder)  # created later, inside this one
    if not os.path.isdir(folder):
        raise UsageError(f"{opt}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{opt}: {path} is a folder")
    if path.endswith(("/", os.sep)):  # only a folder can be named so, and none is there
        raise UsageError(f"{opt}: {path} ends with a separator; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{opt}: folder {folder} is not writable")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # A model's data file is <name>.<16 hex>.data: that name must fit too.
    extra = len(".0123456789abcdef.data") if is_model else 0
    if len(os.fsencode(os.path.basename(path))) + extra > name_max:
        raise UsageError(f"{opt}: file name too long (at most {name_max - extra} bytes)")


# --------------------------------------------------------------------------- prune


def _recipe_from_args(args):
    from onnxprune.recipe import default_recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else default_recipe()
    overrides = {}
    threshold_opts = recipe.pass_options("threshold-by-std")
    if args.quality is not None or args.conv_quality is not None or args.fc_quality is not None:
        from onnxprune.passes.threshold_by_std import DEFAULT_QUALITY, check_quality

        base = check_quality("quality", (threshold_opts or {}).get("quality", DEFAULT_QUALITY))
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
    from onnxprune.report import format_note, format_table, graph_rows, totals, versions

    recipe = _recipe_from_args(args)
    model, info = io.load(args.model, lazy=True)
    check_paths([*input_files(info), args.recipe],
                [("-o", args.output), ("--json", args.json)], models=[args.output],
                replaceable=input_files(info), in_place=args.in_place)
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
            # Shapes of the output model; params (the density's denominator) of the input.
            "weight_shape": a["weight_shape"],
            "original_shape": r["weight_shape"],
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
        console.info(format_note(n))
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
        row["weight_shape"] = low["weight_shape"]
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
        lines.append(printable(f"sparse-ops: {word} {r['name']} ({r['reason']}{est})"))
    z = sp["sizes"]
    lines.append(f"sizes: sparse-ops {z['sparse_ops_bytes'] / 1e6:.2f} MB, dense "
                 f"~{z['dense_bytes_estimated'] / 1e6:.2f} MB, portable "
                 f"~{z['portable_bytes_estimated'] / 1e6:.2f} MB ({z['method']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- inspect


def cmd_inspect(args, console: Console) -> int:
    from onnxprune import io
    from onnxprune.pipeline import read_stamp
    from onnxprune.report import (file_record, format_note, format_table, layer_rows, totals,
                                  versions)

    model, info = io.load(args.model, lazy=True)
    check_paths(input_files(info), [("--json", args.json)])
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
        console.info(format_note(n))
    return EXIT_OK


# --------------------------------------------------------------------------- check


def cmd_check(args, console: Console) -> int:
    from onnxprune import io
    from onnxprune.check import compare, input_shapes, load_inputs, random_inputs, run_model
    from onnxprune.report import versions

    shapes = input_shapes(args)
    ref, ref_info = io.load(args.reference)
    cand, cand_info = io.load(args.candidate)
    check_paths([*input_files(ref_info), *input_files(cand_info), args.data],
                [("--json", args.json)])
    if args.data:
        feeds = load_inputs(args.data, ref)
        source = args.data
    else:
        feeds = random_inputs(ref, batch=args.batch, seed=args.seed, shapes=shapes, strict=True)
        source = _describe_random(feeds, args.seed)
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
    nan_both = sum(o.get("nan_both", 0) for o in result["outputs"])
    if nan_both:
        console.info(f"note: {nan_both} output value(s) are NaN in both models at the same "
                     "positions; counted as equal")
    if not result["passed"]:
        unfixable = sum(o.get("unfixable", 0) for o in result["outputs"])
        if result.get("atol_that_passes") is not None:
            hint = f"; would pass with --atol {_ceil_3g(result['atol_that_passes'])}"
        elif unfixable:
            hint = (f"; {unfixable} value(s) are NaN or infinite on one side only, "
                    "which no --atol passes")
        else:
            hint = ""
        raise GateFailed(f"outputs differ beyond tolerance{hint}")
    console.info(paint("PASS", "green"))
    return EXIT_OK


def _ceil_3g(x: float) -> str:
    """``x`` written with 3 significant digits, rounded up: the printed value, read back,
    is never below ``x`` (a suggested --atol must pass)."""
    import math

    if x <= 0:
        return "0"
    text = f"{x:.3g}"
    step = 10.0 ** (math.floor(math.log10(x)) - 2)
    while float(text) < x:
        text = f"{float(text) + step:.3g}"
    return text


def _describe_random(feeds: dict, seed: int) -> str:
    """What the random inputs were, by the batch sizes actually fed (a model that fixes its
    batch dimension overrides --batch)."""
    batches = sorted({v.shape[0] for v in feeds.values() if getattr(v, "ndim", 0)})
    which = f", batch {', '.join(map(str, batches))}" if batches else ""
    return f"random (seed {seed}{which})"


# --------------------------------------------------------------------------- demo


def cmd_demo(args, console: Console) -> int:
    from onnxprune.demo import run_demo

    return run_demo(args, console)


# --------------------------------------------------------------------------- parser


def print_error(message: str) -> None:
    """The one place an error line is printed: ``onnxprune: error: ...`` on stderr, control
    characters escaped (a path with a newline stays on one line, a name cannot send terminal
    escapes) and the length capped."""
    print(f"onnxprune: error: {printable(message, MAX_ERROR_CHARS)}", file=sys.stderr)


def print_internal_error(exc: BaseException, debug: bool = False) -> None:
    """A bug (any exception that is not an :class:`OnnxPruneError`): the one error line, preceded
    by its traceback when ``debug`` (``--debug``) or ``ONNXPRUNE_DEBUG=1`` asks for it. The
    environment variable covers failures before the flag is parsed, and torchrun workers."""
    if debug or os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(exc, file=sys.stderr)
    print_error(f"internal error: {type(exc).__name__}: {exc}")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default is exit 2 too; keep the one-line form
        self.print_usage(sys.stderr)
        print_error(message)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from onnxprune.recipe import EMIT_FORMS

    p = Parser(prog="onnxprune", description=(
        "Prune ONNX models by per-layer quality x std thresholds (Han et al., NIPS 2015). "
        "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 quality gate failed, "
        "4 input rejected."), epilog=(
        f"An internal error (a bug) prints one line; --debug or {DEBUG_ENV}=1 adds its traceback."))
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"print the traceback behind an internal error (as {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def common(sp):
        sp.add_argument("--json", metavar="PATH|-", help="write a JSON report ('-' = stdout)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no tables or progress on stderr")
        # Also accepted after the command; SUPPRESS keeps a flag given before it.
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback behind an internal error")

    pr = sub.add_parser("prune", help="prune a model by quality x std thresholds")
    pr.add_argument("model", help="input .onnx model")
    pr.add_argument("-o", "--output", required=True, help="output .onnx path")
    pr.add_argument("--recipe", metavar="FILE", help="YAML recipe (flags below override it)")
    pr.add_argument("--quality", type=float_arg(0.0), metavar="Q",
                    help="quality parameter for every layer (defaults: conv 0.5, fc 1.0)")
    pr.add_argument("--conv-quality", type=float_arg(0.0), metavar="Q")
    pr.add_argument("--fc-quality", type=float_arg(0.0), metavar="Q")
    pr.add_argument("--layer", type=layer_arg, action="append", metavar="GLOB=Q",
                    help="per-layer quality by name glob (repeatable; the last match wins)")
    pr.add_argument("--skip", action="append", metavar="GLOB", help="never prune these layers")
    pr.add_argument("--min-params", type=int_arg(0), metavar="N",
                    help="leave layers smaller than N")
    pr.add_argument("--target-sparsity", type=float_arg(0.0, 1.0, hi_open=True), metavar="S",
                    help="solve q for this pruned share instead of using --quality")
    pr.add_argument("--target-scope", choices=("per-layer", "global"),
                    help="per-layer: each layer reaches the target; global: one q, total reaches it")
    pr.add_argument("--no-remove-dead-neurons", action="store_true",
                    help="keep shapes; only zero weights")
    pr.add_argument("--emit", choices=EMIT_FORMS,
                    help="portable (default): standard ops, sparse initializers where smaller; "
                         "dense: plain initializers; sparse-ops: pruned layers lowered to "
                         "onnxprune's CSR ops where they run faster")
    pr.add_argument("--expected-batch", type=int_arg(1), metavar="N",
                    help="sparse-ops: batch size the model will be served at (default 1)")
    pr.add_argument("--threads", type=int_arg(1, THREADS_MAX), metavar="N",
                    help="sparse-ops: intra-op threads the model will run with (default 1)")
    pr.add_argument("--lower-for", choices=("speed", "size"),
                    help="sparse-ops: lower where the kernel is faster (default), or wherever "
                         "the CSR form is smaller (the compact file)")
    pr.add_argument("--min-sparsity", type=float_arg(0.0, 1.0), metavar="S",
                    help="gate: fail (exit 3) if less than S of the weights are zero")
    pr.add_argument("--max-size-mb", type=float_arg(0.0), metavar="M",
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
    ch.add_argument("--atol", type=float_arg(0.0), default=1e-4)
    ch.add_argument("--rtol", type=float_arg(0.0), default=1e-3)
    ch.add_argument("--batch", type=int_arg(1), default=2, help="batch size for random inputs")
    ch.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
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
    # Everything, the parser included, runs inside the try: Ctrl-C at any moment exits 130
    # with one line, never a traceback (unless --debug asks for one).
    args = None
    try:
        # Before anything can import ONNX Runtime: it sends nothing (README's promise).
        from onnxprune.runtime_ops import disable_telemetry

        disable_telemetry()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        console = Console(quiet=getattr(args, "quiet", False))
        return args.func(args, console)
    except OnnxPruneError as e:
        print_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print_error("out of memory")
        return EXIT_RUNTIME
    except Exception as e:  # a bug: one line (a traceback only on request), exit 1
        print_internal_error(e, debug=getattr(args, "debug", False))
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
