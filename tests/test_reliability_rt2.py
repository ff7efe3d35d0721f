"""Reliability of the runtime side: ONNX Runtime sessions, numerics of the passes, reports.

Each test pins one promise of README "Exit codes and guarantees" / docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from tests.models import mlp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env(home) -> dict:
    """The environment of a fresh user process: a private HOME, no telemetry switch set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "PYTEST_CURRENT_TEST")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _telemetry_files(home) -> list[str]:
    return [os.path.relpath(os.path.join(d, f), home)
            for d, _, files in os.walk(home) for f in files]


# --------------------------------------------------------------------------- telemetry


def test_no_telemetry_store_from_cli_and_library(tmp_path):
    """ONNX Runtime's Linux wheel writes an event store under ~/.cache when it is imported and
    tries to upload it ~10 s later.  A CLI run and a library session, in a process that stays
    alive past that delay, must leave HOME empty."""
    home = tmp_path / "home"
    home.mkdir()
    model = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(8, 6, 4)), model)
    script = textwrap.dedent(f"""
        import time
        import onnx
        from onnxprune.cli import main
        from onnxprune.runtime.check import make_session, random_inputs, run_session
        rc = main(["check", {str(model)!r}, {str(model)!r}, "-q"])
        assert rc == 0, rc
        m = onnx.load({str(model)!r})
        run_session(make_session(m), random_inputs(m))
        time.sleep(12.5)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_clean_env(home), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _telemetry_files(home) == []


def test_library_session_without_cli_sends_nothing(tmp_path):
    """The library alone (no CLI entry point) opens sessions with telemetry off."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent("""
        from onnxprune import runtime_ops
        from onnxprune.runtime.evaluate import evaluate
        from tests.models import mlp
        import numpy as np
        m = mlp(sizes=(8, 6, 4))
        x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        evaluate(m, (x, np.zeros(5, np.int64)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_clean_env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _telemetry_files(home) == []


# --------------------------------------------------------------------------- non-finite weights


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python's json accepts them by default)."""
    def refuse(word):
        raise ValueError(f"non-standard JSON constant {word}")
    return json.loads(text, parse_constant=refuse)


def _with_weights(model, **updates):
    for t in model.graph.initializer:
        if t.name in updates:
            w = numpy_helper.to_array(t).copy()
            for index, value in updates[t.name]:
                w[index] = value
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return model


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_nonfinite_layer_is_skipped_with_note_and_report_is_strict_json(tmp_path, capsys):
    """One NaN made σ NaN and zeroed every finite weight of the layer; Inf likewise.  Such a
    layer is left as it is, with a note; the other layers are pruned; the report is strict
    JSON and stderr carries no numpy warning."""
    src = tmp_path / "m.onnx"
    onnx.save(_with_weights(mlp(sizes=(16, 12, 8, 4)),
                            **{"fc1.weight": [((0, 0), np.nan)],
                               "fc2.weight": [((1, 1), np.inf), ((2, 2), -np.inf)]}), src)
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    code = main(["prune", str(src), "-o", str(out), "--json", str(rep),
                 "--no-remove-dead-neurons"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = _strict_json(rep.read_text())
    rows = {r["name"]: r for r in report["layers"]}
    assert "non-finite" in (rows["fc1"]["skipped"] or "")
    assert "non-finite" in (rows["fc2"]["skipped"] or "")
    assert rows["fc3"]["skipped"] is None
    before, after = _weights(src), _weights(out)
    for name in ("fc1.weight", "fc2.weight"):
        np.testing.assert_array_equal(after[name], before[name])  # NaN == NaN positionally
    assert np.count_nonzero(after["fc3.weight"]) < np.count_nonzero(before["fc3.weight"])
    assert "non-finite" in err and "fc1" in err and "fc2" in err
    assert "Warning" not in err
    assert report["total"]["nonzero"] == sum(int(np.count_nonzero(after[f"fc{i}.weight"]))
                                             for i in (1, 2, 3))


def test_weight_std_of_nonfinite_is_nan_without_warning():
    import warnings

    from onnxprune.core.masks import count_nonfinite, weight_std

    w = np.array([1.0, -2.0, np.inf, np.nan, 3.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(weight_std(w))
        assert count_nonfinite(w) == 2
        assert count_nonfinite(np.arange(5)) == 0


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize("flag", [["--layer", "fc9*=1.0"], ["--skip", "conv*"]])
def test_glob_matching_no_layer_is_a_usage_error(tmp_path, capsys, flag):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(16, 12, 8, 4)), src)
    out = tmp_path / "p.onnx"
    code = main(["prune", str(src), "-o", str(out), *flag])
    err = capsys.readouterr().err
    assert code == 2
    assert flag[1].split("=")[0] in err and "fc1, fc2, fc3" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_layer_list_in_messages_is_capped():
    from onnxprune.core.errors import name_list

    text = name_list([f"layer{i}" for i in range(500)])
    assert "layer0" in text and "layer11" in text and "layer12," not in text
    assert "488 more" in text


# --------------------------------------------------------------------------- input shapes


def _symbolic_hw_cnn():
    """The test CNN with input [N, 3, H, W]: a detector-like symbolic height and width."""
    from tests.models import cnn

    model = cnn(bn=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


@pytest.fixture
def hw_paths(tmp_path):
    src, pruned = tmp_path / "det.onnx", tmp_path / "det_pruned.onnx"
    onnx.save(_symbolic_hw_cnn(), src)
    assert main(["prune", str(src), "-o", str(pruned), "-q", "--quality", "1.0"]) == 0
    return src, pruned


@pytest.mark.parametrize("command", ["check", "bench"])
def test_symbolic_spatial_dims_need_input_shape(hw_paths, capsys, command):
    src, pruned = hw_paths
    argv = ["check", str(src), str(pruned)] if command == "check" else \
        ["bench", str(pruned), "--repeats", "1", "--warmup", "1", "--no-layers"]
    code = main([*argv, "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "'x'" in err and "H, W" in err and "--input-shape x=" in err


def test_check_and_bench_with_input_shape(hw_paths, tmp_path, capsys):
    src, pruned = hw_paths
    rep = tmp_path / "b.json"
    assert main(["check", str(src), str(pruned), "-q", "--input-shape", "x=1x3x16x20",
                 "--atol", "10"]) == 0
    code = main(["bench", str(pruned), "--repeats", "1", "--warmup", "1", "--no-layers",
                 "--input-shape", "x=1x3x16x20", "--batch", "2", "--json", str(rep), "-q"])
    assert code == 0, capsys.readouterr().err
    report = _strict_json(rep.read_text())
    assert [c["batch"] for c in report["configs"]] == [1]
    # the batch --input-shape gives wins over --batch, and the note says so (only where
    # --batch asked for another: round 29)
    assert any("--input-shape" in n for n in report["notes"])


@pytest.mark.parametrize("shape, words", [
    ("y=1x3x8x8", ["no such input", "inputs: x"]),
    ("x=1x3x8", ["3 dims given", "has 4"]),
    ("x=1x4x8x8", ["dim 1 is 4", "fixes it at 3"]),
])
def test_wrong_input_shape_is_a_usage_error(hw_paths, capsys, shape, words):
    src, pruned = hw_paths
    code = main(["check", str(src), str(pruned), "-q", "--input-shape", shape])
    err = capsys.readouterr().err
    assert code == 2
    assert all(w in err for w in words), err


def test_random_input_too_large_for_memory_is_a_usage_error(tmp_path, capsys):
    """A huge --batch used to allocate until the process ran out of memory (exit 1)."""
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    code = main(["check", str(src), str(src), "-q", "--batch", str(1 << 27)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "more than 268435456 elements" in err and "--batch" in err


def test_input_shape_argument_is_parsed_strictly():
    import argparse

    from onnxprune.runtime.check import input_shape_arg

    assert input_shape_arg("images=1x3x640x640") == ("images", (1, 3, 640, 640))
    assert input_shape_arg("a=b=2X5") == ("a=b", (2, 5))
    for bad in ("images", "=1x2", "x=1x0", "x=1x-2", "x=1xa", "x=65536x65536x65536"):
        with pytest.raises(argparse.ArgumentTypeError):
            input_shape_arg(bad)


def test_bench_takes_inputs_from_data(hw_paths, tmp_path, capsys):
    _, pruned = hw_paths
    npz, rep = tmp_path / "in.npz", tmp_path / "b.json"
    np.savez(npz, x=np.random.default_rng(3).standard_normal((2, 3, 10, 14)).astype(np.float32))
    code = main(["bench", str(pruned), "--repeats", "1", "--warmup", "1", "--no-layers",
                 "--data", str(npz), "--json", str(rep), "-q"])
    assert code == 0, capsys.readouterr().err
    report = _strict_json(rep.read_text())
    assert [c["batch"] for c in report["configs"]] == [2]
    code = main(["bench", str(pruned), "--data", str(npz), "--input-shape", "x=1x3x8x8", "-q"])
    assert code == 2


def _concat_model():
    """x [N, 4] concatenated on axis 1 with a constant [2, 4]: runs only when N == 2."""
    c = numpy_helper.from_array(np.ones((2, 4), np.float32), "c")
    node = helper.make_node("Concat", ["x", "c"], ["y"], axis=1, name="cat")
    graph = helper.make_graph(
        [node], "cat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_runtime_failure_is_one_plain_line(tmp_path, capfd):
    """ONNX Runtime logs a failing kernel in colour on stderr by itself and prefixes its
    exception with ``[ONNXRuntimeError] : N : NAME :``; the user sees one plain line."""
    p = tmp_path / "cat.onnx"
    onnx.save(_concat_model(), p)
    code = main(["check", str(p), str(p), "--batch", "3", "-q"])
    err = capfd.readouterr().err
    assert code == 1
    assert err.startswith("onnxprune: error: ONNX Runtime failed to run the model: ")
    assert len(err.strip().splitlines()) == 1, err
    assert "\x1b[" not in err and "[ONNXRuntimeError]" not in err


# --------------------------------------------------------------------------- lowering: force


def _lower(model, **options):
    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps

    result = LowerToSparseOps(options)(graph_from_model(model))
    return graph_to_model(result.graph, model), result


def test_force_lowers_a_conv_of_unknown_output_size():
    """With symbolic H and W the cost model cannot judge a convolution; the skip reason names
    the real recipe key, and ``force`` (checked before that skip) lowers it, exactly."""
    from onnxprune import runtime_ops

    model = _symbolic_hw_cnn()
    _, result = _lower(model)
    rows = {r["name"]: r for r in result.stats["layers"]}
    assert not rows["conv1"]["lowered"]
    assert "lower-to-sparse-ops" in rows["conv1"]["reason"] and "force" in rows["conv1"]["reason"]
    assert "use force to lower anyway" not in rows["conv1"]["reason"]

    lowered, result = _lower(model, force=["conv*"], never=["conv2"])
    rows = {r["name"]: r for r in result.stats["layers"]}
    assert rows["conv1"]["lowered"] and rows["conv1"]["reason"].split("; ")[0] == "forced"
    assert rows["conv1"]["estimated_speedup"] is None
    assert not rows["conv2"]["lowered"]  # never wins over force
    assert [n.op_type for n in lowered.graph.node].count("CsrConv") == 1
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 13)).astype(np.float32)
    ref = runtime_ops.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- adjust-dropout


def _pruned_dropout_mlp(runtime_ratio: bool):
    """A pruned MLP with Dropout after each hidden layer; the ratio is an initializer, or a
    graph input fed at run time."""
    model = mlp(sizes=(16, 12, 8, 4), dropout=0.5)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 2:
            t.CopyFrom(numpy_helper.from_array(np.where(np.abs(a) > 0.2, a, 0).astype(a.dtype),
                                               t.name))
    if runtime_ratio:
        keep = [t for t in model.graph.initializer if not t.name.endswith(".ratio")]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for i in (1, 2):
            model.graph.input.append(
                helper.make_tensor_value_info(f"drop{i}.ratio", TensorProto.FLOAT, []))
    return model


def _adjust(model):
    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes.adjust_dropout import AdjustDropout

    result = AdjustDropout()(graph_from_model(model))
    return graph_to_model(result.graph, model), result


def test_adjust_dropout_leaves_a_runtime_ratio_alone_and_says_so():
    model = _pruned_dropout_mlp(runtime_ratio=True)
    out, result = _adjust(model)
    assert result.modified is False
    rows = result.stats["dropouts"]
    assert len(rows) == 2
    assert all(r["new_ratio"] is None and "run time" in r["reason"] for r in rows)
    assert [n.input for n in out.graph.node] == [n.input for n in model.graph.node]


def test_adjust_dropout_and_bridge_share_one_rule():
    """The pass writes D_o·sqrt(C_ir/C_io) (masks.retrain_dropout) and the fine-tune bridge
    plans the same ratio for the same Dropout."""
    pytest.importorskip("torch")
    from onnxprune.core.masks import retrain_dropout
    from onnxprune.training.torch_bridge.module import OnnxModule
    from onnxprune.training.torch_bridge.train import _dropout_plan

    model = _pruned_dropout_mlp(runtime_ratio=False)
    _, result = _adjust(model)
    assert result.modified is True
    plan = _dropout_plan(OnnxModule(model))
    for r in result.stats["dropouts"]:
        expected = retrain_dropout(0.5, r["c_ir"], r["c_io"])
        assert r["new_ratio"] == pytest.approx(expected, rel=1e-6) and expected < 0.5
        assert plan[r["node"]][1] == pytest.approx(r["new_ratio"], rel=1e-6)
    assert retrain_dropout(0.5, 25, 100) == 0.25 and retrain_dropout(0.3, 0, 0) == 0.3


# --------------------------------------------------------------------------- FLOPs


def test_flops_of_unknown_spatial_size_are_unknown_not_guessed(tmp_path, capsys):
    """A convolution on a symbolic H×W input has unknown FLOPs (not 2·params·1); the total
    is null with the known part and the unknown layers named; the table shows "?"."""
    src, rep = tmp_path / "det.onnx", tmp_path / "i.json"
    onnx.save(_symbolic_hw_cnn(), src)
    assert main(["inspect", str(src), "--json", str(rep)]) == 0
    err = capsys.readouterr().err
    report = _strict_json(rep.read_text())
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv1"]["flops"] is None and rows["conv2"]["flops"] is None
    assert rows["conv1"]["flops_remaining"] is None
    assert rows["fc"]["flops"] == 2 * rows["fc"]["params"]
    total = report["total"]
    assert total["flops"] is None and total["flops_remaining"] is None
    assert total["flops_known_part"] == rows["fc"]["flops"]
    assert total["flops_unknown_layers"] == ["conv1", "conv2"]
    assert "?" in err and "(partial)" in err


@pytest.mark.parametrize("batch", [1, 2])
def test_transformer_projections_count_every_token_per_sample(batch):
    # As torch exports attention: the input [N, S, D] turned sequence-first [S, N, D] for the
    # in-projection MatMul, then flattened to [S·N, D] for the out-projection Gemm. Each weight
    # is applied once per token: S times per sample, wherever the batch dimension sits.
    from onnxprune.core.stats import layer_rows

    s, d = 5, 8
    w_in = numpy_helper.from_array(np.ones((d, 3 * d), np.float32), "w_in")
    w_out = numpy_helper.from_array(np.ones((d, d), np.float32), "w_out")
    shape = numpy_helper.from_array(np.array([s * batch, d], np.int64), "flat")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["xt", "w_in"], ["qkv"], name="in_proj"),
             helper.make_node("Reshape", ["xt", "flat"], ["x2"]),
             helper.make_node("Gemm", ["x2", "w_out"], ["y"], name="out_proj")]
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, s, d])],
        [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w_in, w_out, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rows = {r["name"]: r for r in layer_rows(model)[0]}
    assert rows["in_proj"]["flops"] == 2 * w_in.dims[0] * w_in.dims[1] * s
    assert rows["out_proj"]["flops"] == 2 * d * d * s
    # a symbolic batch: the sequence-first MatMul still counts S rows, but the Gemm after a
    # reshape to [-1, d] cannot be sized by inference. Without a run, its leading dimension is
    # taken for the batch (a guess, marked); a run of the model measures it.
    from onnxprune.runtime.shape_probe import shape_probe

    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([-1, d], np.int64), "flat"))
    rows = {r["name"]: r for r in layer_rows(model)[0]}
    assert rows["out_proj"]["flops"] == 2 * d * d and rows["out_proj"]["flops_shapes"] == "assumed"
    rows = {r["name"]: r for r in layer_rows(model, measure=shape_probe(model))[0]}
    assert rows["out_proj"]["flops"] == 2 * d * d * s and rows["out_proj"]["flops_shapes"] == "measured"
    assert rows["in_proj"]["flops"] == 2 * d * 3 * d * s


def test_matmul_flops_with_symbolic_sequence_are_unknown(tmp_path):
    from onnxprune.core.stats import layer_rows

    w = numpy_helper.from_array(np.ones((8, 6), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rows, _ = layer_rows(model)
    assert rows[0]["flops"] is None
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    fixed.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    rows, _ = layer_rows(fixed)
    assert rows[0]["flops"] == 2 * 48 * 5


def _window_attention(batch="N", tokens=16, window=4, d=8):
    """Swin's window partition in miniature: [N, T, D] reshaped to [N·T/w, w, D] and projected
    per window. Inference cannot size N·T/w (a symbol times a number), so each projection's
    rows per sample are unknown to it; they are T."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), "w_q"),
             numpy_helper.from_array(np.array([-1, window, d], np.int64), "win"),
             numpy_helper.from_array(np.array([-1, tokens, d], np.int64), "back"),
             numpy_helper.from_array(rng.standard_normal((d, 2)).astype(np.float32), "w_head")]
    nodes = [helper.make_node("Reshape", ["x", "win"], ["xw"]),
             helper.make_node("MatMul", ["xw", "w_q"], ["q"], name="q_proj"),
             helper.make_node("Reshape", ["q", "back"], ["qb"]),
             helper.make_node("MatMul", ["qb", "w_head"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "win", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [batch, tokens, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("batch", ["N", 1, 2])
def test_window_attention_flops_are_measured_not_taken_from_the_windows(tmp_path, capsys, batch):
    """Swin's window projections were counted with the windows × batch dimension taken for the
    batch: 64× too few FLOPs in its first stage. inspect, report and prune now measure those
    rows in one run of the model (T per sample, whatever the batch), and say so."""
    src = tmp_path / "win.onnx"
    model = _window_attention(batch)
    onnx.save(model, src)
    before = src.read_bytes()
    want = {"q_proj": 2 * 8 * 8 * 16, "head": 2 * 8 * 2 * 16}
    code = main(["inspect", str(src), "--json", str(tmp_path / "i.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    report = _strict_json((tmp_path / "i.json").read_text())
    assert {r["name"]: r["flops"] for r in report["layers"]} == want
    if batch == "N":  # with a fixed batch, inference sizes the windows itself
        assert report["total"]["flops_measured_layers"] == ["q_proj", "head"]
        assert "measured in one run" in err
    assert src.read_bytes() == before  # the probe's outputs went into a copy only
    assert main(["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--json",
                 str(tmp_path / "p.json"), "-q"]) == 0
    rows = _strict_json((tmp_path / "p.json").read_text())["layers"]
    assert {r["name"]: r["flops"] for r in rows} == want
    assert not any(o.name == "xw" for o in onnx.load(str(tmp_path / "p.onnx")).graph.output)
    assert main(["report", str(tmp_path / "p.onnx"), "--baseline", str(src), "-o",
                 str(tmp_path / "r"), "--no-figures", "-q"]) == 0
    total = json.loads((tmp_path / "r" / "report.json").read_text())["table"]["total"]
    assert total["flops"] == sum(want.values())


def test_flops_that_cannot_be_measured_are_marked_as_assumed(tmp_path, capsys):
    """A model that cannot run on random inputs (here a symbolic length random inputs must not
    guess) keeps the leading-dimension guess, marked in the row, the total and the table."""
    model = _window_attention()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    src = tmp_path / "win.onnx"
    onnx.save(model, src)
    code = main(["inspect", str(src), "--json", str(tmp_path / "i.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["name"]: r for r in _strict_json((tmp_path / "i.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] == "assumed" and rows["q_proj"]["flops"] == 2 * 8 * 8 * 4
    assert "take the leading dimension for the batch" in err
    # --input-shape sizes it (here inference alone can, once the length is known)
    code = main(["inspect", str(src), "--input-shape", "x=1x16x8", "--json", str(tmp_path / "j.json")])
    assert code == 0
    rows = {r["name"]: r for r in _strict_json((tmp_path / "j.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] != "assumed" and rows["q_proj"]["flops"] == 2 * 8 * 8 * 16


def test_a_batch_symbol_carried_through_is_inferred_without_running_the_model():
    """A symbolic batch that shape inference carries to a product's leading dim needs no run:
    the probe is not called, and the rows after the batch are counted."""
    from onnxprune.core.stats import layer_rows

    w = numpy_helper.from_array(np.ones((8, 6), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"], name="proj")],
        "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    def never(names):
        raise AssertionError(f"ran the model for {names}")

    rows, _ = layer_rows(model, measure=never)
    assert rows[0]["flops"] == 2 * 48 * 5 and rows[0]["flops_shapes"] == "inferred"


def test_a_model_that_runs_long_is_stopped_and_its_flops_stay_assumed(tmp_path, capsys, monkeypatch):
    """inspect runs a model only to size its FLOPs: a Loop of 10⁹ steps beside the layers is
    stopped after PROBE_SECONDS (its child process is killed), and the rows keep the marked
    guess."""
    import time

    from onnxprune.runtime import shape_probe

    model = _window_attention()
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(10**9, np.int64), "trip"),
                                    numpy_helper.from_array(np.array(True), "go"),
                                    numpy_helper.from_array(np.zeros(1, np.float32), "v0")])
    model.graph.node.append(helper.make_node("Loop", ["trip", "go", "v0"], ["spin"], body=body))
    model.graph.output.append(helper.make_tensor_value_info("spin", TensorProto.FLOAT, [1]))
    src = tmp_path / "spin.onnx"
    onnx.save(model, src)
    monkeypatch.setattr(shape_probe, "PROBE_SECONDS", 5.0)
    t0 = time.monotonic()
    code = main(["inspect", str(src), "--json", str(tmp_path / "i.json")])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["name"]: r for r in _strict_json((tmp_path / "i.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] == "assumed", rows
    assert elapsed < 20, elapsed  # 10⁹ loop steps would take minutes


def test_the_probe_measures_only_what_the_main_graph_computes():
    """A layer inside an If body has no tensor the main graph can output: asking for it made
    ORT refuse the probe model, and every layer of the model stayed unmeasured (a wake-word
    model's 3 head layers, and the rest with them). Such names are left out; the rest are
    measured."""
    from onnxprune.runtime.shape_probe import shape_probe

    model = _window_attention()
    got = shape_probe(model)(["xw", "inside_a_branch", "w_q"])
    assert got["xw"] == [4, 4, 8] and got["x"] == [1, 16, 8]
    assert "inside_a_branch" not in got and "w_q" not in got


@pytest.mark.skipif(os.name != "posix", reason="the probe's memory cap is an rlimit")
def test_a_model_that_asks_for_gigabytes_is_refused_them(tmp_path, capsys):
    """A 1 KB model whose ConstantOfShape takes a size computed from its input asked ONNX
    Runtime for 14 GB when inspect ran it to size its FLOPs (3.2 GB resident at a smaller
    size). The probe's child runs under an address-space cap: the allocation fails there,
    inspect finishes, and the rows keep the marked guess."""
    model = _window_attention()
    model.graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "one"),
                                    numpy_helper.from_array(np.array([0], np.int64), "zero"),
                                    numpy_helper.from_array(np.array([60000], np.int64), "big")])
    model.graph.node.extend([
        helper.make_node("Shape", ["x"], ["s0"]), helper.make_node("Slice", ["s0", "zero", "one"], ["n0"]),
        helper.make_node("Mul", ["n0", "big"], ["nb"]), helper.make_node("Concat", ["nb", "big"], ["shp"], axis=0),
        helper.make_node("ConstantOfShape", ["shp"], ["huge"],
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0)])
    model.graph.output.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, None))
    src = tmp_path / "huge.onnx"
    onnx.save(model, src)
    assert src.stat().st_size < 4000
    code = main(["inspect", str(src), "--json", str(tmp_path / "i.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["name"]: r for r in _strict_json((tmp_path / "i.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] == "assumed", rows


def test_the_probe_can_be_turned_off(tmp_path, capsys, monkeypatch):
    """ONNXPRUNE_SHAPE_PROBE=0: no model is run to size FLOPs; the rows keep the marked guess."""
    src = tmp_path / "win.onnx"
    onnx.save(_window_attention(), src)
    monkeypatch.setenv("ONNXPRUNE_SHAPE_PROBE", "0")
    assert main(["inspect", str(src), "--json", str(tmp_path / "i.json")]) == 0
    rows = {r["name"]: r for r in _strict_json((tmp_path / "i.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] == "assumed" and rows["q_proj"]["flops"] == 2 * 8 * 8 * 4
    monkeypatch.setenv("ONNXPRUNE_SHAPE_PROBE", "1")
    assert main(["inspect", str(src), "--json", str(tmp_path / "j.json")]) == 0
    rows = {r["name"]: r for r in _strict_json((tmp_path / "j.json").read_text())["layers"]}
    assert rows["q_proj"]["flops_shapes"] == "measured"
