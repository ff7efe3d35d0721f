"""Data loading and validation: every bad case raises the documented error before training."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxprune.runtime.datasets import (
    DataMismatchError, Dataset, InvalidDataError, check_dataset, input_spec, load_npz, n_classes,
)
from onnxprune.core.errors import InvalidModelError, UsageError


def model(elem=TensorProto.FLOAT, shape=("n", 1, 4, 4), classes=3):
    node = helper.make_node("Flatten", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", classes])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def good(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


def check(x, y, m=None):
    m = m or model()
    return check_dataset(Dataset(x, y), input_spec(m), n_classes(m))


def test_load_npz_with_custom_keys(tmp_path):
    x, y = good()
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    ds = load_npz(tmp_path / "d.npz", x_key="x_train", y_key="y_train")
    assert np.array_equal(ds.x, x) and np.array_equal(ds.y, y) and len(ds) == 6
    with pytest.raises(DataMismatchError, match="'x'.*x_train") as err:
        load_npz(tmp_path / "d.npz")
    assert err.value.exit_code == 2


@pytest.mark.parametrize("kind", ["missing", "directory", "garbage", "npy", "pickled"])
def test_unusable_files_exit_4(tmp_path, kind):
    path = tmp_path / "d.npz"
    if kind == "directory":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"not a zip archive at all")
    elif kind == "npy":
        np.save(tmp_path / "d.npy", np.zeros(3))
        path = tmp_path / "d.npy"
    elif kind == "pickled":
        np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(InvalidDataError) as err:
        load_npz(path)
    assert isinstance(err.value, InvalidModelError) and err.value.exit_code == 4
    # never numpy's advice to load a non-archive "unsafely" with allow_pickle
    assert "unsafely" not in str(err.value)
    if kind == "garbage":
        assert "is not an .npz archive" in str(err.value)


def test_uint8_images_cast_to_float_without_rescaling():
    x = np.arange(6 * 16, dtype=np.uint8).reshape(6, 1, 4, 4)
    ds = check(x, np.zeros(6, np.int64))
    assert ds.x.dtype == np.float32 and ds.x.max() == 95.0 and ds.y.dtype == np.int64


def test_float64_cast_to_model_float16():
    x, y = good()
    ds = check(x.astype(np.float64), y, model(TensorProto.FLOAT16))
    assert ds.x.dtype == np.float16


@pytest.mark.parametrize("case, match", [
    ("rank", "rank 4"),
    ("dims", "axis 3"),
    ("len", "6 samples but .* 5 labels"),
    ("label_high", "label 3 but the model has 3 classes"),
    ("label_neg", "negative"),
    ("label_float", "integer class labels"),
    ("label_onehot", "one-hot"),
    ("nan", "NaN"),
    ("inf", "NaN or Inf"),
    ("int64_x", "int64"),
    ("strings", "numeric"),
    ("empty", "no samples"),
    ("int_model", "expects int64"),
])
def test_bad_contents_exit_2(case, match):
    x, y = good()
    m = None
    if case == "rank":
        x = x[:, 0]
    elif case == "dims":
        x = np.zeros((6, 1, 4, 5), np.float32)
    elif case == "len":
        y = y[:5]
    elif case == "label_high":
        y = y.copy()
        y[0] = 3
    elif case == "label_neg":
        y = y - 1
    elif case == "label_float":
        y = y.astype(np.float32)
    elif case == "label_onehot":
        y = np.eye(3, dtype=np.float32)[y]
    elif case == "nan":
        x[1, 0, 0, 0] = np.nan
    elif case == "inf":
        x[1, 0, 0, 0] = -np.inf
    elif case == "int64_x":
        x = x.astype(np.int64)
    elif case == "strings":
        x = np.array(["a"] * 6)
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "int_model":
        x = x.astype(np.int32)
        m = model(TensorProto.INT64)
    with pytest.raises(DataMismatchError, match=match) as err:
        check(x, y, m)
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


def test_symbolic_dims_match_anything_and_unknown_classes_skip_upper_check():
    m = model(shape=("n", None, "h", 4), classes="c")
    x = np.zeros((2, 3, 7, 4), np.float32)
    ds = check_dataset(Dataset(x, np.array([0, 99])), input_spec(m), n_classes(m))
    assert ds.x.shape == x.shape and n_classes(m) is None


def test_multi_input_model_is_refused():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(DataMismatchError, match="2 data inputs"):
        input_spec(helper.make_model(graph))


def test_importing_data_and_evaluate_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, onnxprune, onnxprune.runtime.datasets, onnxprune.runtime.evaluate, " \
           "onnxprune.training.torch_bridge; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
