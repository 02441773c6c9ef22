"""Mean/max over channels and softmax over positions vs torch (float64) and finite differences.

Max over channels follows torch.max(x, dim=1).values: ties go to the FIRST maximal
channel (torch.amax would split the gradient evenly; see test_chanstat_ties).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

from leukemia import _ext
from leukemia.functional import (
    channel_stats_backward,
    channel_stats_forward,
    spatial_softmax_backward,
    spatial_softmax_forward,
)

# (n, c, h, w): batch 1 and > 1, odd non-square, one channel.
CHANSTAT_CASES = [(1, 5, 7, 3), (2, 16, 9, 11), (3, 1, 4, 6), (2, 40, 5, 13)]
# (rows, cols): one image, several images, odd position counts (H*W).
SOFTMAX_CASES = [(1, 7), (3, 25), (2, 99), (4, 130)]


def _separated(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    """Random x whose channel values at every position are >= 0.15 apart (no ties, and
    finite-difference steps never change the argmax)."""
    ranks = np.argsort(rng.random((n, h, w, c)), axis=-1).astype(np.float64)
    x = (ranks - c / 2) * 0.2 + rng.uniform(0.0, 0.05, (n, h, w, c))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def _torch_chanstat(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.cat([xt.mean(1, keepdim=True), torch.max(xt, 1, keepdim=True).values], 1)
    return xt, yt


@pytest.mark.parametrize("case", CHANSTAT_CASES, ids=[str(c) for c in CHANSTAT_CASES])
def test_chanstat_matches_torch_and_fd(case):
    n, c, h, w = case
    rng = np.random.default_rng(sum(case))
    x = _separated(rng, n, c, h, w)
    y, argmax = channel_stats_forward(x)
    assert y.shape == (n, 2, h, w) and argmax.shape == (n, h, w) and argmax.dtype == np.int32
    xt, yt = _torch_chanstat(x)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "chanstat forward")
    # amax and max agree without ties
    amax = torch.amax(torch.tensor(x), 1).numpy()
    np.testing.assert_array_equal(y[:, 1], amax)
    np.testing.assert_array_equal(argmax, np.argmax(x, axis=1))

    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx = channel_stats_backward(dy, argmax, c)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "chanstat dx")

    fx = lambda xx: probe(channel_stats_forward(xx)[0], dy)  # noqa: E731
    assert directional_fd(fx, x, dx, rng, h=1e-2) < FD_RTOL


def test_chanstat_ties():
    """Documented choice: torch.max(x, 1).values semantics, first maximal channel wins."""
    x = np.array([1.0, 3.0, 3.0, 2.0, 0.5, 0.5, 0.5, 0.5], np.float32).reshape(1, 8, 1, 1)
    x = np.concatenate([x, x[:, ::-1]], axis=3)  # second position: the tie in reverse order
    x = np.concatenate([x, np.full((1, 8, 1, 2), 0.25, np.float32)], axis=2)  # all tied
    y, argmax = channel_stats_forward(np.ascontiguousarray(x))
    np.testing.assert_array_equal(argmax, [[[1, 5], [0, 0]]])
    dy = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    xt, yt = _torch_chanstat(x)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "chanstat forward with ties")
    assert_close(
        channel_stats_backward(dy, argmax, 8),
        xt.grad.numpy(),
        GRAD_RTOL,
        "chanstat dx with ties (torch.max semantics)",
    )
    # NaN propagates to the max and becomes the argmax, like torch.max.
    xn = np.array([1.0, np.nan, 5.0, np.nan], np.float32).reshape(1, 4, 1, 1)
    yn, an = channel_stats_forward(xn)
    vals, idx = torch.max(torch.tensor(xn), 1)
    assert np.isnan(yn[0, 1, 0, 0]) and np.isnan(vals.item())
    assert an[0, 0, 0] == idx.item() == 1


def test_chanstat_threads_and_large_c():
    import leukemia

    before = leukemia.get_num_threads()
    try:
        x = np.random.default_rng(3).standard_normal((2, 1536, 10, 10)).astype(np.float32)
        leukemia.set_num_threads(1)
        y1, a1 = channel_stats_forward(x)
        leukemia.set_num_threads(2)
        y2, a2 = channel_stats_forward(x)
    finally:
        leukemia.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(a1, a2)
    assert_close(y1[:, 0], x.astype(np.float64).mean(1), FWD_RTOL, "mean over 1536 channels")


def test_chanstat_bad_inputs():
    x = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        channel_stats_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        channel_stats_forward(x[0])
    y, argmax = channel_stats_forward(x)
    with pytest.raises(ValueError, match="dy must have 2 channels"):
        channel_stats_backward(np.zeros((2, 3, 4, 5), np.float32), argmax, 3)
    with pytest.raises(TypeError, match="argmax must be the int32"):
        channel_stats_backward(y, argmax.astype(np.int64), 3)
    with pytest.raises(ValueError, match="argmax has shape"):
        channel_stats_backward(y, argmax[:, :2], 3)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        channel_stats_backward(y, argmax, 0)
    with pytest.raises(ValueError, match=r"argmax\[0\] = 5 is out of range \[0, 3\)"):
        channel_stats_backward(y, np.full_like(argmax, 5), 3)
    xh = np.zeros((2, 4, 5, 3), np.float32)
    ro = np.zeros((2, 4, 5, 2), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().channel_stats_forward(ro, np.zeros((2, 4, 5), np.int32), xh)
    with pytest.raises(ValueError, match=r"y has shape \(2, 4, 5, 3\)"):
        _ext().channel_stats_forward(xh.copy(), np.zeros((2, 4, 5), np.int32), xh)
    with pytest.raises(TypeError, match="argmax must have dtype int32"):
        _ext().channel_stats_forward(
            np.zeros((2, 4, 5, 2), np.float32), np.zeros((2, 4, 5), np.float32), xh
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().channel_stats_backward(
            np.zeros((2, 4, 5, 6), np.float32)[..., ::2],
            np.zeros((2, 4, 5, 2), np.float32),
            np.zeros((2, 4, 5), np.int32),
        )


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=[str(c) for c in SOFTMAX_CASES])
def test_softmax_matches_torch_and_fd(case):
    rng = np.random.default_rng(case[0] * 1000 + case[1])
    x = rng.standard_normal(case).astype(np.float32)
    y = spatial_softmax_forward(x)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.softmax(xt, dim=1)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "softmax forward")
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)

    dy = rng.standard_normal(case).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx = spatial_softmax_backward(dy, y)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "softmax dx")

    fx = lambda xx: probe(spatial_softmax_forward(xx), dy)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL


def test_softmax_stable_for_large_inputs():
    x = np.array([[1000.0, 999.0, -1000.0], [88.0, 89.0, 90.0]], np.float32)
    y = spatial_softmax_forward(x)
    assert np.all(np.isfinite(y))
    assert_close(
        y,
        torch.softmax(torch.tensor(x, dtype=torch.float64), 1).numpy(),
        FWD_RTOL,
        "softmax at large inputs",
    )


def test_softmax_bad_inputs():
    x = np.zeros((2, 9), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        spatial_softmax_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        spatial_softmax_forward(x.reshape(2, 3, 3))
    with pytest.raises(ValueError, match="x must have positive sizes"):
        spatial_softmax_forward(np.zeros((0, 9), np.float32))
    with pytest.raises(ValueError, match="dy has shape"):
        spatial_softmax_backward(np.zeros((2, 8), np.float32), x)
    with pytest.raises(TypeError, match="y must have dtype float32"):
        spatial_softmax_backward(x, x.astype(np.float16))
    ro = np.zeros_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().spatial_softmax_forward(ro, x)
    with pytest.raises(ValueError, match="output array dx is read-only"):
        _ext().spatial_softmax_backward(ro, x, x)
    with pytest.raises(ValueError, match=r"y has shape \(9, 2\)"):
        _ext().spatial_softmax_forward(np.zeros((9, 2), np.float32), x)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().spatial_softmax_backward(np.zeros((2, 18), np.float32)[:, ::2], x, x)
