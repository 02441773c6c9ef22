"""Helpers for layer tests: PyTorch references and float64 finite differences.

Finite differences are taken along random directions v: the central quotient
(f(x + h v) - f(x - h v)) / 2h, accumulated in float64, is compared with the
analytic directional derivative <grad, v>. Directional checks average out the
float32 rounding of single-element differences, so the tolerance can be tight.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Tolerances used across the layer tests (stated once, here).
FWD_RTOL = 1e-5  # forward vs PyTorch, relative to max |reference|
GRAD_RTOL = 1e-4  # gradients vs PyTorch, relative to max |reference|
FD_RTOL = 2e-3  # directional finite difference vs analytic gradient


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max |b|, 1e-6): a scale-aware error for whole tensors."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6)) if a.size else 0.0


def assert_close(a: np.ndarray, b: np.ndarray, rtol: float, what: str) -> None:
    err = rel_err(a, b)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def directional_fd(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    grad: np.ndarray,
    rng: np.random.Generator,
    n_dirs: int = 3,
    h: float = 1e-2,
) -> float:
    """Worst relative mismatch between FD and analytic directional derivatives of f at x.

    f maps a float32 array to a float64 scalar (e.g. sum(y * r) in float64).
    """
    worst = 0.0
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)  # RMS 1: every element moves by about h
        xp = (x.astype(np.float64) + h * v).astype(np.float32)
        xm = (x.astype(np.float64) - h * v).astype(np.float32)
        # The step actually taken after rounding to float32.
        step = (xp.astype(np.float64) - xm.astype(np.float64)) / 2.0
        fd = (f(xp) - f(xm)) / 2.0
        an = float(np.sum(grad.astype(np.float64) * step))
        # Typical size of a random directional derivative: guards against directions
        # that happen to be nearly orthogonal to the gradient.
        typical = float(np.linalg.norm(grad) * np.linalg.norm(step)) / np.sqrt(max(x.size, 1))
        scale = max(abs(fd), abs(an), typical, 1e-12)
        worst = max(worst, abs(fd - an) / scale)
    return worst


def probe(y: np.ndarray, r: np.ndarray) -> float:
    """float64 scalar sum(y * r): the function whose gradient wrt y is r."""
    return float(np.sum(y.astype(np.float64) * r.astype(np.float64)))
