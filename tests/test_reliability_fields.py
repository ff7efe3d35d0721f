"""Fields the tool does not touch come back as they were: the value infos PyTorch's exporter
writes for its parameters (with their metadata) survive pruning, with the written shape."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxprune.cli import main
from tests.models import mlp


def _with_weight_value_infos(model):
    for t in model.graph.initializer:
        vi = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        if "metadata_props" in onnx.ValueInfoProto.DESCRIPTOR.fields_by_name:
            entry = vi.metadata_props.add()
            entry.key, entry.value = "pkg.torch.parameter", t.name
        model.graph.value_info.append(vi)
    return model


@pytest.mark.parametrize("emit", ["dense", "portable"])
def test_weight_value_infos_come_back_with_the_written_shapes(tmp_path, capsys, emit):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = _with_weight_value_infos(mlp(sizes=(16, 12, 8, 4)))
    onnx.save(model, src)
    assert main(["prune", str(src), "-o", str(out), "-q", "--emit", emit,
                 "--quality", "1.0"]) == 0, capsys.readouterr().err
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=emit == "dense")
    infos = {vi.name: vi for vi in written.graph.value_info}
    shapes = {t.name: list(t.dims) for t in written.graph.initializer}
    shapes.update((sp.values.name, list(sp.dims)) for sp in written.graph.sparse_initializer)
    names = [t.name for t in model.graph.initializer]
    assert set(names) <= set(infos)
    for name in names:
        dims = [d.dim_value for d in infos[name].type.tensor_type.shape.dim]
        assert dims == shapes[name]
        if "metadata_props" in onnx.ValueInfoProto.DESCRIPTOR.fields_by_name:
            assert [(p.key, p.value) for p in infos[name].metadata_props] == \
                [("pkg.torch.parameter", name)]
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    ort.InferenceSession(written.SerializeToString(),
                         providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_value_info_follows_a_shrunk_weight(tmp_path, capsys):
    """remove-dead-neurons changes a weight's shape: its value info says the new shape."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    model = mlp(sizes=(16, 12, 8, 4))
    w = next(t for t in model.graph.initializer if list(t.dims) == [12, 16] or
             list(t.dims) == [16, 12])
    arr = onnx.numpy_helper.to_array(w).copy()
    if arr.shape == (12, 16):
        arr[3, :] = 0.0  # Gemm transB: row 3 feeds hidden unit 3
    else:
        arr[:, 3] = 0.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(_with_weight_value_infos(model), src)
    assert main(["prune", str(src), "-o", str(out), "-q", "--quality", "0",
                 "--emit", "dense"]) == 0, capsys.readouterr().err
    written = onnx.load(out)
    shapes = {t.name: list(t.dims) for t in written.graph.initializer}
    assert shapes[w.name] != list(w.dims)  # the dead unit was removed
    infos = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
             for vi in written.graph.value_info}
    assert infos[w.name] == shapes[w.name]
    onnx.checker.check_model(written, full_check=True)
