"""Attention helpers vs torch (float64) and finite differences: mean/max over channels,
softmax over positions, the spatial gate (one-channel map times every channel) and the
attention-weighted sum over positions.

Max over channels follows torch.max(x, dim=1).values: ties go to the FIRST maximal
channel (torch.amax would split the gradient evenly; see test_chanstat_ties).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe
from _kernel_isa import kernel_isa  # noqa: F401  (fixture: every kernel path of this CPU)

from leukemia import _ext, get_num_threads, set_num_threads
from leukemia.functional import (
    channel_stats_backward,
    channel_stats_forward,
    spatial_mul_backward,
    spatial_mul_forward,
    spatial_softmax_backward,
    spatial_softmax_forward,
    weighted_sum_backward,
    weighted_sum_forward,
)

# (n, c, h, w): batch 1 and > 1, odd non-square, one channel.
CHANSTAT_CASES = [(1, 5, 7, 3), (2, 16, 9, 11), (3, 1, 4, 6), (2, 40, 5, 13)]
# (rows, cols): one image, several images, odd position counts (H*W).
SOFTMAX_CASES = [(1, 7), (3, 25), (2, 99), (4, 130)]
# (n, c, h, w) for the spatial gate and the weighted sum: as above, plus a partial
# 64-channel block (130) and a single position.
GATE_CASES = [(1, 5, 7, 3), (2, 16, 9, 11), (3, 1, 4, 6), (2, 130, 5, 13), (2, 3, 1, 1)]


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


@pytest.mark.usefixtures("kernel_isa")  # AVX-512, AVX2 and plain-C kernels
@pytest.mark.parametrize("case", GATE_CASES, ids=[str(c) for c in GATE_CASES])
def test_spatial_mul_matches_torch_and_fd(case):
    n, c, h, w = case
    rng = np.random.default_rng(sum(case) + 7)
    x = rng.standard_normal(case).astype(np.float32)
    m = rng.uniform(0.0, 1.0, (n, 1, h, w)).astype(np.float32)
    y = spatial_mul_forward(x, m)
    assert y.shape == x.shape and y.dtype == np.float32
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    mt = torch.tensor(m, dtype=torch.float64, requires_grad=True)
    yt = xt * mt
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "spatial_mul forward")

    dy = rng.standard_normal(case).astype(np.float32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    dx, dm = spatial_mul_backward(dy, x, m)
    assert dx.shape == x.shape and dm.shape == m.shape
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "spatial_mul dx")
    assert_close(dm, mt.grad.numpy(), GRAD_RTOL, "spatial_mul dmap")

    fx = lambda xx: probe(spatial_mul_forward(xx, m), dy)  # noqa: E731
    fm = lambda mm: probe(spatial_mul_forward(x, mm), dy)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fm, m, dm, rng) < FD_RTOL


@pytest.mark.usefixtures("kernel_isa")
@pytest.mark.parametrize("case", GATE_CASES, ids=[str(c) for c in GATE_CASES])
def test_weighted_sum_matches_torch_and_fd(case):
    n, c, h, w = case
    rng = np.random.default_rng(sum(case) + 11)
    x = rng.standard_normal(case).astype(np.float32)
    # a softmax over positions, as in attention pooling (any weights are allowed)
    a = spatial_softmax_forward(rng.standard_normal((n, h * w)).astype(np.float32))
    p = weighted_sum_forward(x, a)
    assert p.shape == (n, c) and p.dtype == np.float32
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    pt = (xt.flatten(2) * at[:, None, :]).sum(2)
    assert_close(p, pt.detach().numpy(), FWD_RTOL, "weighted_sum forward")

    dp = rng.standard_normal((n, c)).astype(np.float32)
    pt.backward(torch.tensor(dp, dtype=torch.float64))
    dx, da = weighted_sum_backward(dp, x, a)
    assert dx.shape == x.shape and da.shape == a.shape
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "weighted_sum dx")
    assert_close(da, at.grad.numpy(), GRAD_RTOL, "weighted_sum da")

    fx = lambda xx: probe(weighted_sum_forward(xx, a), dp)  # noqa: E731
    fa = lambda aa: probe(weighted_sum_forward(x, aa), dp)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fa, a, da, rng) < FD_RTOL


def test_attention_pool_chain_matches_torch():
    """scores -> softmax over H*W -> weighted sum, the head's attention pool, end to end."""
    rng = np.random.default_rng(5)
    n, c, h, w = 2, 24, 5, 7
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    scores = rng.standard_normal((n, h * w)).astype(np.float32)
    a = spatial_softmax_forward(scores)
    p = weighted_sum_forward(x, a)
    dp = rng.standard_normal((n, c)).astype(np.float32)
    dx, da = weighted_sum_backward(dp, x, a)
    dscores = spatial_softmax_backward(da, a)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    st = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    pt = (xt.flatten(2) * torch.softmax(st, 1)[:, None, :]).sum(2)
    pt.backward(torch.tensor(dp, dtype=torch.float64))
    assert_close(p, pt.detach().numpy(), FWD_RTOL, "attention pool forward")
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "attention pool dx")
    assert_close(dscores, st.grad.numpy(), GRAD_RTOL, "attention pool dscores")


def test_gate_and_pool_aliasing_partial_accumulate():
    """The binding's in-place, skipped-output and accumulate paths (NHWC, as the core sees it)."""
    rng = np.random.default_rng(17)
    xh = rng.standard_normal((2, 6, 5, 70)).astype(np.float32)  # [N, H, W, C]
    mh = rng.uniform(0.0, 1.0, (2, 6, 5, 1)).astype(np.float32)
    dy = rng.standard_normal(xh.shape).astype(np.float32)
    dx = np.empty_like(xh)
    dm = np.empty_like(mh)
    _ext().spatial_mul_backward(dx, dm, dy, xh, mh)
    np.testing.assert_array_equal(dx, dy * mh)
    y = xh.copy()
    _ext().spatial_mul_forward(y, y, mh)  # y == x
    np.testing.assert_array_equal(y, xh * mh)
    g = dy.copy()
    dm2 = np.empty_like(mh)
    _ext().spatial_mul_backward(g, dm2, g, xh, mh)  # dx == dy
    np.testing.assert_array_equal(g, dx)
    np.testing.assert_array_equal(dm2, dm)
    dm3 = np.empty_like(mh)
    _ext().spatial_mul_backward(None, dm3, dy, xh, mh)
    np.testing.assert_array_equal(dm3, dm)

    xs = xh.reshape(2, 30, 70)  # [N, S, C]
    a = rng.uniform(0.0, 1.0, (2, 30)).astype(np.float32)
    dp = rng.standard_normal((2, 70)).astype(np.float32)
    dxs = np.empty_like(xs)
    da = np.empty_like(a)
    _ext().weighted_sum_backward(dxs, da, dp, xs, a)
    np.testing.assert_array_equal(dxs, a[:, :, None] * dp[:, None, :])
    acc = rng.standard_normal(xs.shape).astype(np.float32)
    want = acc + dxs
    _ext().weighted_sum_backward(acc, None, dp, xs, a, True)  # dx += a * dp
    np.testing.assert_array_equal(acc, want)
    da2 = np.empty_like(a)
    _ext().weighted_sum_backward(None, da2, dp, xs, a)
    np.testing.assert_array_equal(da2, da)


def test_gate_and_pool_threads_b3_head():
    """B3 head shape (1536 channels, 10 x 10): the same bits with 1 and 2 threads."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 1536, 10, 10)).astype(np.float32)
    m = rng.uniform(0.0, 1.0, (4, 1, 10, 10)).astype(np.float32)
    a = spatial_softmax_forward(rng.standard_normal((4, 100)).astype(np.float32))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dp = rng.standard_normal((4, 1536)).astype(np.float32)
    runs = []
    before = get_num_threads()
    try:
        for t in (1, 2):
            set_num_threads(t)
            runs.append(
                (
                    spatial_mul_forward(x, m),
                    *spatial_mul_backward(dy, x, m),
                    weighted_sum_forward(x, a),
                    *weighted_sum_backward(dp, x, a),
                )
            )
    finally:
        set_num_threads(before)
    for one, two in zip(*runs, strict=True):
        np.testing.assert_array_equal(one, two)
    p = runs[0][3]
    ref = np.einsum("nchw,nhw->nc", x.astype(np.float64), a.reshape(4, 10, 10).astype(np.float64))
    assert_close(p, ref, FWD_RTOL, "weighted_sum over 100 positions, 1536 channels")


def test_spatial_mul_bad_inputs():
    x = np.zeros((2, 3, 4, 5), np.float32)
    m = np.zeros((2, 1, 4, 5), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        spatial_mul_forward(x.astype(np.float64), m)
    with pytest.raises(TypeError, match="map must be a numpy.ndarray"):
        spatial_mul_forward(x, m.tolist())
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        spatial_mul_forward(x[0], m)
    with pytest.raises(
        ValueError, match=r"map has shape \(2, 3, 4, 5\) but x .* needs \(2, 1, 4, 5\)"
    ):
        spatial_mul_forward(x, x)
    with pytest.raises(ValueError, match="map has shape"):
        spatial_mul_forward(x, m[:, :, :3])
    with pytest.raises(ValueError, match="dy has shape"):
        spatial_mul_backward(x[:, :2], x, m)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        spatial_mul_backward(x.astype(np.float16), x, m)
    xh = np.zeros((2, 4, 5, 3), np.float32)
    mh = np.zeros((2, 4, 5, 1), np.float32)
    ro = np.zeros_like(xh)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().spatial_mul_forward(ro, xh, mh)
    with pytest.raises(ValueError, match="map must have 4 dimensions"):
        _ext().spatial_mul_forward(xh.copy(), xh, mh[..., 0])
    with pytest.raises(ValueError, match=r"map has shape \(2, 4, 3, 1\) but \(2, 4, 5, 1\)"):
        _ext().spatial_mul_forward(xh.copy(), xh, mh[:, :, :3].copy())
    with pytest.raises(ValueError, match=r"dmap has shape \(2, 4, 5, 3\)"):
        _ext().spatial_mul_backward(None, xh.copy(), xh, xh, mh)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().spatial_mul_backward(np.zeros((2, 4, 5, 6), np.float32)[..., ::2], None, xh, xh, mh)
    with pytest.raises(ValueError, match="x must have 1 to 2\\^31-1 channels"):
        _ext().spatial_mul_forward(xh[..., :0].copy(), xh[..., :0].copy(), mh)


def test_weighted_sum_bad_inputs():
    x = np.zeros((2, 3, 4, 5), np.float32)
    a = np.zeros((2, 20), np.float32)
    with pytest.raises(TypeError, match="a must have dtype float32"):
        weighted_sum_forward(x, a.astype(np.float64))
    with pytest.raises(ValueError, match="a must have 2 dimensions"):
        weighted_sum_forward(x, a.reshape(2, 4, 5))
    with pytest.raises(ValueError, match=r"a has shape \(2, 19\) but x .* needs \(2, 20\)"):
        weighted_sum_forward(x, a[:, :19])
    with pytest.raises(ValueError, match=r"a has shape \(1, 20\)"):
        weighted_sum_forward(x, a[:1])
    with pytest.raises(ValueError, match="x must have positive sizes"):
        weighted_sum_forward(np.zeros((2, 0, 4, 5), np.float32), a)
    with pytest.raises(ValueError, match=r"dp has shape \(2, 4\) but x .* needs \(2, 3\)"):
        weighted_sum_backward(np.zeros((2, 4), np.float32), x, a)
    with pytest.raises(TypeError, match="dp must be a numpy.ndarray"):
        weighted_sum_backward([[0.0] * 3] * 2, x, a)
    xs = np.zeros((2, 20, 3), np.float32)
    ro = np.zeros((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array p is read-only"):
        _ext().weighted_sum_forward(ro, xs, a)
    with pytest.raises(ValueError, match=r"p has shape \(3, 2\) but \(2, 3\)"):
        _ext().weighted_sum_forward(np.zeros((3, 2), np.float32), xs, a)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        _ext().weighted_sum_forward(np.zeros((2, 3), np.float32), x, a)
    with pytest.raises(ValueError, match=r"da has shape \(2, 3\) but \(2, 20\)"):
        _ext().weighted_sum_backward(None, np.zeros((2, 3), np.float32), ro, xs, a)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().weighted_sum_backward(np.zeros((2, 20, 6), np.float32)[..., ::2], None, ro, xs, a)
    # the core's own check (reached through the binding) names the function and sizes
    with pytest.raises(ValueError, match=r"weighted_sum forward: sizes must be positive .*s=0"):
        _ext().weighted_sum_forward(
            np.zeros((2, 3), np.float32),
            np.zeros((2, 0, 3), np.float32),
            np.zeros((2, 0), np.float32),
        )
