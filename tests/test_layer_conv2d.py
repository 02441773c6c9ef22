"""conv2d forward/backward against torch.nn.functional.conv2d and finite differences."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

from leukemia import _ext
from leukemia.functional import conv2d_backward, conv2d_forward, conv_padding

# (n, cin, h, w, cout, k, stride, groups, bias, padding)
CASES = [
    (1, 3, 17, 13, 8, 3, 2, 1, False, "symmetric"),  # stem-like, odd non-square, batch 1
    (2, 16, 9, 11, 24, 1, 1, 1, False, 0),  # 1x1 pointwise
    (3, 12, 15, 10, 12, 5, 2, 12, False, "symmetric"),  # depthwise 5x5 stride 2
    (2, 8, 7, 7, 8, 3, 1, 8, False, "symmetric"),  # depthwise 3x3
    (2, 8, 1, 1, 4, 1, 1, 1, True, 0),  # SE fc on 1x1 with bias
    (2, 6, 10, 9, 9, 3, 1, 3, True, (0, 1, 2, 1)),  # grouped, asymmetric padding, bias
    (1, 4, 12, 12, 4, 5, 2, 4, False, "same"),  # TF SAME (asymmetric) depthwise
    # Depthwise 5x5 weight gradients run lk_dwconv_bwd_weights: channel counts
    # that exercise its 16-, 8- and scalar-wide paths and more than one
    # 64-channel work item, batch 1, odd sizes, bias (summed there too).
    (1, 13, 11, 9, 13, 5, 1, 13, False, "symmetric"),
    (1, 77, 9, 10, 77, 5, 2, 77, False, "symmetric"),
    (2, 21, 7, 13, 21, 5, 2, 21, True, (1, 2, 2, 1)),
    (1, 24, 5, 5, 24, 5, 1, 24, False, "same"),
    # Depthwise stride 1 with a bias: dx by the forward primitive, whose bias is zeroed.
    (2, 10, 6, 8, 10, 3, 1, 10, True, "symmetric"),
    # Dense weight gradients on sgemm (conv2d.c: plain 1x1 always, other kernels at
    # IC >= 16 and >= 32x32 output positions): im2col over two chunks with bias,
    # TF SAME stride 2, and a strided 1x1 (im2col with one tap).
    (2, 16, 32, 33, 24, 3, 1, 1, True, "symmetric"),
    (1, 16, 65, 64, 8, 3, 2, 1, False, "same"),
    (1, 16, 64, 63, 8, 1, 2, 1, True, 0),
    # A plain 1x1 with 64x more positions than channels: each thread's sgemm over its
    # share of the positions (an odd count), the partials summed.
    (3, 6, 23, 25, 10, 1, 1, 1, True, 0),
]


def _torch_conv(x, w, b, stride, pad, groups):
    top, left, bottom, right = pad
    xt = F.pad(x, (left, right, top, bottom))
    return F.conv2d(xt, w, b, stride=stride, groups=groups)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_conv2d_matches_torch_and_fd(case):
    n, cin, h, w_, cout, k, s, g, bias, padding = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = (rng.standard_normal((cout, cin // g, k, k)) / np.sqrt(cin // g * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    pad = conv_padding(padding, (k, k), (s, s), (h, w_))

    y = conv2d_forward(x, w, b, stride=s, padding=pad, groups=g)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True) if bias else None
    yt = _torch_conv(xt, wt, bt, s, pad, g)
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy(), FWD_RTOL, "conv2d forward")

    r = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx, dw, db = conv2d_backward(r, x, w, bias=bias, stride=s, padding=pad, groups=g)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, "conv2d dx")
    assert_close(dw, wt.grad.numpy(), GRAD_RTOL, "conv2d dw")
    if bias:
        assert_close(db, bt.grad.numpy(), GRAD_RTOL, "conv2d db")

    # Finite differences in float64 along random directions, for x and w.
    fx = lambda xx: probe(conv2d_forward(xx, w, b, stride=s, padding=pad, groups=g), r)  # noqa: E731
    fw = lambda ww: probe(conv2d_forward(x, ww, b, stride=s, padding=pad, groups=g), r)  # noqa: E731
    assert directional_fd(fx, x, dx, rng) < FD_RTOL
    assert directional_fd(fw, w, dw, rng) < FD_RTOL


def test_conv2d_bad_inputs():
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        conv2d_forward(x.astype(np.float64), w)
    with pytest.raises(ValueError, match="w must have 4 dimensions"):
        conv2d_forward(x, w[0])
    with pytest.raises(ValueError, match="groups"):
        conv2d_forward(x, w, groups=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d_forward(x[:, :, :2, :2], w)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv2d_forward(x, w, stride=0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv2d_forward(x, w, stride=-1)
    with pytest.raises(ValueError, match="padding must hold ints"):
        conv2d_forward(x, w, padding=(1.5, 1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dy has shape \(1, 4, 3, 3\)"):
        conv2d_backward(np.zeros((1, 4, 3, 3), np.float32), x, w, padding=1)
    assert conv2d_forward(x, w, padding=1, groups=np.int64(1)).shape == (1, 4, 8, 8)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        conv2d_forward([[1.0]], w)  # type: ignore[arg-type]
    # Direct binding: read-only, non-contiguous, wrong-shape outputs.
    xh = np.zeros((1, 8, 8, 4), np.float32)
    y = np.zeros((1, 8, 8, 4), np.float32)
    y.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().conv2d_forward(y, xh, w, None, (1, 1), (1, 1, 1, 1), 1)
    y2 = np.zeros((1, 8, 8, 8), np.float32)[..., ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().conv2d_forward(y2, xh, w, None, (1, 1), (1, 1, 1, 1), 1)
    with pytest.raises(ValueError, match=r"y has shape \(1, 8, 8, 5\)"):
        _ext().conv2d_forward(
            np.zeros((1, 8, 8, 5), np.float32), xh, w, None, (1, 1), (1, 1, 1, 1), 1
        )
    with pytest.raises(ValueError, match="stride"):
        _ext().conv2d_forward(
            np.zeros((1, 8, 8, 4), np.float32), xh, w, None, (0, 1), (1, 1, 1, 1), 1
        )
    with pytest.raises(ValueError, match="dw has shape"):
        _ext().conv2d_backward(
            None,
            np.zeros((4, 4, 3, 1), np.float32),
            None,
            np.zeros((1, 8, 8, 4), np.float32),
            xh,
            w,
            (1, 1),
            (1, 1, 1, 1),
            1,
        )


# Depthwise stride-1 layers compute dx as a forward convolution with the kernel rotated
# by 180 degrees (conv2d.c); the test above covers that path, this one the oneDNN
# backward-data primitive it replaced, and checks that the two agree.
DX_CASES = [c for c in CASES if c[7] == c[1] == c[4] and c[6] == 1]


@pytest.mark.parametrize("case", DX_CASES, ids=[str(c[:8]) for c in DX_CASES])
def test_depthwise_dx_paths_agree(case):
    n, cin, h, w_, cout, k, s, g, bias, padding = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()) + 1)
    x = rng.standard_normal((n, cin, h, w_)).astype(np.float32)
    w = (rng.standard_normal((cout, 1, k, k)) / k).astype(np.float32)
    pad = conv_padding(padding, (k, k), (s, s), (h, w_))
    dy = rng.standard_normal((n, cout, h, w_)).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    _torch_conv(xt, torch.tensor(w, dtype=torch.float64), None, s, pad, g).backward(
        torch.tensor(dy, dtype=torch.float64)
    )
    got = {}
    for policy in ("auto", "onednn"):
        before = _ext()._conv_dx_policy(policy)
        try:
            got[policy] = conv2d_backward(dy, x, w, bias=bias, stride=s, padding=pad, groups=g)[0]
        finally:
            _ext()._conv_dx_policy(before)
        assert_close(got[policy], xt.grad.numpy(), GRAD_RTOL, f"depthwise dx ({policy})")
    assert_close(got["auto"], got["onednn"], GRAD_RTOL, "depthwise dx, the two paths")
    with pytest.raises(ValueError, match="policy"):
        _ext()._conv_dx_policy("fast")
