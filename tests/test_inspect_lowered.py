"""``inspect`` and ``report`` on a lowered model count it as the dense pruned model it came
from: each CsrGemm / CsrConv a layer again, with its params, nonzeros and FLOPs (they listed
no lowered layer: "no prunable layer found", totals of the dense layers only, and report
failed with an internal error on the mask figure)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.core.stats import totals
from onnxprune.runtime.bench import counted_layer_rows as layer_rows
from tests.conftest import run_cli
from tests.models import cnn, mlp
from tests.test_lower_measure import masked
from tests.test_lower_to_sparse_ops import _lower

KEYS = ("name", "params", "nonzero", "flops", "flops_remaining", "weight_shape")


@pytest.mark.parametrize("build", [lambda: mlp(sizes=(64, 48, 32, 10)), lambda: mlp(sizes=(64, 48, 10), gemm=False),
                                   lambda: cnn(channels=(3, 16, 32))], ids=["gemm", "matmul", "conv"])
def test_a_lowered_model_counts_as_its_dense_pruned_self(build):
    pruned = masked(build(), density=0.3)
    lowered, _ = _lower(pruned, force=["*"])
    assert any(n.domain == "ai.onnxprune" for n in lowered.graph.node)
    want, _ = layer_rows(pruned)
    got, notes = layer_rows(lowered)
    assert [{k: r[k] for k in KEYS if k != "weight_shape"} for r in got] == \
           [{k: r[k] for k in KEYS if k != "weight_shape"} for r in want]
    assert [int(np.prod(r["weight_shape"])) for r in got] == [int(np.prod(r["weight_shape"])) for r in want]
    assert totals(got)["compression"] == pytest.approx(totals(want)["compression"])
    assert notes == []


def _shared_weight_model():
    """Two MatMuls of one weight (torch's cloned transformer layers, after the exporter shares
    their equal initializers): the lowering writes a CSR node per use over one set of arrays."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    w[rng.random(w.shape) > 0.3] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="layer0"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w"], ["y"], name="layer1")], "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_shared_weight_lowered_per_node_counts_once():
    """A weight shared by two nodes counted twice once lowered (a TransformerDecoder's cloned
    layers: 1.83 M params against the pruned file's 0.98 M); the nodes' dense weights, built
    from the same CSR arrays, are one weight again."""
    pruned = _shared_weight_model()
    lowered, _ = _lower(pruned, force=["*"])
    assert sum(n.domain == "ai.onnxprune" for n in lowered.graph.node) == 2
    want, _ = layer_rows(pruned)
    got, notes = layer_rows(lowered)
    assert len(want) == 1 and [{k: r[k] for k in KEYS} for r in got] == [{k: r[k] for k in KEYS} for r in want]
    assert want[0]["flops"] == 2 * 256 * 4 * 2 and notes == []


def _symbolic_width(lowered):
    """The input's width made symbolic: shape inference cannot give the first CSR node's K,
    nor anything after it (as a transformer's reshaped attention output, whose batch is free)."""
    dim = lowered.graph.input[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_param = "K"
    return lowered


def test_a_csr_node_of_symbolic_width_is_counted_from_the_width_it_records():
    model = masked(mlp(sizes=(64, 48, 10)), density=0.3)
    lowered, _ = _lower(model, force=["*"])
    assert all(a.name != "columns" or a.i in (64, 48) for n in lowered.graph.node for a in n.attribute)
    rows, notes = layer_rows(_symbolic_width(lowered))
    want, _ = layer_rows(model)
    assert notes == [] and [(r["name"], r["params"], r["nonzero"]) for r in rows] == \
        [(r["name"], r["params"], r["nonzero"]) for r in want]


def test_a_csr_node_without_a_recorded_width_is_a_note_not_a_guess():
    model = masked(mlp(sizes=(64, 48, 10)), density=0.3)
    lowered, _ = _lower(model, force=["*"])
    for n in lowered.graph.node:  # as lowered before the lowering recorded `columns`
        kept = [a for a in n.attribute if a.name != "columns"]
        del n.attribute[:]
        n.attribute.extend(kept)
    rows, notes = layer_rows(_symbolic_width(lowered))
    assert rows == [] and [n["node"] for n in notes] == ["fc1", "fc2"]
    assert all("not counted" in n["reason"] for n in notes)


def test_report_and_inspect_on_a_lowered_model(tmp_path, capsys):
    base, low = tmp_path / "m.onnx", tmp_path / "low.onnx"
    model = masked(cnn(channels=(3, 16, 32)), density=0.3)
    onnx.save(model, base)
    onnx.save(_lower(model, force=["*"])[0], low)
    code, out, err = run_cli(["inspect", str(low), "--json", "-"], capsys)
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)["layers"]] == ["conv1", "conv2", "fc"]
    code, _, err = run_cli(["report", str(low), "--baseline", str(base), "-o", str(tmp_path / "r"),
                            "--no-figures", "-q"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["name"] for r in data["table"]["rows"]] == ["conv1", "conv2", "fc"]
    assert data["figures"]["mask"]["layer"] in ("conv1", "conv2", "fc")


def test_inspect_of_a_lowered_model_with_external_data(tmp_path, capsys):
    """inspect loads lazily (external weights memory-mapped): the view of a lowered model must
    read its CSR arrays from the data file (it failed with an internal ValidationError)."""
    from tests.conftest import save_external

    pruned = masked(mlp(sizes=(64, 48, 32, 10)), density=0.3)
    low = tmp_path / "low.onnx"
    save_external(_lower(pruned, force=["*"])[0], low)
    code, out, err = run_cli(["inspect", str(low), "--json", "-"], capsys)
    assert code == 0, err
    want, _ = layer_rows(pruned)
    assert [(r["name"], r["nonzero"]) for r in json.loads(out)["layers"]] == [(r["name"], r["nonzero"]) for r in want]


def test_input_shape_gives_inspect_and_report_the_flops_of_symbolic_inputs(tmp_path, capsys):
    """A detector with symbolic height and width: FLOPs were unknown ("?") in inspect and
    report with no way to size them; --input-shape sizes them (the model's own rows, and its
    lowered form's), and a shape that does not fit the model is exit 2."""
    model = masked(cnn(channels=(3, 16, 32), hw="H"), density=0.3)
    src, low = tmp_path / "det.onnx", tmp_path / "low.onnx"
    onnx.save(model, src)
    onnx.save(_lower(model, force=["*"])[0], low)
    fixed = masked(cnn(channels=(3, 16, 32), hw=20), density=0.3)
    want = {r["name"]: r["flops"] for r in layer_rows(fixed)[0]}
    for path in (src, low):
        code, out, err = run_cli(["inspect", str(path), "--json", "-"], capsys)
        assert code == 0 and json.loads(out)["total"]["flops"] is None, err
        code, out, err = run_cli(["inspect", str(path), "--input-shape", "x=2x3x20x20", "--json", "-"], capsys)
        assert code == 0, err
        assert {r["name"]: r["flops"] for r in json.loads(out)["layers"]} == want
    code, _, err = run_cli(["report", str(low), "--baseline", str(src), "--input-shape", "x=1x3x20x20",
                            "-o", str(tmp_path / "r"), "--no-figures", "-q"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["table"]["total"]["flops"]
    for bad in ("y=1x3x20x20", "x=1x3x20", "x=1x4x20x20"):
        code, _, err = run_cli(["inspect", str(src), "--input-shape", bad], capsys)
        assert code == 2 and err.count("\n") == 1, (bad, err)


def _set_columns(model, value):
    for n in model.graph.node:
        for a in n.attribute:
            if a.name == "columns" and n.name == "fc1":
                a.i = value
    return model


def test_a_recorded_width_is_bounded_before_a_dense_weight_is_built(tmp_path, capsys):
    """The width comes from the model: one at or below a stored column is refused (exit 4, as
    the op refuses it), one that would make a huge dense weight leaves the layer uncounted
    (inspect built a 5 GB array from a 35 KB file), and CSR arrays fed as graph inputs give a
    note (an internal KeyError before)."""
    from onnx import helper

    model = masked(mlp(sizes=(64, 48, 10)), density=0.3)
    lowered, _ = _lower(model, force=["*"])
    bad, huge, fed = tmp_path / "bad.onnx", tmp_path / "huge.onnx", tmp_path / "fed.onnx"
    low = onnx.ModelProto()
    low.CopyFrom(lowered)
    onnx.save(_set_columns(low, 10), bad)
    code, _, err = run_cli(["inspect", str(bad)], capsys)
    assert code == 4 and err.count("\n") == 1 and "col_idx refers to column" in err
    low.CopyFrom(lowered)
    onnx.save(_set_columns(low, 2**27), huge)
    code, _, err = run_cli(["inspect", str(huge)], capsys)
    assert code == 0 and "fc1 (CSR): lowered layer not counted: its dense weight would be 48 x 134217728" in err
    low.CopyFrom(lowered)
    node = next(n for n in low.graph.node if n.name == "fc1")
    for name in node.input[1:4]:
        t = next(t for t in low.graph.initializer if t.name == name)
        low.graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        low.graph.initializer.remove(t)
    onnx.save(low, fed)
    code, _, err = run_cli(["inspect", str(fed)], capsys)
    assert code == 0 and "fc1 (CSR): lowered layer not counted: its CSR arrays are not constants" in err
