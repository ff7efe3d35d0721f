"""Models exported from torch, with both exporters, go through `onnxprune prune`.

Each pruned model must load in stock ONNX Runtime and compute exactly what the input model
computes once its weights are masked the same way (checked by re-applying the reported
thresholds to the input's weights), and dead-neuron removal must leave outputs unchanged.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxprune.cli import main  # noqa: E402
from tests.models import random_feeds, run  # noqa: E402
from tests.torch_models import LeNet5, LeNet300, ResidualBN  # noqa: E402


def _export(model, shape, dynamo, path):
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics so folding/removal is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(*shape)
    kwargs = dict(input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    if dynamo:
        kwargs = dict(input_names=["x"], output_names=["y"],
                      dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=1024)}})
    torch.onnx.export(model, (x,), path, dynamo=dynamo, **kwargs)
    return onnx.load(path)


def _mask_like_report(model, report):
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    thresholds = {r["weight"]: r["threshold"] for r in report["layers"] if r["threshold"] is not None}
    for t in masked.graph.initializer:
        if t.name in thresholds:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(
                np.where(np.abs(a.astype(np.float64)) >= thresholds[t.name], a, 0).astype(a.dtype),
                t.name))
    for node in masked.graph.node:  # weights held in Constant nodes (some exports)
        if node.op_type == "Constant" and node.output[0] in thresholds:
            a = numpy_helper.to_array(node.attribute[0].t)
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(
                np.where(np.abs(a.astype(np.float64)) >= thresholds[node.output[0]], a, 0).astype(a.dtype)))
    return masked


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("arch,shape,expected_layers", [
    (LeNet300, (2, 1, 28, 28), 3),
    (LeNet5, (2, 1, 28, 28), 4),
    (ResidualBN, (2, 3, 8, 8), 4),
])
def test_torch_export_prunes_correctly(tmp_path, capsys, arch, shape, expected_layers, dynamo):
    src = tmp_path / "model.onnx"
    try:
        model = _export(arch(), shape, dynamo, str(src))
    except Exception as e:  # the exporter itself, not onnxprune
        pytest.skip(f"torch export failed: {type(e).__name__}: {e}")
    feeds = random_feeds(model, batch=3)
    for nodead, out_name in ((True, "masked.onnx"), (False, "pruned.onnx")):
        out = tmp_path / out_name
        rep = tmp_path / (out_name + ".json")
        argv = ["prune", str(src), "-o", str(out), "--json", str(rep), "-q", "--quality", "0.8"]
        if nodead:
            argv.append("--no-remove-dead-neurons")
        code = main(argv)
        report = json.loads(rep.read_text())
        assert code == 0
        pruned_layers = [r for r in report["layers"] if r["threshold"] is not None]
        assert len(pruned_layers) == expected_layers
        assert report["total"]["nonzero"] < report["total"]["params"]
        pruned = onnx.load(str(out))
        onnx.checker.check_model(pruned)
        expected = run(_mask_like_report(model, report), feeds)[0]
        got = run(pruned, feeds)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(expected).max()))
