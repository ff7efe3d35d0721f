"""``onnxprune bench``: a pruned model, dense against lowered to ``ai.onnxprune`` ops, in one process.

For every requested (batch, threads):

* end to end — the dense model (sparse initializers densified) and the accelerated model
  (``LowerToSparseOps`` with that batch and thread count, i.e. the cost model's choice) run on
  the same seeded random inputs, in alternating order after warm-ups; medians are reported and
  the ratio is ``dense_ms / sparse_ms`` (> 1: the lowered model is faster);
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
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import __version__
from onnxprune.errors import EXIT_OK, GateFailed
from onnxprune.runtime_ops import DOMAIN

REL_ATOL = 1e-4
RTOL = 1e-4


# --------------------------------------------------------------------------- arguments


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


def _thread_list(text: str) -> list[int]:
    from onnxprune.cli import THREADS_MAX

    values = _int_list(text)
    if any(v > THREADS_MAX for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be <= {THREADS_MAX}, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    from onnxprune.check import add_input_shape_option
    from onnxprune.cli import SEED_MAX, int_arg

    b = subparsers.add_parser("bench", help="time a pruned model dense vs lowered to sparse ops")
    b.add_argument("model", help="pruned .onnx model (dense or portable storage, or lowered)")
    b.add_argument("--batch", type=_int_list, default=[1], metavar="B[,B...]",
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
    b.add_argument("-q", "--quiet", action="store_true", help="no tables on stderr")
    b.set_defaults(func=cmd_bench)
    return b


# --------------------------------------------------------------------------- models


def session_for(model_bytes: bytes, threads: int):
    from onnxprune.check import make_session

    return make_session(model_bytes, threads, inter_op_threads=1)


def run_outputs(sess, feeds):
    from onnxprune.check import run_session

    return run_session(sess, feeds)


def _densified_graph(model):
    """The model as a graph with every sparse initializer turned into a dense constant."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from onnxprune.graph import graph_from_model

    graph = graph_from_model(model)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) and \
                isinstance(t._values.tensor, onnx.SparseTensorProto):
            t.values = np.ascontiguousarray(t.values)
    return graph


def _is_lowered(model) -> bool:
    return any(n.domain == DOMAIN for n in model.graph.node)


def lower_model(dense_model, **options):
    from onnxprune.graph import graph_from_model, graph_to_model
    from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps

    graph = graph_from_model(dense_model)
    result = LowerToSparseOps(options)(graph)
    return graph_to_model(result.graph, dense_model), result.stats


def _csr_nodes(model) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN]


def _inits(model) -> dict[str, onnx.TensorProto]:
    """Constant tensors by the name nodes read them under: initializers, ``Constant`` nodes'
    values and ``Identity`` outputs over either (PyTorch aliases equal biases through Identity,
    Paddle keeps every weight in a Constant). An alias maps to the source tensor, whose own
    name may differ: :func:`_named` gives it the alias's name where a graph needs one."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # topological order: a chain of Identities resolves in one pass
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                out[node.output[0]] = value
        elif node.op_type == "Identity" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _named(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    """``t`` itself when it is called ``name``, else a copy under that name."""
    if t.name == name:
        return t
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    copy.name = name
    return copy


def _capture_shapes(model, names: list[str], feeds, threads: int) -> dict[str, tuple]:
    """Shapes the named tensors take on ``feeds`` (one run with them added as outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in have]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in extra)
    sess = session_for(probe.SerializeToString(), threads)
    outs = run_outputs(sess, feeds)
    by_name = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
    return {n: tuple(by_name[n].shape) for n in names}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dense_equivalent(node: onnx.NodeProto, inits: dict, x_shape: tuple, prefix: str = ""
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard-op nodes computing what a CsrGemm / CsrConv node computes (weights from its CSR)."""
    from onnxprune.runtime_ops import dense_from_csr

    a = _attrs(node)
    values, col_idx, row_ptr = (numpy_helper.to_array(inits[n]) for n in node.input[1:4])
    bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
    name = node.name or node.output[0]
    w_name = f"{prefix}{name}.dense_weight"
    if node.op_type == "CsrConv":
        c_in = x_shape[1]
        group = int(a.get("group", 1))
        kh, kw = (int(v) for v in a["kernel_shape"])
        w = dense_from_csr(values, col_idx, row_ptr, c_in // group * kh * kw)
        w = w.reshape(w.shape[0], c_in // group, kh, kw)
        attrs = {k: a[k] for k in ("kernel_shape", "strides", "pads", "dilations", "group")
                 if k in a}
        inputs = [node.input[0], w_name] + ([bias] if bias else [])
        return ([helper.make_node("Conv", inputs, list(node.output), name=name, **attrs)],
                [numpy_helper.from_array(w, w_name)])
    if int(a.get("matmul", 0)):
        w = dense_from_csr(values, col_idx, row_ptr, x_shape[-1])
        alpha = float(a.get("alpha", 1.0))
        beta = float(a.get("beta", 1.0))
        inits_out = [numpy_helper.from_array(np.ascontiguousarray(alpha * w.T), w_name)]
        if not bias or beta == 0.0:
            return [helper.make_node("MatMul", [node.input[0], w_name], list(node.output),
                                     name=name)], inits_out
        mid = f"{prefix}{name}.matmul_out"
        nodes = [helper.make_node("MatMul", [node.input[0], w_name], [mid], name=name)]
        b_in = bias
        if beta != 1.0:
            b_in = f"{prefix}{name}.scaled_bias"
            inits_out.append(numpy_helper.from_array(
                (beta * numpy_helper.to_array(inits[bias])).astype(np.float32), b_in))
        nodes.append(helper.make_node("Add", [mid, b_in], list(node.output), name=name + "_add"))
        return nodes, inits_out
    trans_a = int(a.get("transA", 0))
    k = x_shape[0] if trans_a else x_shape[1]
    w = dense_from_csr(values, col_idx, row_ptr, k)
    attrs = {"transB": 1, **{key: a[key] for key in ("transA", "alpha", "beta") if key in a}}
    inputs = [node.input[0], w_name] + ([bias] if bias else [])
    return ([helper.make_node("Gemm", inputs, list(node.output), name=name, **attrs)],
            [numpy_helper.from_array(w, w_name)])


def _dense_from_lowered(model, x_shapes: dict) -> onnx.ModelProto:
    """The lowered model with every CSR node replaced by its dense equivalent."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = _inits(model)
    nodes, new_inits, used = [], [], set()
    for node in model.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        ns, ts = _dense_equivalent(node, inits, x_shapes[node.input[0]])
        nodes.extend(ns)
        new_inits.extend(ts)
        used.update(node.input[1:4])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    still = {i for n in nodes for i in n.input}
    keep = [t for t in out.graph.initializer if t.name not in used or t.name in still]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + new_inits)
    ops = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(ops)
    return out


def _one_node_models(node: onnx.NodeProto, inits: dict, x_shape: tuple, opset: int
                     ) -> tuple[bytes, bytes]:
    """(dense, sparse) single-layer models for one CSR node of the model."""
    x = helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
    needed = [n for n in node.input[1:] if n]
    sparse_inits = [_named(inits[n], n) for n in needed]
    d_nodes, d_inits = _dense_equivalent(node, inits, x_shape)
    bias = [_named(inits[n], n) for n in node.input[4:5]
            if n and any(n in dn.input for dn in d_nodes)]
    std = helper.make_opsetid("", opset)
    sparse = helper.make_model(helper.make_graph([node], "layer", [x], [y], sparse_inits),
                               opset_imports=[std, helper.make_opsetid(DOMAIN, 1)])
    dense = helper.make_model(helper.make_graph(d_nodes, "layer", [x], [y], d_inits + bias),
                              opset_imports=[std])
    for m in (sparse, dense):
        m.ir_version = 8
    return dense.SerializeToString(), sparse.SerializeToString()


# --------------------------------------------------------------------------- timing


def time_pair(sess_a, sess_b, feeds_a, feeds_b, repeats: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``sess_a`` and ``sess_b``, run alternately (a b, b a, ...) after warm-ups."""
    for _ in range(warmup):
        run_outputs(sess_a, feeds_a)
        run_outputs(sess_b, feeds_b)
    ta, tb = [], []
    for i in range(repeats):
        order = ((sess_a, feeds_a, ta), (sess_b, feeds_b, tb))
        for sess, feeds, acc in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            run_outputs(sess, feeds)
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def compare_outputs(ref: list[np.ndarray], cand: list[np.ndarray]) -> dict:
    from onnxprune.check import compare

    scale = max((float(np.max(np.abs(r))) for r in ref if r.size), default=0.0)
    atol = REL_ATOL * max(scale, 1e-6)
    result = compare(ref, cand, atol, RTOL)
    return {"passed": result["passed"], "atol": atol, "rtol": RTOL, "output_scale": scale,
            "max_abs_error": result["max_abs_error"]}


# --------------------------------------------------------------------------- command


def _batch_dims(model) -> tuple[dict[str, int | None], list[str]]:
    from onnxprune.check import graph_inputs

    fixed, symbolic = {}, []
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            fixed[vi.name] = int(dims[0].dim_value)
        else:
            symbolic.append(vi.name)
    return fixed, symbolic


def _given_feeds(model, args, shapes: dict) -> dict | None:
    """Inputs that fix the batch: the ``--data`` arrays, or random arrays when ``--input-shape``
    shapes every graph input; None when random inputs follow ``--batch``."""
    from onnxprune.check import graph_inputs, load_inputs, random_inputs

    if args.data:
        return load_inputs(args.data, model)
    names = [vi.name for vi in graph_inputs(model)]
    if shapes and all(n in shapes for n in names):
        return random_inputs(model, seed=args.seed, shapes=shapes, strict=True)
    return None


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def cmd_bench(args, console) -> int:
    from onnxprune import io
    from onnxprune.check import input_shapes, random_inputs
    from onnxprune.cli import check_paths, input_files, write_json
    from onnxprune.graph import graph_to_model
    from onnxprune.report import versions

    shapes = input_shapes(args)
    model, info = io.load(args.model)
    check_paths([*input_files(info), args.data], [("--json", args.json)])
    lowered_input = _is_lowered(model)
    if lowered_input:
        dense_base = None
    else:
        dense_base = graph_to_model(_densified_graph(model), model)
    fixed, symbolic = _batch_dims(model)
    notes = []
    batches = list(args.batch)
    given = _given_feeds(model, args, shapes)
    if given is not None:
        first = next(iter(given.values()), None)
        used = [int(first.shape[0]) if first is not None and first.ndim else 1]
        notes.append(f"batch {used[0]} from {'--data' if args.data else '--input-shape'}; "
                     "--batch is not used")
        batches = used
    elif fixed and not symbolic:
        used = sorted(set(fixed.values()))
        notes.append(f"the model fixes its batch dimension ({', '.join(map(str, used))}); "
                     "using it instead of --batch")
        batches = used[:1]
    opset = _opset(model)

    configs = []
    failed = []
    for batch in batches:
        feeds = given if given is not None else random_inputs(
            model, batch=batch, seed=args.seed, shapes=shapes, strict=True)
        for threads in args.threads:
            if lowered_input:
                sparse_model, stats = model, None
                xs = _capture_shapes(model, [n.input[0] for n in _csr_nodes(model)], feeds, threads)
                dense_model = _dense_from_lowered(model, xs)
            else:
                dense_model = dense_base
                sparse_model, stats = lower_model(dense_base, batch=batch, threads=threads)
            d_sess = session_for(dense_model.SerializeToString(), threads)
            s_sess = session_for(sparse_model.SerializeToString(), threads)
            check = compare_outputs(run_outputs(d_sess, feeds), run_outputs(s_sess, feeds))
            dense_ms, sparse_ms = time_pair(d_sess, s_sess, feeds, feeds, args.repeats,
                                            args.warmup)
            del d_sess, s_sess
            cfg = {"batch": batch, "threads": threads,
                   "end_to_end": {"dense_ms": dense_ms, "sparse_ms": sparse_ms,
                                  "ratio": dense_ms / sparse_ms,
                                  "lowered": [n.name for n in _csr_nodes(sparse_model)]},
                   "correctness": check, "layers": []}
            if not check["passed"]:
                failed.append(f"batch {batch}, threads {threads}: max abs error "
                              f"{check['max_abs_error']:.3g} > {check['atol']:.3g}")
            if not args.no_layers:
                cfg["layers"] = _layer_timings(model if lowered_input else dense_base, stats,
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
                            "estimated_speedup": None, "density": None} for n in _csr_nodes(forced)}
    else:
        forced, _ = lower_model(base_model, batch=batch, threads=threads, force=["*"])
        decided = {r["name"]: r for r in stats["layers"]}
    rows = []
    for node, inits, x_shape, x, d_sess, s_sess in one_node_pairs(
            forced, base_model, feeds, threads, opset, args.seed):
        dense_ms, sparse_ms = time_pair(d_sess, s_sess, x, x, args.repeats, args.warmup)
        nnz = int(np.prod(inits[node.input[1]].dims))
        row = decided.get(node.name, {})
        params = _csr_params(node, inits, x_shape)
        op = row.get("op") or ("Conv" if node.op_type == "CsrConv" else
                               "MatMul" if _attrs(node).get("matmul", 0) else "Gemm")
        rows.append({"name": node.name, "op": op, "input_shape": list(x_shape),
                     "nonzero": nnz, "density": nnz / params if params else None,
                     "lowered": bool(row.get("lowered")), "reason": row.get("reason"),
                     "estimated_speedup": row.get("estimated_speedup"),
                     "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                     "ratio": dense_ms / sparse_ms})
    return rows


def one_node_pairs(forced: onnx.ModelProto, shape_model: onnx.ModelProto, feeds: dict,
                   threads: int, opset: int, seed: int):
    """For each CSR node of ``forced``: ``(node, inits, x_shape, x, dense session, CSR session)``
    — the node alone as a one-node dense model and a one-node CSR model, its input shape as
    ``shape_model`` sees it on ``feeds``, and a random input ``x`` of that shape."""
    nodes = _csr_nodes(forced)
    if not nodes:
        return
    xs = _capture_shapes(shape_model, [n.input[0] for n in nodes], feeds, threads)
    inits = _inits(forced)
    rng = np.random.default_rng(seed)
    for node in nodes:
        x_shape = xs[node.input[0]]
        dense_b, sparse_b = _one_node_models(node, inits, x_shape, opset)
        x = {node.input[0]: rng.standard_normal(x_shape).astype(np.float32)}
        yield node, inits, x_shape, x, session_for(dense_b, threads), session_for(sparse_b, threads)


def _csr_params(node: onnx.NodeProto, inits: dict, x_shape: tuple) -> int:
    """N·K of the weight behind a CSR node (K from the input it sees)."""
    a = _attrs(node)
    n = int(inits[node.input[3]].dims[0]) - 1
    if node.op_type == "CsrConv":
        kh, kw = (int(v) for v in a["kernel_shape"])
        return n * x_shape[1] // int(a.get("group", 1)) * kh * kw
    if int(a.get("matmul", 0)):
        return n * x_shape[-1]
    return n * (x_shape[0] if int(a.get("transA", 0)) else x_shape[1])


def _format_config(cfg: dict) -> str:
    e2e, chk = cfg["end_to_end"], cfg["correctness"]
    word = "outputs match" if chk["passed"] else "OUTPUTS DIFFER"
    lines = [f"batch {cfg['batch']}, threads {cfg['threads']}: dense {e2e['dense_ms']:.3f} ms, "
             f"sparse-ops {e2e['sparse_ms']:.3f} ms, {e2e['ratio']:.2f}x "
             f"(lowered {len(e2e['lowered'])}: {', '.join(e2e['lowered']) or '-'}); "
             f"{word} (max abs error {chk['max_abs_error']:.3g}, tolerance {chk['atol']:.3g})"]
    if cfg["layers"]:
        head = ["layer", "op", "density", "lowered", "est.", "dense ms", "csr ms", "ratio"]
        body = [[r["name"], r["op"], "-" if r["density"] is None else f"{r['density']:.1%}",
                 "yes" if r["lowered"] else "no",
                 "-" if r["estimated_speedup"] is None else f"{r['estimated_speedup']:.2f}x",
                 f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}", f"{r['ratio']:.2f}x"]
                for r in cfg["layers"]]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        for row in [head, *body]:
            lines.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)
