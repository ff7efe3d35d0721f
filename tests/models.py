"""Tiny models built in code for the tests (no files, no network)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def mlp(sizes=(16, 12, 8, 4), seed=0, opset=17, dropout=None, batch="N", gemm=True):
    """x -> [Gemm/MatMul+Add -> Relu (-> Dropout)]* -> Gemm; float32, random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    n_layers = len(sizes) - 1
    for i in range(n_layers):
        w = rng.normal(0, 1 / np.sqrt(sizes[i]), (sizes[i], sizes[i + 1])).astype(np.float32)
        b = rng.normal(0, 0.1, (sizes[i + 1],)).astype(np.float32)
        y = f"fc{i + 1}_out"
        if gemm:
            inits += [_init(f"fc{i + 1}.weight", w.T.copy()), _init(f"fc{i + 1}.bias", b)]
            nodes.append(helper.make_node("Gemm", [x, f"fc{i + 1}.weight", f"fc{i + 1}.bias"], [y],
                                          name=f"fc{i + 1}", transB=1))
        else:
            inits += [_init(f"fc{i + 1}.weight", w), _init(f"fc{i + 1}.bias", b)]
            nodes.append(helper.make_node("MatMul", [x, f"fc{i + 1}.weight"], [y + "_mm"],
                                          name=f"fc{i + 1}"))
            nodes.append(helper.make_node("Add", [y + "_mm", f"fc{i + 1}.bias"], [y],
                                          name=f"fc{i + 1}_add"))
        x = y
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i + 1}"], name=f"relu{i + 1}"))
            x = f"relu{i + 1}"
            if dropout is not None:
                inits.append(_init(f"drop{i + 1}.ratio", np.array(dropout, np.float32)))
                nodes.append(helper.make_node("Dropout", [x, f"drop{i + 1}.ratio"],
                                              [f"drop{i + 1}"], name=f"drop{i + 1}"))
                x = f"drop{i + 1}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def cnn(seed=0, channels=(3, 8, 16), classes=5, bn=True, hw=12, opset=17):
    """Conv -> (BN) -> Relu -> Conv -> (BN) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(len(channels) - 1):
        cin, cout = channels[i], channels[i + 1]
        w = rng.normal(0, 1 / np.sqrt(cin * 9), (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, (cout,)).astype(np.float32)
        inits += [_init(f"conv{i + 1}.weight", w), _init(f"conv{i + 1}.bias", b)]
        nodes.append(helper.make_node("Conv", [x, f"conv{i + 1}.weight", f"conv{i + 1}.bias"],
                                      [f"conv{i + 1}_out"], name=f"conv{i + 1}",
                                      pads=[1, 1, 1, 1]))
        x = f"conv{i + 1}_out"
        if bn:
            for nm, arr in (("scale", rng.uniform(0.5, 1.5, cout)), ("bias", rng.normal(0, .1, cout)),
                            ("mean", rng.normal(0, .1, cout)), ("var", rng.uniform(0.5, 1.5, cout))):
                inits.append(_init(f"bn{i + 1}.{nm}", arr.astype(np.float32)))
            nodes.append(helper.make_node(
                "BatchNormalization",
                [x] + [f"bn{i + 1}.{n}" for n in ("scale", "bias", "mean", "var")],
                [f"bn{i + 1}_out"], name=f"bn{i + 1}"))
            x = f"bn{i + 1}_out"
        nodes.append(helper.make_node("Relu", [x], [f"relu{i + 1}"], name=f"relu{i + 1}"))
        x = f"relu{i + 1}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    w = rng.normal(0, 0.3, (classes, channels[-1])).astype(np.float32)
    inits += [_init("fc.weight", w), _init("fc.bias", np.zeros(classes, np.float32))]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc",
                                  transB=1))
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels[0], hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, batch=3, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.normal(size=dims).astype(np.float32)
    return feeds
