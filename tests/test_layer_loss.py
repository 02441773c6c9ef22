"""Softmax cross-entropy vs torch.nn.functional.cross_entropy (weights x smoothing) and FD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gradcheck import FD_RTOL, FWD_RTOL, GRAD_RTOL, assert_close, directional_fd

from leukemia import _ext
from leukemia.functional import cross_entropy_backward, cross_entropy_forward

SIZES = [(1, 2), (7, 2), (1, 5), (6, 5)]
OPTIONS = [(False, 0.0), (False, 0.1), (True, 0.0), (True, 0.15)]  # (class weights, smoothing)


def _torch_loss(logits, labels, weight, eps):
    xt = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(weight, dtype=torch.float64) if weight is not None else None
    lt = F.cross_entropy(
        xt, torch.tensor(labels, dtype=torch.int64), weight=wt, label_smoothing=eps
    )
    return xt, lt


@pytest.mark.parametrize("opt", OPTIONS, ids=["plain", "smooth", "weighted", "weighted-smooth"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{n}x{k}" for n, k in SIZES])
def test_xent_matches_torch_and_fd(size, opt):
    n, k = size
    weighted, eps = opt
    rng = np.random.default_rng(n * 31 + k * 7 + int(weighted) + int(eps * 100))
    logits = (2.0 * rng.standard_normal((n, k))).astype(np.float32)
    labels = rng.integers(0, k, n).astype(np.int64)  # int64 accepted by the Python layer
    weight = rng.uniform(0.2, 2.0, k).astype(np.float32) if weighted else None

    loss, prob = cross_entropy_forward(logits, labels, weight, eps)
    xt, lt = _torch_loss(logits, labels, weight, eps)
    assert abs(loss - lt.item()) <= FWD_RTOL * max(abs(lt.item()), 1e-6), (loss, lt.item())
    assert_close(prob, torch.softmax(xt.detach(), 1).numpy(), FWD_RTOL, "softmax prob")

    dloss = 0.7
    lt.backward(torch.tensor(dloss, dtype=torch.float64))
    dlogits = cross_entropy_backward(prob, labels.astype(np.int32), weight, eps, dloss=dloss)
    assert_close(dlogits, xt.grad.numpy(), GRAD_RTOL, "cross-entropy dlogits")

    f = lambda z: dloss * cross_entropy_forward(z, labels, weight, eps)[0]  # noqa: E731
    assert directional_fd(f, logits, dlogits, rng) < FD_RTOL


def test_xent_stable_for_large_logits():
    logits = np.array([[1000.0, -1000.0, 999.0], [-80.0, 85.0, 90.0]], np.float32)
    labels = np.array([2, 0], np.int32)
    loss, prob = cross_entropy_forward(logits, labels, label_smoothing=0.05)
    xt, lt = _torch_loss(logits, labels, None, 0.05)
    assert np.isfinite(loss) and np.all(np.isfinite(prob))
    assert abs(loss - lt.item()) <= FWD_RTOL * abs(lt.item())
    lt.backward()
    assert_close(
        cross_entropy_backward(prob, labels, label_smoothing=0.05),
        xt.grad.numpy(),
        GRAD_RTOL,
        "dlogits at large logits",
    )


def test_xent_zero_weight_class_and_full_smoothing():
    # A zero-weight class still counts in the smoothing term (torch does the same).
    logits = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1], np.int32)
    weight = np.array([1.0, 0.0, 2.0], np.float32)
    for eps in (0.0, 0.3, 1.0):
        loss, prob = cross_entropy_forward(logits, labels, weight, eps)
        xt, lt = _torch_loss(logits, labels, weight, eps)
        assert abs(loss - lt.item()) <= FWD_RTOL * abs(lt.item())
        lt.backward()
        assert_close(
            cross_entropy_backward(prob, labels, weight, eps),
            xt.grad.numpy(),
            GRAD_RTOL,
            f"dlogits eps={eps}",
        )


def test_xent_bad_inputs():
    logits = np.zeros((3, 4), np.float32)
    labels = np.array([0, 3, 1], np.int32)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        cross_entropy_forward(logits, labels.astype(np.float32))
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        cross_entropy_forward(logits, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"label 4 at row 1 is out of range \[0, 4\)"):
        cross_entropy_forward(logits, np.array([0, 4, 1], np.int64))
    with pytest.raises(ValueError, match=r"label -1 at row 2"):
        cross_entropy_backward(logits, np.array([0, 1, -1], np.int32))
    with pytest.raises(ValueError, match="labels has shape"):
        cross_entropy_forward(logits, labels[:2])
    bad = logits.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="logits contains NaN or Inf"):
        cross_entropy_forward(bad, labels)
    with pytest.raises(TypeError, match="logits must have dtype float32"):
        cross_entropy_forward(logits.astype(np.float64), labels)
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        cross_entropy_forward(logits[None], labels)
    with pytest.raises(ValueError, match="class_weight has shape"):
        cross_entropy_forward(logits, labels, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="class_weight contains NaN or Inf"):
        cross_entropy_forward(logits, labels, np.array([1, np.inf, 1, 1], np.float32))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        cross_entropy_forward(logits, labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match="sum to 0"):
        cross_entropy_forward(logits, labels, np.array([0, 0, 1, 0], np.float32))
    with pytest.raises(ValueError, match="dloss must be finite"):
        cross_entropy_backward(logits, labels, dloss=float("inf"))
    # Direct binding: the core's own checks and the output checks.
    prob = np.zeros_like(logits)
    with pytest.raises(TypeError, match="labels must have dtype int32"):
        _ext().cross_entropy_forward(prob, logits, labels.astype(np.int64), None, 0.0)
    with pytest.raises(FloatingPointError, match=r"logits\[1, 2\] is not finite"):
        _ext().cross_entropy_forward(prob, bad, labels, None, 0.0)
    with pytest.raises(ValueError, match=r"label 9 at row 0 is out of range"):
        _ext().cross_entropy_forward(prob, logits, np.array([9, 0, 0], np.int32), None, 0.0)
    with pytest.raises(ValueError, match="sum to 0"):
        _ext().cross_entropy_backward(prob, prob, labels, np.zeros(4, np.float32), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        _ext().cross_entropy_forward(prob, logits, labels, None, -0.1)
    ro = np.zeros_like(logits)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="output array prob is read-only"):
        _ext().cross_entropy_forward(ro, logits, labels, None, 0.0)
    with pytest.raises(ValueError, match="output array dlogits is read-only"):
        _ext().cross_entropy_backward(ro, prob, labels, None, 0.0, 1.0)
    with pytest.raises(ValueError, match="prob has shape"):
        _ext().cross_entropy_forward(np.zeros((3, 5), np.float32), logits, labels, None, 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ext().cross_entropy_backward(
            np.zeros((3, 8), np.float32)[:, ::2], prob, labels, None, 0.0, 1.0
        )
