"""Global average / max pooling against adaptive_{avg,max}_pool2d and finite differences."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd, probe

from leukemia import _ext
from leukemia.functional import (
    global_avg_pool_backward,
    global_avg_pool_forward,
    global_max_pool_backward,
    global_max_pool_forward,
)

SHAPES = [
    (1, 8, 7, 5),  # batch 1, odd non-square
    (3, 16, 9, 11),  # batch > 1
    (2, 40, 15, 15),  # B3 SE squeeze at small scale
    (2, 24, 1, 1),  # already 1x1
    (2, 136, 3, 20),  # wide, non-multiple-of-16 channels
    (1, 12, 20, 20),  # > 256 positions: oneDNN's max workspace switches u8 -> s32
]
FWD = {"avg": global_avg_pool_forward, "max": global_max_pool_forward}
BWD = {"avg": global_avg_pool_backward, "max": global_max_pool_backward}
TORCH = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}


def _inputs(kind, shape, rng):
    n, c, h, w = shape
    if kind == "avg":
        return rng.standard_normal(shape).astype(np.float32)
    # Max: each plane is a permutation of values 0.1 apart, so no ties and the
    # argmax never changes within a finite-difference step.
    planes = [rng.permutation(h * w) * 0.1 for _ in range(n * c)]
    x = np.stack(planes).reshape(shape) - 0.05 * h * w
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_global_pool_matches_torch_and_fd(kind, shape):
    rng = np.random.default_rng(zlib.crc32(repr((kind, shape)).encode()))
    x = _inputs(kind, shape, rng)
    y = FWD[kind](x)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = TORCH[kind](xt, 1).flatten(1)
    assert y.shape == (shape[0], shape[1])
    assert_close(y, yt.detach().numpy(), FWD_RTOL, f"global {kind} forward")

    r = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(r, dtype=torch.float64))
    dx = BWD[kind](r, x)
    assert_close(dx, xt.grad.numpy(), GRAD_RTOL, f"global {kind} dx")
    f = lambda xx: probe(FWD[kind](xx), r)  # noqa: E731
    assert directional_fd(f, x, dx, rng) < FD_RTOL


def test_global_max_pool_ties_follow_torch():
    # Ties go to the first position in row-major (h, w) order, as in torch.
    x = np.zeros((2, 3, 4, 5), np.float32)
    x[0, 0, 1, 2] = x[0, 0, 3, 0] = 2.0
    x[1, 2, :, :] = 1.0
    xt = torch.tensor(x, requires_grad=True)
    F.adaptive_max_pool2d(xt, 1).sum().backward()
    dx = global_max_pool_backward(np.ones((2, 3), np.float32), x)
    np.testing.assert_array_equal(dx, xt.grad.numpy())


def test_global_pool_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        global_avg_pool_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        global_max_pool_forward(x[0])
    with pytest.raises(ValueError, match="dy has shape"):
        global_avg_pool_backward(np.zeros((2, 4), np.float32), x)
    with pytest.raises(ValueError, match="dy must have 2 dimensions"):
        global_max_pool_backward(np.zeros((2, 3, 1, 1), np.float32), x)
    xn = x.copy()
    xn[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        global_max_pool_forward(xn)
    with pytest.raises(ValueError, match="NaN"):
        global_max_pool_backward(np.zeros((2, 3), np.float32), xn)
    # Direct binding (NHWC): bad kind, read-only / non-contiguous / mis-shaped outputs.
    xh = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="kind must be 'avg' or 'max'"):
        _ext().gpool_forward(np.empty((2, 3), np.float32), xh, "min")
    ro = np.empty((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array y is read-only"):
        _ext().gpool_forward(ro, xh, "avg")
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().gpool_forward(np.empty((2, 6), np.float32)[:, ::2], xh, "avg")
    with pytest.raises(ValueError, match=r"y has shape \(3, 2\)"):
        _ext().gpool_forward(np.empty((3, 2), np.float32), xh, "max")
    with pytest.raises(ValueError, match=r"dx has shape"):
        _ext().gpool_backward(
            np.empty((2, 3, 4, 4), np.float32), np.zeros((2, 3), np.float32), xh, "max"
        )
    with pytest.raises(ValueError, match="sizes must be positive"):
        _ext().gpool_forward(
            np.empty((2, 3), np.float32), np.zeros((2, 0, 4, 3), np.float32), "avg"
        )
