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

import numpy as np

__all__ = [
    "weight_std",
    "std_threshold_mask",
    "quality_for_sparsity",
    "global_quality_for_sparsity",
    "pruned_fraction",
]


def _as_f64(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype != np.float64:
        w = w.astype(np.float64)
    return w


def weight_std(w: np.ndarray) -> float:
    """Population standard deviation of a layer's weights, computed in float64."""
    w = _as_f64(w)
    if w.size == 0:
        return 0.0
    return float(np.std(w))


def std_threshold_mask(w: np.ndarray, quality: float) -> tuple[np.ndarray, float, float]:
    """Keep-mask for ``|w| >= quality · std(w)``.

    Returns ``(keep, std, threshold)``; ``keep`` is a bool array shaped like ``w``.
    """
    if not np.isfinite(quality) or quality < 0:
        raise ValueError(f"quality must be a finite number >= 0, got {quality}")
    w64 = _as_f64(w)
    std = weight_std(w64)
    threshold = float(quality) * std
    keep = np.abs(w64) >= threshold
    if threshold == 0.0:
        keep = np.ones(w64.shape, dtype=bool)
    # Existing zeros are dead connections; never keep them alive.
    keep &= w64 != 0
    return keep, std, threshold


def pruned_fraction(keep: np.ndarray) -> float:
    return 1.0 - float(np.count_nonzero(keep)) / keep.size if keep.size else 0.0


def quality_for_sparsity(w: np.ndarray, sparsity: float) -> float:
    """Smallest q whose threshold prunes at least ``sparsity`` of ``w`` (per-layer target mode).

    The threshold is placed between the k-th and (k+1)-th smallest magnitudes so that exactly
    ``k = ceil(sparsity · n)`` weights fall below it (ties at the boundary are pruned together).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")
    w64 = _as_f64(w).reshape(-1)
    n = w64.size
    std = weight_std(w64)
    if n == 0 or std == 0.0:
        return 0.0
    k = int(np.ceil(sparsity * n - 1e-9))
    if k <= 0:
        return 0.0
    mags = np.abs(w64)
    # k-th smallest (index k-1) is pruned; the threshold sits just above it.
    kth = np.partition(mags, k - 1)[k - 1]
    above = mags[mags > kth]
    upper = float(above.min()) if above.size else float(kth) * 2 + 1e-30
    threshold = (float(kth) + upper) / 2
    return threshold / std


def global_quality_for_sparsity(layers: list[np.ndarray], sparsity: float,
                                iterations: int = 60) -> float:
    """One q for all layers such that the total pruned share reaches ``sparsity``.

    Bisection on q over the layers' normalised magnitudes ``|w|/σ``: the pruned count is
    monotone in q, so the smallest q reaching the target is found to ~1e-12 relative.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")
    normed = []
    total = 0
    for w in layers:
        w32 = np.asarray(w, dtype=np.float32).reshape(-1)
        std = weight_std(w32)
        total += w32.size
        if std > 0:
            normed.append(np.abs(w32) / np.float32(std))
        else:
            normed.append(None)
    if total == 0 or sparsity == 0.0:
        return 0.0
    need = int(np.ceil(sparsity * total - 1e-9))

    def pruned(q: float) -> int:
        c = 0
        for m, w in zip(normed, layers):
            if m is None:
                c += int(np.count_nonzero(np.asarray(w) == 0))
            else:
                c += int(np.count_nonzero(m < q))
        return c

    lo, hi = 0.0, 1.0
    while pruned(hi) < need:
        hi *= 2
        if hi > 1e6:
            return hi
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if pruned(mid) >= need:
            hi = mid
        else:
            lo = mid
    return hi
