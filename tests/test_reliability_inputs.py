"""Hostile and broken inputs: each gives its exit code, a one-line message and no output file,
from every command that reads a model (prune, inspect, check).

tests/test_io.py covers the io-level refusals and tests/test_cli.py the prune exit code of the
first few file-level cases; this table runs all of them through all three commands, and adds
what those files do not: huge declared shapes, payloads shorter than their shape, malformed
sparse tensors wherever they sit (initializer, Constant attribute, subgraph), nesting deeper
than protobuf allows, and the inputs that must *not* be refused (duplicate or empty node names,
custom-op domains, nested If up to protobuf's depth).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core import io
from onnxprune.cli import main
from tests.conftest import save_external
from tests.models import mlp, random_feeds, run

# --------------------------------------------------------------------------- builders


def _save(model, path):
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def _external(tmp_path, mutate=None, name="m.onnx"):
    path = tmp_path / name
    save_external(mlp(sizes=(64, 48, 10)), str(path))
    if mutate is not None:
        m = onnx.load(str(path), load_external_data=False)
        for t in m.graph.initializer:
            info = {e.key: e for e in t.external_data}
            mutate(t, info)
        onnx.save(m, str(path))
    return path


def _set(key, value):
    def mutate(t, info):
        if key in info:
            info[key].value = str(value)
        else:
            e = t.external_data.add()
            e.key, e.value = key, str(value)
    return mutate


def _sparse_model(values, indices, dims, where="initializer", index_type=np.int64):
    """y = x + W with W a sparse tensor in an initializer, a Constant attribute or a subgraph."""
    n = int(np.prod(dims))
    vals = numpy_helper.from_array(np.asarray(values, np.float32), "w")
    idx = numpy_helper.from_array(np.asarray(indices, dtype=index_type))
    sp = helper.make_sparse_tensor(vals, idx, dims)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    if where == "initializer":
        g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y],
                              sparse_initializer=[sp])
    elif where == "constant":
        g = helper.make_graph([helper.make_node("Constant", [], ["w"], sparse_value=sp),
                               helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y])
    else:  # a sparse initializer of an If branch
        branch = helper.make_graph([helper.make_node("Add", ["x", "w"], ["b"])], "then", [],
                                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, dims)],
                                   sparse_initializer=[sp])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["c"])], "else", [],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, dims)])
        g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=branch,
                                                else_branch=other)], "g",
                              [x, helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [y])
    assert n > 0
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _deep_if(depth):
    """``depth`` If nodes, each nested in the previous one's then-branch."""
    def leaf(i):
        return helper.make_graph([helper.make_node("Identity", ["x"], [f"l{i}"])], f"leaf{i}", [],
                                 [helper.make_tensor_value_info(f"l{i}", TensorProto.FLOAT, [2])])
    inner = leaf(0)
    for i in range(1, depth):
        node = helper.make_node("If", ["cond"], [f"o{i}"], then_branch=inner, else_branch=leaf(i))
        inner = helper.make_graph([node], f"g{i}", [],
                                  [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, [2])])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=leaf(depth))],
        "main", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, payload):
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _deep_if_bytes(depth):
    """A ModelProto nested ``depth`` If levels deep, encoded by hand: the protobuf library
    refuses to build (or parse) messages nested past its limit, which is the point."""
    graph = _field(1, _field(2, b"l") + _field(4, b"Identity") + _field(1, b"x"))  # node
    for _ in range(depth):
        attr = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        graph = _field(1, _field(1, b"cond") + _field(2, b"o") + _field(4, b"If") + _field(5, attr))
    opset = _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(8, opset) + _field(7, graph)


def _huge_raw(tmp_path):
    m = mlp()
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([10**6, 10**6])  # 10^12 elements declared over 768 bytes
    return _save(m, tmp_path / "huge.onnx")


def _short_typed(tmp_path):
    m = mlp()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * 5)
    return _save(m, tmp_path / "short.onnx")


def _huge_external(tmp_path):
    path = _external(tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([10**6, 10**6])
    onnx.save(m, str(path))
    return path


def _garbage(tmp_path, data, name="bad.onnx"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _no_nodes(tmp_path):
    g = helper.make_graph([], "g", [helper.make_tensor_value_info("x", 1, [2])],
                          [helper.make_tensor_value_info("x", 1, [2])])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                 tmp_path / "empty_graph.onnx")


def _newer(tmp_path, what):
    m = mlp()
    if what == "ir":
        m.ir_version = onnx.IR_VERSION + 1
    else:
        m.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    return _save(m, tmp_path / f"newer_{what}.onnx")


def _symlink_file(tmp_path):
    path = _external(tmp_path)
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real.data")
    os.symlink(tmp_path / "real.data", tmp_path / "m.onnx.data")
    return path


def _symlink_folder(tmp_path):
    (tmp_path / "real").mkdir()
    path = _external(tmp_path, _set("location", "link/m.onnx.data"))
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real" / "m.onnx.data")
    os.symlink(tmp_path / "real", tmp_path / "link")
    return path


def _outside(tmp_path, location):
    (tmp_path.parent / "outside.data").write_bytes(b"\0" * 20000)
    return _external(tmp_path, _set("location", location))


# name -> (builder(tmp_path) -> path, exit code, message fragment)
CASES = {
    "empty": (lambda p: _garbage(p, b""), 4, "empty file"),
    "truncated": (lambda p: _garbage(p, mlp().SerializeToString()[:300]), 4, "not an ONNX model"),
    "random-bytes": (lambda p: _garbage(p, np.random.default_rng(0).bytes(4096)), 4,
                     "not an ONNX model"),
    "tensor-not-model": (lambda p: _garbage(p, numpy_helper.from_array(
        np.ones(4, np.float32), "t").SerializeToString()), 4, "not an ONNX model"),
    "no-nodes": (_no_nodes, 4, "no nodes"),
    "newer-ir": (lambda p: _newer(p, "ir"), 4, "ir_version"),
    "newer-opset": (lambda p: _newer(p, "opset"), 4, "opset"),
    "ext-absolute": (lambda p: _outside(p, "/etc/passwd"), 4, "absolute"),
    "ext-dotdot": (lambda p: _outside(p, "../outside.data"), 4, "escapes"),
    "ext-symlink-file": (_symlink_file, 4, "symbolic link"),
    "ext-symlink-folder": (_symlink_folder, 4, "symbolic link"),
    "ext-missing": (lambda p: _external(p, _set("location", "gone.data")), 4, "not found"),
    "ext-offset": (lambda p: _external(p, _set("offset", 10**12)), 4, "outside"),
    "ext-length": (lambda p: _external(p, _set("length", 10**12)), 4, "runs past the end"),
    "ext-negative": (lambda p: _external(p, _set("offset", -64)), 4, "outside"),
    "ext-not-int": (lambda p: _external(p, _set("length", "12abc")), 4, "not an integer"),
    "ext-huge-shape": (_huge_external, 4, "needs 4000000000000"),
    "huge-shape-raw": (_huge_raw, 4, "needs 4000000000000"),
    "short-typed-data": (_short_typed, 4, "needs 192"),
    "sparse-unsorted": (lambda p: _save(_sparse_model([1, 2], [5, 3], [10]), p / "s.onnx"), 4,
                        "not sorted"),
    "sparse-duplicate": (lambda p: _save(_sparse_model([1, 2], [3, 3], [10]), p / "s.onnx"), 4,
                         "not sorted"),
    "sparse-out-of-range": (lambda p: _save(_sparse_model([1, 2], [3, 10], [10]), p / "s.onnx"),
                            4, "out of range"),
    "sparse-negative": (lambda p: _save(_sparse_model([1, 2], [-1, 3], [10]), p / "s.onnx"), 4,
                        "out of range"),
    "sparse-float-indices": (lambda p: _save(_sparse_model([1, 2], [1, 3], [10],
                                                           index_type=np.float32), p / "s.onnx"),
                             4, "must be integers"),
    "sparse-count-mismatch": (lambda p: _save(_sparse_model([1, 2, 3], [1, 3], [10]),
                                              p / "s.onnx"), 4, "do not match"),
    "sparse-2d-out-of-range": (lambda p: _save(_sparse_model([1.0], [[0, 7]], [2, 5]),
                                               p / "s.onnx"), 4, "out of range"),
    "sparse-in-constant": (lambda p: _save(_sparse_model([1, 2], [5, 3], [10], "constant"),
                                           p / "s.onnx"), 4, "not sorted"),
    "sparse-in-subgraph": (lambda p: _save(_sparse_model([1, 2], [5, 3], [10], "subgraph"),
                                           p / "s.onnx"), 4, "not sorted"),
    "sparse-huge-dense": (lambda p: _save(_sparse_model([1, 2], [3, 5], [10**6, 10**6]),
                                          p / "s.onnx"), 4, "too large"),
    "sparse-over-memory": (lambda p: _save(_sparse_model([1, 2], [3, 5], [100_000, 100_000]),
                                           p / "s.onnx"), 4, "more than this machine's memory"),
    "nested-past-protobuf-limit": (lambda p: _garbage(p, _deep_if_bytes(300), "deep.onnx"), 4,
                                   "nested too deeply"),
}
ALREADY_IN_TEST_CLI = {"empty", "truncated", "random-bytes", "tensor-not-model", "ext-dotdot"}


def _cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["prune", "inspect", "check"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_refused(tmp_path, capsys, monkeypatch, case, command):
    # The dense-size limit of sparse tensors is the machine's memory: pin it to 16 GiB.
    monkeypatch.setattr(io, "_physical_memory", lambda: 16 << 30)
    if command == "prune" and case in ALREADY_IN_TEST_CLI:
        pytest.skip("covered by tests/test_cli.py::test_bad_inputs_exit_4_without_output")
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    build, expected_code, fragment = CASES[case]
    src = build(src_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = {p: open(os.path.join(src_dir, p), "rb").read() for p in os.listdir(src_dir)
              if os.path.isfile(os.path.join(src_dir, p))}
    if command == "prune":
        argv = ["prune", str(src), "-o", str(out_dir / "o.onnx"), "--json", str(out_dir / "r.json")]
    elif command == "inspect":
        argv = ["inspect", str(src), "--json", str(out_dir / "r.json")]
    else:
        argv = ["check", str(src), str(src), "--json", str(out_dir / "r.json")]
    code, stdout, err = _cli(argv, capsys)
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), err
    assert fragment in lines[0]
    assert "Traceback" not in err and stdout == ""
    assert os.listdir(out_dir) == []  # neither model nor report
    after = {p: open(os.path.join(src_dir, p), "rb").read() for p in before}
    assert after == before


def test_huge_declared_shapes_do_not_allocate(tmp_path):
    """Refusing a 10^12-element initializer, external tensor or sparse tensor costs no memory: the
    child's peak resident set (VmHWM, read inside it) stays at the interpreter's own size."""
    (tmp_path / "ext").mkdir()
    paths = [_huge_raw(tmp_path), _huge_external(tmp_path / "ext"),
             _save(_sparse_model([1, 2], [3, 5], [10**6, 10**6]), tmp_path / "sp.onnx")]
    script = textwrap.dedent("""
        import sys
        from onnxprune.cli import main
        codes = [main(["inspect", p, "-q"]) for p in sys.argv[1:]]
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        print(codes, int(hwm) * 1024)
    """)
    r = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    codes, peak = r.stdout.rsplit(" ", 1)
    assert codes.strip() == "[4, 4, 4]", r.stderr
    assert int(peak) < 1_000_000_000, f"peak RSS {int(peak) / 1e6:.0f} MB"


# --------------------------------------------------------------------------- accepted inputs


def _prune_ok(tmp_path, capsys, model, extra=()):
    src = _save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = _cli(["prune", str(src), "-o", str(out), "-q", *extra], capsys)
    assert code == 0, err
    return onnx.load(str(out))


def test_nested_if_up_to_protobuf_depth_is_pruned(tmp_path, capsys):
    # 31 levels is the deepest the protobuf library itself builds and parses.
    model = _deep_if(31)
    out = _prune_ok(tmp_path, capsys, model)
    onnx.checker.check_model(out)
    feeds = {"x": np.arange(2, dtype=np.float32), "cond": np.array(True)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(model, feeds)[0])


def test_duplicate_and_empty_node_names(tmp_path, capsys):
    for names in (["same"] * 6, [""] * 6):
        m = mlp(sizes=(16, 12, 8, 4))
        for node, name in zip(m.graph.node, names):
            node.name = name
        out = _prune_ok(tmp_path, capsys, m, ["--quality", "0", "--json", str(tmp_path / "r.json")])
        import json

        layers = json.loads((tmp_path / "r.json").read_text())["layers"]
        assert len({r["name"] for r in layers}) == 3  # disambiguated, one row per weight
        assert [n.name for n in out.graph.node] == names[: len(out.graph.node)]
        if names[0] == "":
            feeds = random_feeds(m)
            np.testing.assert_array_equal(run(out, feeds)[0], run(m, feeds)[0])


def test_custom_domain_op_is_kept(tmp_path, capsys):
    m = mlp(sizes=(16, 12, 4))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 3))
    out = _prune_ok(tmp_path, capsys, m)
    node = next(n for n in out.graph.node if n.op_type == "FancyRelu")
    assert node.domain == "com.example"
    assert {(o.domain, o.version) for o in out.opset_import} >= {("com.example", 3), ("", 17)}
    # A Gemm in a custom domain is not the ONNX Gemm: never pruned.
    g = mlp(sizes=(16, 12, 4))
    g.graph.node[0].domain = "com.example"
    g.opset_import.append(helper.make_opsetid("com.example", 1))
    out = _prune_ok(tmp_path, capsys, g, ["--json", str(tmp_path / "r.json")])
    import json

    assert [r["weight"] for r in json.loads((tmp_path / "r.json").read_text())["layers"]] == [
        "fc2.weight"]


def test_optional_typed_graph_io_survives(tmp_path, capsys):
    """onnx-graphsurgeon drops optional-typed value infos and type attributes; they come back."""
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [3]))
    g = helper.make_graph(
        [helper.make_node("Optional", ["x"], ["o"]),
         helper.make_node("OptionalGetElement", ["o"], ["y"]),
         helper.make_node("Optional", [], ["e"], type=helper.make_tensor_type_proto(
             TensorProto.FLOAT, [3])),
         helper.make_node("OptionalHasElement", ["e"], ["has"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
         helper.make_value_info("o", opt),
         helper.make_tensor_value_info("has", TensorProto.BOOL, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(m, full_check=True)
    out = _prune_ok(tmp_path, capsys, m)
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.output[1].type == opt
    feeds = {"x": np.arange(3, dtype=np.float32)}
    ref, got = run(m, feeds), run(out, feeds)
    np.testing.assert_array_equal(got[0], ref[0])
    assert bool(got[2]) is False and bool(ref[2]) is False
