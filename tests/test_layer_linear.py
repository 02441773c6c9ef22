"""linear forward/backward against torch.nn.functional.linear and finite differences."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

from leukemia import _ext
from leukemia.functional import linear_backward, linear_forward

# (n, in, out, bias)
CASES = [
    (1, 7, 5, False),  # batch 1, odd sizes
    (4, 24, 10, True),
    (16, 1536, 2, True),  # B3 classifier head (2 classes)
    (3, 384, 512, True),  # attention head Linear 512 at V2-S-like width
    (5, 1, 1, True),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_linear_matches_torch_and_fd(case):
    n, fin, fout, bias = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal((n, fin)).astype(np.float32)
    w = (rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32) if bias else None

    y = linear_forward(x, w, b)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True) if bias else None
    yt = F.linear(xt, wt, bt)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "linear forward")

    r = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx, dw, db = linear_backward(r, x, w, bias=bias)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "linear dx")
    assert_close(dw, wt.grad.numpy(), GRAD_RTOL, "linear dw")
    if bias:
        assert_close(db, bt.grad.numpy(), GRAD_RTOL, "linear db")
    else:
        assert db is None

    # need_dx=False plans no backward-data and gives the same weight gradients.
    dx2, dw2, db2 = linear_backward(r, x, w, bias=bias, need_dx=False)
    assert dx2 is None
    np.testing.assert_array_equal(dw2, dw)

    fx = lambda xx: probe(linear_forward(xx, w, b), r)  # noqa: E731
    fw = lambda ww: probe(linear_forward(x, ww, b), r)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fw, w, dw, rng) < FD_RTOL
    if bias:
        fb = lambda bb: probe(linear_forward(x, w, bb), r)  # noqa: E731
        assert directional_fd(fb, b, db, rng) < FD_RTOL


def test_linear_partial_gradients():
    # Direct binding: each gradient can be skipped with None (db without dw too).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    w = rng.standard_normal((4, 9)).astype(np.float32)
    dy = rng.standard_normal((6, 4)).astype(np.float32)
    db = np.empty(4, np.float32)
    _ext().linear_backward(None, None, db, dy, x, w)
    assert_close(db, dy.astype(np.float64).sum(0), GRAD_RTOL, "db alone")
    dw = np.empty_like(w)
    _ext().linear_backward(None, dw, None, dy, x, w)
    assert_close(dw, dy.T.astype(np.float64) @ x, GRAD_RTOL, "dw alone")


def test_linear_bad_inputs():
    x = np.zeros((2, 8), np.float32)
    w = np.zeros((3, 8), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        linear_forward(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        linear_forward(x, w[0])
    with pytest.raises(ValueError, match="input features"):
        linear_forward(x, np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="b has shape"):
        linear_forward(x, w, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dy has shape"):
        linear_backward(np.zeros((2, 4), np.float32), x, w)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        linear_backward(np.zeros((2, 3), np.int64), x, w)
    ro = np.empty((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().linear_forward(ro, x, w, None)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().linear_forward(np.empty((2, 6), np.float32)[:, ::2], x, w, None)
    with pytest.raises(ValueError, match=r"y has shape \(3, 2\)"):
        _ext().linear_forward(np.empty((3, 2), np.float32), x, w, None)
    with pytest.raises(ValueError, match="dw has shape"):
        _ext().linear_backward(
            None, np.empty((8, 3), np.float32), None, np.zeros((2, 3), np.float32), x, w
        )
    with pytest.raises(ValueError, match="sizes must be positive"):
        _ext().linear_forward(np.empty((0, 3), np.float32), np.zeros((0, 8), np.float32), w, None)
