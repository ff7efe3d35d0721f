"""Classification accuracy of an ONNX model, measured with ONNX Runtime (no torch).

top-1 accuracy = mean(argmax(logits) == y); top-5 = mean(y ∈ the 5 largest logits), reported
only when the model has at least 5 classes (``None`` otherwise).  The first graph output is
read as scores of shape (N, C) — logits or probabilities, argmax is the same.

Batching follows the model input's batch axis: symbolic → chunks of ``batch_size``; fixed
at B → chunks of exactly B, the last one padded by repeating samples whose outputs are then
dropped (B = 1 therefore runs sample by sample).  Data goes through the same validation and
dtype rule as training (:mod:`onnxprune.runtime.datasets`) before the first run.
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


def evaluate(
    model: onnx.ModelProto,
    dataset: "_data.Dataset | tuple[np.ndarray, np.ndarray]",
    *,
    batch_size: int = 256,
    providers: list[str] | None = None,
    threads: int | None = None,
) -> dict:
    """Accuracy of ``model`` on ``dataset``: ``{"n", "top1", "top5", "batch_size", "classes"}``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch-size must be an integer >= 1, got {batch_size!r}")
    if isinstance(dataset, tuple):
        dataset = _data.Dataset(*dataset)
    spec = _data.input_spec(model)
    classes = _data.n_classes(model)
    ds = _data.check_dataset(dataset, spec, classes, name="eval")
    sess = _session(model, providers, threads)
    out_name = _data.scores_output(model)
    step = spec.batch_dim if spec.batch_dim is not None else batch_size
    n = len(ds)
    correct1 = correct5 = 0
    seen_classes = None
    for start in range(0, n, step):
        xb, yb = ds.x[start:start + step], ds.y[start:start + step]
        real = len(yb)
        if spec.batch_dim is not None and real < step:
            xb = np.concatenate([xb, np.repeat(xb[-1:], step - real, axis=0)])
        try:
            scores = sess.run([out_name], {spec.name: xb})[0][:real]
        except Exception as exc:
            from onnxprune.runtime.check import ort_message

            raise RuntimeFailure(f"ONNX Runtime failed on samples {start}..{start + real - 1}: "
                                 f"{ort_message(exc)}") from None
        if scores.ndim != 2:
            raise UsageError(f"model output {out_name!r} has shape {scores.shape}; scores (N, C) are required")
        if seen_classes is None:
            seen_classes = scores.shape[1]
            if yb.size and int(ds.y.max()) >= seen_classes:
                raise UsageError(
                    f"labels go up to {int(ds.y.max())} but the model scores {seen_classes} classes"
                )
        correct1 += int((scores.argmax(1) == yb).sum())
        if seen_classes >= 5:
            top5 = np.argpartition(-scores, 4, axis=1)[:, :5]
            correct5 += int((top5 == yb[:, None]).any(1).sum())
    return {
        "n": n,
        "top1": correct1 / n,
        "top5": correct5 / n if seen_classes >= 5 else None,
        "batch_size": step,
        "classes": seen_classes,
    }
