"""``onnxprune.lower``: an already pruned (or compressed) model lowered to onnxprune's CSR ops,
without changing a single weight."""

from __future__ import annotations

import types
from typing import Callable

from onnxprune.api.source import model_files, open_model, path_of
from onnxprune.core.errors import UsageError


def lowering_options(lower_for: str = "speed", expected_batch: int = 1,
                     threads: int = 1, sparse_values: str = "fp32", winograd: bool = False) -> dict:
    """The lowering pass's options for these keywords, validated (``UsageError`` otherwise)."""
    from onnxprune.passes.base import parse_options
    from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps

    if not isinstance(winograd, bool):
        raise UsageError(f"winograd must be True or False, got {winograd!r}")
    options = {"objective": lower_for, "batch": expected_batch, "threads": threads,
               "values": sparse_values, "winograd": ["*"] if winograd else []}
    parse_options(LowerToSparseOps.name, LowerToSparseOps.OPTIONS, options)
    return options


def checked_shapes(input_shapes: dict | None) -> dict:
    """``{input name: dims}`` under the one definition of the ``--input-shape`` rules."""
    from onnxprune.runtime.check import input_shapes as parse

    return parse(types.SimpleNamespace(input_shape=list((input_shapes or {}).items()),
                                       data=None))


def lower(model, output, *, lower_for: str = "speed", decide: str = "measure",
          expected_batch: int = 1, threads: int = 1, sparse_values: str = "fp32",
          winograd: bool = False, batch_stream: bool = True,
          input_shapes: dict[str, tuple[int, ...]] | None = None, data: str | None = None,
          timer=None, before_run: Callable[[list[str]], None] | None = None,
          progress: Callable | None = None) -> dict:
    """Lower ``model``'s pruned Gemm / MatMul / 2-D Conv layers to ``ai.onnxprune`` CSR ops,
    write it to ``output`` and return the report ``onnxprune lower --json`` writes.

    Only the lowering pass runs: no weight is pruned or changed (a lowered layer's CSR arrays
    hold exactly its nonzero weights; a dense or unpruned layer stays as it is), and the
    model's metadata is kept.  Which layers are lowered (``onnxprune.runtime.lowering``):
    ``lower_for="size"`` lowers wherever the CSR arrays are smaller; for speed,
    ``decide="measure"`` times each pruned layer here, dense against CSR at
    ``expected_batch`` and ``threads``, lowers those measured >= 1.1x faster and then writes
    the dense model instead if the whole lowered model is not faster; ``decide="model"``
    asks the analytic cost model (for lowering on a machine other than the target).
    ``input_shapes`` gives inputs with symbolic dimensions other than the batch their
    shape; ``timer`` replaces the timing (tests).  ``sparse_values="fp16"`` stores the CSR
    values as float16 (op contract v2; opt-in): the report's ``lowering.values_change`` is the
    largest relative output change that made, measured on seeded random inputs.
    ``winograd=True`` (with ``decide="measure"``) also times each pruned 3x3 convolution at
    unit strides and dilations, one group, run by Winograd F(4x4, 3x3) over its weights made
    dense, and takes that path where it ran at least 1.05x faster than the direct one and the
    whole model lowered so is not slower than lowered on the direct path (``lowering.winograd``);
    its output change is measured and reported the same way (``values_change.winograd_layers``).
    With ``decide="measure"`` at a batch above 1, the lowered model is also timed with its
    leading layers run image by image (a ``Scan`` over the batch, so that each image's large
    early maps stay in the caches between layers; the outputs are the same to the bit where
    the prefix holds onnxprune's ops, and ``lowering.batch_stream.max_relative_output_change``
    says what a standard ``Conv`` inside it changed) and
    written so where that ran at least 1.05x faster (``lowering.batch_stream``;
    ``batch_stream=False`` does not try it); a lowering that ran slower than the dense model
    (at least 0.8x) is timed so too before the dense model is written, and written streamed
    where that ran at least 1x of dense (``lowering.whole_model.unstreamed_speedup``). ``data``, an
    .npz of arrays named after the graph inputs (or ``x``), replaces the random inputs of the
    timings and of that measure (their leading dimension is the batch timed): for inputs a
    model needs real values of, such as token ids or a sample rate.

    Raises ``UsageError`` (2) for a bad option or path or a symbolic input without a shape,
    ``InvalidModelError`` (4) for a malformed or unsafe model, ``RuntimeFailure`` (1)
    otherwise.  ``before_run(files)`` is called with the files read once the model is open,
    before anything is written.
    """
    from onnxprune.runtime.lowering import MeasuredLowering

    options = lowering_options(lower_for, expected_batch, threads, sparse_values, winograd)
    decision = MeasuredLowering(decide, checked_shapes(input_shapes), timer, progress, stream=batch_stream)
    if output is None:
        raise UsageError("lower: an output path is required")
    if data is not None and input_shapes:
        raise UsageError("--input-shape sets the shapes of random inputs, and --data brings "
                         "its own arrays: use one of them")
    if data is not None and (decide != "measure" or lower_for != "speed") and sparse_values != "fp16" \
            and not winograd:
        raise UsageError("--data is used to time layers (--decide measure, --lower-for speed) and "
                         "to measure the change fp16 values make; this lowering runs nothing")
    proto, info = open_model(model, lazy=True)
    if before_run is not None:
        before_run(model_files(info))
    if data is not None:
        from onnxprune.runtime.check import load_inputs

        decision.use_inputs(load_inputs(data, proto), f"--data {data}")
    return _lower(proto, info, path_of(model), output, options, decision, progress)


def _lower(proto, info, path, output, options, decision, progress) -> dict:
    from onnxprune import __version__
    from onnxprune.core.graph import graph_from_model, save_graph
    from onnxprune.core.stats import versions
    from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps
    from onnxprune.runtime.bench import csr_nodes

    graph = graph_from_model(proto, info)
    lowering_pass = LowerToSparseOps(decision.options_for(options, graph, proto))
    cb = None if progress is None else \
        (lambda i, n, what: progress(lowering_pass.name, i, n, what))
    result = lowering_pass(graph, progress=cb)
    graph = decision.finish(result.graph, proto, result.stats)
    outputs: list[dict] = []
    # A compressed (sparse-stored) input keeps that storage for what stays dense: lowering
    # must never make the file larger than the model it was given.
    storage = "portable" if _stored_sparse(proto) else "dense"
    save_graph(graph, proto, output, storage=storage, source=info, records=outputs)
    out_bytes = sum(o["bytes"] for o in outputs)
    in_bytes = info.file_bytes if info is not None else proto.ByteSize()
    stats = result.stats
    return {
        "command": "lower",
        "status": "ok",
        "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(),
        "input": {"path": info.path if info is not None else path, "bytes": in_bytes},
        "outputs": outputs,
        "options": {**stats["options"], "decide": decision.decide},
        "sparse_ops": {"lowered": list(stats["lowered"]), "layers": stats["layers"],
                       "rewrites": stats.get("rewrites", []),
                       "already_lowered": len(csr_nodes(proto)),
                       "nchw_pools": stats.get("nchw_pools", [])},
        "lowering": decision.report(stats),
        "size": {"input_bytes": in_bytes, "output_bytes": out_bytes,
                 "ratio": in_bytes / out_bytes if out_bytes else None},
    }


def _stored_sparse(proto) -> bool:
    """Whether the model stores any weight sparse (sparse initializers or Constant
    ``sparse_value``s, in any scope), as ``compress`` and ``prune`` write them by default."""
    from onnxprune.core.io import proto_graphs

    return any(len(g.sparse_initializer) or any(
        a.name == "sparse_value" for n in g.node if n.op_type == "Constant" for a in n.attribute)
        for g in proto_graphs(proto.graph))
