"""bench/bench_models.py's suite models (ResNet-50, BERT-base, MobileNetV2) are what they say.

Full size: the graph passes the checker and strict shape inference, has the reference parameter
count and the right output shape (nothing is run).  Reduced size (the builders' width/size
parameters, same topology): the bench's own prune step leaves each layer at its density, and
the model lowered with every layer forced to the CSR ops computes what the dense one does.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune import runtime_ops
from onnxprune.runtime.bench import compare_outputs, lower_model

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_models.py"


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _weights(model) -> int:
    """Parameters: elements of the float initializers that are not scalars (Clip bounds,
    GELU's and the attention's constants are scalars)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 0)


def _out_dims(model) -> list:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


# Reference counts: torchvision's resnet50 (25,557,032) and mobilenet_v2 (3,504,872) keep two
# BatchNorm vectors per channel, the folded graphs one bias (26,560 and 17,056 channels);
# a BERT-base encoder layer has 7,087,872 (4·(768² + 768) + 2·768·3072 + 3072 + 768 + 4·768).
FULL = {
    "resnet50": (25_557_032 - 26_560, ["N", 1000]),
    "mobilenetv2": (3_504_872 - 17_056, ["N", 1000]),
    "bert-base": (7_087_872, ["N", 128, 768]),
}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_graph_is_the_reference_architecture(bm, name):
    model = bm.MODELS[name][0]()
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    params, out = FULL[name]
    assert _weights(model) == params
    assert _out_dims(inferred) == out
    if name == "resnet50":  # v1.5: a stage's stride sits on its first 3×3 and its projection
        strided = sorted(n.name for n in model.graph.node if n.op_type == "Conv" and any(
            a.name == "strides" and list(a.ints) == [2, 2] for a in n.attribute))
        assert strided == ["conv1"] + [f"layer{s}.0.{c}" for s in (2, 3, 4)
                                       for c in ("conv2", "downsample")]


def test_bert_layers_repeat_the_encoder(bm):
    one, two = bm.bert_base(layers=1, hidden=32, heads=4, ffn=64, seq=8), \
        bm.bert_base(layers=2, hidden=32, heads=4, ffn=64, seq=8)
    weight_matmuls = [n for n in two.graph.node if n.op_type == "MatMul"
                      and n.input[1].endswith(".weight")]
    assert len(weight_matmuls) == 12
    assert _weights(two) == 2 * _weights(one)


REDUCED = {
    "resnet50": dict(width=8, image=32),
    "mobilenetv2": dict(width=0.25, image=32),
    "bert-base": dict(layers=2, hidden=32, heads=4, ffn=64, seq=8),
}


def _run(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so).run(None, feeds)


@pytest.mark.parametrize("name", list(REDUCED))
def test_reduced_model_prunes_to_its_densities_and_lowers_exactly(bm, name, tmp_path):
    build, keep = bm.MODELS[name]
    src = tmp_path / "m.onnx"
    onnx.save(build(**REDUCED[name]), src)
    rep = bm.prune(str(src), str(tmp_path / "d.onnx"), keep, "dense")
    pruned, skip = bm.split_keep(keep)
    rows = rep["layers"]
    left = [r for r in rows if any(fnmatch.fnmatchcase(r["name"], g) for g in skip)]
    kept = [r for r in rows if r not in left]
    share = sum(r["nonzero"] for r in kept) / sum(r["params"] for r in kept)
    assert abs(share - pruned["*"] / 100) < 0.02, share
    assert all(r["density"] == 1.0 for r in left)
    assert len(left) == (0 if name != "mobilenetv2" else 1 + len(
        [n for n in onnx.load(src).graph.node if n.name.endswith(".dw")]))

    dense = onnx.load(tmp_path / "d.onnx")
    lowered, stats = lower_model(dense, batch=1, threads=1, force=["*"])
    assert stats["lowered"] == [r["name"] for r in rows]  # every layer has a CSR form
    leftover = [n.op_type for n in lowered.graph.node if n.op_type in ("Conv", "Gemm")
                or (n.op_type == "MatMul" and n.input[1].endswith(".weight"))]
    assert leftover == []
    if name == "bert-base":
        gemms = [n for n in lowered.graph.node if n.op_type == "CsrGemm"]
        assert len(gemms) == 12
        matmul = {n.name: next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "matmul")
                  for n in gemms}
        # each FFN's fc1 writes its output transposed for fc2, which reads it Gemm style (chains.py);
        # the attention's query, key and value write each batch transposed for their heads, and
        # its output product reads the context so (heads.py)
        want = {"ffn.fc1": 2, "ffn.fc2": 0, "attention.query": 3, "attention.key": 3, "attention.value": 3,
                "attention.output": 4}
        assert all(v == want[k.split(".", 1)[1]] for k, v in matmul.items()), matmul
        # the Transposes left swap the last two axes, which ONNX Runtime folds into the MatMuls
        assert {tuple(onnx.helper.get_attribute_value(n.attribute[0])) for n in lowered.graph.node
                if n.op_type == "Transpose"} == {(0, 1, 3, 2)}

    shape = [d.dim_value for d in dense.graph.input[0].type.tensor_type.shape.dim][1:]
    feeds = {"x": np.random.default_rng(3).standard_normal((2, *shape), dtype=np.float32)}
    ref = _run(dense, feeds)
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, feeds)
    check = compare_outputs(ref, got)
    assert check["passed"], check
    assert bm.relative_error(check) < 1e-3


def test_markdown_states_machine_and_lowered_count(bm):
    case = {"batch": 1, "threads": 2, "repeats": 5, "dense_ms": 10.0, "sparse_ms": 4.0,
            "ratio": 2.5, "lowered": ["a", "b"], "layers_total": 4,
            "not_lowered": {"c": "not pruned (100% dense)", "d": "not pruned (100% dense)"},
            "deepsparse": {"median_ms": 5.0, "status": "ok"}}
    results = {"machine": {"Model name": "AMD EPYC 9R45", "CPU family": "26", "CPU(s)": "2",
                           "date": "2026-12-02", "onnxruntime": "1.32.0"},
               "command": "python bench/bench_models.py --suite", "deepsparse": "1.8.0",
               "models": {"m": {"cases": [case], "sizes": {"dense": 100}}}}
    text = bm.markdown(json.loads(json.dumps(results)))
    assert "AMD EPYC 9R45, CPU family 26" in text
    assert "date 2026-12-02" in text and "ONNX Runtime 1.32.0" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 | 2 |"))
    assert "| 2/4: a, b |" in row and "| 2.50× |" in row and "| 2.00× |" in row  # DS: 10 / 5
    assert "c, d (not pruned (100% dense))" in text


def test_a_streamed_case_says_how_many_nodes_run_image_by_image(bm):
    timed = [{"nodes": 4, "frontier": ["t"], "rest_bytes": 9, "batched_s": 1.0, "streamed_s": 0.8, "gain": 1.25}]
    record = bm._stream_record({"batch": 8, "kept": True, "input": "x", "nodes": 4, "frontier": ["t"],
                                "gain": 1.25, "timed": timed, "reason": "..."})
    assert record == {"kept": True, "nodes": 4, "frontier": ["t"], "gain": 1.25, "prefixes_timed": 1}
    assert bm._stream_record(None) is None
    case = {"batch": 8, "threads": 1, "repeats": 5, "dense_ms": 10.0, "sparse_ms": 4.0, "ratio": 2.5,
            "lowered": ["a", "b", "c", "d", "e"], "layers_total": 6, "batch_stream": record}
    text = bm.markdown({"models": {"m": {"cases": [case], "sizes": {"dense": 100}}}})
    assert "| 5/6, first 4 nodes image by image |" in text
    case["batch_stream"] = {**record, "kept": False}
    assert "image by image" not in bm.markdown({"models": {"m": {"cases": [case], "sizes": {"dense": 100}}}})


def test_split_keep_sends_full_layers_to_skip(bm):
    assert bm.split_keep({"*": 25, "stem": 100, "*.dw": 100}) == ({"*": 25}, ["stem", "*.dw"])


def test_keep_leaves_every_file_the_run_timed(bm, tmp_path, capsys):
    """--keep DIR: the source, dense, portable and size-lowered files and each case's lowered
    file stay in DIR after the run (a temporary folder otherwise), the lowered one with the
    sparse ops the run reported."""
    keep = tmp_path / "models"
    assert bm.main(["--models", "lenet-300-100", "--quick", "--no-layers", "--keep", str(keep),
                    "--json", str(tmp_path / "r.json")]) == 0
    names = {p.name for p in keep.glob("*.onnx")}
    assert {"lenet-300-100.onnx", "lenet-300-100.dense.onnx", "lenet-300-100.portable.onnx",
            "lenet-300-100.size.onnx", "lenet-300-100.sparse-b1-t1.onnx"} <= names
    case = json.loads((tmp_path / "r.json").read_text())["models"]["lenet-300-100"]["cases"][0]
    lowered = onnx.load(str(keep / "lenet-300-100.sparse-b1-t1.onnx"))
    assert sum(n.domain == runtime_ops.DOMAIN for n in lowered.graph.node) == len(case["lowered"])


def test_layer_timings_time_each_bert_layer_on_its_dense_input(bm, tmp_path):
    """Per-layer timings build each layer's one-node pair from the dense model's shapes: the
    forced lowering for them leaves out transposed chains, whose nodes read or write their
    tensors with the last two axes swapped (a matmul = 4 node timed on the dense model's
    (batch, seq, hidden) input had built its dense twin for the wrong width and failed)."""
    build, keep = bm.MODELS["bert-base"]
    src = tmp_path / "m.onnx"
    onnx.save(build(**REDUCED["bert-base"]), src)
    bm.prune(str(src), str(tmp_path / "d.onnx"), keep, "dense")
    dense = onnx.load(tmp_path / "d.onnx")
    cfg = REDUCED["bert-base"]
    feeds = {"x": np.random.default_rng(0).standard_normal((2, cfg["seq"], cfg["hidden"]), dtype=np.float32)}
    args = type("Args", (), dict(layer_repeats=3, min_repeats=2, layer_seconds=0.01, seed=0))()
    rows = bm.layer_timings(dense, feeds, 2, 1, {}, args)
    assert len(rows) == 6 * cfg["layers"]
    widths = {"fc2": cfg["ffn"]}
    for r in rows:
        assert r["input_shape"] == [2, cfg["seq"], widths.get(r["name"].rsplit(".", 1)[1], cfg["hidden"])], r
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
