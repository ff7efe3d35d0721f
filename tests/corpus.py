"""A corpus of real ONNX graphs that nobody on this project wrote, and the sweep over it.

Sources (each is skipped when it is not installed):

* ``onnx-node``: the ONNX backend node tests, generated in memory by the installed ``onnx``
  package (``onnx.backend.test.loader``) with their reference inputs; plus a *frozen* variant
  of every Gemm/MatMul/Conv/ConvTranspose case whose non-data float inputs become initializers,
  so that the op's real edge cases (groups, dilations, auto_pad, transA/transB, batched and
  1-D MatMul, ...) are actually pruned;
* ``onnx-data``: the model files the ``onnx`` wheel ships (``pytorch-converted``,
  ``pytorch-operator``, ``simple``, ``light``); the ``light`` real architectures compute their
  weights at run time with ``ConstantOfShape``, so a *materialised* variant stores seeded random
  weights as initializers instead;
* ``debian``: Debian's ``libonnx-testdata`` (``/usr/share/libonnx-testdata/data``), an older
  onnx release's node tests and model folders;
* ``torch``: small architectures exported with both torch exporters (built by the sweep).

``sweep_model`` runs ``onnxprune prune`` (in process, through ``onnxprune.cli.app``, with
stderr captured) over one model under several option sets and judges the result:

* the input is first checked: ``onnx.checker`` and ONNX Runtime (load and run on the case's
  reference inputs or seeded random ones).  An input ONNX Runtime cannot load or run is
  "input not runnable" and needs only a non-crashing outcome;
* exit 0: the output must pass ``onnx.checker`` (when the input does), load and run in
  ONNX Runtime (when the input does), and give the input's outputs when nothing was pruned
  or only dead units were removed (``--quality 0`` keeps every weight);
* exit 4: a clear refusal, one line on stderr, no output file;
* anything else — exit 1/2/3, an "internal error", a traceback, a Python exception escaping
  ``main`` — is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io as _io
import json
import os
import re
import shutil
import tempfile
import warnings
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

ONNX_DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
DEBIAN_DATA = "/usr/share/libonnx-testdata/data"
DATA_KINDS = ("pytorch-converted", "pytorch-operator", "simple")

# Option sets every model goes through.  "equal" marks those whose outputs must match the
# input's whatever the model (no weight is zeroed).
CONFIGS = {
    "default": {"argv": [], "equal": False},
    "no-dead": {"argv": ["--no-remove-dead-neurons"], "equal": False},
    "dense": {"argv": ["--emit", "dense"], "equal": False},
    "q0": {"argv": ["--quality", "0"], "equal": True},
}

WEIGHT_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose")


@dataclasses.dataclass
class Case:
    """One corpus model: a file on disk or an in-memory model, and inputs when known."""

    name: str
    source: str
    path: str | None = None
    model: Callable[[], onnx.ModelProto] | None = None
    inputs: Callable[[], list | None] | None = None  # values for the non-initializer inputs


# --------------------------------------------------------------------------- sources


def _quiet_node_cases():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), contextlib.redirect_stderr(_io.StringIO()):
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return load_model_tests(kind="node")


def onnx_node_cases(frozen: bool = True) -> Iterator[Case]:
    """The installed onnx's node tests (in memory), and the frozen-weight variants."""
    for tc in _quiet_node_cases():
        if tc.model is None:
            continue
        model = tc.model
        first = tc.data_sets[0][0] if tc.data_sets else None
        yield Case(f"onnx-node/{tc.name}", "onnx-node", model=lambda m=model: m,
                   inputs=lambda v=first: v)
        if frozen and first is not None:
            fr = freeze_weight_inputs(model, first)
            if fr is not None:
                fm, rest = fr
                yield Case(f"onnx-node-frozen/{tc.name}", "onnx-node-frozen",
                           model=lambda m=fm: m, inputs=lambda v=rest: v)


def freeze_weight_inputs(model: onnx.ModelProto, values: list):
    """Turn every float input but the first of a one-layer Gemm/MatMul/Conv test into an
    initializer (the test's own values), so the weight is a constant onnxprune can prune."""
    g = model.graph
    if len(g.node) != 1 or g.node[0].op_type not in WEIGHT_OPS or g.node[0].domain not in ("", "ai.onnx"):
        return None
    inputs = [vi.name for vi in g.input]
    if len(values) != len(inputs):
        return None
    node = g.node[0]
    freeze = [n for n in node.input[1:] if n in inputs]
    freeze = [n for n in freeze if np.asarray(values[inputs.index(n)]).dtype.kind == "f"]
    if not freeze:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept_inputs, rest = [], []
    for vi, v in zip(g.input, values):
        if vi.name in freeze:
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(v), vi.name))
        else:
            kept_inputs.append(vi)
            rest.append(v)
    del out.graph.input[:]
    out.graph.input.extend(kept_inputs)
    return out, rest


def _file_cases(root: str, source: str, kinds, frozen: bool = True) -> Iterator[Case]:
    for kind in kinds:
        for model_path in sorted(glob.glob(os.path.join(root, kind, "*", "model.onnx"))):
            test = os.path.basename(os.path.dirname(model_path))
            yield Case(f"{source}/{kind}/{test}", source, path=model_path,
                       inputs=lambda p=model_path: read_data_set(p))
            if frozen and kind == "node":
                fr = _frozen_file_case(model_path)
                if fr is not None:
                    fm, rest = fr
                    yield Case(f"{source}-frozen/{kind}/{test}", f"{source}-frozen",
                               model=lambda m=fm: m, inputs=lambda v=rest: v)


def _frozen_file_case(model_path: str):
    try:
        model = onnx.load(model_path)
        if len(model.graph.node) != 1 or model.graph.node[0].op_type not in WEIGHT_OPS:
            return None
        values = read_data_set(model_path)
    except Exception:
        return None
    return freeze_weight_inputs(model, values) if values is not None else None


def onnx_data_cases(materialise: bool = True, max_params: int = 70_000_000) -> Iterator[Case]:
    """The model files shipped in the onnx wheel, and materialised light architectures."""
    if not os.path.isdir(ONNX_DATA):
        return
    yield from _file_cases(ONNX_DATA, "onnx-data", DATA_KINDS)
    for path in sorted(glob.glob(os.path.join(ONNX_DATA, "light", "light_*.onnx"))):
        name = os.path.basename(path)[: -len(".onnx")]
        yield Case(f"onnx-data/light/{name}", "onnx-data", path=path)
        if materialise:
            yield Case(f"onnx-data/light-materialised/{name}", "onnx-data-materialised",
                       model=lambda p=path, n=max_params: materialise_constant_of_shape(
                           onnx.load(p), max_params=n))


def debian_cases() -> Iterator[Case]:
    """Debian's libonnx-testdata (absent: nothing)."""
    if not os.path.isdir(DEBIAN_DATA):
        return
    yield from _file_cases(DEBIAN_DATA, "debian", ("node", *DATA_KINDS))


def read_data_set(model_path: str) -> list | None:
    """The inputs of ``test_data_set_0`` next to a model file, or None."""
    folder = os.path.join(os.path.dirname(model_path), "test_data_set_0")
    files = sorted(glob.glob(os.path.join(folder, "input_*.pb")),
                   key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
    if not files:
        return None
    model = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    values = []
    for vi, f in zip(graph_inputs, files):
        data = open(f, "rb").read()
        which = vi.type.WhichOneof("value")
        if which == "tensor_type":
            t = TensorProto()
            t.ParseFromString(data)
            values.append(numpy_helper.to_array(t))
        elif which == "sequence_type":
            s = onnx.SequenceProto()
            s.ParseFromString(data)
            values.append(numpy_helper.to_list(s))
        elif which == "optional_type":
            o = onnx.OptionalProto()
            o.ParseFromString(data)
            values.append(numpy_helper.to_optional(o))
        else:
            return None
    return values


def materialise_constant_of_shape(model: onnx.ModelProto, max_params: int) -> onnx.ModelProto:
    """Replace ``ConstantOfShape(initializer)`` by an initializer holding its value.

    A value feeding the weight input of Conv/Gemm/MatMul gets seeded random weights
    (N(0, 1/fan_in)); everything else keeps the fill value.  Raises ValueError when the
    weights would exceed ``max_params`` elements (kept out of the sweep to bound its time).
    """
    rng = np.random.default_rng(0)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    weight_inputs = {n.input[1] for n in g.node if n.op_type in WEIGHT_OPS and len(n.input) > 1}
    keep_nodes, new_inits, total = [], [], 0
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep_nodes.append(node)
            continue
        shape = [int(d) for d in numpy_helper.to_array(inits[node.input[0]]).reshape(-1)]
        fill = np.zeros(1, np.float32)
        for a in node.attribute:
            if a.name == "value":
                fill = numpy_helper.to_array(a.t).reshape(-1)
        n = int(np.prod(shape)) if shape else 1
        total += n
        if total > max_params:
            raise ValueError(f"more than {max_params} weights")
        if node.output[0] in weight_inputs and len(shape) >= 2 and fill.dtype.kind == "f":
            fan_in = max(1, n // shape[0])
            arr = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(fill.dtype)
        else:
            arr = np.full(shape, fill[0], dtype=fill.dtype)
        new_inits.append(numpy_helper.from_array(arr, node.output[0]))
    used = {i for n in keep_nodes for i in n.input}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(keep_nodes)
    keep_inits = [t for t in g.initializer if t.name in used or t.name in {o.name for o in g.output}]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep_inits + new_inits)
    return out


# --------------------------------------------------------------------------- torch exports


def torch_architectures():
    """A handful of small architectures, defined here (torchvision does not import beside the
    CPU torch wheel): (name, module factory, input shape)."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(64, 48), nn.Linear(48, 32), nn.Linear(32, 10)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc3(self.drop(torch.relu(self.fc2(torch.relu(self.fc1(x))))))

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(256, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    from tests.torch_models import ResidualBN

    class DepthwiseSeparable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.dw, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
            self.pw, self.bn2 = nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32)
            self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.nn.functional.relu6(self.stem(x))
            x = torch.nn.functional.relu6(self.bn1(self.dw(x)))
            x = torch.nn.functional.hardswish(self.bn2(self.pw(x)))
            x = torch.sigmoid(self.grouped(x))
            return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class ConvTransposeDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 16 * 4 * 4)
            self.up1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
            self.up2 = nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1, output_padding=0)

        def forward(self, x):
            x = torch.relu(self.fc(x)).reshape(-1, 16, 4, 4)
            return torch.tanh(self.up2(torch.relu(self.up1(x))))

    class TinyTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.norm = nn.LayerNorm(32)
            self.out = nn.Linear(32, 50)

        def forward(self, x):
            return self.out(self.norm(self.layer(self.embed(x))))

    class GRUClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(12, 24, batch_first=True)
            self.fc = nn.Linear(24, 3)

        def forward(self, x):
            y, _ = self.gru(x)
            return self.fc(y[:, -1])

    return [
        ("mlp", MLP, (2, 64), torch.float32),
        ("lenet5", LeNet5, (2, 1, 28, 28), torch.float32),
        ("residual-bn", ResidualBN, (2, 3, 8, 8), torch.float32),
        ("depthwise-separable", DepthwiseSeparable, (2, 3, 16, 16), torch.float32),
        ("convtranspose-decoder", ConvTransposeDecoder, (2, 8), torch.float32),
        ("tiny-transformer", TinyTransformer, (2, 7), torch.int64),
        ("gru-classifier", GRUClassifier, (2, 5, 12), torch.float32),
    ]


def export_torch(factory, shape, dtype, dynamo: bool, path: str) -> None:
    """Export with seeded weights and non-trivial BatchNorm statistics."""
    import torch

    torch.manual_seed(0)
    module = factory()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    module.eval()
    x = torch.randint(0, 50, shape) if dtype == torch.int64 else torch.randn(*shape)
    with warnings.catch_warnings(), contextlib.redirect_stdout(_io.StringIO()), \
            contextlib.redirect_stderr(_io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), path, dynamo=True, input_names=["x"],
                              output_names=["y"], optimize=True)
        else:
            torch.onnx.export(module, (x,), path, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                              opset_version=17)


def torch_cases(workdir: str, names=None) -> Iterator[Case]:
    """Export each architecture with both exporters into ``workdir``; an export that torch
    itself cannot do is left out (it is the exporter's failure, not a model)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    for name, factory, shape, dtype in torch_architectures():
        if names is not None and name not in names:
            continue
        for exporter in ("legacy", "dynamo"):
            path = os.path.join(workdir, f"{name}-{exporter}", "model.onnx")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                export_torch(factory, shape, dtype, exporter == "dynamo", path)
            except Exception:
                continue
            yield Case(f"torch/{exporter}/{name}", "torch", path=path)


# --------------------------------------------------------------------------- running


def _session(path_or_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _feeds(sess, model: onnx.ModelProto, values: list | None, seed: int = 0) -> dict:
    names = [i.name for i in sess.get_inputs()]
    if values is not None:
        inits = {t.name for t in model.graph.initializer}
        graph_inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        if len(values) == len(graph_inputs):
            feeds = dict(zip(graph_inputs, values))
            return {n: feeds[n] for n in names if n in feeds}
    from onnxprune.runtime.check import random_inputs

    feeds = random_inputs(model, batch=2, seed=seed)
    return {n: feeds[n] for n in names if n in feeds}


def run_reference(path: str, model: onnx.ModelProto, values: list | None):
    """(feeds, outputs) of the input model in ONNX Runtime, or (None, reason)."""
    try:
        sess = _session(path)
        feeds = _feeds(sess, model, values)
        missing = [i.name for i in sess.get_inputs() if i.name not in feeds]
        if missing:
            return None, f"no values for input(s) {missing}"
        return feeds, sess.run(None, feeds)
    except Exception as e:  # ORT, or no random generator for an input type
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def outputs_match(ref: list, got: list, rtol: float = 1e-4, atol: float = 1e-5) -> str | None:
    """None when the outputs agree; otherwise why not."""
    if len(ref) != len(got):
        return f"{len(ref)} outputs vs {len(got)}"
    for i, (r, g) in enumerate(zip(ref, got)):
        if isinstance(r, list) or isinstance(g, list) or isinstance(r, dict):
            if not isinstance(g, type(r)) or len(r) != len(g):
                return f"output {i}: sequence/map differs"
            sub = outputs_match(list(r.values()) if isinstance(r, dict) else r,
                                list(g.values()) if isinstance(g, dict) else g, rtol, atol)
            if sub:
                return f"output {i}: {sub}"
            continue
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape or r.dtype != g.dtype:
            return f"output {i}: {r.dtype}{list(r.shape)} vs {g.dtype}{list(g.shape)}"
        if r.dtype.kind in "fc":
            scale = max(1.0, float(np.nanmax(np.abs(r[np.isfinite(r)]))) if np.isfinite(r).any() else 1.0)
            if not np.allclose(g, r, rtol=rtol, atol=atol * scale, equal_nan=True):
                err = np.nanmax(np.abs(g.astype(np.float64) - r.astype(np.float64)))
                return f"output {i}: max abs error {err:.3g}"
        elif not np.array_equal(r, g):
            return f"output {i}: values differ"
    return None


_PATHISH = re.compile(r"(/[^\s:'\"]+)+")


def refusal_reason(message: str) -> str:
    """A short category for a refusal message (paths, names and numbers blanked)."""
    msg = message.split("error:", 1)[-1].strip()
    msg = _PATHISH.sub("<path>", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"\d+", "N", msg)
    return msg[:120]


def _cli(argv: list[str]) -> tuple[int | None, str, str]:
    """Run the CLI in process; (exit code, stdout, stderr).  An exception escaping ``main``
    gives code None and the exception in stderr."""
    from onnxprune.cli import main

    out, err = _io.StringIO(), _io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:
        return None, out.getvalue(), err.getvalue() + f"\nEXCEPTION {type(e).__name__}: {e}"
    return code, out.getvalue(), err.getvalue()


@dataclasses.dataclass
class Result:
    name: str
    source: str
    config: str
    outcome: str  # pruned | dead-units-only | unchanged | refused | skipped
    runnable: bool
    reason: str = ""
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _checker_ok(model_or_path) -> bool:
    try:
        onnx.checker.check_model(model_or_path)
        return True
    except Exception:
        return False


def materialise_case(case: Case, workdir: str) -> tuple[str | None, str]:
    """The case's model file (written to ``workdir`` when in memory); (None, why) if not."""
    if case.path is not None:
        return case.path, ""
    try:
        model = case.model()
    except Exception as e:
        return None, f"not built: {e}"
    path = os.path.join(workdir, "input", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path, ""


def sweep_model(case: Case, workdir: str, configs=None) -> list[Result]:
    """Every config of ``CONFIGS`` (or ``configs``) over one case; see the module docstring."""
    configs = configs or list(CONFIGS)
    path, why = materialise_case(case, workdir)
    if path is None:
        return [Result(case.name, case.source, c, "skipped", False, why) for c in configs]
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        model = None
    values = None
    if case.inputs is not None:
        try:
            values = case.inputs()
        except Exception:
            values = None
    checker_in = _checker_ok(path)
    if model is not None:
        feeds, ref = run_reference(path, model, values)
    else:
        feeds, ref = None, "onnx cannot parse it"
    runnable = feeds is not None
    results = []
    for config in configs:
        out_dir = os.path.join(workdir, "out-" + config)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "pruned.onnx")
        rep = os.path.join(workdir, f"report-{config}.json")
        if os.path.exists(rep):
            os.unlink(rep)
        code, _, err = _cli(["prune", path, "-o", out, "--json", rep, "-q",
                             *CONFIGS[config]["argv"]])
        r = Result(case.name, case.source, config, "", runnable,
                   "" if runnable else f"input not runnable: {ref}")
        results.append(r)
        lines = err.strip().splitlines()
        if code is None or "Traceback" in err or "internal error" in err:
            r.outcome = "crash"
            r.problems.append(f"crash (exit {code}): {err.strip()[-300:]}")
            continue
        if code == 4:
            r.outcome = "refused"
            r.reason = refusal_reason(lines[-1] if lines else "")
            if len(lines) != 1 or not lines[0].startswith("onnxprune: error:"):
                r.problems.append(f"refusal is not one line: {err!r}")
            if os.listdir(out_dir):
                r.problems.append(f"refused but wrote {os.listdir(out_dir)}")
            continue
        if code != 0:
            r.outcome = f"exit-{code}"
            r.problems.append(f"exit {code}: {err.strip()[-300:]}")
            continue
        try:
            report = json.load(open(rep))
        except Exception as e:
            r.outcome = "crash"
            r.problems.append(f"no readable report: {e}")
            continue
        modified = {p["name"] for p in report["passes"] if p["modified"]}
        if "threshold-by-std" in modified:
            r.outcome = "pruned"
        elif "remove-dead-neurons" in modified:
            r.outcome = "dead-units-only"
        else:
            r.outcome = "unchanged"
        for rec in report["outputs"]:
            if not os.path.isfile(rec["path"]):
                r.problems.append(f"report lists {rec['path']} but it is missing")
                continue
            digest = hashlib.sha256(open(rec["path"], "rb").read()).hexdigest()
            if digest != rec["sha256"] or os.path.getsize(rec["path"]) != rec["bytes"]:
                r.problems.append(f"report sha256/bytes of {rec['path']} do not match the file")
        if checker_in and not _checker_ok(out):
            try:
                onnx.checker.check_model(out)
            except Exception as e:
                r.problems.append(f"output fails onnx.checker: {str(e).splitlines()[0][:200]}")
        if not runnable:
            continue
        try:
            sess = _session(out)
            got = sess.run(None, {k: v for k, v in feeds.items()
                                  if k in {i.name for i in sess.get_inputs()}})
        except Exception as e:
            r.problems.append(f"output does not run in ONNX Runtime: {str(e).splitlines()[0][:200]}")
            continue
        if CONFIGS[config]["equal"] or r.outcome in ("unchanged", "dead-units-only"):
            diff = outputs_match(ref, got)
            if diff:
                r.problems.append(f"outputs changed ({r.outcome}): {diff}")
    return results


def sweep(cases, workdir: str | None = None, configs=None, progress=None) -> list[Result]:
    """``sweep_model`` over many cases; identical model files are swept once."""
    seen: dict[str, str] = {}
    results: list[Result] = []
    base = workdir or tempfile.mkdtemp(prefix="onnxprune-corpus-")
    try:
        for k, case in enumerate(cases):
            if case.path is not None:
                digest = hashlib.sha256(open(case.path, "rb").read()).hexdigest()
                if digest in seen:
                    continue
                seen[digest] = case.name
            work = os.path.join(base, "case")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            results.extend(sweep_model(case, work, configs))
            if progress:
                progress(k, case, results)
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return results


def summarise(results: list[Result]) -> dict:
    """Counts per source and outcome, refusal reasons, failures."""
    by_source: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    models: dict[str, set] = {}
    not_runnable: dict[str, set] = {}
    for r in results:
        row = by_source.setdefault(r.source, {})
        row[r.outcome] = row.get(r.outcome, 0) + 1
        models.setdefault(r.source, set()).add(r.name)
        if not r.runnable and r.outcome != "skipped":
            not_runnable.setdefault(r.source, set()).add(r.name)
        if r.outcome == "refused":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {
        "models": {s: len(v) for s, v in models.items()},
        "not_runnable": {s: len(v) for s, v in not_runnable.items()},
        "runs": by_source,
        "refusal_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "failures": [dataclasses.asdict(r) for r in results if r.problems],
    }
