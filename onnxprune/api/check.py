"""``onnxprune.check``: a reference and a candidate model on the same inputs in ONNX Runtime."""

from __future__ import annotations

import types
from typing import Callable

from onnxprune.api.source import model_files, open_model, path_of
from onnxprune.core.errors import UsageError


def check(reference, candidate, *, data: str | None = None, atol: float = 1e-4,
          rtol: float = 1e-3, batch: int = 2, seed: int = 0,
          input_shapes: dict[str, tuple[int, ...]] | None = None,
          before_run: Callable[[list[str]], None] | None = None) -> dict:
    """Run both models on the same inputs and compare every output; return the report
    ``onnxprune check --json`` writes.

    Inputs are the arrays of ``data`` (.npz keyed by input name, or ``x``), else seeded random
    ones (``seed``; a symbolic leading dim takes ``batch``, ``input_shapes`` gives inputs their
    full shape). Output ``k`` passes when every element satisfies
    ``|cand - ref| <= atol + rtol·|ref|`` (NaN equal to NaN at the same position); the report's
    ``passed`` is the conjunction, ``max_abs_error`` the largest ``|cand - ref|`` and, when
    no NaN or infinity stands on one side only, ``atol_that_passes`` the smallest atol that
    would pass at this rtol.

    Differing outputs are a result, not an exception: ``report["passed"]`` is False (the CLI
    then exits 3). So is a match that proves nothing: when every floating-point output of the
    reference is one value throughout (or empty) on random inputs, ``report["uninformative"]``
    says so and ``passed`` is False (on ``data``, the user's inputs, it is a note).

    Raises ``UsageError`` (exit 2) for bad options (``input_shapes`` with ``data``, a shape
    the model contradicts), ``InvalidModelError`` (exit 4) for a model or
    data file that is malformed or unsafe, ``RuntimeFailure`` (exit 1) when ONNX Runtime fails.
    ``before_run(files)`` is called with every file read, once the models are loaded and
    before they run (the CLI refuses there a report path that would overwrite an input).
    """
    from onnxprune import __version__
    from onnxprune.core.stats import versions
    from onnxprune.runtime import check as rt

    # The one definition of the --input-shape rules (duplicates, and never with --data).
    shapes = rt.input_shapes(types.SimpleNamespace(
        input_shape=list((input_shapes or {}).items()), data=data))
    ref, ref_info = open_model(reference, what="reference")
    cand, cand_info = open_model(candidate, what="candidate")
    if before_run is not None:
        before_run([*model_files(ref_info), *model_files(cand_info), *([data] if data else [])])
    if data:
        try:
            feeds = rt.load_inputs(data, ref)
        except UsageError as raw_error:
            outs = _as_training_data(data, ref, cand, raw_error)
            result = rt.compare(*outs, atol, rtol)
            _judge_inputs(result, outs[0], data)
            return {"command": "check", "tool": {"name": "onnxprune", "version": __version__},
                    "versions": versions(), "reference": path_of(reference),
                    "candidate": path_of(candidate),
                    "inputs": f"{data} (samples on axis 0, as compress reads it)", **result}
        source = data
    else:
        feeds = rt.random_inputs(ref, batch=batch, seed=seed, shapes=shapes, strict=True)
        source = describe_random(feeds, seed)
    # a batch the model fixes wins over --batch: say so (only where no input leaves its
    # leading dim free: then --batch sized that one, and a fixed [2, N, 8] state is no batch)
    from onnxprune.runtime.bench import batch_dims

    fixed, free = batch_dims(ref)
    fed = sorted(set(fixed.values()))
    batch_note = None if data or free or not fed or fed == [batch] else (
        f"the model fixes its batch at {', '.join(map(str, fed))}; --batch {batch} was not used")
    rt.check_feeds(cand, feeds, "candidate")
    with rt.random_feeds_hint(None if data else feeds):  # random inputs may not be what it runs on
        ref_out = rt.run_model(ref, feeds)
        result = rt.compare(ref_out, rt.run_model(cand, feeds), atol, rtol)
    _judge_inputs(result, ref_out, data)
    return {"command": "check", "tool": {"name": "onnxprune", "version": __version__},
            "versions": versions(), "reference": path_of(reference),
            "candidate": path_of(candidate), "inputs": source, "batch_note": batch_note, **result}


def _judge_inputs(result: dict, ref_out: list, data: str | None) -> None:
    """A match on inputs the reference does not respond to proves nothing: ``uninformative``
    says why (rt.uninformative), and on random inputs, which the tool chose, ``passed`` is
    False; on the user's ``data`` the match stands, with the note."""
    from onnxprune.runtime import check as rt

    why = rt.uninformative(ref_out, result["atol"]) if result["passed"] else None  # a difference says more
    smaller = " (or a smaller --atol)" if why is not None and "inside the tolerance" in why else ""
    result["uninformative"] = None if why is None else (
        f"{why} on {'these inputs' if data else 'the random inputs'}, so a candidate that "
        "matches may still differ on real ones; "
        + ("check on inputs the model responds to" if data else "pass real inputs with --data") + smaller)
    if why is not None and not data:
        result["passed"] = False
    result["status"] = "ok" if result["passed"] else "mismatch"  # as bench's report says it


def _as_training_data(data: str, ref, cand, raw_error: Exception) -> tuple[list, list]:
    """Both models' outputs on ``data`` read as compress reads it — samples on axis 0, moved
    to each input's sample axis, a fixed batch fed in runs, a 0-d array fed to every run — for
    a file that does not fit the inputs as they stand (silero's state ``(N, 2, 128)`` for an
    input ``[2, batch, 128]``).  The raw error is raised when that reading fails too."""
    from onnxprune.runtime import datasets
    from onnxprune.runtime.evaluate import run_outputs

    try:
        ds = datasets.check_dataset(datasets.load_data(data, ref), datasets.input_specs(ref), None,
                                    name=data, labels=False)
    except UsageError:
        raise raw_error from None
    return tuple([v for v in run_outputs(m, ds.x, [o.name for o in m.graph.output]).values()]
                 for m in (ref, cand))


def describe_random(feeds: dict, seed: int) -> str:
    """What the random inputs were, by the batch sizes actually fed (a model that fixes its
    batch dimension overrides ``batch``)."""
    batches = sorted({v.shape[0] for v in feeds.values() if getattr(v, "ndim", 0)})
    which = f", batch {', '.join(map(str, batches))}" if batches else ""
    return f"random (seed {seed}{which})"
