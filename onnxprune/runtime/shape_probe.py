"""Shapes that ONNX shape inference cannot give, measured: one run of the model on seeded
random inputs with the tensors asked for added as outputs.

FLOPs need the rows each weight is applied to. Where a model computes a shape (Swin's window
partition turns [batch, 56·56, C] into [batch·64, 49, C]; a Reshape to a size taken from
``Shape``), inference leaves that dimension symbolic and the rows per sample are unknown.
:func:`shape_probe` is the ``measure`` of ``core.stats.layer_reuses``: it runs the model at
batch 1 (or at the ``--input-shape`` given), once, and only when inference left some layer
unsized. The run happens in a child process with a capped address space and a time limit
(``PROBE_MEMORY_BYTES``, ``PROBE_SECONDS``): the model is not trusted, and ``inspect`` of a
hostile file must neither exhaust memory nor hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import OnnxPruneError

# a model whose serialized form is larger is not run just to size it (ORT would hold a
# second copy of its weights); its unsized layers keep the inferred figures
MAX_PROBE_BYTES = 1 << 30
# ONNXPRUNE_SHAPE_PROBE=0 turns the probe off: no model is run to size FLOPs (a batch job
# over many untrusted files, or one that must not spawn processes); rows stay assumed
DISABLE_ENV = "ONNXPRUNE_SHAPE_PROBE"
# the longest the probe may take (a child process, killed then; the layers stay unsized)
PROBE_SECONDS = 30.0
# the child's address space beyond four times the model's bytes: Python, ONNX Runtime and a
# batch-1 run of today's models fit in it many times over (Swin: 0.23 GB peak)
PROBE_MEMORY_BYTES = 2 << 30


def shape_probe(model: ModelProto, input_shapes: dict | None = None, info=None
                ) -> Callable[[list[str]], "dict[str, list[int]] | None"]:
    """A ``measure(names)`` for ``model``: tensor name → shape for ``names`` and the graph
    inputs, from one run on random inputs (integers in [0, 10), floats standard normal) of
    batch 1 or the ``input_shapes`` given; None when the model cannot run that way: an input
    with a symbolic dim other than the batch, weights left on disk (``info.external``), a
    model over :data:`MAX_PROBE_BYTES`, or ONNX Runtime refusing or failing it. The result
    is cached: a second call for the same names does not run the model again."""
    cache: dict[str, list[int]] = {}
    state = {"failed": (info is not None and bool(getattr(info, "external", None)))
             or os.environ.get(DISABLE_ENV, "") == "0"}

    def measure(names: list[str]) -> "dict[str, list[int]] | None":
        want = [n for n in names if n not in cache]
        if want and not state["failed"]:
            got = _run(model, want, input_shapes)
            if got is None:
                state["failed"] = True
            else:
                cache.update(got)
        if state["failed"]:
            return None
        return {n: s for n, s in cache.items()}

    return measure


def _run(model: ModelProto, names: list[str], input_shapes: dict | None
         ) -> "dict[str, list[int]] | None":
    """The shapes of ``names`` and the inputs from one run in a child process (see module)."""
    from onnxprune.core.io import serialize_for_runtime
    from onnxprune.runtime.check import graph_inputs, random_inputs

    try:  # refused here (a symbolic size random inputs must not guess) before any process
        feeds = random_inputs(model, batch=1, shapes=input_shapes, strict=True)
    except OnnxPruneError:
        return None
    if model.ByteSize() > MAX_PROBE_BYTES:
        return None
    inputs = {vi.name for vi in graph_inputs(model)}
    # only what the main graph computes can be an output (a layer inside a Loop or If body
    # stays unmeasured); weights are not run: their shapes are stored
    top = {o for node in model.graph.node for o in node.output} | inputs
    fetch = [n for n in names if n in top and n not in inputs]
    have = {o.name for o in model.graph.output}
    n_outputs = len(model.graph.output)
    try:  # the outputs are added to the caller's model for the serialization only
        for n in fetch:
            if n not in have:
                model.graph.output.add().name = n
        blob = serialize_for_runtime(model)
    finally:
        del model.graph.output[n_outputs:]
    shapes = _in_child(blob, fetch, input_shapes, len(blob)) if fetch else {}
    if shapes is None:
        return None
    shapes.update({n: list(np.shape(v)) for n, v in feeds.items()})
    return shapes


def _in_child(blob: bytes, fetch: list[str], input_shapes: dict | None, size: int
              ) -> "dict[str, list[int]] | None":
    """Run the probe model in a child process with its address space capped at
    ``PROBE_MEMORY_BYTES + 4·size`` (POSIX) and killed after ``PROBE_SECONDS``: a 1 KB model
    can ask ONNX Runtime for gigabytes (a ConstantOfShape of a shape it computes), or loop
    for hours, and inspect must not. None when the child fails, is killed or times out."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-probe-") as folder:
        path = os.path.join(folder, "probe.onnx")
        with open(path, "wb") as f:
            f.write(blob)
        request = json.dumps({"fetch": fetch, "shapes": {k: list(v) for k, v in (input_shapes or {}).items()}})
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        limit = PROBE_MEMORY_BYTES + 4 * size
        try:
            done = subprocess.run([sys.executable, "-m", "onnxprune.runtime.shape_probe", path, request],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=PROBE_SECONDS, env=env, check=False,
                                  preexec_fn=(lambda: _cap_memory(limit)) if os.name == "posix" else None)
        except (subprocess.TimeoutExpired, OSError):
            return None
    if done.returncode != 0:
        return None
    try:
        got = json.loads(done.stdout)
    except ValueError:
        return None
    if not isinstance(got, dict) or set(got) != set(fetch):
        return None
    return {n: [int(d) for d in dims] for n, dims in got.items()}


def _cap_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(argv: list[str]) -> int:
    """The child's side: load the probe model, run it once on the seeded random inputs, print
    the fetched tensors' shapes as JSON."""
    import onnx

    from onnxprune.runtime.check import make_session, random_inputs

    path, request = argv
    req = json.loads(request)
    model = onnx.load(path)
    shapes = {k: tuple(v) for k, v in req["shapes"].items()} or None
    feeds = random_inputs(model, batch=1, shapes=shapes, strict=True)
    sess = make_session(model, threads=1)
    values = sess.run(req["fetch"], feeds)
    print(json.dumps({n: list(np.shape(v)) for n, v in zip(req["fetch"], values)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
