"""Pure numeric core of magnitude pruning (no graph, no I/O).

Han et al. (2015) prune, per layer, every weight whose magnitude is below a threshold
``t = q · σ(W)``, where σ is the standard deviation of the layer's weights and q the
layer's quality parameter.  For Gaussian weights with mean 0 the pruned share is
``P(|w| < qσ) = erf(q/√2)``; so q = 1 prunes ~68% and q = 1.645 ~90%.

Invariants:
* the mask is monotone in q: a larger q never revives a weight;
* zeros already in the layer stay pruned (|0| < t for any t > 0; for t = 0 nothing is pruned);
* σ is the population standard deviation of all weights (pruned ones included, as zeros), so
  re-running the same q on a pruned layer raises the bar only through the changed σ — the
  pipeline's stamp prevents that second application (see ``pipeline``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "weight_std",
    "std_threshold_mask",
    "quality_for_sparsity",
    "global_quality_for_sparsity",
    "pruned_fraction",
    "apply_threshold",
    "count_nonzero",
    "count_nonfinite",
    "retrain_dropout",
]


CHUNK = 1 << 20  # elements per chunk: bounds temporaries to a few MB whatever the layer size


def _chunks(w: np.ndarray):
    """Flat chunks of ``w`` (views, no copy for contiguous arrays)."""
    flat = np.asarray(w).reshape(-1)
    for i in range(0, flat.size, CHUNK):
        yield flat[i:i + CHUNK]


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64, copy=False)


def weight_std(w: np.ndarray) -> float:
    """Population standard deviation, accumulated in float64 over chunks in one pass.

    Each chunk contributes its float64 sum and sum of squares, combined with Chan et al.'s
    pairwise update (no cancellation from E[x²] − E[x]²); squares are formed in the weights'
    own precision (float32 for fp16/bf16).  Deterministic on every machine, and no full-size
    temporary whatever the layer size.

    NaN when ``w`` holds a NaN or ±Inf (σ is undefined; no numpy warning is printed):
    callers refuse such layers (``count_nonfinite``) rather than threshold against NaN.
    """
    w = np.asarray(w)
    if w.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        return _weight_std(w)


def _weight_std(w: np.ndarray) -> float:
    work = np.float64 if w.dtype == np.float64 else np.float32
    buf = np.empty(min(CHUNK, w.size), dtype=work)
    n = 0
    mean = 0.0
    m2 = 0.0
    for c in _chunks(w):
        k = c.size
        d = buf[:k]
        cmean = float(c.sum(dtype=np.float64)) / k
        with np.errstate(over="ignore"):
            np.subtract(c, work(cmean), out=d, casting="unsafe")
            np.square(d, out=d)
            cm2 = float(d.sum(dtype=np.float64))
        if not np.isfinite(cm2) and np.all(np.isfinite(c)):
            # Squares of values beyond ~1e19 overflow float32: redo this chunk in float64.
            d64 = c.astype(np.float64) - cmean
            cm2 = float(np.dot(d64, d64))
        delta = cmean - mean
        total = n + k
        mean += delta * k / total
        m2 += cm2 + delta * delta * n * k / total
        n = total
    return float(np.sqrt(m2 / n))


def std_threshold_mask(w: np.ndarray, quality: float) -> tuple[np.ndarray, float, float]:
    """Keep-mask for ``|w| >= quality · std(w)``.

    Returns ``(keep, std, threshold)``; ``keep`` is a bool array shaped like ``w``.
    """
    _check_quality(quality)
    std = weight_std(w)
    threshold = float(quality) * std
    w64 = _f64(np.asarray(w))
    keep = np.abs(w64) >= threshold
    if threshold == 0.0:
        keep = np.ones(w64.shape, dtype=bool)
    # Existing zeros are dead connections; never keep them alive.
    keep &= w64 != 0
    return keep, std, threshold


def _check_quality(quality: float) -> None:
    if not np.isfinite(quality) or quality < 0:
        raise ValueError(f"quality must be a finite number >= 0, got {quality}")


def _threshold_in(dtype: np.dtype, threshold: float):
    """The threshold in ``dtype`` such that ``|w| >= t_dtype`` ⟺ ``|w| >= threshold`` exactly.

    ``w`` is representable in its dtype, so comparing against the smallest representable value
    not below ``threshold`` gives the float64 answer without converting the weights.
    """
    t = dtype.type(threshold)
    if float(t) < threshold:
        t = np.nextafter(t, dtype.type(np.inf))
    return t


def apply_threshold(w: np.ndarray, threshold: float) -> tuple[np.ndarray, int, int]:
    """``w ⊙ [|w| ≥ threshold]`` as a new array of ``w``'s dtype, built chunk by chunk.

    Same rule as ``std_threshold_mask``.  Returns ``(pruned, nonzero_before, nonzero_after)``;
    ``w`` itself is never written (it may be a read-only memory map of the input file).
    """
    w = np.asarray(w)
    before = after = 0
    native = w.dtype in (np.float32, np.float64)
    work = w.dtype if native else np.dtype(np.float32)  # fp16/bf16 values are exact in float32

    t = _threshold_in(work, threshold)
    n = min(CHUNK, w.size)
    absbuf = np.empty(n, dtype=work)
    mask = np.empty(n, dtype=bool)
    out = np.empty(w.shape, dtype=w.dtype)
    flat_out = out.reshape(-1)
    pos = 0
    for c in _chunks(w):
        m = c.size
        a, k = absbuf[:m], mask[:m]
        np.abs(c, out=a, casting="unsafe")
        np.greater_equal(a, t, out=k)
        before += int(np.count_nonzero(c))
        dst = flat_out[pos:pos + m]
        np.multiply(c, k, out=dst, casting="unsafe")
        # -0.0 · 0 is -0.0; x + 0.0 turns it into +0.0 and leaves every other x as it is, so
        # pruned weights are a canonical +0.0 in the file.
        np.add(dst, dst.dtype.type(0), out=dst)
        after += int(np.count_nonzero(dst))
        pos += m
    return out, before, after


def count_nonzero(w: np.ndarray) -> int:
    return sum(int(np.count_nonzero(c)) for c in _chunks(w))


def count_nonfinite(w: np.ndarray) -> int:
    """How many of ``w``'s values are NaN or ±Inf (0 for integer arrays), chunk by chunk."""
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.inexact):
        return 0
    return sum(c.size - int(np.count_nonzero(np.isfinite(c))) for c in _chunks(w))


def pruned_fraction(keep: np.ndarray) -> float:
    return 1.0 - float(np.count_nonzero(keep)) / keep.size if keep.size else 0.0


def _bucket_shift(dtype: np.dtype) -> int:
    # Non-negative IEEE floats order like their bit patterns; the top 16 bits below the sign
    # bit make a 65536-bucket histogram without any float arithmetic.
    return dtype.itemsize * 8 - 17


def _kth_smallest(chunk_fn, k: int) -> tuple[float, float | None]:
    """The k-th smallest (1-based) of non-negative floats streamed by ``chunk_fn()``, and the
    smallest value above it (None if there is none).

    One histogram pass over the values' bit patterns finds the bucket holding the k-th value; a
    second pass collects that bucket's members (few, for real weights) and selects exactly.
    Memory stays at one chunk plus one bucket, whatever the layer size.
    """
    counts = None
    shift = None
    utype = None
    for v in chunk_fn():
        if counts is None:
            shift = _bucket_shift(v.dtype)
            utype = np.uint32 if v.dtype.itemsize == 4 else np.uint64
            counts = np.zeros(1 << 16, dtype=np.int64)
        counts += np.bincount(np.right_shift(v.view(utype), shift), minlength=1 << 16)
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, k))
    below = int(cum[b - 1]) if b > 0 else 0

    def members(bucket):
        found = [v[np.right_shift(v.view(utype), shift) == bucket] for v in chunk_fn()]
        return np.concatenate(found)

    m = np.sort(members(b))
    kth = float(m[k - below - 1])
    above = m[m > kth]
    if above.size:
        return kth, float(above[0])
    later = np.flatnonzero(counts[b + 1:])
    if later.size == 0:
        return kth, None
    return kth, float(members(b + 1 + int(later[0])).min())


def quality_for_sparsity(w: np.ndarray, sparsity: float) -> float:
    """q whose threshold prunes ``k = ceil(sparsity · n)`` weights of ``w`` (ties pruned together).

    The threshold sits midway between the k-th and (k+1)-th smallest magnitudes; magnitudes
    are exact in the weights' own precision, so no conversion of the layer is needed.
    """
    return global_quality_for_sparsity([w], sparsity)


def global_quality_for_sparsity(layers: list[np.ndarray], sparsity: float) -> float:
    """One q for all layers such that the pruned share of all their weights is ``sparsity``.

    Each layer prunes ``|w| < q·σ_l``, i.e. ``|w|/σ_l < q``: q is placed just above the k-th
    smallest normalised magnitude over all layers (k = ceil(sparsity · total)).  With a single
    layer this is the per-layer solver (and σ cancels out).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")
    layers = [np.asarray(w) for w in layers]
    stds = [weight_std(w) for w in layers]
    usable = [(w, s) for w, s in zip(layers, stds) if s > 0]
    k = int(np.ceil(sparsity * sum(w.size for w in layers) - 1e-9))
    # Layers with σ = 0 (all weights equal) cannot be thresholded relative to σ; zeros in them
    # are already pruned and count towards the target.
    k -= sum(count_zero(w) for w, s in zip(layers, stds) if s == 0)
    n = sum(w.size for w, _ in usable)
    if n == 0 or k <= 0:
        return 0.0
    k = min(k, n)
    single = len(usable) == 1

    def chunk_fn():
        for w, s in usable:
            for c in _chunks(w):
                if c.dtype.itemsize < 4:
                    c = c.astype(np.float32)  # fp16/bf16 are exact in float32
                a = np.abs(c)
                if not single:
                    a *= a.dtype.type(1.0 / s)
                yield a

    kth, upper = _kth_smallest(chunk_fn, k)
    t = (kth + upper) / 2 if upper is not None else kth * 2 + 1e-12
    return t / usable[0][1] if single else t


def count_zero(w: np.ndarray) -> int:
    return int(np.asarray(w).size) - count_nonzero(w)


def retrain_dropout(d_o: float, c_ir: int, c_io: int) -> float:
    """Han et al. (2015) eq. (2), the dropout ratio for retraining: ``D_r = D_o·√(C_ir/C_io)``.

    C_io is the connection count of the layer the Dropout follows before pruning, C_ir after
    (its nonzero weights); fewer connections, less dropout.  A layer without connections keeps
    D_o.  The one definition used by the AdjustDropout pass and the fine-tune bridge.
    """
    if c_io <= 0:
        return float(d_o)
    return float(d_o) * math.sqrt(max(int(c_ir), 0) / int(c_io))
