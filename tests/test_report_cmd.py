"""`onnxprune report`: the paper's table and figures as Markdown and a self-contained HTML page,
checked in a real headless browser when Chromium is installed."""

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.cli import main
from onnxprune.runtime.datasets import load_npz
from onnxprune.runtime.evaluate import evaluate
from onnxprune.analysis.figures import mask_matrix
from tests.test_sensitivity import digits_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A digits MLP, its pruned version, and a history in the `compress --json` schema built
    from real prune steps (no retraining: the "before" and "after" accuracies coincide)."""
    from onnxprune.training.compress import prune_step

    folder = tmp_path_factory.mktemp("report")
    dense_path, val = digits_mlp(str(folder))
    dense, ds = onnx.load(dense_path), load_npz(val)
    acc0 = evaluate(dense, ds)
    params = 64 * 64 + 64 * 32 + 32 * 10
    history = [{"stage": "dense", "iteration": 0, "top1": acc0["top1"], "top5": acc0["top5"],
                "top1_before_retrain": None, "params": params, "nonzero": params}]
    current = dense
    for i, s in enumerate((0.5, 0.75, 0.9), start=1):
        current, _ = prune_step(current, {"fc1": s, "fc2": s, "fc3": s})
        acc = evaluate(current, ds)
        nz = sum(int(np.count_nonzero(numpy_helper.to_array(t)))
                 for t in current.graph.initializer if t.name.endswith(".weight"))
        history.append({"stage": "iteration", "iteration": i, "top1": acc["top1"],
                        "top5": acc["top5"], "top1_before_retrain": acc["top1"],
                        "params": params, "nonzero": nz})
    model_path = folder / "pruned.onnx"
    onnx.save(current, model_path)
    hist_path = folder / "run.json"
    hist_path.write_text(json.dumps({"command": "compress", "accuracy_dense": acc0,
                                     "history": history}))
    return {"model": str(model_path), "dense": dense_path, "history": str(hist_path),
            "val": val, "folder": folder}


@pytest.fixture(scope="module")
def report(pruned, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "rep"
    code = _run("report", pruned["model"], "--baseline", pruned["dense"], "--history",
                pruned["history"], "-o", out, "-q", "--json", out.parent / "r.json")
    assert code == 0
    return out


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
            if t.name.endswith(".weight")}


def test_table_in_the_papers_layout(pruned, report):
    data = json.loads((report / "report.json").read_text())
    after, before = _weights(pruned["model"]), _weights(pruned["dense"])
    rows = {r["name"]: r for r in data["table"]["rows"]}
    assert list(rows) == ["fc1", "fc2", "fc3"]
    for name, r in rows.items():
        w, w0 = after[f"{name}.weight"], before[f"{name}.weight"]
        assert r["weights"] == w0.size
        assert r["flops"] == 2 * w0.size  # Gemm: each weight is one multiply-add per sample
        assert r["weights_pct"] == pytest.approx(100 * np.count_nonzero(w) / w0.size)
        assert r["flops_pct"] == pytest.approx(r["weights_pct"])
    total = data["table"]["total"]
    nz = sum(np.count_nonzero(w) for w in after.values())
    assert total["nonzero"] == nz and total["weights"] == sum(w.size for w in before.values())
    md = (report / "report.md").read_text()
    assert "| Layer | Weights | FLOP | Weights% | FLOP% |" in md
    assert re.search(r"\| fc1 \| 4\.1K \| 8\.2K \| 10% \| 10% \|", md), md
    assert "![Mask of fc1 (Fig. 4)](mask.png)" in md


def test_figures_data_and_pngs(pruned, report):
    import matplotlib.image as mpimg

    data = json.loads((report / "report.json").read_text())
    figs = data["figures"]
    # Fig. 4 of the largest layer by default; the mask is (outputs, inputs).
    w = _weights(pruned["model"])["fc1.weight"]
    assert figs["mask"]["layer"] == "fc1"
    assert (figs["mask"]["rows"], figs["mask"]["cols"]) == (64, 64)
    assert figs["mask"]["kept_per_col"] == (w != 0).sum(0).tolist()
    # Fig. 7: the before-histogram counts every dense weight, the after one only survivors.
    assert sum(figs["histogram"]["before"]["counts"]) == 64 * 64
    assert sum(figs["histogram"]["after"]["counts"]) == int(np.count_nonzero(w))
    # Fig. 5: one point per stage after retraining, one per prune step before it.
    series = figs["tradeoff"]["series"]
    assert [len(s["points"]) for s in series] == [4, 3]
    pruned_share = [p["pruned"] for p in series[0]["points"]]
    assert pruned_share[0] == 0 and pruned_share == sorted(pruned_share)
    assert series[0]["points"][-1]["pruned"] == pytest.approx(0.9, abs=1e-3)
    for name in ("mask.png", "histogram.png", "tradeoff.png"):
        blob = (report / name).read_bytes()
        assert blob[:8] == PNG_SIGNATURE
        img = mpimg.imread(io.BytesIO(blob))
        assert 150 <= img.shape[0] <= 1200 and 150 <= img.shape[1] <= 1600, (name, img.shape)
        dark = img[..., :3].mean(axis=2) < 0.5
        assert 0.005 < dark.mean() < 0.9, name  # drawn on, and not a solid block


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "default-src 'none'" in page  # the browser may fetch nothing
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 3
    for src, name in zip(srcs, ("mask.png", "histogram.png", "tradeoff.png")):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (report / name).read_bytes()


def test_outputs_are_byte_stable(pruned, report, tmp_path):
    again = tmp_path / "again"
    assert _run("report", pruned["model"], "--baseline", pruned["dense"], "--history",
                pruned["history"], "-o", again, "-q") == 0
    names = sorted(os.listdir(report))
    assert names == sorted(os.listdir(again)) == sorted(
        ["report.md", "report.html", "report.json", "mask.png", "histogram.png", "tradeoff.png"])
    for name in names:
        assert (report / name).read_bytes() == (again / name).read_bytes(), name


def test_mask_layout_keeps_pixels_in_row_major_order():
    """A fc1 that keeps only the central pixels of a 28×28 image shows 28 bands (Fig. 4)."""
    from onnxprune.analysis.figures import mask_png

    keep = np.zeros((28, 28), bool)
    keep[6:22, 7:21] = True
    w = np.where(keep.reshape(1, -1), 1.0, 0.0).repeat(30, axis=0).astype(np.float32)
    m = mask_matrix(w, out_axis=0)  # Gemm with transB: (out, in)
    assert m.shape == (30, 784)
    assert np.array_equal(m.sum(0).reshape(28, 28) > 0, keep)
    # The same weight stored for MatMul (in, out) gives the same picture.
    assert np.array_equal(mask_matrix(w.T, out_axis=1), m)
    # Each weight is one pixel: the image's dark columns repeat with the image width (28).
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(mask_png(m, title="fc1")))
    dark_cols = np.flatnonzero((img[..., :3].mean(axis=2) < 0.5).sum(0) > 20)
    runs = np.split(dark_cols, np.flatnonzero(np.diff(dark_cols) > 1) + 1)
    long_runs = [r for r in runs if len(r) == 14]
    assert len(long_runs) == 16  # rows 6..21 of the image, 14 pixels each
    assert all(b[0] - a[0] == 28 for a, b in itertools.pairwise(long_runs))


def test_layer_option_and_no_baseline(pruned, tmp_path):
    out = tmp_path / "r"
    assert _run("report", pruned["model"], "--layer", "fc2", "-o", out, "-q") == 0
    data = json.loads((out / "report.json").read_text())
    assert data["figures"]["mask"]["layer"] == "fc2"
    assert "needs --baseline" in data["figures"]["histogram"]["missing"]
    assert "needs --history" in data["figures"]["tradeoff"]["missing"]
    assert sorted(os.listdir(out)) == ["mask.png", "report.html", "report.json", "report.md"]
    # Without a baseline the percentages are relative to the model's own shapes.
    for r in data["table"]["rows"]:
        assert r["weights"] == np.prod(r["weight_shape"])


def test_a_baseline_sharing_no_layer_is_named_as_such(pruned, tmp_path, capsys):
    """--baseline with an unrelated model exited 0 with nothing said; every row read "not in
    the baseline" and the histogram was dropped. One note says what it means."""
    from tests.models import cnn

    other = tmp_path / "other.onnx"
    onnx.save(cnn(channels=(3, 8)), other)
    out = tmp_path / "r"
    assert main(["report", pruned["model"], "--baseline", str(other), "-o", str(out),
                 "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "note: no layer of the model is in the baseline" in err
    notes = json.loads((out / "report.json").read_text())["table"]["notes"]
    assert notes[0].startswith("no layer of the model is in the baseline")
    assert main(["report", pruned["model"], "--baseline", pruned["model"], "-o", str(tmp_path / "s"),
                 "--no-figures", "-q"]) == 0
    assert not any(n.startswith("no layer") for n in
                   json.loads((tmp_path / "s" / "report.json").read_text())["table"]["notes"])


@pytest.mark.parametrize("figures", [[], ["--no-figures"]], ids=["figures", "no_figures"])
def test_a_model_with_no_prunable_layer_is_reported_not_refused(tmp_path, capsys, figures):
    """README: a model with no prunable layer is a success that says so (report exited 2,
    'no prunable layer to plot', even with --no-figures)."""
    from onnx import TensorProto, helper

    src, out = tmp_path / "relu.onnx", tmp_path / "r"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert _run("report", src, "-o", out, *figures) == 0
    assert "no prunable layer found" in capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())
    assert data["figures"]["mask"]["missing"] == data["figures"]["histogram"]["missing"] == \
        "the model has no prunable layer"
    assert "_the model has no prunable layer_" in (out / "report.md").read_text()
    assert _run("report", src, "-o", tmp_path / "r2", "--layer", "fc1", *figures) == 2


def test_report_prints_the_notes_inspect_prints(tmp_path, capsys):
    """What the table leaves out is said on the console too (it was only in report.md)."""
    from onnx import TensorProto, helper

    src = tmp_path / "q.onnx"
    g = helper.make_graph([helper.make_node("MatMulInteger", ["x", "W"], ["y"], name="qmm")], "q",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3])],
                          [numpy_helper.from_array(np.ones((4, 3), np.uint8), "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    assert _run("report", src, "-o", tmp_path / "r", "--no-figures") == 0
    assert "note: qmm (MatMulInteger): quantized weights: not pruned" in capsys.readouterr().err


@pytest.mark.parametrize("case,code", [("no-such-layer", 2), ("history-not-json", 4),
                                        ("history-wrong-shape", 2), ("bad-model", 4),
                                        ("missing-history", 4), ("output-is-a-file", 2)])
def test_bad_inputs(pruned, tmp_path, capsys, case, code):
    args = [pruned["model"], "-o", tmp_path / "o"]
    if case == "no-such-layer":
        args += ["--layer", "conv7"]
    elif case == "history-not-json":
        (tmp_path / "h.json").write_bytes(b"\x00\xffnot json")
        args += ["--history", tmp_path / "h.json"]
    elif case == "history-wrong-shape":
        (tmp_path / "h.json").write_text(json.dumps({"history": [{"stage": "dense"}]}))
        args += ["--history", tmp_path / "h.json"]
    elif case == "missing-history":
        args += ["--history", tmp_path / "none.json"]
    elif case == "bad-model":
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
        args[0] = tmp_path / "bad.onnx"
    elif case == "output-is-a-file":
        (tmp_path / "o").write_text("x")
    assert _run("report", *args) == code
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_without_matplotlib(pruned, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _run("report", pruned["model"], "-o", tmp_path / "a") == 2
    assert "onnxprune[plot]" in capsys.readouterr().err
    assert _run("report", pruned["model"], "--history", pruned["history"], "-o", tmp_path / "b",
                "--no-figures", "-q") == 0
    page = (tmp_path / "b" / "report.html").read_text()
    assert "<img" not in page and "fc1" in page
    assert not any(f.endswith(".png") for f in os.listdir(tmp_path / "b"))


# --------------------------------------------------------------------------- a real browser


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(args, profile, timeout=60):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, check=False, capture_output=True, timeout=timeout, text=True)


def test_html_renders_in_headless_chromium(report, tmp_path):
    import matplotlib.image as mpimg

    # 1. Every embedded image decodes in the browser, under the page's own CSP (a probe copy
    #    that also allows one inline script to read the decoded sizes back into the DOM).
    page = (report / "report.html").read_text()
    probe = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    probe = probe.replace("</body>", (
        "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-images', [...document.images].map(i => i.complete + ':' + i.naturalWidth + 'x' "
        "+ i.naturalHeight).join(' ')));</script></body>"))
    assert probe != page
    (tmp_path / "probe.html").write_text(probe)
    res = _browser(["--virtual-time-budget=10000", "--dump-dom",
                    (tmp_path / "probe.html").as_uri()], tmp_path / "profile1")
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'data-images="([^"]*)"', res.stdout)
    assert m, res.stdout[-2000:]
    seen = m.group(1).split()
    expected = []
    for name in ("mask.png", "histogram.png", "tradeoff.png"):
        h, w = mpimg.imread(report / name).shape[:2]
        expected.append(f"true:{w}x{h}")
    assert seen == expected
    assert "<td>Total</td>" in res.stdout and "<td>fc1</td>" in res.stdout

    # 2. The page itself, unmodified, renders to a screenshot with the figures on it.
    shot = tmp_path / "shot.png"
    res = _browser([f"--screenshot={shot}", "--window-size=1100,2600", "--hide-scrollbars",
                    (report / "report.html").as_uri()], tmp_path / "profile2")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2600, 1100)
    grey = img[..., :3].mean(axis=2)
    assert (grey < 0.5).mean() > 0.005  # text and plots, not a blank page
    # The blue histogram bars (Fig. 7) are on screen: colour only the embedded PNGs carry.
    blue = (img[..., 2] > 0.5) & (img[..., 0] < 0.35)
    assert blue.sum() > 500


def test_report_on_a_real_compress_run(pruned, tmp_path):
    """The history written by `onnxprune compress --json` itself (torch extra)."""
    pytest.importorskip("torch")
    folder = pruned["folder"]
    comp, hist = tmp_path / "c.onnx", tmp_path / "c.json"
    assert _run("compress", pruned["dense"], "-o", comp, "--train", folder / "train.npz",
                "--val", pruned["val"], "--iterations", "1", "--target-sparsity", "0.8",
                "--epochs", "1", "--lr", "0.01", "--json", hist, "-q") == 0
    out = tmp_path / "r"
    assert _run("report", comp, "--baseline", pruned["dense"], "--history", hist, "-o", out,
                "-q") == 0
    data = json.loads((out / "report.json").read_text())
    series = data["figures"]["tradeoff"]["series"]
    stages = [p["stage"] for p in series[0]["points"]]
    assert stages == ["dense", "iteration 1", "remove-dead-neurons"]
    assert [p["stage"] for p in series[1]["points"]] == ["iteration 1"]
    assert data["table"]["total"]["weights_pct"] <= 20.5
    assert (out / "tradeoff.png").read_bytes()[:8] == PNG_SIGNATURE
