"""Property-based fuzzing of model loading (mutated bytes, mutated protobuf fields) and of the
recipe parser.

Properties: ``prune`` and ``inspect`` on any bytes exit 0 or 4 — never 1 (an internal error),
never a traceback; a refusal is one line and writes nothing; an accepted model's output is
written atomically and reloads.  The recipe parser returns a recipe whose passes build, or
raises ``UsageError`` (exit 2) — nothing else.

The default run is bounded (a fixed number of examples per property, derandomised so CI is
reproducible); ``-m fuzz`` runs the same properties with many more random examples.
"""

import contextlib
import io as _io
import os
import re
import tempfile

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core import io
from onnxprune.cli import main
from onnxprune.core.errors import UsageError
from onnxprune.passes.recipe import load_recipe, parse_recipe
from tests.models import cnn, mlp

QUICK = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


def _seed_model() -> onnx.ModelProto:
    """A small model touching many features: Gemm + MatMul + Conv, a sparse initializer, a
    Constant node, an If subgraph, external-data-free."""
    m = mlp(sizes=(8, 6, 4))
    g = m.graph
    sp = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "s"),
                                   numpy_helper.from_array(np.array([1, 3], np.int64)), [4])
    g.sparse_initializer.append(sp)
    g.node.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        np.ones(4, np.float32))))
    g.node.append(helper.make_node("Add", ["y", "s"], ["y2"]))
    then = helper.make_graph([helper.make_node("Add", ["y2", "c"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["y2"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    g.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other))
    g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]))
    return m


SEED_BYTES = _seed_model().SerializeToString()
CNN_BYTES = cnn(channels=(2, 3, 4), classes=3, hw=5).SerializeToString()


def _cli(argv):
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _no_probe():
    """The long runs (3000 models each) without the FLOPs shape probe, whose child process
    costs a second or two per model; the quick runs keep it, so it meets hostile models too."""
    from unittest import mock

    return mock.patch.dict(os.environ, {"ONNXPRUNE_SHAPE_PROBE": "0"})


def _check_model_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.onnx")
        with open(src, "wb") as f:
            f.write(data)
        out_dir = os.path.join(d, "out")
        os.mkdir(out_dir)
        out = os.path.join(out_dir, "o.onnx")
        for argv in (["prune", src, "-o", out, "-q"], ["inspect", src, "-q"]):
            code, err = _cli(argv)
            assert "Traceback" not in err and "internal error" not in err, err
            assert code in (0, 4), (code, err)
            if code == 4:
                assert len(err.strip().splitlines()) == 1, err
        files = sorted(os.listdir(out_dir))
        if code == 0 or files:
            # prune accepted it: the output is whole and loads again.
            assert files[0] == "o.onnx" and len(files) <= 2, files
            assert len(files) == 1 or re.fullmatch(r"o\.onnx\.[0-9a-f]{16}\.data", files[1]), files
            io.load(out)


mutations = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete", "truncate"]),
              st.integers(min_value=0, max_value=len(SEED_BYTES)), st.integers(0, 255)),
    min_size=1, max_size=6)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        pos %= len(b)
        if op == "set":
            b[pos] = val
        elif op == "insert":
            b.insert(pos, val)
        elif op == "delete":
            del b[pos]
        else:
            del b[pos:]
    return bytes(b)


def _prop_mutated_bytes(base, ops):
    _check_model_bytes(_mutate(base, ops))


@QUICK
@given(base=st.sampled_from([SEED_BYTES, CNN_BYTES]), ops=mutations)
def test_fuzz_mutated_bytes(base, ops):
    _prop_mutated_bytes(base, ops)


@pytest.mark.fuzz
@LONG
@given(base=st.sampled_from([SEED_BYTES, CNN_BYTES]), ops=mutations)
def test_fuzz_mutated_bytes_long(base, ops):
    with _no_probe():
        _prop_mutated_bytes(base, ops)


# --------------------------------------------------------------------------- protobuf fields

_INTS = st.one_of(st.integers(-3, 70), st.sampled_from([2**31 - 1, 2**40, -(2**40)]))
_OPS = ["Gemm", "MatMul", "Conv", "ConvTranspose", "Relu", "Add", "Identity", "Dropout",
        "BatchNormalization", "Flatten", "Reshape", "If", "NoSuchOp", ""]


@st.composite
def field_mutations(draw):
    return draw(st.lists(st.one_of(
        st.tuples(st.just("dims"), st.integers(0, 20), st.lists(_INTS, max_size=4)),
        st.tuples(st.just("data_type"), st.integers(0, 20), st.integers(0, 25)),
        st.tuples(st.just("op_type"), st.integers(0, 20), st.sampled_from(_OPS)),
        st.tuples(st.just("node_input"), st.integers(0, 20), st.sampled_from(
            ["", "x", "y", "fc1.weight", "missing", "s", "c", "fc1_out"])),
        st.tuples(st.just("node_output"), st.integers(0, 20), st.sampled_from(["", "x", "y", "z"])),
        st.tuples(st.just("attr_int"), st.integers(0, 20), _INTS),
        st.tuples(st.just("domain"), st.integers(0, 20), st.sampled_from(["", "com.x", "ai.onnx"])),
        st.tuples(st.just("opset"), st.integers(0, 2), st.integers(-1, 30)),
        st.tuples(st.just("ir_version"), st.just(0), st.integers(-1, 13)),
        st.tuples(st.just("sparse_index"), st.integers(0, 3), _INTS),
        st.tuples(st.just("drop_initializer"), st.integers(0, 20), st.just(0)),
        st.tuples(st.just("graph_input_is_init"), st.integers(0, 20), st.just(0)),
    ), min_size=1, max_size=5))


def _apply_field_mutations(model: onnx.ModelProto, muts) -> None:
    g = model.graph
    for kind, i, v in muts:
        inits = list(g.initializer)
        nodes = list(g.node)
        if kind == "dims" and inits:
            t = inits[i % len(inits)]
            del t.dims[:]
            t.dims.extend(v)
        elif kind == "data_type" and inits:
            inits[i % len(inits)].data_type = v
        elif kind == "op_type" and nodes:
            nodes[i % len(nodes)].op_type = v
        elif kind == "node_input" and nodes:
            n = nodes[i % len(nodes)]
            if n.input:
                n.input[i % len(n.input)] = v
            else:
                n.input.append(v)
        elif kind == "node_output" and nodes:
            n = nodes[i % len(nodes)]
            if n.output:
                n.output[0] = v
        elif kind == "attr_int" and nodes:
            n = nodes[i % len(nodes)]
            n.attribute.append(helper.make_attribute(["transB", "group", "axis", "transA",
                                                      "training_mode"][i % 5], v))
        elif kind == "domain" and nodes:
            nodes[i % len(nodes)].domain = v
        elif kind == "opset":
            if model.opset_import:
                model.opset_import[0].version = v
        elif kind == "ir_version":
            model.ir_version = v
        elif kind == "sparse_index" and g.sparse_initializer:
            sp = g.sparse_initializer[0]
            idx = numpy_helper.to_array(sp.indices).copy()
            idx[i % idx.size] = v % (2**63)
            sp.indices.CopyFrom(numpy_helper.from_array(idx.astype(np.int64)))
        elif kind == "drop_initializer" and inits:
            del g.initializer[i % len(inits)]
        elif kind == "graph_input_is_init" and inits:
            t = inits[i % len(inits)]
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type or 1, list(t.dims)))


def _prop_fields(base, muts):
    model = onnx.ModelProto()
    model.ParseFromString(base)
    _apply_field_mutations(model, muts)
    try:
        data = model.SerializeToString()
    except Exception:  # protobuf refuses to encode it: not an input anyone can hand us
        return
    _check_model_bytes(data)


@QUICK
@given(base=st.sampled_from([SEED_BYTES, CNN_BYTES]), muts=field_mutations())
def test_fuzz_mutated_fields(base, muts):
    _prop_fields(base, muts)


@pytest.mark.fuzz
@LONG
@given(base=st.sampled_from([SEED_BYTES, CNN_BYTES]), muts=field_mutations())
def test_fuzz_mutated_fields_long(base, muts):
    with _no_probe():
        _prop_fields(base, muts)


# --------------------------------------------------------------------------- recipes

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                     st.text(max_size=8),
                     st.sampled_from(["conv", "fc", "fc*", "portable", "dense", "sparse-ops",
                                      "global", "per-layer", "threshold-by-std",
                                      "remove-dead-neurons", "adjust-dropout"]))
_keys = st.sampled_from(["version", "passes", "emit", "gates", "quality", "layers", "skip",
                         "min-params", "target-sparsity", "target-scope", "min-sparsity",
                         "max-size-mb", "threshold-by-std", "remove-dead-neurons",
                         "adjust-dropout", "conv", "fc", "bogus"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)
recipes = st.one_of(_values, st.fixed_dictionaries({}, optional={
    "version": _values, "passes": st.lists(st.one_of(
        st.sampled_from(["threshold-by-std", "adjust-dropout", "remove-dead-neurons"]),
        st.dictionaries(_keys, _values, min_size=1, max_size=1)), max_size=4),
    "emit": _values, "gates": _values}))


def _prop_recipe(data):
    try:
        recipe = parse_recipe(data)
    except UsageError:
        return
    recipe.build_passes()
    assert len(recipe.sha256) == 64
    assert recipe.emit in ("dense", "portable", "sparse-ops")


def _prop_recipe_text(text):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "r.yaml")
        with open(p, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        try:
            load_recipe(p)
        except UsageError:
            pass


_yaml_text = st.one_of(
    st.text(max_size=200),
    st.tuples(recipes, st.booleans()).map(lambda rf: yaml.safe_dump(rf[0], default_flow_style=rf[1])),
    st.sampled_from([
        "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
        "!!python/object/new:subprocess.Popen [['true']]", "a: &a [*a]", "passes: &p [*p]",
        "passes:\n  - threshold-by-std: &q {quality: *q}", "? [a]\n: 1", "\x00", "---\n---\n",
        "version: 1\npasses: !!set {a}\n", "emit: !!binary aGVsbG8=\n",
    ]))


@QUICK
@given(data=recipes)
def test_fuzz_recipe_structure(data):
    _prop_recipe(data)


@QUICK
@given(text=_yaml_text)
def test_fuzz_recipe_text(text):
    _prop_recipe_text(text)


@pytest.mark.fuzz
@LONG
@given(data=recipes, text=_yaml_text)
def test_fuzz_recipe_long(data, text):
    _prop_recipe(data)
    _prop_recipe_text(text)
