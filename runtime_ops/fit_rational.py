"""The rational approximations the vector activations of CsrConv and CsrGemm use
(runtime_ops/src/kernels.cc): ``f(s) ≈ s·P(s²)/Q(s²)`` on ``|s| ≤ clamp``, Q(0) = 1, for

- ``erf`` (Gelu, ``ErfFit``): clamp 3.92, P of degree 5, Q of degree 5;
- ``tanh`` (Sigmoid and Swish, ``TanhFit``, as ``σ(x) = ½ + ½·tanh(x/2)``): clamp 9.01, P of
  degree 4, Q of degree 5.

Beyond the clamp both functions round to ±1 in float32, so the kernels clamp there. Each is
fitted by iteratively reweighted linear least squares (Loeb's method: ``s·P(u) − f(s)·Q(u) ≈ 0``,
weighted by 1/|Q| of the previous step) on 4000 Chebyshev nodes of [0, clamp]. In float64 the
fits are within 2e-8 (erf) and 4e-9 (tanh); evaluated in float32 as the kernels do, within 5e-7
and 4e-7.

    python runtime_ops/fit_rational.py     # prints the coefficients as the kernels write them

tests/test_runtime_ops_activation.py checks that the kernels' coefficients are these.
"""

from __future__ import annotations

import math

import numpy as np

# name -> (function, clamp, coefficients of P, coefficients of Q after its leading 1)
FITS = {
    "erf": (math.erf, 3.92, 6, 5),
    "tanh": (math.tanh, 9.01, 5, 5),
}


def fit(name: str, nodes: int = 4000, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q) coefficients of ``name``'s fit, lowest degree first, in float64."""
    f, clamp, p_terms, q_terms = FITS[name]
    s = clamp / 2 + clamp / 2 * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    y = np.array([f(v) for v in s])
    u = s * s
    weight = np.ones_like(s)
    for _ in range(iterations):
        a = np.concatenate([s[:, None] * u[:, None] ** np.arange(p_terms),
                            -y[:, None] * u[:, None] ** np.arange(1, q_terms + 1)], axis=1)
        sol = np.linalg.lstsq(a * weight[:, None], y * weight, rcond=None)[0]
        p, q = sol[:p_terms], np.concatenate([[1.0], sol[p_terms:]])
        weight = 1 / np.abs(np.polyval(q[::-1], u))
    return p, q


def coefficients(name: str) -> tuple[list[str], list[str]]:
    """The float32 coefficients of P and of Q after its leading 1, as the kernels spell them
    (the shortest float32 round-trip text + "f")."""
    p, q = fit(name)
    return ([str(np.float32(c)) + "f" for c in p], [str(np.float32(c)) + "f" for c in q[1:]])


if __name__ == "__main__":
    for name in FITS:
        p, q = coefficients(name)
        print(f"{name} P:", ", ".join(p))
        print(f"{name} Q (after 1):", ", ".join(q))
