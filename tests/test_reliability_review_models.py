"""Shapes of graphs that real exporters write, found by running every command on third-party
models (a Paddle layout detector, a YOLO detector, a JAX file classifier, a PyTorch BERT and
TransformerEncoder): each case is rebuilt here as a tiny model."""

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.cli import main
from tests.models import mlp


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # an option refused by the parser (exit 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _aliased_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """``fc1.bias`` read through an Identity (as PyTorch's exporter dedups equal biases) and
    ``fc2.bias`` held in a Constant node (as Paddle's exporter writes every weight)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    b2 = inits["fc2.bias"]
    keep = [t for t in g.initializer if t.name != "fc2.bias"]
    del g.initializer[:]
    g.initializer.extend(keep)
    for node in g.node:
        if node.name == "fc1":
            node.input[2] = "fc1.bias_alias"
    const = helper.make_node("Constant", [], ["fc2.bias"], name="fc2.bias_const", value=b2)
    ident = helper.make_node("Identity", ["fc1.bias"], ["fc1.bias_alias"], name="fc1.bias_id")
    nodes = [ident, const, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def test_bench_layers_with_biases_behind_identity_and_constant(tmp_path, capsys):
    """Per-layer timings of a layer whose bias is an Identity's or a Constant's output: the
    one-layer models get the bias under the name the layer reads (was: KeyError, exit 1)."""
    src = tmp_path / "m.onnx"
    onnx.save(_aliased_biases(mlp(sizes=(32, 24, 8))), src)
    lowered = tmp_path / "s.onnx"
    code, _, err = _run(["prune", str(src), "-o", str(lowered), "--emit", "sparse-ops",
                         "--lower-for", "size", "--fc-quality", "1.5", "-q"], capsys)
    assert code == 0, err
    assert any(n.op_type.startswith("Csr") for n in onnx.load(str(lowered)).graph.node)
    for model in (src, lowered):
        code, out, err = _run(["bench", str(model), "--repeats", "1", "--warmup", "1",
                               "--json", "-", "-q"], capsys)
        assert code == 0, err
        report = json.loads(out)
        rows = report["configs"][0]["layers"]
        assert report["configs"][0]["correctness"]["passed"]
        assert {r["name"] for r in rows} == {"fc1", "fc2"}, rows
