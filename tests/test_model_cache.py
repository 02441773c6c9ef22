"""The cached inference path never runs on stale weights.

An eval plan folds each BatchNorm into its convolution, reorders weights into oneDNN's
layouts and keeps both until the parameter version moves (csrc/blocks/cba.c,
csrc/layers/conv2d.c). These tests reuse one plan across a weight change, so that a
cache the change failed to invalidate shows up in the output:

- after an optimizer step, and after load_state_dict, the eval output (and the frozen
  prefix's features) equals that of a freshly built model given the same weights, bit for
  bit, and differs from the output before the change;
- the same for a training plan, whose frozen prefix also runs folded;
- the cached, fused output agrees with the unfused float64 PyTorch reference (separate
  convolution, BatchNorm with running statistics and SiLU) loaded with the new weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model_heads import LOGIT_RTOL, _dlogits, _randomised_reference
from test_model_parity import _rel

import leukemia.models as M
from leukemia.optim import AdamW

ARCH, HEAD, K = "efficientnet_b3", "multi_attention", 2


def _images(seed: int, n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _state(seed: int) -> dict[str, np.ndarray]:
    ref = _randomised_reference(ARCH, HEAD, K, seed=seed)
    return {n: t.detach().numpy().copy() for n, t in ref.state_dict().items()}


def _model(state: dict[str, np.ndarray], policy: str, seed: int = 0) -> M.EfficientNet:
    m = M.EfficientNet(
        ARCH, K, head=HEAD, policy=policy, dropout=0.0, stochastic_depth_prob=0.0, seed=seed
    )
    m.load_state_dict(state)
    return m


def _fresh(m: M.EfficientNet, policy: str) -> M.EfficientNet:
    """A new model (other random initialisation, no plan) holding m's weights."""
    return _model(m.state_dict(), policy, seed=1234)


def _torch_eval(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of the unfused float64 reference in eval mode."""
    ref = _randomised_reference(ARCH, HEAD, K, seed=0)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    ref.eval()
    with torch.no_grad():
        return ref.double()(torch.from_numpy(x.astype(np.float64))).numpy()


@pytest.mark.parametrize("policy", ["all", "last_block"])
def test_eval_after_optimizer_step_uses_the_new_weights(policy):
    m = _model(_state(1), policy)
    x = _images(2)
    m.train()
    m.backward(_dlogits(m(x), np.array([0, 1])))
    opt = AdamW(m, lr=1e-2)
    m.eval()
    y0, f0 = m(x), m.frozen_features(x)  # the eval plan now holds folded/reordered weights
    assert np.array_equal(m(x), y0), "eval forward is not repeatable"
    opt.step()
    y1, f1 = m(x), m.frozen_features(x)  # same plan, new weights
    assert not np.allclose(y1, y0, rtol=1e-3, atol=0), "the step did not change the logits"
    fresh = _fresh(m, policy).eval()
    assert np.array_equal(y1, fresh(x)), "eval forward after opt.step() used stale weights"
    assert np.array_equal(f1, fresh.frozen_features(x))
    if policy == "last_block":  # the step left the frozen prefix, so its features, alone
        assert np.array_equal(f1, f0)
    assert _rel(y1, _torch_eval(m.state_dict(), x)) < LOGIT_RTOL, "fused vs unfused reference"


@pytest.mark.parametrize("policy", ["all", "last_block"])
def test_eval_after_load_state_dict_uses_the_loaded_weights(policy):
    m = _model(_state(3), policy)
    x = _images(4)
    m.eval()
    y0, f0 = m(x), m.frozen_features(x)
    new = _state(5)
    m.load_state_dict(new)
    y1, f1 = m(x), m.frozen_features(x)
    assert not np.allclose(y1, y0, rtol=1e-3, atol=0), "the load did not change the logits"
    fresh = _model(new, policy, seed=1234).eval()
    assert np.array_equal(y1, fresh(x)), "eval forward after load_state_dict used stale weights"
    assert np.array_equal(f1, fresh.frozen_features(x))
    if policy == "last_block":
        assert not np.array_equal(f1, f0), "frozen_features after the load used stale weights"
    assert _rel(y1, _torch_eval(new, x)) < LOGIT_RTOL, "fused vs unfused reference"


def test_train_plan_frozen_prefix_after_load_state_dict_uses_the_loaded_weights():
    """A training plan runs the frozen prefix folded too (Keras-style frozen layers)."""
    m = _model(_state(6), "last_block")
    x = _images(7, n=3)
    m.train()
    y0 = m(x, seed=1)  # the training plan folds the frozen prefix
    new = _state(8)
    m.load_state_dict(new)
    y1 = m(x, seed=2)
    fresh = _model(new, "last_block", seed=1234).train()
    assert not np.allclose(y1, y0, rtol=1e-3, atol=0)
    assert np.array_equal(y1, fresh(x, seed=2)), "train forward after the load used stale weights"


def test_eval_after_policy_change_and_step_uses_the_new_weights():
    """Weights stepped while trainable, then frozen by a policy change: the frozen unit's
    cache must not survive from the time it trained."""
    m = _model(_state(9), "all")
    x = _images(10)
    m.train()
    m.backward(_dlogits(m(x), np.array([1, 0])))
    m.eval()
    m(x)
    opt = AdamW(m, lr=1e-2)
    opt.step()
    m.set_policy("last_block")
    y = m(x)
    assert np.array_equal(y, _fresh(m, "last_block").eval()(x))
