"""Model I/O: safe loading of external data, atomic and deterministic writes, portable sparse."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from onnxprune.core import io
from onnxprune.core.errors import InvalidModelError, RuntimeFailure, UnsafePathError, UsageError
from tests.conftest import data_file, save_external
from tests.models import mlp, random_feeds, run


def _set_location(model, **fields):
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key in fields:
                    e.value = str(fields[e.key])


def _external_model(tmp_path, name="m.onnx"):
    model = mlp(sizes=(64, 48, 10))
    path = tmp_path / name
    save_external(model, str(path))
    return path


def test_load_external_roundtrip(tmp_path):
    path = _external_model(tmp_path)
    model, info = io.load(path)
    assert info.data_files == (str(tmp_path / "m.onnx.data"),)
    assert all(not io._is_external(t) for t in model.graph.initializer)
    ref = mlp(sizes=(64, 48, 10))
    feeds = random_feeds(ref)
    np.testing.assert_array_equal(run(model, feeds)[0], run(ref, feeds)[0])


def _rewrite(path, mutate):
    m = onnx.load(str(path), load_external_data=False)
    mutate(m)
    onnx.save(m, str(path))


@pytest.mark.parametrize("location,error", [
    ("/etc/passwd", UnsafePathError),
    ("../outside.data", UnsafePathError),
    ("sub/../../outside.data", UnsafePathError),
    ("missing.data", InvalidModelError),
    ("", InvalidModelError),
])
def test_external_location_refused(tmp_path, location, error):
    path = _external_model(tmp_path)
    (tmp_path.parent / "outside.data").write_bytes(b"\0" * 100000)
    _rewrite(path, lambda m: _set_location(m, location=location))
    with pytest.raises(error):
        io.load(path)


def test_external_symlinked_file_refused(tmp_path):
    path = _external_model(tmp_path)
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real.data")
    os.symlink(tmp_path / "real.data", tmp_path / "m.onnx.data")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        io.load(path)


def test_external_symlinked_folder_refused(tmp_path):
    path = _external_model(tmp_path)
    (tmp_path / "real").mkdir()
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real" / "w.data")
    os.symlink(tmp_path / "real", tmp_path / "link")
    _rewrite(path, lambda m: _set_location(m, location="link/w.data"))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        io.load(path)


@pytest.mark.parametrize("fields", [{"offset": 10**9}, {"length": 10**9}, {"offset": -5},
                                    {"offset": "abc"}])
def test_external_out_of_range(tmp_path, fields):
    path = _external_model(tmp_path)
    _rewrite(path, lambda m: _set_location(m, **fields))
    with pytest.raises(InvalidModelError):
        io.load(path)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"\x08\x07\x12\x04abcd" + os.urandom(5), "not an ONNX model"),
    (bytes(range(256)) * 10, "not an ONNX model"),
])
def test_garbage_refused(tmp_path, content, match):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(InvalidModelError, match=match):
        io.load(p)


def test_truncated_refused(tmp_path, mlp_path):
    data = open(mlp_path, "rb").read()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError):
        io.load(p)


def test_non_model_protobuf_refused(tmp_path):
    t = numpy_helper.from_array(np.ones(3, np.float32), "t")
    p = tmp_path / "tensor.onnx"
    p.write_bytes(t.SerializeToString())
    with pytest.raises(InvalidModelError):
        io.load(p)


def test_newer_ir_and_opset_refused(tmp_path):
    m = mlp()
    m.ir_version = onnx.IR_VERSION + 1
    onnx.save(m, tmp_path / "ir.onnx")
    with pytest.raises(InvalidModelError, match="ir_version"):
        io.load(tmp_path / "ir.onnx")
    m = mlp()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    onnx.save(m, tmp_path / "op.onnx")
    with pytest.raises(InvalidModelError, match="opset"):
        io.load(tmp_path / "op.onnx")


def test_save_refuses_input_and_its_data(tmp_path):
    path = _external_model(tmp_path)
    model, info = io.load(path)
    with pytest.raises(UsageError, match="overwrite the input"):
        io.save(model, path, source=info)
    # -o chosen so that its data file would be the input's data file.
    os.rename(tmp_path / "m.onnx.data", tmp_path / "x.onnx.data")
    _rewrite(path, lambda m: _set_location(m, location="x.onnx.data"))
    model, info = io.load(path)
    with pytest.raises(UsageError, match="overwrite the input"):
        io.save(model, tmp_path / "x.onnx", source=info)
    io.save(model, path, source=info, in_place=True, external_data=True)
    assert io.load(path)[0].graph.node


def test_save_is_deterministic_and_atomic(tmp_path, monkeypatch):
    m = mlp(sizes=(64, 48, 10))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    io.save(m, a, external_data=True)
    io.save(m, b, external_data=True)
    assert open(a, "rb").read().replace(b"b.onnx", b"a.onnx") == open(b, "rb").read().replace(
        b"b.onnx", b"a.onnx")
    assert open(data_file(a), "rb").read() == open(data_file(b), "rb").read()
    # Named after the content: same bytes, same hash part of the name.
    assert os.path.basename(data_file(a)).split(".")[2] == os.path.basename(data_file(b)).split(".")[2]
    # A failure while renaming leaves the existing output intact and no temp files behind.
    before = open(a, "rb").read()

    def boom(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(RuntimeFailure, match="No space"):
        io.save(mlp(sizes=(8, 4)), a)
    monkeypatch.undo()
    assert open(a, "rb").read() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".onnxprune-")]
    # The in-memory model is left as it was (no external references).
    assert all(t.HasField("raw_data") for t in m.graph.initializer)


def test_large_models_go_external_automatically(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "EMBED_LIMIT_BYTES", 1000)
    written = io.save(mlp(sizes=(64, 48, 10)), tmp_path / "big.onnx")
    assert written == [str(tmp_path / "big.onnx"), data_file(tmp_path / "big.onnx")]
    model, info = io.load(tmp_path / "big.onnx")
    assert info.data_files


def test_portable_sparse_is_smaller_valid_and_equal(tmp_path):
    m = mlp(sizes=(64, 48, 10))
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 2:
            a = np.where(np.abs(a) > 1.5 * a.std(), a, 0).astype(a.dtype)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    dense = onnx.ModelProto()
    dense.CopyFrom(m)
    converted = io.to_portable_sparse(m)
    assert converted == ["fc1.weight", "fc2.weight"]
    for sp in m.graph.sparse_initializer:
        assert sp.indices.data_type == TensorProto.INT64
        idx = numpy_helper.to_array(sp.indices)
        assert np.all(np.diff(idx) > 0)
    onnx.checker.check_model(m)
    io.save(dense, tmp_path / "d.onnx")
    io.save(m, tmp_path / "s.onnx")
    assert os.path.getsize(tmp_path / "s.onnx") < 0.5 * os.path.getsize(tmp_path / "d.onnx")
    feeds = random_feeds(dense)
    np.testing.assert_array_equal(run(io.load(tmp_path / "s.onnx")[0], feeds)[0], run(dense, feeds)[0])


def test_portable_keeps_dense_when_not_smaller():
    m = mlp(sizes=(16, 8))
    assert io.to_portable_sparse(m) == []
    assert len(m.graph.sparse_initializer) == 0


def test_overwriting_an_output_switches_data_files_atomically(tmp_path):
    """The new model points at a new data file; the old pair stays valid until the model's
    rename, and the old data file is removed after it."""
    out = tmp_path / "o.onnx"
    io.save(mlp(sizes=(64, 48, 10), seed=0), out, external_data=True)
    first = data_file(out)
    io.save(mlp(sizes=(64, 48, 10), seed=1), out, external_data=True)
    second = data_file(out)
    assert first != second and not os.path.exists(first)
    # A file that merely sits beside the model and is named like ours is not touched unless the
    # previous model referenced it.
    stray = str(out) + ".0123456789abcdef.data"
    open(stray, "wb").write(b"x")
    io.save(mlp(sizes=(64, 48, 10), seed=2), out, external_data=True)
    assert os.path.exists(stray)
