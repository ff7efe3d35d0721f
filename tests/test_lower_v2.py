"""Op contract v2 through the lowering pass and the command line: the smaller index encoding
per layer, float16 values only when asked (``--sparse-values fp16``) with the output change
they made in the report, and the size of an AlexNet-shaped FC stack lowered for size."""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps
from tests.conftest import run_cli
from onnxprune.runtime.check import run_model as run
from tests.models import mlp, random_feeds
from tests.test_lower_measure import masked


def fc_stack(sizes, densities, seed=0):
    """Gemm chain x -> fc_i (transB=1, bias) with random weights pruned to ``densities``."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (k, n, d) in enumerate(zip(sizes, sizes[1:], densities)):
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        w[rng.random((n, k)) >= d] = 0.0
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(
            rng.standard_normal(n).astype(np.float32) * 0.01, f"B{i}")]
        out = "y" if i == len(densities) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out], name=f"fc{i + 6}",
                                      transB=1))
        prev = out
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def lowered_for_size(model, **options):
    result = LowerToSparseOps({"objective": "size", **options})(graph_from_model(model))
    return graph_to_model(result.graph, model), result.stats


def test_alexnet_fc_stack_at_the_papers_densities_is_7x_smaller():
    # fc6 9216x4096, fc7 4096x4096, fc8 4096x1000 at 9% / 9% / 25% (Han et al. 2015), every
    # dimension / 4 (bench/bench_csr_v2.py measures the full-size stack and AlexNet).
    model = fc_stack([2304, 1024, 1024, 250], [0.09, 0.09, 0.25])
    lowered, stats = lowered_for_size(model)
    assert [r["index_dtype"] for r in stats["layers"]] == ["uint8-delta"] * 3
    assert [r["values_dtype"] for r in stats["layers"]] == ["float32"] * 3
    ratio = model.ByteSize() / lowered.ByteSize()
    assert ratio >= 7.0, ratio
    feeds = random_feeds(model, batch=1)
    np.testing.assert_allclose(run(lowered, feeds)[0], run(model, feeds)[0], rtol=1e-4, atol=1e-5)


def test_fp16_values_only_when_asked_and_within_fp16_rounding():
    model = fc_stack([300, 200, 10], [0.2, 0.5])
    fp32, _ = lowered_for_size(model)
    fp16, stats = lowered_for_size(model, values="fp16")
    types = {t.name: t.data_type for t in fp16.graph.initializer if t.name.endswith("csr_values")}
    assert set(types.values()) == {TensorProto.FLOAT16}
    assert all(t.data_type == TensorProto.FLOAT for t in fp32.graph.initializer if t.name.endswith("csr_values"))
    assert fp16.ByteSize() < 0.75 * fp32.ByteSize()
    feeds = random_feeds(model, batch=1)
    ref = run(model, feeds)[0]
    change = np.max(np.abs(run(fp16, feeds)[0] - ref)) / np.max(np.abs(ref))
    assert 0 < change < 5e-3  # fp16 rounds each weight by at most 2^-11 relative


def test_fp16_out_of_range_layer_keeps_fp32_and_says_so():
    model = fc_stack([40, 30, 10], [0.3, 0.3])
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[w != 0] *= 1e7  # beyond float16's 65504
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W0"))
    _, stats = lowered_for_size(model, values="fp16")
    rows = {r["name"]: r for r in stats["layers"]}
    assert rows["fc6"]["values_dtype"] == "float32" and "values kept fp32" in rows["fc6"]["reason"]
    assert rows["fc7"]["values_dtype"] == "float16"


def test_lower_cli_sparse_values_fp16_reports_the_output_change(tmp_path, capsys):
    src, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(masked(mlp(sizes=(64, 48, 32, 10)), density=0.3), src)
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--lower-for", "size",
                                 "--sparse-values", "fp16", "--json", str(report)], capsys)
    assert code == 0, err
    data = json.loads(report.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    change = data["lowering"]["values_change"]
    assert change["values"] == "fp16" and 0 < change["max_relative_output_change"] < 5e-3
    assert "sparse values fp16: largest relative output change" in stdout + err
    lowered = onnx.load(out)
    assert any(t.data_type == TensorProto.FLOAT16 for t in lowered.graph.initializer)
    assert runtime_ops.DOMAIN in {o.domain for o in lowered.opset_import}


def test_lower_cli_default_keeps_fp32_values_and_reports_no_change(tmp_path, capsys):
    src, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(masked(mlp(sizes=(64, 48, 32, 10)), density=0.3), src)
    code, _, err = run_cli(["lower", str(src), "-o", str(out), "--lower-for", "size",
                            "--json", str(report)], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["lowering"]["values_change"] is None
    assert not any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(out).graph.initializer)


def test_prune_sparse_values_needs_emit_sparse_ops(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(64, 48, 10)), src)
    code, _, err = run_cli(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "--sparse-values", "fp16"],
                           capsys)
    assert code == 2 and "--sparse-values" in err


def test_prune_emit_sparse_ops_fp16(tmp_path, capsys):
    src, out, report = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(mlp(sizes=(64, 48, 32, 10)), src)
    code, _, err = run_cli(["prune", str(src), "-o", str(out), "--emit", "sparse-ops", "--fc-quality", "1.5",
                            "--lower-for", "size", "--sparse-values", "fp16", "--json", str(report)], capsys)
    assert code == 0, err
    change = json.loads(report.read_text())["lowering"]["values_change"]
    assert 0 < change["max_relative_output_change"] < 5e-3


def test_lowering_for_speed_keeps_absolute_indices():
    # The delta loop costs more per nonzero when the arrays are cache-resident, so only the
    # size objective takes deltas; fp16 values apply to both when asked.
    model = fc_stack([2304, 1024, 250], [0.09, 0.25])
    graph = graph_from_model(model)
    stats = LowerToSparseOps({"force": ["*"], "values": "fp16"})(graph).stats
    assert [r["index_dtype"] for r in stats["layers"]] == ["int16", "int16"]
    assert [r["values_dtype"] for r in stats["layers"]] == ["float16", "float16"]
