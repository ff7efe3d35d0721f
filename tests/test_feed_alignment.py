"""Timing feeds start on 64 bytes (onnxprune.runtime.check.FEED_ALIGNMENT), as ONNX Runtime's
own tensors do: a large numpy array starts 16 bytes past a 64-byte line, and a kernel reading
its input in place (a 1x1 convolution) ran 0.69-0.78x as fast on one, so the measured
lowering's one-node timings judged such layers slower than they run inside the model
(MobileNetV2's 1x1 layers on 56x56 and 28x28 maps: 1.27-1.75x measured, 2.13-2.48x aligned)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.runtime.bench import one_node_pairs
from onnxprune.runtime.check import FEED_ALIGNMENT, aligned, random_inputs
from tests.models import cnn, mlp
from tests.test_lower_measure import masked
from tests.test_lower_to_sparse_ops import _lower


def _starts_aligned(a: np.ndarray) -> bool:
    return a.ctypes.data % FEED_ALIGNMENT == 0 and a.flags.c_contiguous


@pytest.mark.parametrize("make", [
    lambda: np.random.default_rng(0).standard_normal((1, 256, 56, 56)).astype(np.float32),  # 16 past a line
    lambda: np.arange(60, dtype=np.int64).reshape(3, 4, 5).transpose(2, 0, 1),  # not C-ordered
    lambda: np.arange(7, dtype=np.float32)[1:],  # 4 bytes past wherever its buffer starts
    lambda: np.zeros((0, 3), np.float32),
    lambda: np.array([True, False]),
], ids=["large", "transposed", "offset", "empty", "bool"])
def test_aligned_keeps_values_shape_and_type(make):
    a = make()
    b = aligned(a)
    assert _starts_aligned(b) or b.size == 0
    assert b.shape == a.shape and b.dtype == a.dtype
    assert np.array_equal(a, b)
    assert aligned(b) is b or b.size == 0  # already aligned: returned as is


def test_object_arrays_pass_through():
    a = np.array(["a", "bc"], dtype=object)
    assert aligned(a) is a


def test_random_inputs_and_one_node_feeds_are_aligned():
    model = cnn()
    feeds = random_inputs(model, batch=1000)  # 1.7 MB: a mapped chunk, 16 bytes past a line
    assert feeds and all(_starts_aligned(v) for v in feeds.values())
    lowered, _ = _lower(masked(mlp(sizes=(64, 48, 32, 10)), density=0.3), force=["*"])
    pairs = list(one_node_pairs(lowered, lowered, random_inputs(lowered, batch=1024), 1, 17, 0))
    assert len(pairs) == 3
    for _node, _inits, _shape, x, _dense, _sparse in pairs:
        assert all(_starts_aligned(v) for v in x.values())
