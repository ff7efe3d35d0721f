"""`compress --target-sparsity auto --max-accuracy-drop PP`: the accuracy budget as the goal."""

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from onnxprune.cli import main  # noqa: E402
from onnxprune.core.graph import find_layers, graph_from_model, weight_values  # noqa: E402
from onnxprune.training.compress import AUTO_CAP, AUTO_PATIENCE, step_sparsity  # noqa: E402
from tests.models import mlp  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Digits split 1400/397, and an MLP trained on them by `onnxprune finetune`."""
    d = sklearn_datasets.load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    folder = tmp_path_factory.mktemp("auto")
    np.savez(folder / "train.npz", x=x[perm[:1400]], y=y[perm[:1400]])
    np.savez(folder / "val.npz", x=x[perm[1400:]], y=y[perm[1400:]])
    onnx.save(mlp(sizes=(64, 64, 10), seed=0), folder / "init.onnx")
    assert main(["finetune", str(folder / "init.onnx"), "-o", str(folder / "dense.onnx"),
                 "--train", str(folder / "train.npz"), "--val", str(folder / "val.npz"),
                 "--epochs", "6", "--lr", "0.05", "-q"]) == 0
    return folder


def _auto(data, out, budget, *extra):
    """Run the auto search (3 rounds to the cap, 1 epoch each); (exit code, report)."""
    rep = out.with_suffix(".json")
    code = main(["compress", str(data / "dense.onnx"), "-o", str(out), "--train",
                 str(data / "train.npz"), "--val", str(data / "val.npz"), "--json", str(rep),
                 "-q", "--target-sparsity", "auto", "--max-accuracy-drop", str(budget),
                 "--iterations", "3", "--epochs", "1", "--lr", "0.01", "--emit", "dense",
                 "--no-remove-dead-neurons", *extra])
    return code, json.loads(rep.read_text()) if rep.exists() else None


def _nonzero(path) -> int:
    layers, _ = find_layers(graph_from_model(onnx.load(str(path))))
    return sum(int(np.count_nonzero(weight_values(x))) for x in layers if not x.skip_reason)


@pytest.fixture(scope="module")
def loose(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loose") / "c.onnx"
    code, report = _auto(data, out, 100)
    return code, report, out


def test_auto_without_budget_is_a_usage_error(tmp_path, capsys):
    # Refused before the model is read: a missing model would otherwise be exit 4.
    code = main(["compress", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"),
                 "--train", "t.npz", "--val", "v.npz", "--target-sparsity", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("onnxprune: error:") and "--max-accuracy-drop" in err[-1]
    assert not (tmp_path / "o.onnx").exists()


def test_loose_budget_climbs_to_the_cap(loose):
    code, report, out = loose
    assert code == 0 and report["status"] == "ok"
    auto = report["auto"]
    assert [r["iteration"] for r in auto["trajectory"]] == [1, 2, 3]
    assert all(r["within_budget"] for r in auto["trajectory"])
    assert auto["returned_iteration"] == 3 and auto["cap"] == AUTO_CAP
    sparsities = [r["sparsity"] for r in auto["trajectory"]]
    for i, s in enumerate(sparsities, 1):  # the ladder: s_i = 1 − (1 − cap)^{i/3}
        assert s == pytest.approx(step_sparsity(AUTO_CAP, i, 3), abs=0.01)
    # The written file is the last round's model.
    assert _nonzero(out) == report["history"][3]["nonzero"] == report["total"]["nonzero"]
    assert report["schedule"]["target-sparsity"] == "auto"


def test_tight_budget_returns_the_sparsest_round_within_it(loose, data, tmp_path):
    _, ref, _ = loose
    drops = [r["drop_pp"] for r in ref["auto"]["trajectory"]]
    assert drops[1] > drops[0] + 0.5, drops  # precondition: round 2 costs accuracy
    budget = (drops[0] + drops[1]) / 2  # round 1 within, round 2 over (same seed, same rounds)
    out = tmp_path / "t.onnx"
    code, report = _auto(data, out, budget)
    assert code == 0, report
    auto = report["auto"]
    # round 1 within; every later round tried is over, and the climb stops after
    # AUTO_PATIENCE + 1 of them (or at the cap)
    within = [r["within_budget"] for r in auto["trajectory"]]
    assert within[0] and not any(within[1:])
    assert len(within) == min(3, 2 + AUTO_PATIENCE)
    assert auto["returned_iteration"] == 1
    kept = report["history"][1]
    assert kept["stage"] == "iteration" and kept["iteration"] == 1
    assert _nonzero(out) == kept["nonzero"] == report["total"]["nonzero"]
    assert report["accuracy_final"]["top1"] == pytest.approx(kept["top1"])
    assert report["accuracy_drop_pp"] <= budget
    # Round 2's sparser model was tried (it is in the trajectory) but not written.
    assert report["history"][2]["nonzero"] < _nonzero(out)


def test_first_round_over_budget_fails_the_gate(data, tmp_path):
    # One round: the ladder's first step is the cap itself (99 % pruned after one epoch).
    out = tmp_path / "f.onnx"
    code, report = _auto(data, out, 0.5, "--iterations", "1")
    assert report["auto"]["trajectory"][0]["drop_pp"] > 0.5, report["auto"]
    assert code == 3
    assert report["status"] == "gate-failed" and not report["auto"]["within_budget"]
    assert report["gates"][0]["passed"] is False
    assert report["auto"]["returned_iteration"] == 1 and len(report["auto"]["trajectory"]) == 1
    assert _nonzero(out) == report["history"][1]["nonzero"]


def test_report_plots_the_auto_trajectory(loose, tmp_path):
    pytest.importorskip("matplotlib")
    _, report, out = loose
    folder = tmp_path / "rep"
    code = main(["report", str(out), "--history", str(out.with_suffix(".json")), "-o",
                 str(folder), "-q"])
    assert code == 0
    data = json.loads((folder / "report.json").read_text())
    points = data["figures"]["tradeoff"]["series"][0]["points"]
    assert [p["stage"] for p in points] == ["dense", "iteration 1", "iteration 2", "iteration 3"]
    expected = [0.0] + [r["drop_pp"] for r in report["auto"]["trajectory"]]
    assert [p["drop_pp"] for p in points] == pytest.approx(expected)
    assert (folder / "tradeoff.png").stat().st_size > 0


@pytest.mark.parametrize("script, returned, tried", [
    ([0.95, 0.97, 0.97, 0.95], 3, 4),  # round 1 over, then back within: the climb goes on
    ([0.97, 0.95, 0.95, 0.97], 1, 3),  # two rounds over in a row: stop, keep round 1
    ([0.95, 0.95, 0.97, 0.97], 1, 2),  # never within after two: round 1, over budget
])
def test_one_round_over_budget_does_not_end_the_climb(monkeypatch, script, returned, tried):
    """The stop rule alone, on scripted val accuracies (dense 0.97, budget 1 pp)."""
    import onnxprune.runtime.evaluate as ev
    from onnxprune.training import compress as cmod

    model = mlp(sizes=(8, 8, 4), seed=0)
    monkeypatch.setattr(ev, "evaluate", lambda m, v, **k: {"top1": 0.97, "n": 1})

    def run(self, current, i):
        acc = {"top1": script[i - 1], "n": 1}
        return current, acc, cmod._record("iteration", i, current, acc, acc, 1)

    monkeypatch.setattr(cmod._Rounds, "run", run)
    monkeypatch.setattr(cmod, "_remove_dead", lambda m, acc, v: (m, acc, None))
    result = cmod.compress(model, None, (np.zeros((1, 8), np.float32), np.zeros(1, np.int64)),
                           schedule=cmod.Schedule.auto(1.0, 4), finetune_config=None)
    rounds = [h for h in result.history if h["stage"] == "iteration"]
    assert len(rounds) == tried and result.returned_iteration == returned
    assert [h["within_budget"] for h in rounds] == [s >= 0.96 for s in script[:tried]]
