"""Reference timings in DeepSparse for `bench_models.py` (run under a separate interpreter).

DeepSparse is end-of-life and pins old onnx / numpy, so it lives in its own virtual
environment and is never a dependency of onnxprune::

    python3.11 -m venv .deepsparse-venv && .deepsparse-venv/bin/pip install deepsparse==1.8.0
    .deepsparse-venv/bin/python bench/deepsparse_ref.py MODEL.onnx IN.npz OUT.npz --threads 1

IN.npz holds the inputs in graph-input order (arr_0, arr_1, ...; the batch size is taken from
them); OUT.npz receives the outputs of the last timed call (out_0, ...).  The last line of
stdout is a JSON object with the median / min milliseconds per ``engine.run`` call.  The model
is rewritten with ``ir_version`` ≤ 8 first (the onnx 1.14 that DeepSparse pins reads nothing
newer).  This script imports nothing from onnxprune.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("outputs")
    ap.add_argument("--threads", type=int, default=1, help="num_cores given to DeepSparse")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)

    import deepsparse
    import numpy as np
    import onnx

    with np.load(args.inputs) as z:
        xs = [np.ascontiguousarray(z[f"arr_{i}"]) for i in range(len(z.files))]
    batch = xs[0].shape[0]
    model = onnx.load(args.model)
    model.ir_version = min(model.ir_version, 8)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        del model
        t0 = time.perf_counter()
        engine = deepsparse.compile_model(path, batch_size=batch, num_cores=args.threads)
        compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        engine.run(xs)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outs = engine.run(xs)
        times.append(time.perf_counter() - t0)
    np.savez(args.outputs, **{f"out_{i}": o for i, o in enumerate(outs)})
    print(json.dumps({"deepsparse": deepsparse.__version__, "batch": batch,
                      "threads": args.threads, "repeats": args.repeats,
                      "median_ms": round(statistics.median(times) * 1e3, 4),
                      "min_ms": round(min(times) * 1e3, 4), "compile_s": round(compile_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
