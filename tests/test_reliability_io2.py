"""The model loader and writer keep each tensor's own bytes, refuse what no runtime loads, and
touch nothing but their own files.

* a name shared by two tensors (a top-level initializer and an If-branch initializer or a
  ``Constant`` value) never hands one tensor the other's bytes, whichever of them is external;
* external data is read only through the validated loader, never relative to the working
  folder;
* graphs with a cycle, a name written twice or a duplicated initializer are refused (exit 4);
* every ONNX element type is either carried through or refused with exit 4;
* a data file another model in the folder uses is never deleted;
* ``training_info`` and the other model-level fields come back as they were, and their
  external tensors are validated like all others;
* with ``--emit portable`` a pruned weight held by a ``Constant`` node is written as its
  ``sparse_value`` where that saves space;
* no empty data file is written.
"""

import glob
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core import io
from onnxprune.cli import main
from onnxprune.core.errors import InvalidModelError
from tests.conftest import save_external
from tests.models import mlp, random_feeds, run


def _cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _make_external(t: TensorProto, folder, location: str, data: bytes | None = None) -> None:
    """Move ``t``'s bytes (or ``data``) into ``folder/location`` and point ``t`` at them."""
    payload = t.raw_data if data is None else data
    with open(os.path.join(folder, location), "wb") as f:
        f.write(payload)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(payload)))):
        e = t.external_data.add()
        e.key, e.value = k, v


def _attr(node, name):
    return next(a for a in node.attribute if a.name == name)


def _out_initializer(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


KEEP = ["--quality", "0", "--no-remove-dead-neurons", "--emit", "dense", "-q"]


# --------------------------------------------------------------------------- shared names


def _if_model(rng):
    """y = x·W (top-level W); z = If(c, x·W' with the branch's own initializer also named W)."""
    w = rng.normal(size=(4, 4)).astype(np.float32)
    w_branch = (rng.normal(size=(4, 4)) * 1000).astype(np.float32)
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t_out"])], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4])],
                             [numpy_helper.from_array(w_branch, "W")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 4])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
             helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other)]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                     helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w, w_branch


def _branch_w(model):
    return _attr(model.graph.node[1], "then_branch").g.initializer[0]


def _constant_model(rng):
    """y = x·W + x·C where C comes from a Constant node whose value tensor is also named W."""
    w = rng.normal(size=(4, 4)).astype(np.float32)
    c = (rng.normal(size=(4, 4)) * 1000).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(c, "W")),
             helper.make_node("MatMul", ["x", "W"], ["a"], name="mm_w"),
             helper.make_node("MatMul", ["x", "C"], ["b"], name="mm_c"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w, c


@pytest.mark.parametrize("external", ["branch", "top"])
def test_if_branch_initializer_sharing_a_name_keeps_its_weights(tmp_path, capsys, external):
    m, w, w_branch = _if_model(np.random.default_rng(3))
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    _make_external(_branch_w(m) if external == "branch" else m.graph.initializer[0],
                   src_dir, "w.bin")
    src = src_dir / "m.onnx"
    onnx.save(m, src)
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), *KEEP], capsys)
    assert code == 0, err
    got = onnx.load(str(out))
    np.testing.assert_array_equal(_out_initializer(got, "W"), w)
    np.testing.assert_array_equal(numpy_helper.to_array(_branch_w(got)), w_branch)
    x = np.ones((1, 4), np.float32)
    for cond in (True, False):
        y, z = run(got, {"x": x, "c": np.array(cond)})
        np.testing.assert_allclose(y, x @ w, rtol=1e-5)
        np.testing.assert_allclose(z, x @ w_branch if cond else x, rtol=1e-5)


@pytest.mark.parametrize("external", ["constant", "top"])
def test_constant_value_sharing_a_name_is_read_from_the_models_folder(tmp_path, capsys,
                                                                      monkeypatch, external):
    """The external tensor is read beside the model, not beside the working folder (which holds
    a decoy file of the same name), and each tensor keeps its own bytes."""
    m, w, c = _constant_model(np.random.default_rng(4))
    src_dir, cwd = tmp_path / "in", tmp_path / "cwd"
    src_dir.mkdir()
    cwd.mkdir()
    target = _attr(m.graph.node[0], "value").t if external == "constant" else m.graph.initializer[0]
    _make_external(target, src_dir, "w.bin")
    (cwd / "w.bin").write_bytes(np.full((4, 4), 7.0, np.float32).tobytes())
    src = src_dir / "m.onnx"
    onnx.save(m, src)
    monkeypatch.chdir(cwd)
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), *KEEP], capsys)
    assert code == 0, err
    got = onnx.load(str(out))
    np.testing.assert_array_equal(_out_initializer(got, "W"), w)
    np.testing.assert_array_equal(numpy_helper.to_array(_attr(got.graph.node[0], "value").t), c)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(run(got, {"x": x})[0], x @ w + x @ c, rtol=1e-5)


def test_load_leaves_only_tracked_initializers_external(tmp_path):
    """After a lazy load, every tensor still marked external is a top-level initializer with a
    validated reference; everything else holds its bytes."""
    m, _, c = _constant_model(np.random.default_rng(5))
    _make_external(_attr(m.graph.node[0], "value").t, tmp_path, "c.bin")
    _make_external(m.graph.initializer[0], tmp_path, "w.bin")
    onnx.save(m, tmp_path / "m.onnx")
    model, info = io.load(tmp_path / "m.onnx", lazy=True)
    const = _attr(model.graph.node[0], "value").t
    assert not io._is_external(const)
    np.testing.assert_array_equal(numpy_helper.to_array(const), c)
    top = model.graph.initializer[0]
    assert io._is_external(top) and info.ref_of(top) is not None
    assert info.ref_of(const) is None


# --------------------------------------------------------------------------- invalid graphs


def _graph(nodes, inits=(), inputs=("x",), outputs=("y",)):
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in outputs],
                          list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _cycle():
    return _graph([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                   helper.make_node("Relu", ["a"], ["b"], name="n2"),
                   helper.make_node("Identity", ["a"], ["y"], name="n3")])


def _two_writers():
    return _graph([helper.make_node("Relu", ["x"], ["y"], name="n1"),
                   helper.make_node("Neg", ["x"], ["y"], name="n2")])


def _duplicate_initializer():
    k = numpy_helper.from_array(np.ones(2, np.float32), "k")
    k2 = numpy_helper.from_array(np.zeros(2, np.float32), "k")
    return _graph([helper.make_node("Add", ["x", "k"], ["y"])], inits=[k, k2])


def _output_overwrites_initializer():
    k = numpy_helper.from_array(np.ones(2, np.float32), "k")
    return _graph([helper.make_node("Relu", ["x"], ["k"]), helper.make_node("Add", ["x", "k"], ["y"])],
                  inits=[k])


def _subgraph_two_writers():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]),
                                helper.make_node("Neg", ["x"], ["t"])], "b", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    return _graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                  inputs=("x", "c"))


def _cycle_through_subgraph():
    """If reads 'a' from the outer scope inside its branch; 'a' is computed from the If's output."""
    branch = helper.make_graph([helper.make_node("Relu", ["a"], ["t"])], "b", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    return _graph([helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch),
                   helper.make_node("Neg", ["z"], ["a"]),
                   helper.make_node("Identity", ["a"], ["y"])], inputs=("x", "c"))


INVALID = {
    "cycle": (_cycle, "cycle"),
    "two-writers": (_two_writers, "written by"),
    "duplicate-initializer": (_duplicate_initializer, "initializer"),
    "output-overwrites-initializer": (_output_overwrites_initializer, "written by"),
    "subgraph-two-writers": (_subgraph_two_writers, "written by"),
    "cycle-through-subgraph": (_cycle_through_subgraph, "cycle"),
}


@pytest.mark.parametrize("command", ["prune", "inspect"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_graph_refused(tmp_path, capsys, case, command):
    build, fragment = INVALID[case]
    src = tmp_path / "m.onnx"
    onnx.save(build(), src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["prune", str(src), "-o", str(out_dir / "o.onnx")] if command == "prune" \
        else ["inspect", str(src)]
    code, stdout, err = _cli(argv, capsys)
    assert code == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), err
    assert fragment in lines[0]
    assert os.listdir(out_dir) == []


def test_valid_scoping_is_accepted():
    """Not refused: nodes out of order but acyclic, a subgraph reading outer-scope names, a
    branch initializer and branch outputs reusing names of the outer graph, an initializer that
    is also a graph input (IR < 4)."""
    shadow = helper.make_graph([helper.make_node("Add", ["x", "k"], ["a"])], "b", [],
                               [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                               [numpy_helper.from_array(np.full(2, 5, np.float32), "k")])
    k = numpy_helper.from_array(np.ones(2, np.float32), "k")
    m = _graph([helper.make_node("Identity", ["a"], ["y"]),
                helper.make_node("If", ["c"], ["a"], then_branch=shadow, else_branch=shadow),
                helper.make_node("Add", ["x", "k"], ["unused"])],
               inits=[k], inputs=("x", "c"))
    io.check_graph(m, "m.onnx")
    m.ir_version = 3
    m.graph.input.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, [2]))
    io.check_graph(m, "m.onnx")


def test_graph_check_is_linear_on_long_chains():
    n = 60_000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    m = _graph(nodes, inputs=("t0",), outputs=(f"t{n}",))
    io.check_graph(m, "m.onnx")
    m.graph.node[0].input[0] = f"t{n}"
    with pytest.raises(InvalidModelError, match="cycle"):
        io.check_graph(m, "m.onnx")


# --------------------------------------------------------------------------- element types


# ONNX stores these types packed: ceil(n·bits/8) bytes of raw data.
PACKED_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2, "FLOAT6E2M3": 6,
               "FLOAT6E3M2": 6}


def _raw_size(data_type, count):
    bits = PACKED_BITS.get(TensorProto.DataType.Name(data_type))
    if bits:
        return (count * bits + 7) // 8
    if data_type == TensorProto.STRING:
        return 4
    return count * helper.tensor_dtype_to_np_dtype(data_type).itemsize


def _typed_external(tmp_path, data_type, count=6, length=None, raw=None):
    """mlp + an initializer of ``data_type`` stored external (``count`` elements), passed
    through an Identity to a second graph output."""
    m = mlp(sizes=(16, 8, 4))
    t = TensorProto()
    t.name, t.data_type = "extra", data_type
    t.dims.append(count)
    m.graph.node.append(helper.make_node("Identity", ["extra"], ["extra_out"]))
    m.graph.output.append(helper.make_tensor_value_info("extra_out", data_type, [count]))
    payload = raw if raw is not None else bytes(range(1, 1 + _raw_size(data_type, count)))
    _make_external(t, tmp_path, "extra.bin", payload)
    if length is not None:
        next(e for e in t.external_data if e.key == "length").value = str(length)
    m.graph.initializer.append(t)  # a copy: ``t`` is complete by now
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    return path


def _all_types():
    return sorted(v for k, v in TensorProto.DataType.items() if k != "UNDEFINED")


@pytest.mark.parametrize("data_type", _all_types(),
                         ids=lambda v: TensorProto.DataType.Name(v))
def test_every_element_type_is_carried_or_refused(tmp_path, capsys, data_type):
    """An external initializer of every ONNX type: the bytes come back unchanged (exit 0) or the
    model is refused with exit 4 (STRING cannot be stored as raw bytes); never exit 1."""
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = _typed_external(src_dir, data_type)
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), "-q"], capsys)
    if data_type == TensorProto.STRING:
        assert code == 4 and "string" in err.lower(), err
        return
    assert code == 0, err
    t = next(t for t in onnx.load(str(out)).graph.initializer if t.name == "extra")
    assert t.data_type == data_type and list(t.dims) == [6]
    expected = (src_dir / "extra.bin").read_bytes()
    assert t.raw_data == expected
    onnx.checker.check_model(str(out))


@pytest.mark.parametrize("type_name", ["INT4", "UINT4", "FLOAT4E2M1", "FLOAT8E4M3FN",
                                       "FLOAT8E5M2", "BFLOAT16", "COMPLEX64"])
def test_external_length_must_match_the_type(tmp_path, capsys, type_name):
    data_type = getattr(TensorProto, type_name)
    need = _raw_size(data_type, 6)
    src = _typed_external(tmp_path, data_type, raw=bytes(need + 8), length=need - 1)
    code, _, err = _cli(["inspect", str(src), "-q"], capsys)
    assert code == 4 and f"needs {need}" in err, err


def test_int4_weights_survive_prune_with_an_odd_count(tmp_path, capsys):
    """Packed 4-bit: 5 elements take 3 bytes; the lazy loader must not try to view them as 5."""
    src = _typed_external(tmp_path, TensorProto.INT4, count=5, raw=bytes([0x21, 0x43, 0x05]))
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    t = next(t for t in onnx.load(str(out)).graph.initializer if t.name == "extra")
    assert t.raw_data == bytes([0x21, 0x43, 0x05])
    np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.int8), [1, 2, 3, 4, 5])


# --------------------------------------------------------------------------- other models' files


def test_a_data_file_another_model_uses_is_kept(tmp_path):
    """b.onnx (a copy of an earlier a.onnx) reads a.onnx's data file: rewriting a.onnx must not
    delete it.  Without such a reader the old file is removed (tests/test_io.py)."""
    a = tmp_path / "a.onnx"
    io.save(mlp(sizes=(64, 48, 10), seed=0), a, external_data=True)
    first = glob.glob(str(a) + ".*.data")[0]
    (tmp_path / "b.onnx").write_bytes(a.read_bytes())
    io.save(mlp(sizes=(64, 48, 10), seed=1), a, external_data=True)
    assert os.path.exists(first)
    b, _ = io.load(tmp_path / "b.onnx")
    np.testing.assert_array_equal(_out_initializer(b, "fc1.weight"),
                                  _out_initializer(mlp(sizes=(64, 48, 10), seed=0), "fc1.weight"))
    # Without a reader beside it, the previous output's file goes with it.
    second = (set(glob.glob(str(a) + ".*.data")) - {first}).pop()
    io.save(mlp(sizes=(64, 48, 10), seed=2), a, external_data=True)
    assert not os.path.exists(second) and os.path.exists(first)


# --------------------------------------------------------------------------- model-level fields


def _with_training_info(tmp_path, external_location=None):
    m = mlp(sizes=(16, 8, 4))
    m.doc_string, m.producer_name, m.producer_version, m.domain = "doc", "maker", "1.2", "ex.com"
    m.model_version = 7
    onnx.helper.set_model_props(m, {"k": "v"})
    step = numpy_helper.from_array(np.arange(300, dtype=np.float32), "step_init")
    init_graph = helper.make_graph([helper.make_node("Identity", ["step_init"], ["step0"])],
                                   "init", [], [helper.make_tensor_value_info(
                                       "step0", TensorProto.FLOAT, [300])], [step])
    algo = helper.make_graph([helper.make_node("Identity", ["x"], ["x_copy"])], "algo", [],
                             [helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, None)])
    ti = m.training_info.add()
    ti.initialization.CopyFrom(init_graph)
    ti.algorithm.CopyFrom(algo)
    b = ti.update_binding.add()
    b.key, b.value = "fc1.bias", "fc1.bias"
    if external_location is not None:
        t = ti.initialization.initializer[0]
        _make_external(t, tmp_path, "step.bin")
        next(e for e in t.external_data if e.key == "location").value = external_location
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    return path, m


def test_training_info_and_model_fields_survive(tmp_path, capsys):
    src, m = _with_training_info(tmp_path)
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), "--emit", "dense", "-q"], capsys)
    assert code == 0, err
    got = onnx.load(str(out))
    assert list(got.training_info) == list(m.training_info)
    for field in ("doc_string", "producer_name", "producer_version", "domain", "model_version"):
        assert getattr(got, field) == getattr(m, field)
    assert {p.key: p.value for p in got.metadata_props}["k"] == "v"


def test_training_info_external_tensors_are_validated(tmp_path, capsys):
    src, _ = _with_training_info(tmp_path, external_location="../step.bin")
    code, _, err = _cli(["inspect", str(src), "-q"], capsys)
    assert code == 4 and "escapes" in err, err


def test_training_info_external_tensors_are_read(tmp_path, capsys):
    src, m = _with_training_info(tmp_path, external_location="step.bin")
    model, _ = io.load(src, lazy=True)
    t = model.training_info[0].initialization.initializer[0]
    assert not io._is_external(t)
    np.testing.assert_array_equal(numpy_helper.to_array(t), np.arange(300, dtype=np.float32))


# --------------------------------------------------------------------------- Constant weights


def _constant_weight_mlp(seed=0):
    """mlp whose first weight is held by a Constant node instead of an initializer."""
    m = mlp(sizes=(64, 48, 10), seed=seed)
    w = next(t for t in m.graph.initializer if t.name == "fc1.weight")
    m.graph.initializer.remove(w)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["fc1.weight"], value=w,
                                            name="w_const"))
    return m


def test_constant_node_weight_written_sparse(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_constant_weight_mlp(), src)
    dense, portable = tmp_path / "d.onnx", tmp_path / "p.onnx"
    args = ["--quality", "1.5", "--no-remove-dead-neurons", "-q"]
    assert _cli(["prune", str(src), "-o", str(dense), "--emit", "dense", *args], capsys)[0] == 0
    code, stdout, err = _cli(["prune", str(src), "-o", str(portable), "--emit", "portable",
                              "--json", "-", *args], capsys)
    assert code == 0, err
    got = onnx.load(str(portable))
    const = next(n for n in got.graph.node if n.op_type == "Constant")
    assert [a.name for a in const.attribute] == ["sparse_value"]
    sp = const.attribute[0].sparse_tensor
    assert sp.indices.data_type == TensorProto.INT64
    dense_w = numpy_helper.to_array(_attr(next(n for n in onnx.load(str(dense)).graph.node
                                               if n.op_type == "Constant"), "value").t)
    np.testing.assert_array_equal(io.sparse_to_dense(sp), dense_w)
    assert os.path.getsize(portable) < 0.9 * os.path.getsize(dense)
    assert "fc1.weight" in json.loads(stdout)["sparse_initializers"]
    onnx.checker.check_model(str(portable))
    feeds = random_feeds(onnx.load(str(src)))
    np.testing.assert_array_equal(run(got, feeds)[0], run(onnx.load(str(dense)), feeds)[0])


def test_constant_sparse_value_stays_embedded_with_external_data(tmp_path, capsys):
    """onnx.checker cannot read sparse tensors' external data: they stay in the .onnx."""
    src = tmp_path / "m.onnx"
    save_external(_constant_weight_mlp(), str(src))
    out = tmp_path / "o.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), "--quality", "1.5",
                         "--no-remove-dead-neurons", "-q"], capsys)
    assert code == 0, err
    got = onnx.load(str(out), load_external_data=False)
    const = next(n for n in got.graph.node if n.op_type == "Constant")
    sp = const.attribute[0].sparse_tensor
    assert not io._is_external(sp.values) and not io._is_external(sp.indices)
    onnx.checker.check_model(str(out))


# --------------------------------------------------------------------------- empty data file


def test_no_empty_data_file(tmp_path, capsys):
    """An input with external data whose output needs none: no 0-byte data file, none listed."""
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "m.onnx"
    save_external(mlp(sizes=(4, 3, 2)), str(src))  # every tensor under EXTERNAL_MIN_BYTES
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.onnx"
    code, stdout, err = _cli(["prune", str(src), "-o", str(out), "-q", "--json", "-"], capsys)
    assert code == 0, err
    assert os.listdir(out_dir) == ["o.onnx"]
    assert [o["path"] for o in json.loads(stdout)["outputs"]] == [str(out)]


def test_constant_sparse_value_is_a_layer_again(tmp_path, capsys):
    """A portable output's sparse Constant weight is found, counted and pruned again, and
    written back as one value attribute (dense with --emit dense)."""
    src = tmp_path / "m.onnx"
    onnx.save(_constant_weight_mlp(), src)
    first, again, dense = tmp_path / "p.onnx", tmp_path / "p2.onnx", tmp_path / "d.onnx"
    args = ["--no-remove-dead-neurons", "-q"]
    assert _cli(["prune", str(src), "-o", str(first), "--quality", "1.5", *args], capsys)[0] == 0
    code, stdout, err = _cli(["prune", str(first), "-o", str(again), "--quality", "2.5",
                              "--json", "-", *args], capsys)
    assert code == 0, err
    rows = {r["weight"]: r for r in json.loads(stdout)["layers"]}
    assert rows["fc1.weight"]["params"] == 64 * 48
    w1 = io.sparse_to_dense(next(n for n in onnx.load(str(first)).graph.node
                                 if n.op_type == "Constant").attribute[0].sparse_tensor)
    const = next(n for n in onnx.load(str(again)).graph.node if n.op_type == "Constant")
    assert [a.name for a in const.attribute] == ["sparse_value"]
    w2 = io.sparse_to_dense(const.attribute[0].sparse_tensor)
    assert np.count_nonzero(w2) < np.count_nonzero(w1)
    assert _cli(["prune", str(first), "-o", str(dense), "--quality", "0", "--emit", "dense",
                 *args], capsys)[0] == 0
    const = next(n for n in onnx.load(str(dense)).graph.node if n.op_type == "Constant")
    assert [a.name for a in const.attribute] == ["value"]
    np.testing.assert_array_equal(numpy_helper.to_array(const.attribute[0].t), w1)
    onnx.checker.check_model(str(dense))
