"""bench/bench_kernels.py --gemv-lanes: each batch-1 FC case timed again with its CsrGemm passes
kept on the CSR (ONNXPRUNE_GEMV_SELL=0), beside the default choice; other rows untouched."""

from __future__ import annotations

import os

from tests.test_bench_kernels_winograd import _bench_kernels, _rows


def test_batch1_fc_rows_get_a_csr_pass_timing(tmp_path):
    rows, stdout = _rows(tmp_path, "LeNet", "--gemv-lanes")
    one = [r for r in rows if r["batch"] == 1]
    assert one and all(r["csr_pass_ms"] > 0 and r["csr_pass_speedup"] > 0 for r in one)
    for r in one:  # the ratio of the two speed-ups, as printed
        assert r["lanes_over_csr_pass"] > 0
    assert all("csr_pass_ms" not in r for r in rows if r["batch"] != 1)
    assert "CSR pass" in stdout


def test_other_cases_and_runs_without_the_flag_have_none(tmp_path):
    rows, _ = _rows(tmp_path, "512->512 3x3 7x7", "--gemv-lanes")
    assert rows and all("csr_pass_ms" not in r for r in rows)
    rows, stdout = _rows(tmp_path, "LeNet")
    assert rows and all("csr_pass_ms" not in r for r in rows) and "CSR pass" not in stdout


def test_a_session_made_under_settings_restores_the_environment(monkeypatch):
    import numpy as np

    bench_kernels = _bench_kernels()

    monkeypatch.setenv("ONNXPRUNE_GEMV_SELL", "1")
    monkeypatch.delenv("ONNXPRUNE_GEMV_BLOCKS", raising=False)
    _, sparse, _, _ = bench_kernels.mlp_models([64, 32], [0.5], np.random.default_rng(0))
    s = bench_kernels.make_session(sparse, 1, True, {"ONNXPRUNE_GEMV_SELL": "0", "ONNXPRUNE_GEMV_BLOCKS": "0"})
    assert os.environ["ONNXPRUNE_GEMV_SELL"] == "1" and "ONNXPRUNE_GEMV_BLOCKS" not in os.environ
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    assert s.run(None, {"X": x})[0].shape == (1, 32)
    # a setting the library refuses fails the session, and still leaves the environment as it was
    try:
        bench_kernels.make_session(sparse, 1, True, {"ONNXPRUNE_GEMV_SELL": "maybe"})
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own failure types
        assert "ONNXPRUNE_GEMV_SELL=maybe" in str(e)
    else:
        raise AssertionError("the refused setting was accepted")
    assert os.environ["ONNXPRUNE_GEMV_SELL"] == "1"


def test_three_sessions_take_turns_after_the_first():
    bench_kernels = _bench_kernels()
    calls: list[str] = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, _outputs, _feed):
            calls.append(self.name)

    medians = bench_kernels.time_sessions([Fake("d"), Fake("a"), Fake("b")], {}, repeats=4)
    assert len(medians) == 3 and all(m >= 0 for m in medians)
    timed = "".join(calls[9:])  # after 3 warm-up rounds
    assert timed == "dab" "dba" "dab" "dba"
    calls.clear()
    bench_kernels.time_sessions([Fake("d"), Fake("s")], {}, repeats=3)
    assert "".join(calls[6:]) == "ds" * 3  # two sessions keep their strict alternation


def test_the_density_grid_with_float16_values(tmp_path):
    # --sweep-values fp16: the same grid, its CSRs storing float16 values (fewer bytes a call)
    rows16, _ = _rows(tmp_path, "FC 1024->1024 @ 50%", "--only-sweep", "--sweep-values", "fp16")
    rows32, _ = _rows(tmp_path, "FC 1024->1024 @ 50%", "--only-sweep")
    one16 = [r for r in rows16 if r["batch"] == 1]
    one32 = [r for r in rows32 if r["batch"] == 1]
    assert [r["case"] for r in one16] == ["FC 1024->1024 @ 50%, fp16 values"]
    assert [r["case"] for r in one32] == ["FC 1024->1024 @ 50%"]
    assert one16[0]["sparse_mb"] < one32[0]["sparse_mb"] and one16[0]["dense_mb"] == one32[0]["dense_mb"]
