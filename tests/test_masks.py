"""Property tests for the mask maths (pure numpy, no graphs)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from onnxprune.core import masks

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
weights = arrays(np.float32, st.integers(1, 300), elements=finite)


@given(weights, st.floats(0, 5), st.floats(0, 5))
def test_mask_is_monotone_in_quality(w, q1, q2):
    lo, hi = sorted((q1, q2))
    keep_lo, _, _ = masks.std_threshold_mask(w, lo)
    keep_hi, _, _ = masks.std_threshold_mask(w, hi)
    # A larger q never revives a weight.
    assert not np.any(keep_hi & ~keep_lo)


@given(weights, st.floats(0, 5))
def test_mask_definition(w, q):
    keep, std, t = masks.std_threshold_mask(w, q)
    assert std == pytest.approx(float(np.std(w.astype(np.float64))))
    assert t == pytest.approx(q * std)
    expected = (np.abs(w.astype(np.float64)) >= t) & (w != 0)
    if t == 0:
        expected = w != 0
    assert np.array_equal(keep, expected)


@pytest.mark.parametrize("q", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_gaussian_pruned_share_matches_erf(q):
    w = np.random.default_rng(0).standard_normal(400_000).astype(np.float32)
    keep, _, _ = masks.std_threshold_mask(w, q)
    assert masks.pruned_fraction(keep) == pytest.approx(math.erf(q / math.sqrt(2)), abs=0.005)


def test_existing_zeros_stay_pruned():
    w = np.array([0.0, 0.0, 5.0, -5.0, 0.1], np.float32)
    keep, _, _ = masks.std_threshold_mask(w, 0.0)
    assert keep.tolist() == [False, False, True, True, True]


def test_negative_quality_rejected():
    with pytest.raises(ValueError):
        masks.std_threshold_mask(np.ones(3), -1)


@settings(max_examples=50)
@given(arrays(np.float32, st.integers(2, 400), elements=finite), st.floats(0, 0.99))
def test_quality_for_sparsity_reaches_target(w, s):
    q = masks.quality_for_sparsity(w, s)
    keep, _, _ = masks.std_threshold_mask(w, q)
    pruned = w.size - np.count_nonzero(keep)
    # At least the target is pruned; with no ties at the boundary it is exact.
    assert pruned >= math.ceil(s * w.size - 1e-9) or masks.weight_std(w) == 0


def test_quality_for_sparsity_exact_without_ties():
    w = np.random.default_rng(1).standard_normal(10_000)
    for s in (0.1, 0.5, 0.92):
        keep, _, _ = masks.std_threshold_mask(w, masks.quality_for_sparsity(w, s))
        assert 1 - keep.mean() == pytest.approx(s, abs=1e-4)


def test_global_quality_reaches_total_target():
    rng = np.random.default_rng(2)
    layers = [rng.standard_normal(5000) * 0.1, rng.standard_normal(300) * 3, rng.standard_normal(20000)]
    q = masks.global_quality_for_sparsity(layers, 0.8)
    pruned = sum(w.size - np.count_nonzero(masks.std_threshold_mask(w, q)[0]) for w in layers)
    total = sum(w.size for w in layers)
    assert pruned / total == pytest.approx(0.8, abs=2e-3)
    # One q for every layer: each layer's share is erf(q/sqrt 2) for Gaussian weights.
    assert q == pytest.approx(math.sqrt(2) * 0.9062, rel=0.03)  # erfinv(0.8)·√2 ≈ 1.2816


def test_target_out_of_range():
    with pytest.raises(ValueError):
        masks.quality_for_sparsity(np.ones(4), 1.0)


def test_std_of_huge_weights_does_not_overflow():
    w = np.array([1e38, -1e38, 0.0, 1.0], np.float32)
    assert masks.weight_std(w) == pytest.approx(float(np.std(w.astype(np.float64))))


def test_ir3_initializer_inputs_are_pruned_and_stay_inputs():
    import onnx

    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes import ThresholdByStd
    from tests.models import mlp, random_feeds, run

    m = mlp(sizes=(16, 12, 4))
    m.ir_version = 3
    m.opset_import[0].version = 9
    for t in m.graph.initializer:  # IR 3 lists every initializer as a graph input
        m.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    g = graph_from_model(m)
    r = ThresholdByStd({"quality": 1.0})(g)
    assert all(row["nonzero_after"] < row["nonzero_before"] for row in r.stats["layers"])
    out = graph_to_model(g, m)
    onnx.checker.check_model(out)
    assert {i.name for i in out.graph.input} == {i.name for i in m.graph.input}
    assert run(out, {"x": random_feeds(m)["x"]})[0].shape == (3, 4)
