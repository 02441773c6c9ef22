"""Broadcast channel multiply and elementwise add against PyTorch and finite differences.

The channel multiply's backward is a hand-written kernel: its tests run once per kernel
path this CPU has (the `kernel_isa` fixture)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe
from _kernel_isa import kernel_isa  # noqa: F401  (fixture)

from leukemia import _ext, get_num_threads, set_num_threads
from leukemia.functional import add_forward, channel_mul_backward, channel_mul_forward

SHAPES = [
    (1, 8, 7, 5),  # batch 1, odd non-square
    (3, 24, 9, 11),  # batch > 1
    (2, 40, 15, 15),  # B3 SE gate at small scale
    (1, 16, 40, 37),  # batch 1, many positions: ds split over position chunks
    (2, 136, 5, 3),  # channel blocks of 64 with a partial last block
    (2, 72, 19, 9),  # runs of 16 positions with a partial last run, partial block
    (4, 10, 1, 1),
]


@pytest.mark.usefixtures("kernel_isa")  # AVX-512, AVX2 and plain-C backward kernels
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_channel_mul_matches_torch_and_fd(shape):
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    x = rng.standard_normal(shape).astype(np.float32)
    s = rng.uniform(0.1, 1.0, shape[:2]).astype(np.float32)  # a sigmoid gate's range
    y = channel_mul_forward(x, s)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    yt = xt * st[:, :, None, None]
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "channel_mul forward")

    r = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx, ds = channel_mul_backward(r, x, s)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "channel_mul dx")
    assert_close(ds, st.grad.numpy(), GRAD_RTOL, "channel_mul ds")

    fx = lambda xx: probe(channel_mul_forward(xx, s), r)  # noqa: E731
    fs = lambda ss: probe(channel_mul_forward(x, ss), r)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fs, s, ds, rng) < FD_RTOL


@pytest.mark.usefixtures("kernel_isa")
def test_channel_mul_aliasing_partial_and_threads():
    rng = np.random.default_rng(11)
    xh = rng.standard_normal((2, 9, 7, 70)).astype(np.float32)  # NHWC
    s = rng.standard_normal((2, 70)).astype(np.float32)
    dy = rng.standard_normal(xh.shape).astype(np.float32)
    dx = np.empty_like(xh)
    ds = np.empty_like(s)
    _ext().chmul_backward(dx, ds, dy, xh, s)
    # In place: y == x forward, dx == dy backward (with and without ds).
    y = xh.copy()
    _ext().chmul_forward(y, y, s)
    np.testing.assert_array_equal(y, xh * s[:, None, None, :])
    g = dy.copy()
    ds2 = np.empty_like(s)
    _ext().chmul_backward(g, ds2, g, xh, s)
    np.testing.assert_array_equal(g, dx)
    np.testing.assert_array_equal(ds2, ds)
    g = dy.copy()
    _ext().chmul_backward(g, None, g, xh, s)
    np.testing.assert_array_equal(g, dx)
    ds3 = np.empty_like(s)
    _ext().chmul_backward(None, ds3, dy, xh, s)
    np.testing.assert_array_equal(ds3, ds)
    # ds does not depend on the thread count (chunks fixed by the sizes): the same bits.
    xb = rng.standard_normal((1, 50, 50, 20)).astype(np.float32)
    dyb = rng.standard_normal(xb.shape).astype(np.float32)
    sb = np.ones((1, 20), np.float32)
    out = []
    before = get_num_threads()
    for t in (1, 2):
        set_num_threads(t)
        d = np.empty_like(sb)
        _ext().chmul_backward(None, d, dyb, xb, sb)
        out.append(d)
    set_num_threads(before)
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 40, 15, 15), (1, 64, 33, 33)])
def test_add_matches_numpy(shape):
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(add_forward(a, b), a + b)
    y = a.copy()
    _ext().add_forward(y, y, b)  # y aliases a
    np.testing.assert_array_equal(y, a + b)
    y = b.copy()
    _ext().add_inplace(y, a)  # gradient accumulation
    np.testing.assert_array_equal(y, a + b)


def test_elementwise_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        channel_mul_forward(x.astype(np.float64), s)
    with pytest.raises(ValueError, match="s has shape"):
        channel_mul_forward(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="s must have 2 dimensions"):
        channel_mul_forward(x, np.zeros((2, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="dy has shape"):
        channel_mul_backward(x[:, :, :3], x, s)
    with pytest.raises(TypeError, match="s must have dtype float32"):
        channel_mul_backward(x, x, s.astype(np.float64))
    with pytest.raises(ValueError, match="b has shape"):
        add_forward(x, x[0])
    with pytest.raises(TypeError, match="a must be a numpy.ndarray"):
        add_forward(1.0, x)  # type: ignore[arg-type]
    xh = np.zeros((2, 4, 4, 3), np.float32)
    ro = np.empty_like(xh)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().chmul_forward(ro, xh, s)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().chmul_forward(np.empty((2, 4, 4, 6), np.float32)[..., ::2], xh, s)
    with pytest.raises(ValueError, match=r"ds has shape"):
        _ext().chmul_backward(None, np.empty((3, 2), np.float32), xh, xh, s)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().add_forward(ro, xh, xh)
    with pytest.raises(ValueError, match=r"x has shape"):
        _ext().add_inplace(np.empty_like(xh), x)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().add_inplace(np.empty((2, 4, 4, 6), np.float32)[..., ::2], xh)
