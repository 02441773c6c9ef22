"""Batch norm (2-D and 1-D; train, eval, frozen) against torch.nn.functional.batch_norm
and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

from leukemia import _ext
from leukemia.functional import batch_norm_backward, batch_norm_forward

STATS_RTOL = 1e-6  # running statistics vs PyTorch's float32 update

# x shape (NCHW or NC), eps, momentum. C = 5 runs oneDNN's reference nspc kernel,
# C = 24/40 its AVX2 JIT, C = 32/144 the AVX-512 JIT where the CPU has it.
CASES = [
    ((1, 8, 5, 7), 1e-5, 0.1),  # batch 1, odd non-square
    ((2, 5, 7, 3), 1e-5, 0.1),  # reference kernel, odd non-square
    ((3, 40, 9, 6), 1e-3, 0.1),  # V2-S eps
    ((2, 32, 4, 5), 1e-5, 0.25),  # other momentum
    ((4, 24), 1e-5, 0.1),  # BatchNorm1d
    ((2, 144), 1e-3, 0.1),  # BatchNorm1d, smallest batch allowed in training
]
IDS = [str(i) for i in range(len(CASES))]


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    rmean = (0.3 * rng.standard_normal(c)).astype(np.float32)
    rvar = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return rng, x, gamma, beta, rmean, rvar


def _t64(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bn_train_matches_torch_and_fd(case):
    shape, eps, momentum = case
    rng, x, gamma, beta, rmean, rvar = _data(shape, 11 + len(shape) * 7 + shape[1])

    # Running statistics after one and after three steps, vs torch's float32 update.
    rm, rv = rmean.copy(), rvar.copy()
    rmt, rvt = torch.tensor(rmean), torch.tensor(rvar)
    for step in range(3):
        xs = x if step == 0 else (x * (1 + step) - step).astype(np.float32)
        batch_norm_forward(xs, gamma, beta, rm, rv, "train", momentum, eps)
        F.batch_norm(
            torch.tensor(xs), rmt, rvt, torch.tensor(gamma), torch.tensor(beta), True, momentum, eps
        )
        if step == 0 or step == 2:
            assert_close(rm, rmt.numpy(), STATS_RTOL, f"running_mean after {step + 1} steps")
            assert_close(rv, rvt.numpy(), STATS_RTOL, f"running_var after {step + 1} steps")

    # Forward, saved statistics and gradients vs float64 autograd.
    rm, rv = rmean.copy(), rvar.copy()
    y, mean, var = batch_norm_forward(x, gamma, beta, rm, rv, "train", momentum, eps)
    xt, gt, bt = _t64(x, True), _t64(gamma, True), _t64(beta, True)
    rmt, rvt = _t64(rmean), _t64(rvar)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, True, momentum, eps)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "bn train forward")
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    x64 = x.astype(np.float64)
    assert_close(mean, x64.mean(axis=axes), FWD_RTOL, "saved batch mean")
    assert_close(var, x64.var(axis=axes), FWD_RTOL, "saved batch var (biased)")
    assert_close(rm, rmt.numpy(), FWD_RTOL, "running_mean vs float64")
    assert_close(rv, rvt.numpy(), FWD_RTOL, "running_var vs float64")

    r = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx, dg, db = batch_norm_backward(r, x, mean, var, gamma, "train", eps)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "bn train dx")
    assert_close(dg, gt.grad.numpy(), GRAD_RTOL, "bn train dgamma")
    assert_close(db, bt.grad.numpy(), GRAD_RTOL, "bn train dbeta")
    # Parameter gradients alone (frozen-prefix boundary: the C reduction path).
    dx2, dg2, db2 = batch_norm_backward(r, x, mean, var, gamma, "train", eps, need_dx=False)
    assert dx2 is None
    assert_close(dg2, gt.grad.numpy(), GRAD_RTOL, "bn train dgamma (no dx)")
    assert_close(db2, bt.grad.numpy(), GRAD_RTOL, "bn train dbeta (no dx)")
    # dx alone: the discarded parameter gradients go to the layer's scratch.
    dx3, dg3, db3 = batch_norm_backward(
        r, x, mean, var, gamma, "train", eps, need_dgamma=False, need_dbeta=False
    )
    assert dg3 is None and db3 is None
    assert_close(dx3, dx, 0.0, "bn train dx without parameter gradients")

    # Finite differences (batch statistics depend on x).
    def fx(xx):
        return probe(batch_norm_forward(xx, gamma, beta, None, None, "train", momentum, eps)[0], r)

    def fg(gg):
        return probe(batch_norm_forward(x, gg, beta, None, None, "train", momentum, eps)[0], r)

    # With two values per channel y is +-gamma + beta up to eps: dx is tiny and the
    # FD quotient is dominated by curvature, so x is checked on the other shapes.
    if x.size // x.shape[1] > 2:
        assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fg, gamma, dg, rng) < FD_RTOL


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bn_eval_and_frozen_match_torch_and_fd(case):
    shape, eps, momentum = case
    rng, x, gamma, beta, rmean, rvar = _data(shape, 5 + shape[1])
    rm, rv = rmean.copy(), rvar.copy()

    y, mean, var = batch_norm_forward(x, gamma, beta, rm, rv, "eval", momentum, eps)
    yt = F.batch_norm(
        _t64(x), _t64(rmean), _t64(rvar), _t64(gamma), _t64(beta), False, momentum, eps
    )
    assert_close(y, yt.numpy(), FWD_RTOL, "bn eval forward")
    np.testing.assert_array_equal(rm, rmean)  # eval leaves the running stats alone
    np.testing.assert_array_equal(rv, rvar)
    np.testing.assert_array_equal(mean, rmean)

    # Frozen: torch module in eval mode with trainable weight and bias.
    yf, mean, var = batch_norm_forward(x, gamma, beta, rm, rv, "frozen", momentum, eps)
    np.testing.assert_array_equal(yf, y)
    np.testing.assert_array_equal(rm, rmean)
    np.testing.assert_array_equal(rv, rvar)
    bn = (
        (torch.nn.BatchNorm2d if x.ndim == 4 else torch.nn.BatchNorm1d)(
            shape[1], eps=eps, momentum=momentum
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(rmean))
        bn.running_var.copy_(torch.tensor(rvar))
    xt = _t64(x, True)
    yt = bn(xt)
    r = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx, dg, db = batch_norm_backward(r, x, mean, var, gamma, "frozen", eps)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "bn frozen dx")
    assert_close(dg, bn.weight.grad.numpy(), GRAD_RTOL, "bn frozen dgamma")
    assert_close(db, bn.bias.grad.numpy(), GRAD_RTOL, "bn frozen dbeta")
    _, dg2, db2 = batch_norm_backward(r, x, mean, var, gamma, "frozen", eps, need_dx=False)
    assert_close(dg2, bn.weight.grad.numpy(), GRAD_RTOL, "bn frozen dgamma (no dx)")
    assert_close(db2, bn.bias.grad.numpy(), GRAD_RTOL, "bn frozen dbeta (no dx)")

    def fx(xx):
        return probe(batch_norm_forward(xx, gamma, beta, rm, rv, "frozen", momentum, eps)[0], r)

    def fg(gg):
        return probe(batch_norm_forward(x, gg, beta, rm, rv, "frozen", momentum, eps)[0], r)

    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fg, gamma, dg, rng) < FD_RTOL


def test_bn_train_without_running_stats_and_bool_mode():
    _, x, gamma, beta, rmean, rvar = _data((2, 8, 3, 3), 1)
    y1, m1, v1 = batch_norm_forward(x, gamma, beta, None, None, True)
    rm = rmean.copy()
    y2, _, _ = batch_norm_forward(x, gamma, beta, rm, rvar.copy(), "train")
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(rm, rmean)
    y3, _, _ = batch_norm_forward(x, gamma, beta, rmean, rvar, False)
    y4, _, _ = batch_norm_forward(x, gamma, beta, rmean, rvar, "eval")
    np.testing.assert_array_equal(y3, y4)


def test_bn_bad_inputs():
    x = np.ones((2, 4, 3, 3), np.float32)
    g = np.ones(4, np.float32)
    b = np.zeros(4, np.float32)
    rm = np.zeros(4, np.float32)
    rv = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        batch_norm_forward(x.astype(np.float64), g, b, rm, rv)
    with pytest.raises(ValueError, match=r"x must be \[N, C, H, W\] or \[N, C\]"):
        batch_norm_forward(x[0], g, b, rm, rv)
    with pytest.raises(ValueError, match=r"gamma has shape \(3,\)"):
        batch_norm_forward(x, g[:3], b, rm, rv)
    with pytest.raises(ValueError, match=r"running_var has shape \(5,\)"):
        batch_norm_forward(x, g, b, rm, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="running_mean must have dtype float32"):
        batch_norm_forward(x, g, b, rm.astype(np.float64), rv)
    with pytest.raises(ValueError, match="running_mean must be C-contiguous"):
        batch_norm_forward(x, g, b, np.zeros(8, np.float32)[::2], rv)
    ro = rm.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="running_mean is read-only"):
        batch_norm_forward(x, g, b, ro, rv, "train")
    batch_norm_forward(x, g, b, ro, rv, "eval")  # eval only reads them
    with pytest.raises(ValueError, match="running_var contains NaN or Inf"):
        batch_norm_forward(x, g, b, rm, np.array([1, np.nan, 1, 1], np.float32), "eval")
    with pytest.raises(ValueError, match="running_mean contains NaN or Inf"):
        batch_norm_forward(x, g, b, np.array([0, np.inf, 0, 0], np.float32), rv)
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        batch_norm_forward(x, g, b, rm, -rv, "eval")
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        batch_norm_forward(x, g, b, rm, rv, eps=0.0)
    with pytest.raises(ValueError, match="momentum must be a number in"):
        batch_norm_forward(x, g, b, rm, rv, momentum=1.5)
    with pytest.raises(ValueError, match="mode must be"):
        batch_norm_forward(x, g, b, rm, rv, mode="training")
    with pytest.raises(ValueError, match="both be given or both be None"):
        batch_norm_forward(x, g, b, rm, None)
    with pytest.raises(ValueError, match="eval and frozen modes need running_mean"):
        batch_norm_forward(x, g, b, None, None, "frozen")
    # PyTorch's rule: a single value per channel cannot be normalised in training.
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_forward(np.ones((1, 4), np.float32), g, b, rm, rv, "train")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_forward(np.ones((1, 4, 1, 1), np.float32), g, b, rm, rv, "train")
    batch_norm_forward(np.ones((1, 4), np.float32), g, b, rm, rv, "eval")  # fine in eval
    # Backward.
    with pytest.raises(ValueError, match="eval mode has no backward"):
        batch_norm_backward(x, x, rm, rv, g, "eval")
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 3, 2\)"):
        batch_norm_backward(x[..., :2], x, rm, rv, g)
    with pytest.raises(ValueError, match="var contains NaN or Inf"):
        batch_norm_backward(x, x, rm, np.full(4, np.inf, np.float32), g, "frozen")
    with pytest.raises(TypeError, match="dy must be a numpy.ndarray"):
        batch_norm_backward([[1.0]], x, rm, rv, g)  # type: ignore[arg-type]

    # Direct binding: outputs read-only, non-contiguous, wrong shape; bad options.
    ext = _ext()
    xh = np.ones((2, 3, 3, 4), np.float32)
    y = np.empty_like(xh)
    yro = np.empty_like(xh)
    yro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        ext.bn_forward(yro, None, None, xh, g, b, rm, rv, 1e-5, 0.1, 1)
    ync = np.empty((2, 3, 3, 8), np.float32)[..., ::2]
    with pytest.raises(ValueError, match="y must be C-contiguous"):
        ext.bn_forward(ync, None, None, xh, g, b, rm, rv, 1e-5, 0.1, 1)
    with pytest.raises(ValueError, match=r"y has shape \(2, 3, 3, 5\)"):
        ext.bn_forward(
            np.empty((2, 3, 3, 5), np.float32), None, None, xh, g, b, rm, rv, 1e-5, 0.1, 1
        )
    mro = np.empty(4, np.float32)
    mro.setflags(write=False)
    with pytest.raises(ValueError, match="output array mean is read-only"):
        ext.bn_forward(y, mro, None, xh, g, b, rm, rv, 1e-5, 0.1, 0)
    with pytest.raises(ValueError, match="mode must be 0"):
        ext.bn_forward(y, None, None, xh, g, b, rm, rv, 1e-5, 0.1, 7)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ext.bn_forward(y, None, None, xh, g, b, rm, rv, -1.0, 0.1, 1)
    with pytest.raises(ValueError, match="momentum must be in"):
        ext.bn_forward(y, None, None, xh, g, b, rm, rv, 1e-5, -0.5, 0)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        ext.bn_forward(y, None, None, xh, g, b, None, None, 1e-5, 0.1, 1)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \[N, H, W, C\] or 2"):
        ext.bn_forward(y, None, None, xh[0], g, b, rm, rv, 1e-5, 0.1, 1)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \[N, H, W, C\] or 2"):
        ext.bn_forward(y, None, None, xh[None, None], g, b, rm, rv, 1e-5, 0.1, 1)
    with pytest.raises(ValueError, match="sizes must be positive"):
        e0 = np.empty((0, 3, 3, 4), np.float32)
        ext.bn_forward(e0, None, None, e0, g, b, rm, rv, 1e-5, 0.1, 1)
    dro = np.empty_like(xh)
    dro.setflags(write=False)
    with pytest.raises(ValueError, match="output array dx is read-only"):
        ext.bn_backward(dro, None, None, xh, xh, rm, rv, g, 1e-5, 2)
    with pytest.raises(ValueError, match=r"dgamma has shape \(3\) but \(4\)"):
        ext.bn_backward(None, np.empty(3, np.float32), None, xh, xh, rm, rv, g, 1e-5, 2)
    with pytest.raises(ValueError, match="eval mode"):
        ext.bn_backward(np.empty_like(xh), None, None, xh, xh, rm, rv, g, 1e-5, 1)
