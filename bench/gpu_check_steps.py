"""Python steps of bench/gpu_check.sh (run from the repository root, PYTHONPATH holding it).

    python3 bench/gpu_check_steps.py prepare --data MNIST.npz --out DIR [--small]
        MNIST splits (train 55k / val 5k / test 10k, as bench/paper_mnist.py makes them) and
        the two dense LeNets, trained on the CPU for a few epochs and exported to ONNX
        (torch's legacy exporter; written by hand from the trained weights if that exporter
        is missing).  --small: 3000 training images, 1000 test images, one epoch.
    python3 bench/gpu_check_steps.py tf32 --dir DIR --device cuda --out FILE
        the same retraining of each pruned LeNet on the CPU and on DEVICE with TF32 off,
        forced on, and as torch leaves it: weight and output differences, time, accuracy.
    python3 bench/gpu_check_steps.py summary --dir DIR --steps FILE --out OUTDIR
        test accuracy (ONNX Runtime) of every model written, the step table, the reports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path.cwd()


def _paper_mnist():
    spec = importlib.util.spec_from_file_location("paper_mnist", REPO / "bench" / "paper_mnist.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _export_by_hand(net, name: str, path: Path) -> None:
    """The trained LeNet as an ONNX graph built with onnx.helper (same names as the export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    inits = [numpy_helper.from_array(v, k) for k, v in sd.items()]
    nodes, x = [], "image"
    if name == "lenet5":
        for conv in ("conv1", "conv2"):
            nodes += [helper.make_node("Conv", [x, f"{conv}.weight", f"{conv}.bias"], [f"{conv}_out"],
                                       name=conv, kernel_shape=[5, 5]),
                      helper.make_node("MaxPool", [f"{conv}_out"], [f"{conv}_pool"], name=f"{conv}_pool",
                                       kernel_shape=[2, 2], strides=[2, 2])]
            x = f"{conv}_pool"
        layers = ["fc1", "fc2"]
    else:
        layers = ["fc1", "fc2", "fc3"]
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = "flat"
    for i, fc in enumerate(layers):
        out = "logits" if i == len(layers) - 1 else f"{fc}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{fc}.weight", f"{fc}.bias"], [out], name=fc, transB=1))
        x = out
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"{fc}_relu"], name=f"{fc}_relu"))
            x = f"{fc}_relu"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                          ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def prepare(args) -> int:
    import torch

    pm = _paper_mnist()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = {"train": 3000, "test": 1000} if args.small else None
    splits = pm.load_mnist(args.data, limit=limit)
    pm.write_splits(splits, out)
    small = {k: (v[0][:1000], v[1][:1000]) for k, v in splits.items()}  # for tf32 / the probe
    np.savez(out / "small_train.npz", x=small["train"][0], y=small["train"][1])
    info = {"sizes": {k: len(v[1]) for k, v in splits.items()}, "torch_threads": torch.get_num_threads()}
    for name, epochs in (("lenet300", 4), ("lenet5", 2)):
        plan = dataclasses.replace(pm.PLANS[name], train_epochs=1 if args.small else epochs)
        torch.manual_seed(0)
        net = pm.build(name)
        t0 = time.perf_counter()
        history = pm.train_dense(net, splits["train"], splits["val"], plan, seed=0)
        seconds = time.perf_counter() - t0
        path = out / f"{name}_dense.onnx"
        try:
            pm.export(net, path)
            how = "torch legacy exporter"
        except Exception as exc:  # the exporter is not ours: fall back to the graph by hand
            print(f"{name}: torch export failed ({type(exc).__name__}: {exc}); writing the graph by hand")
            _export_by_hand(net, name, path)
            how = f"by hand (export failed: {type(exc).__name__})"
        info[name] = {"epochs": plan.train_epochs, "train_seconds_cpu": round(seconds, 1),
                      "val_top1": history[-1]["val_top1"], "export": how}
        print(name, info[name])
    (out / "prepare.json").write_text(json.dumps(info, indent=1))
    return 0


@contextlib.contextmanager
def _tf32(enabled):
    import torch

    if enabled is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _tf32_settings() -> dict:
    import torch

    found = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    for path in ("backends.fp32_precision", "backends.cuda.matmul.fp32_precision",
                 "backends.cudnn.fp32_precision", "backends.cudnn.conv.fp32_precision",
                 "backends.cudnn.rnn.fp32_precision"):
        obj = torch
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            found[path] = str(obj)
        except Exception as exc:  # older/newer torch: say what was there
            found[path] = f"n/a ({type(exc).__name__})"
    return found


def tf32(args) -> int:
    import onnx
    import torch

    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.runtime import datasets
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune, read_weights

    d = Path(args.dir)
    with np.load(d / "train.npz") as t:
        n = min(10000, len(t["y"]))
        train = (t["x"][:n], t["y"][:n])
    with np.load(d / "test.npz") as t:
        test = (t["x"][:2000], t["y"][:2000])
    result = {"settings_at_start": _tf32_settings(), "device": args.device, "train_samples": n, "models": {}}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    for name in ("lenet300", "lenet5"):
        pruned = onnx.load(str(d / f"{name}_pruned.onnx"))
        runs, rows = {}, {}
        for label, device, mode in (("cpu", "cpu", None), ("gpu_tf32_off", args.device, False),
                                    ("gpu_tf32_on", args.device, True), ("gpu_torch_defaults", args.device, None)):
            cfg = FinetuneConfig(epochs=1, batch_size=64, lr=0.01, seed=0, device=device)
            with _tf32(mode):
                finetune(pruned, (train[0][:256], train[1][:256]), config=cfg)  # warm-up (cuDNN, allocator)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                res = finetune(pruned, train, config=cfg)
                seconds = time.perf_counter() - t0
            runs[label] = res.model
            acc = evaluate(res.model, datasets.Dataset(*test))
            rows[label] = {"seconds": round(seconds, 2), "device": res.device,
                           "train_loss": res.history[-1]["train_loss"], "test_top1": acc["top1"]}
        ref_w = read_weights(runs["cpu"])
        sess_out = {k: _logits(m, test[0]) for k, m in runs.items()}
        for label, model in runs.items():
            w = read_weights(model)
            rows[label]["max_abs_dw_vs_cpu"] = {k: float(np.abs(w[k] - ref_w[k]).max()) for k in ref_w}
            rows[label]["max_abs_dlogit_vs_cpu"] = float(np.abs(sess_out[label] - sess_out["cpu"]).max())
            agree = sess_out[label].argmax(1) == sess_out["cpu"].argmax(1)
            rows[label]["top1_agreement_vs_cpu"] = float(agree.mean())
        result["models"][name] = rows
        print(name, json.dumps(rows, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def _logits(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def summary(args) -> int:
    import onnx

    from onnxprune.runtime import datasets
    from onnxprune.runtime.evaluate import evaluate

    d = Path(args.dir)
    steps = []
    if os.path.exists(args.steps):
        for line in Path(args.steps).read_text().splitlines():
            name, rc, seconds = line.split("\t")
            steps.append({"step": name, "rc": int(rc), "seconds": float(seconds)})
    reports = {}
    for path in sorted(glob.glob(str(d / "*.json"))):
        with contextlib.suppress(ValueError):
            reports[Path(path).stem] = json.loads(Path(path).read_text())
    models = {}
    test_path = d / "test.npz"
    if test_path.exists():
        with np.load(test_path) as t:
            test = datasets.Dataset(t["x"], t["y"])
        for path in sorted(glob.glob(str(d / "*.onnx"))):
            try:
                acc = evaluate(onnx.load(path), test)
                models[Path(path).stem] = {"test_top1": acc["top1"], "bytes": os.path.getsize(path)}
            except Exception as exc:  # one unreadable model must not hide the rest
                models[Path(path).stem] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    runs = {}
    for stem, rep in reports.items():
        if isinstance(rep, dict) and rep.get("command") in ("finetune", "compress"):
            row = {"command": rep["command"], "device": rep.get("device"), "world_size": rep.get("world_size"),
                   "status": rep.get("status")}
            if rep["command"] == "finetune":
                row.update(val_before=rep["accuracy_before"]["top1"], val_after=rep["accuracy_after"]["top1"],
                           epoch_seconds=[round(h["seconds"], 2) for h in rep["history"]])
            else:
                row.update(val_dense=rep["accuracy_dense"]["top1"], val_final=rep["accuracy_final"]["top1"],
                           drop_pp=rep.get("accuracy_drop_pp"), wall_seconds=rep.get("wall_seconds"))
            runs[stem] = row
    out = {"steps": steps, "failed_steps": [s["step"] for s in steps if s["rc"] != 0], "runs": runs,
           "models": models, "prepare": reports.get("prepare")}
    Path(args.out, "summary.json").write_text(json.dumps(out, indent=1))
    Path(args.out, "reports.json").write_text(json.dumps(reports, indent=1))
    print(f"{'step':34} {'rc':>4} {'seconds':>8}")
    for s in steps:
        print(f"{s['step']:34} {s['rc']:>4} {s['seconds']:>8.1f}")
    for stem, row in runs.items():
        print(stem, json.dumps(row))
    for stem, row in models.items():
        print(f"{stem:34} {row}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--small", action="store_true")
    p = sub.add_parser("tf32")
    p.add_argument("--dir", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p = sub.add_parser("summary")
    p.add_argument("--dir", required=True)
    p.add_argument("--steps", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return {"prepare": prepare, "tf32": tf32, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
