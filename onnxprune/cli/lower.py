"""``onnxprune lower``: a pruned or compressed model lowered to onnxprune's CSR ops, no weight
changed; and the lines that say how lowering was decided (``prune --emit sparse-ops`` too).
"""

from __future__ import annotations

from onnxprune.core.console import Console
from onnxprune.core.errors import EXIT_OK
from onnxprune.cli.output import check_paths, write_json


def add_lowering_args(p, *, defaults: bool) -> None:
    """The options lowering takes, on ``lower`` (with their defaults) and on ``prune`` (None:
    unset, so that prune can refuse them without --emit sparse-ops)."""
    from onnxprune.cli.args import THREADS_MAX, int_arg
    from onnxprune.runtime.check import add_input_shape_option

    what = "" if defaults else "sparse-ops: "
    p.add_argument("--expected-batch", type=int_arg(1), metavar="N", default=None,
                   help=f"{what}batch size the model will be served at (default 1)")
    p.add_argument("--threads", type=int_arg(1, THREADS_MAX), metavar="N",
                   default=1 if defaults else None,
                   help=f"{what}intra-op threads the model will run with (default 1)")
    p.add_argument("--lower-for", choices=("speed", "size"),
                   default="speed" if defaults else None,
                   help=f"{what}lower where the kernel is faster (default), or wherever the CSR "
                        "form is smaller (the compact file)")
    p.add_argument("--decide", choices=("measure", "model"),
                   default="measure" if defaults else None,
                   help=f"{what}for speed, time each pruned layer dense vs sparse here and lower "
                        "those >= 1.1x faster, keeping the dense model if the whole lowered one "
                        "is not faster, at a batch above 1 also with its leading layers run image "
                        "by image (measure, default: run this on the target machine); or "
                        "ask the analytic cost model (model: lowering for another machine)")
    p.add_argument("--sparse-values", choices=("fp32", "fp16"),
                   default="fp32" if defaults else None,
                   help=f"{what}value type of the CSR arrays: fp32 (default) or fp16 (half the "
                        "value bytes, summed in fp32; each weight is rounded to fp16, and the "
                        "report states the largest relative output change it measured)")
    p.add_argument("--winograd", action="store_const", const=True, default=False if defaults else None,
                   help=f"{what}also time each pruned 3x3 convolution (unit strides and dilations, "
                        "one group) run by Winograd F(4x4, 3x3) over its weights made dense, and "
                        "take that path where it is faster: denser layers run faster, the "
                        "rounding differs slightly, and the report states the largest relative "
                        "output change it measured (needs --decide measure; AVX2 or AVX-512 "
                        "CPUs, elsewhere the direct path runs)")
    p.add_argument("--no-batch-stream", dest="batch_stream", action="store_false",
                   default=True if defaults else None,
                   help=f"{what}at --expected-batch above 1, do not time the leading layers run "
                        "image by image (a Scan over the batch, kept where it is >= 1.05x faster: "
                        "the batch's large early maps stay in the caches), nor a lowering that "
                        "lost to dense so before writing the dense model")
    if defaults:
        add_input_shape_option(p)
    else:  # prune: for the FLOPs, and for the lowering's timings with sparse-ops
        add_input_shape_option(p, "size of an input the model leaves symbolic, e.g. "
                               "images=1x3x640x640 (repeatable): its layers' FLOPs are counted, "
                               "and with sparse-ops the lowering is timed at that size")


def add_parser(sub, common) -> None:
    lo = sub.add_parser("lower", help="lower a pruned model to onnxprune's sparse ops, "
                        "changing no weight")
    lo.add_argument("model", help="pruned or compressed .onnx model")
    lo.add_argument("-o", "--output", required=True, help="output .onnx path")
    add_lowering_args(lo, defaults=True)
    lo.add_argument("--data", metavar="NPZ",
                    help="inputs for the timings and the fp16 check instead of random ones: "
                         ".npz of arrays named after the graph inputs (or x); their leading "
                         "dimension is the batch timed (for token ids, a sample rate, ...)")
    common(lo)
    lo.set_defaults(func=cmd_lower)


def cmd_lower(args, console: Console) -> int:
    """Thin layer over ``onnxprune.api.lower``: the paths checked, the report written, the
    decisions printed."""
    from onnxprune.api.lower import lower
    from onnxprune.runtime.check import input_shapes

    def before_run(files: list[str]) -> None:
        check_paths([*files, args.data], [("-o", args.output), ("--json", args.json)],
                    models=[args.output])

    report = lower(args.model, args.output, lower_for=args.lower_for, decide=args.decide,
                   sparse_values=args.sparse_values, winograd=args.winograd,
                   batch_stream=args.batch_stream, expected_batch=args.expected_batch or 1, threads=args.threads,
                   input_shapes=input_shapes(args), data=args.data, before_run=before_run,
                   progress=console.progress)
    write_json(report, args.json)
    layers = report["sparse_ops"]["layers"]
    before = report["sparse_ops"]["already_lowered"]
    changed = any(r["rewritten"] for r in report["sparse_ops"]["rewrites"])
    if layers:
        console.info("\n".join(layer_lines(layers)))
    elif before:
        console.info(f"the model is already lowered ({before} sparse-op node(s)) and has no dense "
                     "prunable layer left" + ("" if changed else "; it was written unchanged"))
    else:
        console.info("no prunable layer found" + ("" if changed else "; the model was written unchanged"))
    for line in rewrite_lines(report):
        console.info(line)
    for line in (whole_model_line(report["lowering"], layers, before), winograd_line(report["lowering"]),
                 stream_line(report["lowering"]),
                 values_line(report["lowering"]),
                 batch_line(report["lowering"], args.expected_batch)):
        if line:
            console.info(line)
    size = report["size"]
    console.info(f"wrote {', '.join(o['path'] for o in report['outputs'])} "
                 f"({size['input_bytes'] / 1e6:.2f} MB -> {size['output_bytes'] / 1e6:.2f} MB, "
                 f"{lowered_count(layers, before)})")
    return EXIT_OK


def layer_lines(layers: list[dict]) -> list[str]:
    """One line per layer: lowered or dense, and why (console.info escapes the names). A
    weight that feeds several nodes is one layer: the line names how many share it."""
    lines = []
    for r in layers:
        est = "" if r["estimated_speedup"] is None else f", est. {r['estimated_speedup']:.2f}x"
        word = "lowered" if r["lowered"] else "dense  "
        more = len(r.get("nodes") or ()) - 1
        shared = f" and {more} more node(s) sharing its weight" if more > 0 else ""
        lines.append(f"sparse-ops: {word} {r['name']}{shared} ({r['reason']}{est})")
    return lines


def rewrite_lines(report: dict) -> list[str]:
    """One line per LRN node the lowering considered: rewritten or kept, and why (the
    measured decision's rows carry the timing); one for the MaxPools run as onnxprune's."""
    rows = (report.get("lowering") or {}).get("rewrites") or \
        (report.get("sparse_ops") or {}).get("rewrites") or []
    lines = [f"sparse-ops: {'rewrote' if r['rewritten'] else 'kept   '} {r['node']} ({r['op']}: {r['reason']})"
             for r in rows]
    pools = (report.get("sparse_ops") or {}).get("nchw_pools") or []
    if pools:
        lines.append(f"sparse-ops: {len(pools)} MaxPool(s) after lowered layers run as onnxprune's MaxPool, "
                     f"in NCHW ({', '.join(pools)})")
    return lines


def lowered_count(layers: list[dict], before: int = 0) -> str:
    """"N layer(s) lowered", and the node count when shared weights make it differ; for a
    model that came with ``before`` sparse-op nodes, "N more" and how many it now has."""
    done = [r for r in layers if r["lowered"]]
    nodes = sum(max(1, len(r.get("nodes") or ())) for r in done)
    text = f"{len(done)}{' more' if before else ''} layer(s) lowered" + (
        f", {nodes} nodes" if nodes != len(done) else "")
    return text + (f"; {before + nodes} sparse-op node(s) in all" if before else "")


def values_line(lowering: dict | None) -> str | None:
    """What fp16 CSR values and the Winograd path did to the outputs, when they were used."""
    change = (lowering or {}).get("values_change")
    if not change:
        return None
    worst = change["max_relative_output_change"]
    text = "not a finite number" if worst is None else f"{worst:.3g}"
    what = [w for w in ("sparse values fp16" if change.get("values") == "fp16" else None,
                        f"Winograd in {change['winograd_layers']} layer(s)" if change.get("winograd_layers") else None)
            if w]
    return f"{' and '.join(what)}: largest relative output change {text} ({change['inputs']})"


def winograd_line(lowering: dict | None) -> str | None:
    """What the whole-model timing with and without the Winograd path decided (--winograd),
    when some layer had measured faster with it."""
    w = (lowering or {}).get("winograd")
    if not w:
        return None
    verdict = (f"kept in {len(w['layers'])} layer(s)" if w["kept"] else
               f"dropped: the direct path runs in the {len(w['layers'])} layer(s) it had won")
    return (f"winograd: the lowered model ran {w['with_speedup']:.2f}x of dense with it, "
            f"{w['without_speedup']:.2f}x without; {verdict}")


def stream_line(lowering: dict | None) -> str | None:
    """What timing the leading layers image by image decided (a batch above 1)."""
    b = (lowering or {}).get("batch_stream")
    if not b:
        return None
    if not b["kept"]:
        return f"batch stream: not used ({b['reason']})"
    return (f"batch stream: the first {b['nodes']} node(s), up to {', '.join(b['frontier'])}, run image by "
            f"image: {b['gain']:.2f}x faster at batch {b['batch']} than layer by layer on the whole batch "
            f"({len(b['timed'])} prefix(es) timed)")


def batch_line(lowering: dict | None, asked: int | None) -> str | None:
    """A note when the timings ran at another batch than --expected-batch asked (``asked``:
    the option's value, None where it was not given: the report keeps the note, the console
    does not speak of an option the user never gave)."""
    note = (lowering or {}).get("batch_note") if asked is not None else None
    return f"note: {note}" if note else None


def _dense_written(layers: list[dict] | None, before: int) -> str:
    """What "the dense model" written in place of the lowered one still lowers: the layers the
    user forced (lowered whatever the timing), the sparse-op nodes the input came with."""
    forced = sum(1 for r in layers or () if r["lowered"])
    kept = [f"{forced} forced layer(s) lowered" if forced else "",
            f"its {before} sparse-op node(s) kept as they were" if before else ""]
    kept = [k for k in kept if k]
    return f" ({', '.join(kept)})" if kept else " (no layer lowered)"


def whole_model_line(lowering: dict | None, layers: list[dict] | None = None, before: int = 0) -> str | None:
    """What the whole-model timing decided, when it timed anything; ``layers`` (the report's
    rows) and ``before`` (sparse-op nodes in the input) say what the dense model written keeps."""
    whole = (lowering or {}).get("whole_model")
    if not whole or whole["speedup"] is None:
        return None
    tried = whole.get("attempts") or []
    smaller = sum(1 for a in tried[1:] if not a.get("unpruned_convs"))
    subsets = (f"; {smaller} smaller sets of layers tried" if smaller else "")
    again = whole.get("confirmed_speedup")  # the pick near 1x, timed a second time
    if whole["kept"] == "dense":
        verdict = (f"then {again:.2f}x timed again: too close to call" if again is not None
                   else f"not faster{subsets}")
        return (f"lowering: the lowered model ran {whole['speedup']:.2f}x of the dense one "
                f"here ({verdict}); wrote the dense model{_dense_written(layers, before)}")
    cut = whole["min_layer_speedup"]
    which = "the LRN rewrites were kept" if cut is None else f"layers measured >= {cut:g}x alone were lowered"
    first = (f"; with every winning layer lowered it ran {tried[0]['speedup']:.2f}x, so only {which}"
             if tried and cut != tried[0]["min_layer_speedup"] else "")
    unpruned = whole.get("unpruned_convs") or 0  # lowered too, in the model written
    also = (f" with {unpruned} unpruned convolutions lowered too ({tried[0]['speedup']:.2f}x without them)"
            if unpruned else "")
    confirmed = f", {again:.2f}x timed again" if again is not None else ""
    unstreamed = whole.get("unstreamed_speedup")
    if unstreamed is not None:  # a lowering that lost run layer by layer, written streamed
        which = (f" with {unpruned} unpruned convolutions lowered too" if unpruned else
                 "" if cut == tried[0]["min_layer_speedup"] else f" ({which} only)")
        return (f"lowering: the lowered model{which} ran {whole['speedup']:.2f}x of the dense one here "
                f"streamed image by image (dense {whole['dense_s'] * 1e3:.3f} ms, lowered "
                f"{whole['lowered_s'] * 1e3:.3f} ms{confirmed}); {unstreamed:.2f}x unstreamed")
    return (f"lowering: the lowered model ran {whole['speedup']:.2f}x of the dense one here "
            f"(dense {whole['dense_s'] * 1e3:.3f} ms, lowered {whole['lowered_s'] * 1e3:.3f} ms{confirmed}"
            f"{first}){also}")

