"""Dropout and stochastic depth: seeded masks, exact scaling, gradients vs torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _gradcheck import FD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

import leukemia
from leukemia import _ext
from leukemia.functional import (
    dropout_backward,
    dropout_forward,
    stochastic_depth_backward,
    stochastic_depth_forward,
)

# Large enough that the C loops really run on several OpenMP threads.
BIG = (4, 37, 29, 31)


def _scale(p: float) -> np.float32:
    """The float32 factor kept values are multiplied by (0 for p == 1), as PyTorch."""
    return np.float32(1) / (np.float32(1) - np.float32(p)) if p < 1 else np.float32(0)


def _expected(x: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    return x * np.where(keep.astype(bool), _scale(p), np.float32(0)).astype(np.float32)


@pytest.fixture
def threads():
    before = leukemia.get_num_threads()
    yield
    leukemia.set_num_threads(before)


def _binomial_ok(kept: int, total: int, p: float) -> bool:
    """Empirical keep count within 5 standard deviations of total * (1 - p)."""
    return abs(kept - total * (1 - p)) <= 5 * np.sqrt(total * p * (1 - p)) + 1


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_dropout_scaling_and_keep_rate(p):
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    y, mask = dropout_forward(x, p, seed=1234)
    assert mask.dtype == np.uint8 and mask.shape == x.shape
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(y, _expected(x, mask, p))
    assert _binomial_ok(int(mask.sum()), mask.size, p), (mask.mean(), 1 - p)


def test_dropout_seed_determinism_and_threads(threads):
    x = np.random.default_rng(1).standard_normal(BIG).astype(np.float32)
    y1, m1 = dropout_forward(x, 0.4, seed=7)
    y2, m2 = dropout_forward(x, 0.4, seed=7)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    _, m3 = dropout_forward(x, 0.4, seed=8)
    assert np.mean(m1 != m3) > 0.3  # independent masks differ in ~48 % of places
    _, m4 = dropout_forward(x, 0.4, seed=2**64 - 1)
    assert np.mean(m1 != m4) > 0.3
    leukemia.set_num_threads(1)
    y_1t, m_1t = dropout_forward(x, 0.4, seed=7)
    leukemia.set_num_threads(2)
    y_2t, m_2t = dropout_forward(x, 0.4, seed=7)
    np.testing.assert_array_equal(m_1t, m1)
    np.testing.assert_array_equal(m_2t, m1)
    np.testing.assert_array_equal(y_1t, y_2t)
    # Neighbouring elements are not correlated (a weak generator would show here).
    f = m1.ravel().astype(np.float64)
    assert abs(np.corrcoef(f[:-1], f[1:])[0, 1]) < 0.02


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 16), (3, 4, 9, 11)])
def test_dropout_gradient_matches_torch_and_fd(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    p = 0.35
    x = rng.standard_normal(shape).astype(np.float32)
    y, mask = dropout_forward(x, p, seed=99)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = xt * torch.tensor(mask, dtype=torch.float64) / (1 - p)
    assert_close(y, yt.detach().numpy(), 1e-6, "dropout forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx = dropout_backward(dy, mask, p)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "dropout dx")
    np.testing.assert_array_equal(dx, _expected(dy, mask, p))
    fx = lambda xx: probe(dropout_forward(xx, p, seed=99)[0], dy)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL


def test_dropout_edge_p():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y, mask = dropout_forward(x, 0.0, seed=5)
    assert mask.all()
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dropout_backward(x, mask, 0.0), x)
    y, mask = dropout_forward(x, 1.0, seed=5)
    assert not mask.any()
    assert np.all(y == 0) and np.all(np.isfinite(y))
    dx = dropout_backward(x, mask, 1.0)
    assert np.all(dx == 0) and np.all(np.isfinite(dx))
    # Empty input is fine; a bool mask is accepted.
    y, mask = dropout_forward(np.zeros((0, 3), np.float32), 0.5, seed=1)
    assert y.shape == (0, 3) and mask.shape == (0, 3)
    y, mask = dropout_forward(x, 0.5, seed=3)
    np.testing.assert_array_equal(
        dropout_backward(x, mask.astype(bool), 0.5), dropout_backward(x, mask, 0.5)
    )


def test_dropout_bad_inputs():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        dropout_forward(x.astype(np.float64), 0.5, 1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        dropout_forward([1.0, 2.0], 0.5, 1)  # type: ignore[arg-type]
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            dropout_forward(x, p, 1)
    with pytest.raises(TypeError, match="p must be a float"):
        dropout_forward(x, "0.5", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be in"):
        dropout_forward(x, 0.5, -1)
    with pytest.raises(ValueError, match="seed must be in"):
        dropout_forward(x, 0.5, 2**64)
    with pytest.raises(TypeError, match="seed must be an int"):
        dropout_forward(x, 0.5, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask has shape"):
        dropout_backward(x, np.ones((3, 2), np.uint8), 0.5)
    with pytest.raises(TypeError, match="mask must have dtype uint8"):
        dropout_backward(x, np.ones((2, 3), np.float32), 0.5)
    # Direct binding: outputs checked, p checked by the core.
    y, m = np.zeros_like(x), np.zeros((2, 3), np.uint8)
    ro = np.zeros_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().dropout_forward(ro, m, x, 0.5, 1)
    with pytest.raises(ValueError, match="y must be C-contiguous"):
        _ext().dropout_forward(np.zeros((2, 6), np.float32)[:, ::2], m, x, 0.5, 1)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        _ext().dropout_forward(y, np.zeros((2, 2), np.uint8), x, 0.5, 1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        _ext().dropout_forward(y, m, x, 1.5, 1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        _ext().dropout_backward(y, x, m, float("nan"))
    with pytest.raises(TypeError, match="mask must have dtype uint8"):
        _ext().dropout_backward(y, x, x, 0.5)


# -------------------------------------------------------- stochastic depth
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_stochdepth_rows_and_keep_rate(p, threads):
    n = 20000
    x = np.random.default_rng(3).standard_normal((n, 3)).astype(np.float32)
    y, keep = stochastic_depth_forward(x, p, seed=11)
    assert keep.shape == (n,) and keep.dtype == np.uint8
    assert _binomial_ok(int(keep.sum()), n, p)
    np.testing.assert_array_equal(y, _expected(x, keep[:, None], p))
    leukemia.set_num_threads(1)
    y1, k1 = stochastic_depth_forward(x, p, seed=11)
    leukemia.set_num_threads(2)
    y2, k2 = stochastic_depth_forward(x, p, seed=11)
    np.testing.assert_array_equal(k1, keep)
    np.testing.assert_array_equal(k2, keep)
    np.testing.assert_array_equal(y1, y2)
    _, k3 = stochastic_depth_forward(x, p, seed=12)
    assert np.mean(k3 != keep) > 0.2


@pytest.mark.parametrize("shape", [(1, 4, 5, 3), (5, 24, 9, 7), (64, 8, 3, 3)])
def test_stochdepth_gradient_matches_torch_and_fd(shape):
    rng = np.random.default_rng(shape[0])
    p = 0.3
    x = rng.standard_normal(shape).astype(np.float32)
    y, keep = stochastic_depth_forward(x, p, seed=21)
    # Each sample is either all kept (scaled) or all zero: "row" mode.
    flat = y.reshape(shape[0], -1)
    for i in range(shape[0]):
        assert (not keep[i] and np.all(flat[i] == 0)) or (
            keep[i] and np.all(flat[i] == x.reshape(shape[0], -1)[i] * _scale(p))
        )
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    noise = torch.tensor(keep, dtype=torch.float64).view(-1, *([1] * (len(shape) - 1)))
    yt = xt * noise / (1 - p)  # torchvision.ops.stochastic_depth with this noise
    assert_close(y, yt.detach().numpy(), 1e-6, "stochastic depth forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx = stochastic_depth_backward(dy, keep, p)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "stochastic depth dx")
    fx = lambda xx: probe(stochastic_depth_forward(xx, p, seed=21)[0], dy)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL


def test_stochdepth_edge_p():
    x = np.random.default_rng(4).standard_normal((6, 2, 3, 3)).astype(np.float32)
    y, keep = stochastic_depth_forward(x, 0.0, seed=1)
    assert keep.all()
    np.testing.assert_array_equal(y, x)
    y, keep = stochastic_depth_forward(x, 1.0, seed=1)
    assert not keep.any() and np.all(y == 0) and np.all(np.isfinite(y))
    dx = stochastic_depth_backward(x, keep, 1.0)
    assert np.all(dx == 0) and np.all(np.isfinite(dx))
    # Stochastic depth and dropout draw from different streams for the same seed.
    _, k = stochastic_depth_forward(np.zeros((4096, 1), np.float32), 0.5, seed=9)
    _, m = dropout_forward(np.zeros((4096, 1), np.float32), 0.5, seed=9)
    assert np.mean(k != m[:, 0]) > 0.3


def test_stochdepth_bad_inputs():
    x = np.zeros((3, 2, 2, 2), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        stochastic_depth_forward(x.astype(np.float16), 0.2, 1)
    with pytest.raises(ValueError, match="batch axis"):
        stochastic_depth_forward(np.ones((), np.float32), 0.2, 1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        stochastic_depth_forward(x, 1.01, 1)
    with pytest.raises(ValueError, match="keep has shape"):
        stochastic_depth_backward(x, np.ones(4, np.uint8), 0.2)
    with pytest.raises(TypeError, match="keep must have dtype uint8"):
        stochastic_depth_backward(x, np.ones(3, np.int32), 0.2)
    ro = np.zeros_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().stochastic_depth_forward(ro, np.zeros(3, np.uint8), x, 0.2, 1)
    with pytest.raises(ValueError, match=r"keep has shape \(2\)"):
        _ext().stochastic_depth_forward(np.zeros_like(x), np.zeros(2, np.uint8), x, 0.2, 1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        _ext().stochastic_depth_backward(np.zeros_like(x), x, np.zeros(3, np.uint8), -0.5)
    with pytest.raises(ValueError, match="dx has shape"):
        _ext().stochastic_depth_backward(
            np.zeros((3, 8), np.float32), x, np.zeros(3, np.uint8), 0.5
        )
