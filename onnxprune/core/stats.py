"""Per-layer statistics, counted the way Han et al. (2015) count them.

* params: elements of the layer's weight (biases are not connections);
* FLOPs per sample: a multiply-add is 2 FLOPs, so ``flops = 2 · params · reuse`` where
  ``reuse`` is how often each weight is applied for one sample — 1 for Gemm, the output spatial
  size H_out·W_out for Conv (from ONNX shape inference), the input spatial size for
  ConvTranspose; for Gemm and MatMul the rows of the input ÷ the batch the model's inputs
  fix (so a transformer's projections count every token, sequence-first or flattened), or,
  where the batch is symbolic, the dims after the inputs' batch symbol;
* where shape inference leaves those rows unknown (Swin's windows × batch, a reshape to a
  computed size), they are measured in one run of the model on random inputs, when the caller
  can run it (``layer_reuses``), and failing that the leading dimension is taken for the
  batch; each row's ``flops_shapes`` says which (``inferred``, ``measured``, ``assumed``);
* flops_remaining = 2 · nonzero · reuse;  density = nonzero / params;
* FLOPs need the spatial sizes: where shape inference leaves one symbolic (a detector's
  height and width) they are unknown — null in JSON, "?" in tables — never a guess; the total
  is then null too, with the known part and the unknown layers beside it;
* compression = total params / total nonzero.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from typing import Callable

import numpy as np
from onnx import ModelProto

from onnxprune.core.console import printable, text_table
from onnxprune.core.graph import (batch_symbol, find_layers, graph_from_model, infer_shapes, model_batch,
                                  weight_reuse, weight_values)
from onnxprune.core.masks import count_nonzero, weight_std

# tensor names -> their shapes in one run of the model (and the graph inputs'), or None
Measure = Callable[[list[str]], "dict[str, list[int]] | None"]


def layer_rows(model: ModelProto, info=None, input_shapes: dict | None = None,
               measure: Measure | None = None) -> tuple[list[dict], list[dict]]:
    """Rows for every prunable layer of ``model`` plus notes on what was skipped (a lowered
    model: ``onnxprune.runtime.bench.counted_layer_rows``); ``input_shapes`` sizes symbolic
    inputs for the FLOP counts, and ``measure`` sizes what shape inference cannot
    (:func:`layer_reuses`)."""
    symbols: dict = {}
    shapes = infer_shapes(model, input_shapes, symbols)
    return graph_rows(graph_from_model(model, info), shapes, _stamped_thresholds(model),
                      symbols=symbols, measure=measure)


def graph_rows(graph, shapes, stamped=None, with_std: bool = True, count: bool = True,
               symbols: dict | None = None, measure: Measure | None = None
               ) -> tuple[list[dict], list[dict]]:
    """``layer_rows`` for an imported graph and precomputed shapes (``symbols`` and
    ``measure``: :func:`layer_reuses`).

    ``with_std`` and ``count`` each cost a pass over the weights; without ``count`` the
    nonzero-derived fields are None (for callers that know the counts already).
    """
    stamped = stamped or {}
    layers, notes = find_layers(graph)
    reuses = layer_reuses(graph, layers, shapes, symbols, measure)
    rows = []
    for layer, (reuse, basis) in zip(layers, reuses):
        w = weight_values(layer) if layer.weight is not None else None
        nnz = count_nonzero(w) if w is not None and count else None
        params = layer.params
        rows.append({
            "name": layer.name,
            "weight": layer.weight_name,
            "op": layer.op,
            "kind": layer.kind,
            "weight_shape": list(layer.shape),
            "dtype": layer.dtype,
            "params": params,
            "nonzero": nnz,
            "density": (nnz / params) if params and nnz is not None else None,
            "flops": 2 * params * reuse if reuse is not None else None,
            "flops_remaining": 2 * nnz * reuse if reuse is not None and nnz is not None else None,
            "flops_shapes": basis,
            "std": weight_std(w) if w is not None and with_std else None,
            "threshold": stamped.get(layer.name),
            "skipped": layer.skip_reason,
        })
    return rows, [{"node": n.node, "op": n.op, "reason": n.reason} for n in notes]


def layer_reuses(graph, layers, shapes, symbols: dict | None = None,
                 measure: Measure | None = None) -> list[tuple[int | None, str | None]]:
    """Per layer, how often its weight is applied for one sample (summed over the nodes that
    share it; None when unknown) and what that rests on:

    * ``inferred``: ONNX shape inference (``symbols``, from ``infer_shapes``, tells a product
      whose leading dim is the inputs' symbolic batch);
    * ``measured``: where inference leaves the rows unknown (Swin's windows × batch, a
      reshape to a computed shape), the shapes of one run of the model: ``measure(names)``
      returns tensor name → shape for those tensors and the graph inputs, or None when the
      model cannot run (``onnxprune.runtime.shape_probe``);
    * ``assumed``: neither could tell, and the leading dimension was taken for the batch.
    """
    batch = model_batch(graph, shapes)
    bsym = batch_symbol(graph, symbols) if symbols and batch is None else None
    first = (lambda name: (symbols.get(name) or [None])[0] == bsym) if bsym else None

    def summed(layer, shp, b, exact, bf):
        rs = [weight_reuse(layer, node, shp, b, exact, bf) for node in layer.nodes]
        return None if any(r is None for r in rs) else sum(rs)

    out = [(r, "inferred" if r is not None else None)
           for r in (summed(layer, shapes, batch, True, first) for layer in layers)]
    left = [i for i, (r, _) in enumerate(out) if r is None]
    if left and measure is not None:
        names = sorted({t.name for i in left for n in layers[i].nodes
                        for t in (*n.inputs[:1], *n.outputs[:1]) if t is not None and t.name})
        measured = measure(names)
        if measured:
            merged = {**shapes, **measured}
            b = model_batch(graph, merged)
            for i in left:
                r = summed(layers[i], merged, b, True, None)
                if r is not None:
                    out[i] = (r, "measured")
    for i in [i for i, (r, _) in enumerate(out) if r is None]:
        r = summed(layers[i], shapes, batch, False, first)
        out[i] = (r, "assumed" if r is not None else None)
    return out


def _stamped_thresholds(model: ModelProto) -> dict[str, float]:
    import json

    for p in model.metadata_props:
        if p.key == "onnxprune.threshold":
            try:
                data = json.loads(p.value)
            except ValueError:
                return {}
            return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} \
                if isinstance(data, dict) else {}
    return {}


def merged_row(before: dict, after: dict) -> dict:
    """A layer's row across a change of the model (pruning, retraining, removed neurons):
    shapes, nonzero count and remaining FLOPs of the output (``after``), params of the input
    (``before``), so density = nonzero after / params before counts removed neurons as zeros."""
    return {
        **before,
        "weight_shape": after["weight_shape"],
        "original_shape": before["weight_shape"],
        "nonzero": after["nonzero"],
        "density": (after["nonzero"] / before["params"])
        if before["params"] and after["nonzero"] is not None else None,
        "flops_remaining": after["flops_remaining"],
    }


def totals(rows: list[dict]) -> dict:
    params = sum(r["params"] for r in rows)
    nonzero = sum(r["nonzero"] or 0 for r in rows)
    flops = [r["flops"] for r in rows]
    rem = [r["flops_remaining"] for r in rows]
    known = all(f is not None for f in flops) and rows
    unknown = [r["name"] for r in rows if r["flops"] is None]
    return {
        "params": params,
        "nonzero": nonzero,
        "density": nonzero / params if params else None,
        "sparsity": 1 - nonzero / params if params else None,
        "compression": params / nonzero if nonzero else None,
        "flops": sum(flops) if known else None,
        "flops_remaining": sum(rem) if known else None,
        # When some layer's FLOPs are unknown the totals are null; these say how far we got.
        "flops_known_part": sum(f for f in flops if f is not None),
        "flops_unknown_layers": unknown,
        # layers whose rows per sample shape inference could not give (layer_reuses)
        "flops_measured_layers": [r["name"] for r in rows if r.get("flops_shapes") == "measured"],
        "flops_assumed_layers": [r["name"] for r in rows if r.get("flops_shapes") == "assumed"],
    }


def file_record(path: str) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def versions() -> dict:
    import onnx
    import onnx_graphsurgeon

    from onnxprune import __version__
    from onnxprune.runtime_ops import import_onnxruntime

    onnxruntime = import_onnxruntime()

    return {
        "onnxprune": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx_graphsurgeon": onnx_graphsurgeon.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        # Not platform.platform(): it runs `uname -p` in a subprocess to find the processor.
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
    }


def _fmt_int(n) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# Names in human tables come from the model: escaped (no terminal control) and cut to this.
NAME_CHARS = 80


def format_note(note: dict) -> str:
    """One ``note:`` line for stderr about a node that was not pruned, names escaped."""
    return printable(f"note: {note['node'] or '<unnamed>'} ({note['op']}): {note['reason']}",
                     4 * NAME_CHARS)


def _shape(r: dict) -> str:
    """The output model's weight shape, and the input's where removing neurons changed it."""
    shape = "x".join(map(str, r["weight_shape"]))
    before = r.get("original_shape")
    if before is not None and list(before) != list(r["weight_shape"]):
        shape += f" (was {'x'.join(map(str, before))})"
    return shape


def _fmt_flops(r: dict) -> str:
    """A layer's FLOPs; "?" where shapes left them unknown."""
    return "?" if r["flops"] is None else _fmt_int(r["flops"])


def _fmt_total_flops(total: dict) -> str:
    """Total FLOPs; "?" when unknown, ">=N (partial)" when only some layers are known."""
    if total.get("flops") is not None:
        return _fmt_int(total["flops"])
    part = total.get("flops_known_part")
    return f">={_fmt_int(part)} (partial)" if part else "?"


def format_table(rows: list[dict], total: dict) -> str:
    """A human table (for stderr) in the layout of the paper's Tables 2–5.  Shapes are the
    output model's (``weight_shape``); params count the input's weights (``original_shape``)."""
    headers = ["layer", "op", "shape", "params", "nonzero", "density", "FLOPs", "FLOPs left",
               "std", "threshold"]
    body = []
    for r in rows:
        body.append([
            printable(r["name"], NAME_CHARS), printable(r["op"], NAME_CHARS), _shape(r),
            _fmt_int(r["params"]),
            _fmt_int(r["nonzero"]), _fmt_pct(r["density"]), _fmt_flops(r),
            _fmt_pct(r["flops_remaining"] / r["flops"])
            if r["flops"] and r["flops_remaining"] is not None else "-",
            "-" if r["std"] is None else f"{r['std']:.4g}",
            # a skipped layer says why (it has no threshold)
            printable(f"skip: {r['skipped']}", NAME_CHARS) if r.get("skipped")
            else "-" if r.get("threshold") is None else f"{r['threshold']:.4g}",
        ])
    flops_left = (total["flops_remaining"] / total["flops"]) \
        if total.get("flops") and total.get("flops_remaining") is not None else None
    body.append(["total", "", "", _fmt_int(total["params"]), _fmt_int(total["nonzero"]),
                 _fmt_pct(total["density"]), _fmt_total_flops(total), _fmt_pct(flops_left),
                 "", ""])
    lines = [text_table(headers, body[:-1], footer=body[-1])]
    if total.get("compression"):
        lines.append(f"compression: {total['compression']:.1f}x fewer weights "
                     f"({_fmt_pct(total['sparsity'])} pruned)")
    measured, assumed = total.get("flops_measured_layers"), total.get("flops_assumed_layers")
    if measured:
        lines.append(f"FLOPs of {len(measured)} layer(s) counted on shapes measured in one run on "
                     "random inputs (shape inference could not size them)")
    if assumed:
        lines.append(f"FLOPs of {len(assumed)} layer(s) take the leading dimension for the batch "
                     "(neither shape inference nor a run on random inputs could size it: a layer "
                     "in a Loop or If body, or an input size only --input-shape can give)")
    return "\n".join(lines)


def size_summary(pass_stats: dict, layer_rows: list[dict], written_bytes: int) -> dict:
    """The sparse-ops file's size next to estimates of the dense and portable files.

    Estimated from nonzero counts and dtypes (payload bytes only; protobuf framing, a few
    bytes per tensor, is ignored): dense = written − CSR bytes + dense bytes of the lowered
    weights; portable = dense − the saving of every layer weight that io would store as a
    SparseTensorProto (int64 indices, at least ``io.SPARSE_MIN_SAVING`` smaller).
    """
    from onnxprune.core.io import SPARSE_MIN_SAVING, sparse_nbytes

    lowered = [r for r in pass_stats.get("layers", []) if r["lowered"]]
    dense = written_bytes + sum(r["dense_bytes"] - r["csr_bytes"] for r in lowered)
    saving = 0
    for r in layer_rows:
        shape = r.get("final_shape") or r.get("weight_shape") or []
        if r.get("nonzero") is None or r.get("dtype") in (None, "?") or not shape:
            continue
        item = np.dtype(r["dtype"]).itemsize
        dense_b = int(np.prod(shape)) * item
        sparse_b = sparse_nbytes(r["nonzero"], item)
        if sparse_b <= (1 - SPARSE_MIN_SAVING) * dense_b:
            saving += dense_b - sparse_b
    return {"sparse_ops_bytes": written_bytes, "dense_bytes_estimated": dense,
            "portable_bytes_estimated": dense - saving, "method": "estimated from nnz and dtype"}
