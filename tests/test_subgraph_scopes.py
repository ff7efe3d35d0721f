"""Hostile models for layers inside subgraphs, recurrent weights and scalar settings.

Each test builds a tiny model (opset 17) that once broke the tool:

* sibling If branches reusing a local value name (``t = Identity(W)`` in both): ONNX scopes
  each name to its branch, so each branch's MatMul reads its own weight;
* two branches storing a weight under one name: the bridge cannot tell them apart and keeps
  them fixed, so a run that prunes them must say they were not retrained.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.app import main

F = TensorProto.FLOAT


def _if_model(then_nodes, then_inits, else_nodes, else_inits, head: bool = False, seed: int = 0):
    """y = If(max(x) > 0, then, else) [@ Wh]; each branch outputs ``t_out`` / ``e_out``."""
    rng = np.random.default_rng(seed)
    branch_out = lambda n: [helper.make_tensor_value_info(n, F, None)]  # noqa: E731
    then_g = helper.make_graph(then_nodes, "then", [], branch_out("t_out"), then_inits)
    else_g = helper.make_graph(else_nodes, "else", [], branch_out("e_out"), else_inits)
    nodes = [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("Greater", ["mx", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["h" if head else "y"], name="route",
                              then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    if head:
        nodes.append(helper.make_node("MatMul", ["h", "Wh"], ["y"], name="head"))
        inits.append(numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "Wh"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 8])],
                          [helper.make_tensor_value_info("y", F, ["N", 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _w(name: str, seed: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=(8, 8)).astype(np.float32), name)


def _sibling_local_names():
    """then: t = Identity(Wa); x @ t   else: t = Identity(Wb); x @ t."""
    return _if_model(
        [helper.make_node("Identity", ["Wa"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["t_out"], name="tmm")],
        [_w("Wa", 1)],
        [helper.make_node("Identity", ["Wb"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["e_out"], name="emm")],
        [_w("Wb", 2)])


def test_sibling_branches_reusing_a_value_name_each_read_their_own_weight():
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import find_weights

    info = find_weights(_sibling_local_names())
    got = {n: (i.layer, i.role, i.scope) for n, i in info.items()}
    assert got == {"Wa": ("route/then_branch/tmm", "weight", "route/then_branch"),
                   "Wb": ("route/else_branch/emm", "weight", "route/else_branch")}


def test_a_stored_name_of_one_branch_is_not_a_weight_of_its_sibling():
    """then stores ``t`` (a weight); else computes its own ``t`` = Relu(x) and multiplies x by
    it: else's ``t`` is data, not then's weight (the else branch is met first: attributes are
    sorted by name)."""
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import find_weights

    m = _if_model(
        [helper.make_node("MatMul", ["x", "t"], ["t_out"], name="tmm")], [_w("t", 1)],
        [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["e_out"], name="emm")],
        [])
    got = {n: i.layer for n, i in find_weights(m).items() if i.prunable}
    assert got == {"t": "route/then_branch/tmm"}


def _two_branches_storing_w():
    """Both branches store their own ``W`` (different values); a main-graph head follows."""
    return _if_model([helper.make_node("MatMul", ["x", "W"], ["t_out"], name="tmm")], [_w("W", 1)],
                     [helper.make_node("MatMul", ["x", "W"], ["e_out"], name="emm")], [_w("W", 2)],
                     head=True)


def test_weights_stored_under_one_name_in_two_branches_are_pruned_and_said_not_retrained(tmp_path):
    pytest.importorskip("torch")
    from onnxprune.core.graph import find_layers, graph_from_model
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune

    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(_two_branches_storing_w(), src)
    # The pruner tells the two apart (each is its own layer) and prunes both...
    layers = {layer.name: layer.scope for layer in find_layers(graph_from_model(onnx.load(src)))[0]}
    assert layers == {"tmm": "route/then_branch", "emm": "route/else_branch", "head": ""}
    assert main(["prune", str(src), "-o", str(out), "--target-sparsity", "0.5", "--emit", "dense",
                 "--no-remove-dead-neurons", "-q"]) == 0
    pruned = onnx.load(str(out))
    # ...the bridge cannot (one name, two tensors): they stay fixed, and the run says so.
    x = np.random.default_rng(4).normal(size=(32, 8)).astype(np.float32)
    y = np.random.default_rng(5).integers(0, 8, 32).astype(np.int64)
    res = finetune(pruned, (x, y), config=FinetuneConfig(epochs=1, batch_size=8, lr=0.05, seed=0))
    assert res.unreached == ["W"]
    branches = [a.g for a in res.model.graph.node[2].attribute]
    np.testing.assert_array_equal(  # written back untouched, each in its own branch
        [numpy_helper.to_array(g.initializer[0]) for g in branches],
        [numpy_helper.to_array(g.initializer[0]) for g in (a.g for a in pruned.graph.node[2].attribute)])


def test_a_loop_body_input_hides_the_outer_weight_of_the_same_name():
    """The body's loop-carried ``W`` (an input of the body, starting from the initializer
    ``W``) is data there: the body's MatMul has no constant weight, and nothing else reads it."""
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import find_weights

    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "W"], ["s_out"], name="body_mm"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["W"], ["W_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("s_in", F, None), helper.make_tensor_value_info("W", F, None)],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("cond_out", TensorProto.BOOL), ("s_out", F), ("W_out", F))])
    g = helper.make_graph(
        [helper.make_node("Loop", ["trip", "", "x", "W"], ["y", "w_end"], name="loop", body=body)],
        "g", [helper.make_tensor_value_info("x", F, ["N", 8])],
        [helper.make_tensor_value_info("y", F, ["N", 8]), helper.make_tensor_value_info("w_end", F, [8, 8])],
        [_w("W", 1), numpy_helper.from_array(np.array(2, np.int64), "trip")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    assert {n: i.layer for n, i in find_weights(m).items() if i.prunable} == {}


def test_nothing_to_train_but_weights_stored_under_one_name_says_why(tmp_path, capsys):
    pytest.importorskip("torch")
    m = _if_model([helper.make_node("MatMul", ["x", "W"], ["t_out"], name="tmm")], [_w("W", 1)],
                  [helper.make_node("MatMul", ["x", "W"], ["e_out"], name="emm")], [_w("W", 2)])
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(16, 8)).astype(np.float32), y=rng.integers(0, 8, 16))
    code = main(["finetune", str(src), "-o", str(tmp_path / "f.onnx"), "--train", str(tmp_path / "d.npz"),
                 "--val", str(tmp_path / "d.npz"), "--epochs", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nothing to train" in err
    assert "'W' is stored under one name in several subgraphs" in err
    assert not (tmp_path / "f.onnx").exists()


def test_a_recurrent_weight_that_is_a_graph_input_is_left_alone_by_retraining_too(tmp_path):
    """W is an initializer the user may override (it is also a graph input): prune leaves it
    alone, and so must the retraining of compress (R, a plain initializer, is pruned and trained)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    t, n_in, hid = 5, 6, 8
    g = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], name="rnn", hidden_size=hid),
         helper.make_node("Squeeze", ["h", "axis0"], ["y"])],
        "g", [helper.make_tensor_value_info("x", F, [t, "N", n_in]),
              helper.make_tensor_value_info("W", F, [1, 4 * hid, n_in])],
        [helper.make_tensor_value_info("y", F, ["N", hid])],
        [numpy_helper.from_array(rng.normal(size=(1, 4 * hid, n_in)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.normal(size=(1, 4 * hid, hid)).astype(np.float32), "R"),
         numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    src, out = tmp_path / "m.onnx", tmp_path / "c.onnx"
    onnx.save(m, src)
    for split, n in (("train", 32), ("val", 16)):
        np.savez(tmp_path / f"{split}.npz", x=rng.normal(size=(n, t, n_in)).astype(np.float32))
    assert main(["compress", str(src), "-o", str(out), "--train", str(tmp_path / "train.npz"),
                 "--val", str(tmp_path / "val.npz"), "--target-sparsity", "0.5", "--iterations", "1",
                 "--epochs", "2", "-q"]) == 0
    before = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(after["W"], before["W"])
    assert np.mean(after["R"] == 0) == pytest.approx(0.5, abs=0.02)
    kept = after["R"] != 0
    assert np.any(after["R"][kept] != before["R"][kept])  # R was retrained


def test_a_layer_three_ifs_deep_has_the_full_scope_path_in_pruner_and_bridge():
    """If inside If inside If: the scope names every enclosing node, as the bridge names it (a
    label of the innermost If alone would not tell two such Ifs in sibling branches apart)."""
    pytest.importorskip("torch")
    from onnxprune.core.graph import find_layers, graph_from_model
    from onnxprune.training.torch_bridge import find_weights

    def out(n):
        return [helper.make_tensor_value_info(n, F, None)]

    inner = helper.make_graph([helper.make_node("MatMul", ["x", "Deep"], ["d"], name="deep_mm")], "d", [], out("d"),
                              [_w("Deep", 1)])
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "r", [], out("r"))
    mid = helper.make_graph([helper.make_node("If", ["cond"], ["m"], name="if_in", then_branch=inner,
                                              else_branch=relu)], "m", [], out("m"))
    m = _if_model(list(helper.make_graph([helper.make_node("If", ["cond"], ["t_out"], name="if_mid",
                                                           then_branch=mid, else_branch=relu)],
                                         "t", [], out("t_out")).node), [],
                  [helper.make_node("Relu", ["x"], ["e_out"])], [])
    want = "route/then_branch/if_mid/then_branch/if_in/then_branch"
    layers = {layer.weight_name: layer.scope for layer in find_layers(graph_from_model(m))[0]}
    assert layers == {"Deep": want}
    assert find_weights(m)["Deep"].scope == want


@pytest.mark.parametrize("batch", [4, "N"])
def test_a_scalar_setting_stays_rank_0_in_training(monkeypatch, batch):
    """y = (x · scale) @ W with a rank-0 input ``scale``: the setting reaches the graph as a
    0-d tensor in every micro-batch (a model fixing its batch at 4 is fed 4 samples at a time;
    a setting turned 1-D would be sliced with them and come out empty)."""
    pytest.importorskip("torch")
    import onnxprune.training.torch_bridge.train as train
    from onnxprune.training.torch_bridge import FinetuneConfig, build_module, finetune

    rng = np.random.default_rng(9)
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["xs"]), helper.make_node("MatMul", ["xs", "W"], ["y"], name="fc")],
        "g", [helper.make_tensor_value_info("x", F, [batch, 8]), helper.make_tensor_value_info("scale", F, [])],
        [helper.make_tensor_value_info("y", F, [batch, 3])],
        [numpy_helper.from_array(rng.normal(size=(8, 3)).astype(np.float32), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    seen = []
    module = build_module(m)
    module.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0]["scale"].shape)))
    x = {"x": rng.normal(size=(32, 8)).astype(np.float32), "scale": np.array(2.0, np.float32)}
    y = rng.integers(0, 3, 32).astype(np.int64)
    monkeypatch.setattr(train, "build_module", lambda *a, **k: module)  # to watch its inputs
    res = finetune(m, (x, y), config=FinetuneConfig(epochs=1, batch_size=8, lr=0.01, seed=0))
    assert seen and set(seen) == {()}
    assert res.history[-1]["samples"] == 32 and np.isfinite(res.history[-1]["train_loss"])


def test_before_ir_4_initializers_listed_as_inputs_are_still_weights():
    """IR < 4 had to list every initializer as a graph input: that says nothing about the user
    overriding it, so the bridge trains them (as prune prunes them)."""
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import find_weights

    rng = np.random.default_rng(9)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", F, ["N", 4]), helper.make_tensor_value_info("W", F, [4, 3])],
        [helper.make_tensor_value_info("y", F, ["N", 3])], [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 3
    assert {n for n, i in find_weights(m).items() if i.prunable} == {"W"}
    m.ir_version = 8  # the same listing at IR 8 is an input the caller may override
    assert find_weights(m) == {}
