"""Shapes of graphs that real exporters write, found by running every command on third-party
models (a Paddle layout detector, a YOLO detector, a JAX file classifier, a PyTorch BERT and
TransformerEncoder): each case is rebuilt here as a tiny model."""

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.models import mlp
from tests.conftest import run_cli


def _run(argv, capsys):
    return run_cli(argv, capsys)


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


def _int_input_model(batch="N") -> onnx.ModelProto:
    """bytes:int32[N, 8] -> Gather(embedding[16, 4]) -> ReduceMean -> Gemm -> y[N, 3]: a file
    classifier's shape (integer tokens with a fixed length)."""
    rng = np.random.default_rng(3)
    emb = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["emb", "bytes"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e", "axes"], ["m"], keepdims=0, name="mean"),
             helper.make_node("Gemm", ["m", "w", "b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "ints", [helper.make_tensor_value_info("bytes", onnx.TensorProto.INT32, [batch, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 3])],
        [emb, w, b, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_data_that_does_not_fit_the_inputs_is_a_usage_error(tmp_path, capsys):
    """``--data`` arrays of the wrong element type, rank or fixed size, or with no rows, are
    refused up front (exit 2, naming the array and what the model takes), in ``check`` and
    ``bench`` alike — not handed to ONNX Runtime to fail as a runtime error (exit 1)."""
    model = tmp_path / "m.onnx"
    onnx.save(_int_input_model(), model)
    rng = np.random.default_rng(4)
    cases = {
        "float": (rng.standard_normal((2, 8)).astype(np.float32), "float32", "int32"),
        "short": (rng.integers(0, 16, (2, 5)).astype(np.int32), "dim 1 is 5", "8"),
        "rank": (rng.integers(0, 16, (2, 8, 1)).astype(np.int32), "3 dims", "2"),
        "empty": (np.zeros((0, 8), np.int32), "no rows", ""),
    }
    for key, (arr, *words) in cases.items():
        data = tmp_path / f"{key}.npz"
        np.savez(data, bytes=arr)
        for argv in (["check", str(model), str(model), "--data", str(data), "-q"],
                     ["bench", str(model), "--data", str(data), "--repeats", "1", "-q"]):
            code, _, err = _run(argv, capsys)
            assert code == 2, (key, argv[0], code, err)
            line = err.strip()
            assert line.startswith("onnxprune: error:") and "\n" not in line, err
            assert "'bytes'" in line and all(w in line for w in words), (key, line)
    good = tmp_path / "good.npz"
    np.savez(good, bytes=rng.integers(0, 16, (2, 8)).astype(np.int32))
    assert _run(["check", str(model), str(model), "--data", str(good), "-q"], capsys)[0] == 0


def test_check_of_models_with_different_inputs_is_a_usage_error(tmp_path, capsys):
    """A candidate that needs an input the reference's inputs do not have cannot be compared
    with it: exit 2 naming the input (was: ONNX Runtime's 'missing from input feed', exit 1)."""
    ints, floats = tmp_path / "ints.onnx", tmp_path / "floats.onnx"
    onnx.save(_int_input_model(), ints)
    onnx.save(mlp(sizes=(8, 3)), floats)
    code, _, err = _run(["check", str(ints), str(floats), "-q"], capsys)
    assert code == 2, err
    assert "'x'" in err and "\n" not in err.strip(), err


def test_lower_for_size_lowers_convs_of_symbolic_spatial_size(tmp_path, capsys):
    """``--lower-for size`` compares CSR bytes with dense bytes, which need no output size: a
    detector with symbolic height and width gets its pruned convolutions lowered (was: every
    one skipped as "output size unknown", and the 'compact file' stayed dense)."""
    from tests.models import cnn

    src, out = tmp_path / "det.onnx", tmp_path / "det.s.onnx"
    model = cnn(channels=(3, 16, 32), hw="H")
    onnx.save(model, src)
    code, report, err = _run(["prune", str(src), "-o", str(out), "--emit", "sparse-ops",
                              "--lower-for", "size", "--target-sparsity", "0.9",
                              "--json", "-", "-q"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(report)["sparse_ops"]["layers"]}
    assert rows["conv2"]["lowered"], rows["conv2"]["reason"]
    assert rows["conv2"]["csr_bytes"] < rows["conv2"]["dense_bytes"]
    lowered = onnx.load(str(out))
    assert "CsrConv" in {n.op_type for n in lowered.graph.node}
    # the cost model still cannot judge them, and says so
    code, report, err = _run(["prune", str(src), "-o", str(tmp_path / "speed.onnx"),
                              "--emit", "sparse-ops", "--target-sparsity", "0.9",
                              "--decide", "model",
                              "--json", "-", "-q"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(report)["sparse_ops"]["layers"]}
    assert not rows["conv2"]["lowered"] and "output size unknown" in rows["conv2"]["reason"]
    # the lowered model computes what the portable one does, at a size the model never saw
    portable = tmp_path / "det.p.onnx"
    assert _run(["prune", str(src), "-o", str(portable), "--target-sparsity", "0.9", "-q"],
                capsys)[0] == 0
    code, _, err = _run(["check", str(portable), str(out), "--input-shape", "x=2x3x9x7",
                         "--atol", "1e-4", "-q"], capsys)
    assert code == 0, err


def test_tiny_constants_stay_dense(tmp_path, capsys):
    """A sparse tensor carries fixed overhead (two tensors, their dims, the name again), so a
    one-element zero Constant (as BERT's attention writes) stays dense: written sparse it grew
    from 4 payload bytes to a larger proto.  A large mostly-zero Constant still goes sparse."""
    model = mlp(sizes=(16, 8))
    g = model.graph
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    mask = np.zeros((64, 8), np.float32)
    mask[0] = 1.0
    big = numpy_helper.from_array(mask, "mask")
    g.node.extend([
        helper.make_node("Constant", [], ["zero_c"], name="zero_const", value=zero),
        helper.make_node("Constant", [], ["mask_c"], name="mask_const", value=big),
        helper.make_node("ReduceSum", ["mask_c"], ["mask_sum"], keepdims=0, name="msum"),
        helper.make_node("Add", ["y", "zero_c"], ["y2"], name="add0"),
        helper.make_node("Add", ["y2", "mask_sum"], ["y3"], name="add1")])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("y3", onnx.TensorProto.FLOAT, ["N", 8]))
    onnx.checker.check_model(model)
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    code, _, err = _run(["prune", str(src), "-o", str(out), "--quality", "0", "-q"], capsys)
    assert code == 0, err
    nodes = {n.name: n for n in onnx.load(str(out)).graph.node}
    assert [a.name for a in nodes["zero_const"].attribute] == ["value"]
    assert [a.name for a in nodes["mask_const"].attribute] == ["sparse_value"]
    code, _, err = _run(["check", str(src), str(out), "--atol", "0", "--rtol", "0", "-q"], capsys)
    assert code == 0, err


def _with_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Metadata where PyTorch's dynamo exporter writes it (IR 10): on every node (namespace,
    stack trace), on the graph, and on value infos."""
    model.ir_version = 10
    for i, node in enumerate(model.graph.node):
        e = node.metadata_props.add()
        e.key, e.value = "pkg.torch.onnx.stack_trace", f"File model.py, line {i}"
    e = model.graph.metadata_props.add()
    e.key, e.value = "graph.note", "kept"
    for vi in (*model.graph.input, *model.graph.output):
        e = vi.metadata_props.add()
        e.key, e.value = "vi.note", vi.name
    onnx.checker.check_model(model)
    return model


def test_node_graph_and_value_info_metadata_come_back(tmp_path, capsys):
    """The metadata on nodes, graphs and value infos is no field a pass changes: it comes back
    as it was for every node the output still has (was: all of it dropped on export)."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_with_metadata(mlp(sizes=(16, 12, 4))), src)
    code, _, err = _run(["prune", str(src), "-o", str(out), "--fc-quality", "1", "-q"], capsys)
    assert code == 0, err
    before, after = onnx.load(str(src)), onnx.load(str(out))
    meta = {n.name: [(e.key, e.value) for e in n.metadata_props] for n in before.graph.node}
    assert {n.name for n in after.graph.node} == set(meta)
    for node in after.graph.node:
        assert [(e.key, e.value) for e in node.metadata_props] == meta[node.name], node.name
    assert [(e.key, e.value) for e in after.graph.metadata_props] == [("graph.note", "kept")]
    for vi in (*after.graph.input, *after.graph.output):
        assert [(e.key, e.value) for e in vi.metadata_props] == [("vi.note", vi.name)]


def test_decide_model_sizes_symbolic_layers_from_input_shape(tmp_path, capsys):
    """``--decide model`` with ``--input-shape``: shape inference takes the given size, so the
    cost model judges the convolutions it could not size (was: the option was ignored there
    and every one stayed "output size unknown"); a shape that does not fit the model is exit 2."""
    from tests.models import cnn

    src = tmp_path / "det.onnx"
    onnx.save(cnn(channels=(3, 16, 32), hw="H"), src)
    base = ["prune", str(src), "--emit", "sparse-ops", "--target-sparsity", "0.9", "--decide", "model"]
    code, report, err = _run([*base, "-o", str(tmp_path / "a.onnx"), "--input-shape", "x=1x3x64x64",
                              "--json", "-", "-q"], capsys)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(report)["sparse_ops"]["layers"]}
    assert rows["conv2"]["reason"].startswith("cost model: ") and rows["conv2"]["estimated_speedup"], rows
    for bad, words in (("y=1x3x64x64", "no such input"), ("x=1x3x64", "3 dims given"),
                       ("x=1x4x64x64", "dim 1 is 4")):
        code, _, err = _run([*base, "-o", str(tmp_path / "b.onnx"), "--input-shape", bad, "-q"], capsys)
        assert code == 2 and words in err and "\n" not in err.strip(), (bad, err)
        assert not (tmp_path / "b.onnx").exists()
