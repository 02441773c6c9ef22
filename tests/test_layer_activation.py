"""SiLU / sigmoid / ReLU / ReLU6 forward and backward against PyTorch and finite differences."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe
from _kernel_isa import kernel_isa  # noqa: F401  (fixture: every kernel path of this CPU)

from leukemia import _ext
from leukemia.functional import (
    activation_backward,
    activation_forward,
    relu6_forward,
    relu_forward,
    sigmoid_forward,
    silu_forward,
)

TORCH = {"silu": F.silu, "sigmoid": torch.sigmoid, "relu": F.relu, "relu6": F.relu6}
FORWARD = {
    "silu": silu_forward,
    "sigmoid": sigmoid_forward,
    "relu": relu_forward,
    "relu6": relu6_forward,
}
KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0)}
SHAPES = [
    (1, 8, 7, 5),  # batch 1, odd non-square
    (3, 24, 9, 11),  # batch > 1
    (2, 40, 15, 15),  # B3 stem width at small scale
    (4, 10),  # [N, C] vectors (SE / attention MLPs)
    (1, 1, 1, 1),
]


def _inputs(kind, shape, rng):
    # Scaled so ReLU6 sees both clip ends; kept >= 0.1 from every kink so that
    # the finite differences (steps of ~1e-2) never straddle one.
    x = 4.0 * rng.standard_normal(shape)
    for k in KINKS.get(kind, ()):
        near = np.abs(x - k) < 0.1
        x[near] = k + np.where(x[near] >= k, 0.1, -0.1)
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", list(TORCH))
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_activation_matches_torch_and_fd(kind, shape):
    rng = np.random.default_rng(zlib.crc32(repr((kind, shape)).encode()))
    x = _inputs(kind, shape, rng)
    y = FORWARD[kind](x)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = TORCH[kind](xt)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, f"{kind} forward")

    r = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx = activation_backward(kind, r, x=x, y=y)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, f"{kind} dx")
    # sigmoid differentiates at y only, the others at x only.
    if kind == "sigmoid":
        assert_close(activation_backward(kind, r, y=y), dx, 0.0, "sigmoid from y")
    else:
        assert_close(activation_backward(kind, r, x=x), dx, 0.0, f"{kind} from x")

    f = lambda xx: probe(FORWARD[kind](xx), r)  # noqa: E731
    assert directional_fd(f, x, dx, rng) < FD_RTOL


@pytest.mark.parametrize("kind", ["relu", "relu6"])
def test_activation_kinks_follow_torch(kind):
    # At exactly 0 and 6 torch's gradient is 0 (relu: x > 0; relu6: 0 < x < 6).
    x = np.array([-1.0, 0.0, 0.5, 3.0, 6.0, 7.0, -0.0], np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    TORCH[kind](xt).sum().backward()
    dx = activation_backward(kind, np.ones_like(x), x=x)
    np.testing.assert_array_equal(dx, xt.grad.numpy().astype(np.float32))
    np.testing.assert_array_equal(FORWARD[kind](x), TORCH[kind](xt).detach().numpy())


@pytest.mark.parametrize("kind", list(TORCH))
def test_activation_in_place(kind):
    rng = np.random.default_rng(7)
    x = _inputs(kind, (2, 6, 5, 3), rng)
    y = activation_forward(kind, x)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = activation_backward(kind, dy, x=x, y=y)
    buf = x.copy()
    _ext().act_forward(buf, buf, kind)  # y == x
    np.testing.assert_array_equal(buf, y)
    g = dy.copy()
    _ext().act_backward(g, g, x, y, kind)  # dx == dy
    np.testing.assert_array_equal(g, dx)


def test_activation_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        silu_forward(x.astype(np.float64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        relu_forward([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of"):
        activation_forward("tanh", x)
    with pytest.raises(ValueError, match="needs the forward input x"):
        activation_backward("silu", x, y=x)
    with pytest.raises(ValueError, match="needs the forward output y"):
        activation_backward("sigmoid", x, x=x)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        activation_backward("relu6", x.astype(np.float16), x=x)
    for fn in (sigmoid_forward, relu6_forward):
        with pytest.raises(TypeError, match="x must have dtype"):
            fn(x.astype(np.int32))
    # Direct binding: wrong kind, read-only / non-contiguous / mis-shaped outputs.
    with pytest.raises(ValueError, match="kind must be"):
        _ext().act_forward(np.empty_like(x), x, "gelu")
    ro = np.empty_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().act_forward(ro, x, "relu")
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().act_forward(np.empty((2, 3, 4, 8), np.float32)[..., ::2], x, "relu")
    with pytest.raises(ValueError, match=r"y has shape \(2, 3, 4, 5\)"):
        _ext().act_forward(np.empty((2, 3, 4, 5), np.float32), x, "relu")
    with pytest.raises(ValueError, match="x is required"):
        _ext().act_backward(np.empty_like(x), x, None, x, "silu")
    with pytest.raises(ValueError, match="y is required"):
        _ext().act_backward(np.empty_like(x), x, x, None, "sigmoid")
    with pytest.raises(ValueError, match="count must be positive"):
        _ext().act_forward(np.empty(0, np.float32), np.empty(0, np.float32), "relu")


# SiLU is a hand-written kernel (exp by range reduction and a polynomial), so its
# tails and special values are checked against torch directly.
@pytest.mark.usefixtures("kernel_isa")  # AVX-512, AVX2 and plain-C kernels
def test_silu_extreme_inputs_follow_torch():
    x = np.concatenate(
        [
            np.linspace(-88.0, 88.0, 20011),
            np.geomspace(88.0, 1e4, 501),
            -np.geomspace(88.0, 1e4, 501),
            [-1e4, 1e4, -104.0, -103.9, -87.5, 0.0, -0.0, 1e-30, -1e-30, 3.4e38, -3.4e38],
        ]
    ).astype(np.float32)
    x = np.concatenate([x, x[:13]])  # odd length: the vector tail is exercised too
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = F.silu(xt)
    r = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    y = silu_forward(x)
    dx = activation_backward("silu", r, x=x)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    # Elementwise relative accuracy, far tighter than the whole-tensor tolerance.
    ref_y, ref_dx = yt.detach().numpy(), xt.grad.numpy()
    big = np.abs(ref_y) > 1e-30
    assert np.max(np.abs(y[big] - ref_y[big]) / np.abs(ref_y[big])) < 1e-6
    assert np.max(np.abs(dx - ref_dx) / np.maximum(np.abs(ref_dx), np.abs(r))) < 2e-6
    # Large x: identity and gradient dy; large negative x: -0 (as torch's float32).
    far = np.abs(x) >= 120
    np.testing.assert_array_equal(y[far & (x > 0)], x[far & (x > 0)])
    np.testing.assert_array_equal(dx[far & (x > 0)], r[far & (x > 0)])
    neg = far & (x < 0)
    assert (y[neg] == 0).all() and np.signbit(y[neg]).all()
    assert (dx[neg] == 0).all()
    # silu(+-0) = +-0 with gradient dy / 2.
    zero = x == 0
    np.testing.assert_array_equal(np.signbit(y[zero]), np.signbit(x[zero]))
    np.testing.assert_array_equal(dx[zero], r[zero] / 2)


@pytest.mark.usefixtures("kernel_isa")
def test_silu_special_values_follow_torch():
    # torch: silu(nan) = nan, silu(inf) = inf, silu(-inf) = nan; gradient nan at all three.
    special = np.array([np.nan, np.inf, -np.inf, -np.nan], np.float32)
    x = np.concatenate([special, np.linspace(-3, 3, 17, dtype=np.float32), special])
    xt = torch.tensor(x, requires_grad=True)
    yt = F.silu(xt)
    yt.backward(torch.ones_like(yt))
    y = silu_forward(x)
    dx = activation_backward("silu", np.ones_like(x), x=x)
    ref_y, ref_dx = yt.detach().numpy(), xt.grad.numpy()
    for got, ref in ((y, ref_y), (dx, ref_dx)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        fin = ~np.isnan(ref)
        np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-6)
    assert y[1] == np.inf and np.isnan(y[2]) and np.isnan(y[0])


@pytest.mark.parametrize("kind", ["relu", "relu6"])
def test_relu_refuses_nan(kind):
    from leukemia.functional import activation_forward

    with pytest.raises(ValueError, match="NaN"):
        activation_forward(kind, np.array([1.0, np.nan], np.float32))
