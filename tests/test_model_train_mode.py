"""Train-mode behaviour of the whole network with dropout and stochastic depth active:
seeded determinism, and the backward pass against float64 finite differences."""

from __future__ import annotations

import math

import numpy as np
from _gradcheck import directional_fd

import leukemia.models as M


def test_seeded_train_forward_is_deterministic():
    x = np.random.default_rng(0).standard_normal((4, 3, 48, 48)).astype(np.float32)
    a = M.efficientnet_b3(num_classes=2, seed=11).train()
    b = M.efficientnet_b3(num_classes=2, seed=11).train()
    ya, yb = a(x), b(x)
    assert np.array_equal(ya, yb)  # same construction seed -> same masks
    assert not np.array_equal(a(x), ya)  # the next call draws new masks
    assert np.array_equal(a(x, seed=5), a(x, seed=5))
    assert not np.array_equal(a(x, seed=5), a(x, seed=6))


def test_train_backward_matches_finite_differences_with_dropout_and_stochastic_depth():
    # High rates so that both masks matter at this small size.
    m = M.efficientnet_v2_s(num_classes=3, seed=2, dropout=0.5, stochastic_depth_prob=0.5)
    m.train()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 40, 48)).astype(np.float32)
    r = rng.standard_normal((3, 3)).astype(np.float32)
    y = m(x, seed=9, input_grad=True)
    dx = m.backward(r, input_grad=True)

    def f(xx: np.ndarray) -> float:
        return float(np.sum(m(xx, seed=9).astype(np.float64) * r))

    assert abs(f(x) - float(np.sum(y.astype(np.float64) * r))) < 1e-4
    # Deep nets with batch-statistics BN are curved: the FD error falls as h^2
    # (measured 0.07 at h=1e-2, 0.007 at 3e-3, 0.0006 at 1e-3).
    assert directional_fd(f, x, dx, rng, n_dirs=3, h=1e-3) < 1e-2


def test_initialisation_follows_torchvision():
    m = M.efficientnet_b3(num_classes=2, seed=0)
    params = dict(m.named_parameters())
    w = params["features.6.0.block.0.0.weight"]  # 1x1 conv, fan_out = out channels
    assert abs(w.std() - math.sqrt(2.0 / w.shape[0])) < 0.05 * math.sqrt(2.0 / w.shape[0])
    assert abs(w.mean()) < 0.01
    lin = params["classifier.1.weight"]
    assert np.abs(lin).max() <= 1.0 / math.sqrt(2) and lin.std() > 0.3
    assert np.all(params["classifier.1.bias"] == 0)
    assert np.all(params["features.1.0.block.0.1.weight"] == 1)
    bufs = dict(m.named_buffers())
    assert np.all(bufs["features.2.1.block.1.1.running_var"] == 1)
    assert np.all(bufs["features.2.1.block.1.1.running_mean"] == 0)
