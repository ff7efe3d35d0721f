"""Corpus sweep: `onnxprune prune` over real ONNX graphs nobody on the project wrote.

Every model gives either a pruned model that passes onnx.checker, loads and runs in ONNX
Runtime and — where nothing was pruned or only dead units were removed — computes the input's
outputs; or a one-line refusal with exit code 4.  See ``tests/corpus.py`` for the sources and
the rules.  The default run sweeps a fixed subset; ``-m corpus`` sweeps everything (the counts
in docs/RELIABILITY.md come from ``python bench/corpus_sweep.py``).
"""

import itertools
import os

import pytest

from tests import corpus


def _assert_clean(results):
    assert results, "the sweep ran no model"
    failures = [f"{r.name} [{r.config}]: {'; '.join(r.problems)}" for r in results if r.problems]
    assert not failures, f"{len(failures)} failing runs:\n" + "\n".join(failures[:40])


def _every(iterable, step):
    return itertools.islice(iterable, 0, None, step)


def test_quick_node_tests(tmp_path):
    """Every 20th onnx node test and every frozen Gemm/MatMul/Conv/ConvTranspose test."""
    cases = list(corpus.onnx_node_cases())
    plain = [c for c in cases if c.source == "onnx-node"]
    frozen = [c for c in cases if c.source == "onnx-node-frozen"]
    assert len(plain) > 1000 and len(frozen) > 20
    # The optional/sequence-typed tests are where onnx-graphsurgeon used to fail.
    picked = list(_every(plain, 20)) + [c for c in plain if "optional" in c.name][:4] + frozen
    results = corpus.sweep(picked, str(tmp_path), configs=["default", "q0"])
    _assert_clean(results)
    assert any(r.outcome == "pruned" for r in results)


def test_quick_bundled_model_files(tmp_path):
    names = ("test_Conv2d", "test_Linear", "test_BatchNorm2d_eval", "test_sequence_model1",
             "test_PReLU_1d", "light_squeezenet", "light_shufflenet", "test_gradient_of_add")
    cases = [c for c in corpus.onnx_data_cases(max_params=2_000_000)
             if c.name.rsplit("/", 1)[-1] in names]
    if not cases:
        pytest.skip("the onnx package ships no backend test data")
    results = corpus.sweep(cases, str(tmp_path))
    _assert_clean(results)
    outcomes = {(r.source, r.outcome) for r in results}
    # The materialised light architectures are real networks with prunable weights.
    assert ("onnx-data-materialised", "pruned") in outcomes
    # test_gradient_of_add needs an op ONNX Runtime lacks: counted as not runnable.
    assert any(not r.runnable for r in results if "gradient" in r.name)


def test_quick_debian_testdata(tmp_path):
    if not os.path.isdir(corpus.DEBIAN_DATA):
        pytest.skip("Debian's libonnx-testdata is not installed")
    results = corpus.sweep(_every(corpus.debian_cases(), 40), str(tmp_path),
                           configs=["default", "q0"])
    _assert_clean(results)


@pytest.mark.torch
def test_quick_torch_exports(tmp_path):
    pytest.importorskip("torch")
    cases = list(corpus.torch_cases(str(tmp_path / "exports"),
                                    names=("depthwise-separable", "convtranspose-decoder")))
    assert cases, "no architecture exported"
    results = corpus.sweep(cases, str(tmp_path / "work"))
    _assert_clean(results)
    assert {r.outcome for r in results if r.config == "default"} == {"pruned"}


# --------------------------------------------------------------------------- full tier


@pytest.mark.corpus
@pytest.mark.parametrize("source", ["onnx-node", "onnx-data", "debian", "torch"])
def test_full_corpus(tmp_path, source):
    if source == "onnx-node":
        cases = corpus.onnx_node_cases()
    elif source == "onnx-data":
        cases = corpus.onnx_data_cases(max_params=30_000_000)
    elif source == "debian":
        if not os.path.isdir(corpus.DEBIAN_DATA):
            pytest.skip("Debian's libonnx-testdata is not installed "
                        "(apt-get install -y libonnx-testdata)")
        cases = corpus.debian_cases()
    else:
        pytest.importorskip("torch")
        cases = corpus.torch_cases(str(tmp_path / "exports"))
    _assert_clean(corpus.sweep(cases, str(tmp_path / "work")))
