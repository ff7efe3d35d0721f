"""Classification accuracy of an ONNX model, measured with ONNX Runtime (no torch).

top-1 accuracy = mean(argmax(logits) == y); top-5 = mean(y ∈ the 5 largest logits), reported
only when the model has at least 5 classes (``None`` otherwise).  The first graph output is
read as scores of shape (N, C) — logits or probabilities, argmax is the same.

Label-free validation (a data set carrying the dense model's outputs, ``Dataset.reference``)
measures **fidelity** instead: for each class-score output the top-1 agreement with the dense
model, mean(argmax(pruned) == argmax(dense)); for each other float output the relative error
‖pruned − dense‖ / ‖dense‖ (Frobenius, over the whole set; 0 when both are zero, 1 when only
the dense one is, ``None`` when not finite).  ``top1`` is then the mean agreement over the
score outputs — or, with none, ``max(0, 1 − mean relative error)`` (a non-finite error counts
as 1) — so "drop" = 100·(1 − top1) percentage points keeps its meaning for the gates.

Batching follows the model input's batch axis: symbolic → chunks of ``batch_size``; fixed
at B → chunks of exactly B, the last one padded by repeating samples whose outputs are then
dropped (B = 1 therefore runs sample by sample).  Data goes through the same validation and
dtype rule as training (:mod:`onnxprune.runtime.datasets`) before the first run, and each
input's samples are fed on its sample axis (``datasets.model_batch``).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.runtime import datasets as _data
from onnxprune.core.errors import RuntimeFailure, UsageError


def _session(model: onnx.ModelProto, providers, threads: int | None):
    from onnxprune.runtime.check import make_session

    # A model already loaded by io that ORT still refuses is a runtime failure here (exit 1).
    return make_session(model, threads, providers, error=RuntimeFailure)


def run_outputs(model: onnx.ModelProto, x, names: list[str], *, batch_size: int = 256,
                providers=None, threads: int | None = None, sess=None) -> dict[str, np.ndarray]:
    """Outputs ``names`` of ``model`` on inputs ``x`` (checked data: one array or name →
    array), run in ONNX Runtime in chunks along the batch axis (module doc), concatenated."""
    specs = _data.resolve_specs(_data.input_specs(model), x)
    fixed = _data.fixed_batch(specs)
    sess = sess or _session(model, providers, threads)
    step = fixed if fixed is not None else batch_size
    n = _data.n_samples(x)
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, step):
        # A fixed batch's last run is padded by repeating its last sample.
        feeds = _data.model_batch(x, specs, start, start + step, pad_to=fixed)
        real = min(step, n - start)
        try:
            outs = sess.run(names, feeds)
        except Exception as exc:
            from onnxprune.runtime.check import ort_message

            raise RuntimeFailure(f"ONNX Runtime failed on samples {start}..{start + real - 1}: "
                                 f"{ort_message(exc)}") from None
        for part, out in zip(parts, outs):
            # Only padded rows are dropped: an output whose first axis is not the sample axis
            # (a fixed-batch detector's [boxes, 6]) is kept whole.
            part.append(np.asarray(out)[:real] if real < step else np.asarray(out))
    return {name: _data.concat_runs(part, f"output {name!r}") for name, part in zip(names, parts)}


def reference(model: onnx.ModelProto, x, *, batch_size: int = 256, providers=None,
              threads: int | None = None, output_kind=()) -> "_data.Reference":
    """The dense ``model``'s float outputs on ``x`` and how each is compared
    (:func:`onnxprune.runtime.datasets.output_kinds`, ``output_kind`` overriding its rule):
    what fidelity is measured against."""
    names = _data.float_outputs(model)
    if not names:
        raise UsageError("the model has no floating-point output to follow without labels")
    _data.check_output_kinds(model, output_kind)  # a bad name or kind before the model runs
    outs = run_outputs(model, x, names, batch_size=batch_size, providers=providers, threads=threads)
    kinds = _data.output_kinds(model, {k: v.shape for k, v in outs.items()}, output_kind)
    return _data.Reference(outputs=outs, kinds=kinds)


def fidelity(outs: dict, ref: "_data.Reference") -> dict:
    """Per-output fidelity of ``outs`` to the reference, and the summary ``top1`` (module doc)."""
    per, agreements, errors = {}, [], []
    for name, dense in ref.outputs.items():
        got = np.asarray(outs[name], dtype=np.float64)
        dense = np.asarray(dense, dtype=np.float64)
        if got.shape != dense.shape:
            raise RuntimeFailure(f"output {name!r} has shape {got.shape}, the dense model's {dense.shape}")
        if ref.kinds[name] == "scores":
            agree = float(np.mean(got.argmax(1) == dense.argmax(1)))
            agreements.append(agree)
            per[name] = {"kind": "scores", "agreement": agree}
        else:
            err = _relative_error(got, dense)
            errors.append(1.0 if err is None else err)
            per[name] = {"kind": "values", "relative_error": err}
    if agreements:
        top1, measure = float(np.mean(agreements)), AGREEMENT
    else:
        top1, measure = max(0.0, 1.0 - float(np.mean(errors))), ONE_MINUS_ERROR
    return {"top1": top1, "top5": None, "measure": measure, "outputs": per}


# What an accuracy record's ``top1`` is without labels ("measure"; with labels: absent, top-1).
AGREEMENT = "top-1 agreement with the dense model"
ONE_MINUS_ERROR = "1 - mean relative error"
_SHORT = {AGREEMENT: "agreement", ONE_MINUS_ERROR: "1 - rel. error"}


def short_measure(acc: dict) -> str:
    """A few words for what ``acc["top1"]`` measures, for progress lines: ``top-1`` (accuracy
    on labels), ``agreement`` (with the dense model) or ``1 - rel. error``."""
    return _SHORT.get(acc.get("measure"), "top-1")


def _relative_error(got: np.ndarray, dense: np.ndarray) -> float | None:
    """‖got − dense‖ / ‖dense‖; 0 when both are zero, 1 when only the dense one is, None
    when not finite."""
    diff, base = float(np.linalg.norm(got - dense)), float(np.linalg.norm(dense))
    if not np.isfinite(diff) or not np.isfinite(base):
        return None
    if base == 0.0:
        return 0.0 if diff == 0.0 else 1.0
    return diff / base


def evaluate(
    model: onnx.ModelProto,
    dataset: "_data.Dataset | tuple[np.ndarray, np.ndarray]",
    *,
    batch_size: int = 256,
    providers: list[str] | None = None,
    threads: int | None = None,
) -> dict:
    """Accuracy of ``model`` on ``dataset``: ``{"n", "top1", "top5", "batch_size", "classes"}``;
    on a label-free set with a reference, fidelity (module doc) with ``top1`` its summary,
    plus ``"measure"`` and per-output ``"outputs"``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch-size must be an integer >= 1, got {batch_size!r}")
    if isinstance(dataset, tuple):
        dataset = _data.Dataset(*dataset)
    specs = _data.input_specs(model)
    classes = _data.n_classes(model)
    ds = _data.check_dataset(dataset, specs, classes, name="eval", labels=dataset.reference is None)
    step = _data.fixed_batch(_data.resolve_specs(specs, ds.x)) or batch_size
    if ds.reference is not None:
        outs = run_outputs(model, ds.x, list(ds.reference.outputs), batch_size=batch_size,
                           providers=providers, threads=threads)
        return {"n": len(ds), **fidelity(outs, ds.reference), "batch_size": step, "classes": None}
    out_name = _data.scores_output(model)
    scores = run_outputs(model, ds.x, [out_name], batch_size=batch_size, providers=providers,
                         threads=threads)[out_name]
    return _accuracy(scores, ds.y, out_name, step)


def _accuracy(scores: np.ndarray, y: np.ndarray, out_name: str, step: int) -> dict:
    """top-1 and top-5 (5+ classes) of scores (N, C) against labels y."""
    if scores.ndim != 2:
        raise UsageError(f"model output {out_name!r} has shape {scores.shape}; scores (N, C) are required")
    n, classes = scores.shape
    if n and int(y.max()) >= classes:
        raise UsageError(f"labels go up to {int(y.max())} but the model scores {classes} classes")
    correct1 = int((scores.argmax(1) == y).sum())
    correct5 = 0
    if classes >= 5:
        top5 = np.argpartition(-scores, 4, axis=1)[:, :5]
        correct5 = int((top5 == y[:, None]).any(1).sum())
    return {"n": n, "top1": correct1 / n, "top5": correct5 / n if classes >= 5 else None,
            "batch_size": step, "classes": classes}
