"""The rational approximation of erf that CsrConv's and CsrGemm's vector Gelu use
(runtime_ops/src/kernels.cc, GeluN): erf(s) ≈ s·P(s²)/Q(s²) on |s| ≤ 3.92, P of degree 5,
Q of degree 5 with Q(0) = 1, fitted by iteratively reweighted linear least squares (Loeb's
method: P(u)·s − erf(s)·Q(u) ≈ 0, weighted by 1/|Q| of the previous step) on 4000 Chebyshev
nodes. Beyond 3.92 erf rounds to ±1 in float32, so the kernel clamps there. In float64 the
fit is within 2e-8 of erf; evaluated in float32 as the kernel does, within 5e-7.

    python runtime_ops/fit_erf.py     # prints the coefficients as the kernel writes them

tests/test_runtime_ops_activation.py checks that the kernel's coefficients are these.
"""

from __future__ import annotations

import math

import numpy as np

CLAMP = 3.92
P_TERMS, Q_TERMS = 6, 5  # P: 6 coefficients; Q: 1 + 5


def fit(nodes: int = 4000, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q) coefficients, lowest degree first, in float64."""
    s = CLAMP / 2 + CLAMP / 2 * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    y = np.array([math.erf(v) for v in s])
    u = s * s
    weight = np.ones_like(s)
    for _ in range(iterations):
        a = np.concatenate([s[:, None] * u[:, None] ** np.arange(P_TERMS),
                            -y[:, None] * u[:, None] ** np.arange(1, Q_TERMS + 1)], axis=1)
        sol = np.linalg.lstsq(a * weight[:, None], y * weight, rcond=None)[0]
        p, q = sol[:P_TERMS], np.concatenate([[1.0], sol[P_TERMS:]])
        weight = 1 / np.abs(np.polyval(q[::-1], u))
    return p, q


def coefficients() -> tuple[list[str], list[str]]:
    """The float32 coefficients as the kernel spells them (shortest round-trip repr + "f")."""
    p, q = fit()
    return ([str(np.float32(c)) + "f" for c in p], [str(np.float32(c)) + "f" for c in q[1:]])


if __name__ == "__main__":
    p, q = coefficients()
    print("P:", ", ".join(p))
    print("Q (after 1):", ", ".join(q))
