"""Fine-tuning policies on the whole network (DESIGN.md, "Fine-tuning policies"):

- what a policy freezes never changes (parameters, running statistics,
  num_batches_tracked) while what it trains does;
- the frozen prefix does no backward work (oneDNN primitive executions counted);
- `frozen_features` + `forward(from_features=True)` is the full forward, bit for bit,
  in eval and in train mode, gradients included;
- gradient accumulation, parameter versions, read-only views and `writable()`;
- custom prefix policies and their errors (a refused policy changes nothing);
- gradients of a policy with a frozen gap, and the image gradient under "last_block",
  against the PyTorch reference frozen like Keras (frozen BatchNorm in eval mode).

Tolerances against PyTorch as in test_model_heads.py (gradients 1e-3 relative to each
tensor's max |grad|); everything within our own model is compared bit for bit.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_model_heads import (
    _calibrate,
    _check_train_step,
    _dlogits,
    _freeze_like_keras,
    _ours_from,
    _randomised_reference,
    _shrink_residual_branches,
)

import leukemia
import leukemia.models as M
from leukemia.optim import AdamW

HEAD = "multi_attention"
# What "last_block" trains, written out from DESIGN.md (not derived from the model).
LAST_BLOCK = {
    "efficientnet_b3": ("features.7.", "features.8.", "head."),
    "efficientnet_v2_s": ("features.6.", "features.7.", "head."),
}
FEATURE_CHANNELS = {  # output channels of the frozen prefix, from DESIGN.md's tables
    ("efficientnet_b3", "last_block"): 232,
    ("efficientnet_b3", "head"): 1536,
    ("efficientnet_v2_s", "last_block"): 160,
    ("efficientnet_v2_s", "head"): 1280,
}
_STAT = ".running_mean"


@functools.cache
def _calibrated_state(arch: str) -> dict[str, np.ndarray]:
    """Weights whose running statistics describe real activations (as a pretrained
    network's do). With the initial statistics (0 / 1) a random network in inference
    mode shrinks every activation by ~100x per stage (PyTorch's too: B3's features.8
    output is ~1e-14), so a frozen prefix maps every image to the same features."""
    ref = _randomised_reference(arch, HEAD, 2, seed=21)
    _shrink_residual_branches(ref)
    _calibrate(ref, np.random.default_rng(22).standard_normal((8, 3, 64, 64)).astype(np.float32))
    return {n: t.detach().numpy().copy() for n, t in ref.state_dict().items()}


def _model(arch: str, policy: object, **kwargs) -> M.EfficientNet:
    m = M.EfficientNet(arch, 2, head=HEAD, policy=policy, **kwargs)
    m.load_state_dict(_calibrated_state(arch))
    return m


def _images(seed: int, n: int = 3, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def _bns(sd: dict) -> list[str]:
    return [k[: -len(_STAT)] for k in sd if k.endswith(_STAT)]


def _trainable_names(m: M.EfficientNet) -> set[str]:
    return {n for n, _ in m.named_parameters(trainable=True)}


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{what}: {k} differs"


# ------------------------------------------------------------------ what changes


@pytest.mark.parametrize("arch", list(LAST_BLOCK))
def test_last_block_training_changes_only_what_trains(arch):
    m = _model(arch, "last_block", seed=1)
    train_prefixes = LAST_BLOCK[arch]
    names = [n for n, _ in m.named_parameters()]
    trainable = _trainable_names(m)
    assert trainable == {n for n in names if n.startswith(train_prefixes)}
    assert m.info["trainable_params"] == m.num_parameters(trainable=True)
    assert 0 < m.num_parameters(trainable=True) < m.num_parameters()
    before = m.state_dict()
    bns = _bns(before)
    trainable_bns = {bn for bn in bns if bn + ".weight" in trainable}
    assert "head.bn" in trainable_bns
    assert trainable_bns == {bn for bn in bns if bn.startswith(train_prefixes)}

    opt = AdamW(m, lr=1e-3, groups=[{"prefix": "head.", "lr": 3e-3}])
    m.train()
    rng = np.random.default_rng(2)
    steps = 3
    for step in range(steps):
        x = _images(10 + step)
        y = m(x)
        m.backward(_dlogits(y, rng.integers(0, 2, len(x))))
        opt.step()
    after = m.state_dict()
    for k, v in before.items():
        if k.endswith(".num_batches_tracked"):
            bn = k[: -len(".num_batches_tracked")]
            assert int(after[k]) == (steps if bn in trainable_bns else 0), k
        elif "running" in k:
            bn = k.rsplit(".", 1)[0]
            if bn in trainable_bns:
                assert not np.array_equal(after[k], v), f"{k} of a trained BN did not move"
            else:
                assert np.array_equal(after[k], v), f"{k} of a frozen BN changed"
        elif k in trainable:
            assert not np.array_equal(after[k], v), f"trainable {k} did not change"
        else:
            assert np.array_equal(after[k], v), f"frozen {k} changed"
    for name, g in m.named_grads(trainable=False):  # frozen layers get no gradient
        assert not np.any(g), name


# -------------------------------------------------------------- backward work


def _step_counts(m: M.EfficientNet, x: np.ndarray, from_features: bool = False) -> tuple[int, int]:
    """Primitive executions of one steady-state train forward and of its backward."""
    core = leukemia._ext()
    dl = np.full((x.shape[0], m.num_classes), 0.1, np.float32)
    for _ in range(2):  # plan, then one steady-state step
        m(x, seed=1, from_features=from_features)
        m.backward(dl)
    a = core.exec_counts()["primitives"]
    m(x, seed=1, from_features=from_features)
    b = core.exec_counts()["primitives"]
    m.backward(dl)
    c = core.exec_counts()["primitives"]
    return b - a, c - b


def test_frozen_prefix_does_no_backward_work():
    """Counts of oneDNN primitive executions per train step (B3 / V2-S, 3 x 64 x 64,
    measured: all 456+679 / 580+907, last_block 314+112 / 452+437, head 300+55 /
    360+55 forward+backward). Time is not asserted."""
    x = _images(0)
    fwd, bwd = {}, {}
    for arch, last in (("efficientnet_b3", "features.8"), ("efficientnet_v2_s", "features.7")):
        policies = {"all": "all", "last_block": "last_block", "head": "head"}
        policies["final_conv"] = [last, "head."]  # the final 1x1 conv and the head
        for key, pol in policies.items():
            m = M.EfficientNet(arch, 2, head=HEAD, policy=pol).train()
            fwd[arch, key], bwd[arch, key] = _step_counts(m, x)
            if key == "head":
                fwd[arch, "head_from_features"], b2 = _step_counts(m, m.frozen_features(x), True)
                assert b2 == bwd[arch, key]
        step = {k: fwd[arch, k] + bwd[arch, k] for k in policies}
        assert step["all"] > step["last_block"] > step["final_conv"] > step["head"], step
        assert bwd[arch, "all"] > bwd[arch, "last_block"] > bwd[arch, "final_conv"]
        assert bwd[arch, "final_conv"] > bwd[arch, "head"]
        # A frozen layer runs no training-mode forward (batch statistics) either.
        assert fwd[arch, "all"] > fwd[arch, "last_block"] >= fwd[arch, "head"]
    # The heads of both backbones are the same layers (1536 vs 1280 channels). Under
    # "head" the backward (and the forward from features) executes the same primitives
    # for both, so none of the backbone's; likewise with the final 1x1 conv trained, whose
    # backward computes no input gradient.
    for key in ("head", "final_conv"):
        assert bwd["efficientnet_b3", key] == bwd["efficientnet_v2_s", key], key
    assert (
        fwd["efficientnet_b3", "head_from_features"]
        == fwd["efficientnet_v2_s", "head_from_features"]
    )


# ----------------------------------------------------------- frozen features


@pytest.mark.parametrize(
    "arch,policy",
    [
        ("efficientnet_b3", "last_block"),
        ("efficientnet_b3", "head"),
        ("efficientnet_v2_s", "last_block"),
        ("efficientnet_b3", ["features.5", "head."]),
    ],
    ids=["b3-last_block", "b3-head", "v2s-last_block", "b3-features.5+head"],
)
def test_frozen_features_then_head_equals_full_forward(arch, policy):
    def make() -> M.EfficientNet:
        return _model(arch, policy, seed=5, dropout=0.5, stochastic_depth_prob=0.5)

    a, b = make(), make()
    x = _images(1, n=4, h=64, w=72)
    shape = a.features_shape(64, 72)
    if isinstance(policy, str):
        assert shape[0] == FEATURE_CHANNELS[arch, policy]
    assert shape[0] == a.info["feature_channels"]

    # Eval mode.
    a.eval()
    f = a.frozen_features(x)
    assert f.shape == (4, *shape) and f.dtype == np.float32
    y_full = a(x)
    assert np.array_equal(a(f, from_features=True), y_full)
    y_ret, f_ret = a(x, return_features=True)
    assert np.array_equal(y_ret, y_full) and np.array_equal(f_ret, f)

    # Train mode, dropout and stochastic depth on, the same seed on both paths.
    a.train()
    b.train()
    y_a = a(x, seed=7)
    assert not np.array_equal(a(x, seed=8), y_a)  # the masks are really on
    y_a = a(x, seed=7)
    f_b = b.frozen_features(x)
    assert np.array_equal(f_b, f)  # the prefix runs as at inference in both modes
    y_b = b(f_b, seed=7, from_features=True)
    assert np.array_equal(y_a, y_b)
    dl = _dlogits(y_a, np.array([0, 1, 1, 0]))
    a.backward(dl)
    b.backward(dl)
    ga, gb = dict(a.named_grads()), dict(b.named_grads())
    assert any(np.any(g) for g in ga.values())
    for name in ga:
        assert np.array_equal(ga[name], gb[name]), name
    # Running statistics: a ran three train forwards, b one; bring them level.
    b(f_b, seed=8, from_features=True)
    b(f_b, seed=7, from_features=True)
    _assert_same_state(a.state_dict(), b.state_dict(), "after train forwards")
    y_ret, f_ret = b(x, seed=7, return_features=True)
    assert np.array_equal(y_ret, y_a) and np.array_equal(f_ret, f)


def test_frozen_features_under_all_is_the_image():
    m = M.efficientnet_b3(num_classes=2, head=HEAD, policy="all", seed=3)
    x = _images(2, h=64, w=56)
    assert m.features_shape(64, 56) == (3, 64, 56)
    assert m.info["feature_channels"] == 3
    f = m.frozen_features(x)
    assert np.array_equal(f, x)
    m.eval()
    assert np.array_equal(m(f, from_features=True), m(x))
    m.set_policy("head")
    with pytest.raises(ValueError, match="1536"):  # the image is not the head's input
        m(f, from_features=True)


# --------------------------------------------------------------- accumulation


@pytest.mark.parametrize("policy", ["last_block", "all"])
def test_backward_accumulate_adds_to_the_gradients(policy):
    m = _model("efficientnet_b3", policy, seed=4)
    m.train()
    x = _images(3, n=4)
    y = m(x, seed=1)
    rng = np.random.default_rng(5)
    d1 = _dlogits(y, rng.integers(0, 2, 4))
    d2 = rng.standard_normal(y.shape).astype(np.float32) * 0.1
    m.backward(d1)
    g1 = {n: g.copy() for n, g in m.named_grads()}
    m.backward(d2)  # overwrites
    g2 = {n: g.copy() for n, g in m.named_grads()}
    m.backward(d1)
    assert all(np.array_equal(g, g1[n]) for n, g in m.named_grads()), "backward is repeatable"
    m.backward(d2, accumulate=True)
    trainable = _trainable_names(m)
    for name, g in m.named_grads():
        if name not in trainable:
            assert not np.any(g), name
            continue
        want = g1[name] + g2[name]
        scale = max(float(np.max(np.abs(want))), 1e-30)
        assert np.max(np.abs(g - want)) <= 1e-6 * scale, name
        assert not np.array_equal(g, g1[name]), name
    # Accumulating into fresh gradients of another forward (two micro-batches).
    x2 = _images(4, n=4)
    y2 = m(x2, seed=2)
    d3 = _dlogits(y2, np.array([1, 0, 0, 1]))
    m.backward(d3)
    g3 = {n: g.copy() for n, g in m.named_grads()}
    m(x, seed=1)
    m.backward(d1)
    m(x2, seed=2)
    m.backward(d3, accumulate=True)
    for name, g in m.named_grads(trainable=True):
        want = g1[name] + g3[name]
        scale = max(float(np.max(np.abs(want))), 1e-30)
        assert np.max(np.abs(g - want)) <= 1e-6 * scale, name


# -------------------------------------------------- versions, views, writable


def test_version_moves_with_every_change_and_only_then():
    m = M.efficientnet_b3(num_classes=2, head=HEAD, policy="last_block", seed=6)
    x = _images(5)
    v = m.version

    def moved() -> bool:
        nonlocal v
        old, v = v, m.version
        return v > old

    m.eval()
    m(x)
    m.frozen_features(x)
    m.state_dict()
    assert not moved(), "eval forward / frozen_features / state_dict moved the version"
    m.train()
    y = m(x)
    assert moved(), "train forward (running statistics) did not move the version"
    m.backward(_dlogits(y, np.array([0, 1, 0])))
    v = m.version  # a backward changes only gradients: not asserted either way
    opt = AdamW(m, lr=1e-3)
    assert not moved()
    opt.step()
    assert moved(), "optimizer step"
    m.load_state_dict(m.state_dict())
    assert moved(), "load_state_dict"
    m.set_policy("head")
    assert moved(), "set_policy"
    with m.writable():
        pass
    assert moved(), "writable() exit"
    m.eval()
    m(x)
    assert not moved(), "eval forward"


def test_views_are_read_only():
    m = M.efficientnet_b3(num_classes=2, head=HEAD, seed=7)
    params = dict(m.named_parameters())
    bufs = dict(m.named_buffers())
    for arr in (
        params["head.out.bias"],
        params["features.0.0.weight"],
        bufs["features.0.1.running_var"],
        m.flat_parameters(),
    ):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1.0
    before = m.version
    with pytest.raises(ValueError):
        params["head.fc.weight"][...] = 0.0
    assert m.version == before
    assert np.any(dict(m.named_parameters())["head.fc.weight"])


def test_writable_changes_reach_the_next_eval_forward():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    m = _model("efficientnet_b3", "last_block", seed=8)
    frozen_bn = "features.3.1.block.1.1"  # a depthwise conv's BN, in the frozen prefix
    assert frozen_bn + ".weight" not in _trainable_names(m)
    m.eval()
    y0, f0 = m(x), m.frozen_features(x)  # folded weights now cached
    assert np.array_equal(m(x), y0)
    with m.writable() as p:
        p[frozen_bn + ".running_var"][:] *= 4.0
        p[frozen_bn + ".running_mean"][:] += 0.5
    y1, f1 = m(x), m.frozen_features(x)
    assert not np.array_equal(f1, f0), "frozen_features used stale folded weights"
    assert not np.array_equal(y1, y0), "eval forward used stale folded weights"
    fresh = M.efficientnet_b3(num_classes=2, head=HEAD, policy="last_block", seed=99)
    assert not np.array_equal(fresh.eval()(x), y1)
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    assert np.array_equal(fresh(x), y1)
    assert np.array_equal(fresh.frozen_features(x), f1)
    # A trainable tensor too, and the train-mode path (BN with batch statistics).
    with m.writable() as p:
        p["head.out.bias"][:] += np.array([3.0, -3.0], np.float32)
    y2 = m(x)
    np.testing.assert_allclose(y2 - y1, np.tile([3.0, -3.0], (3, 1)), rtol=0, atol=1e-5)
    m.train()
    fresh.train()
    fresh.load_state_dict(m.state_dict())
    assert np.array_equal(m(x, seed=3), fresh(x, seed=3))


# ------------------------------------------------------------- custom policies


def test_custom_prefix_policy_trains_just_those():
    m = _model("efficientnet_b3", ["features.8", "head."], seed=9)
    assert m.policy == ("features.8", "head.")
    names = [n for n, _ in m.named_parameters()]
    want = {n for n in names if n.startswith(("features.8.", "head."))}
    assert _trainable_names(m) == want
    assert m.info["trainable_params"] == sum(a.size for n, a in m.named_parameters() if n in want)
    before = m.state_dict()
    opt = AdamW(m, lr=1e-3)
    m.train()
    for s in range(2):
        x = _images(20 + s)
        m.backward(_dlogits(m(x), np.array([0, 1, 1])))
        opt.step()
    after = m.state_dict()
    for k in before:
        if k.endswith(".num_batches_tracked"):
            trains = k.startswith(("features.8.", "head."))
            assert int(after[k]) == (2 if trains else 0), k
        elif k in want or (("running" in k) and k.startswith(("features.8.", "head."))):
            assert not np.array_equal(after[k], before[k]), k
        else:
            assert np.array_equal(after[k], before[k]), k
    # One layer alone is a policy too.
    m.set_policy(["head.bn"])
    assert _trainable_names(m) == {"head.bn.weight", "head.bn.bias"}


def _refusals() -> list[tuple[object, type, str]]:
    return [
        (["features.8", "nothing.here"], ValueError, "nothing.here"),
        (["features.99"], ValueError, "features.99"),
        (["features.8x"], ValueError, "features.8x"),  # prefixes end at a dot
        (["features.8.0", "head."], ValueError, "features.8.0"),  # conv without its BN
        (["features.7.0.block.2.fc1"], ValueError, "fc1"),  # half an SE
        ("everything", ValueError, "everything"),
        ("Last_Block", ValueError, "Last_Block"),
        ("features.8", ValueError, "features.8"),  # a bare string is a policy name
        ([3], TypeError, "prefixes"),
        (42, TypeError, "prefixes"),
    ]


@pytest.mark.parametrize("bad,exc,text", _refusals(), ids=[repr(r[0]) for r in _refusals()])
def test_refused_policy_changes_nothing(bad, exc, text):
    m = M.efficientnet_b3(num_classes=2, head=HEAD, policy="last_block", seed=10)
    m.train()
    x = _images(6)
    y = m(x, seed=1)
    m.backward(_dlogits(y, np.array([1, 0, 1])))
    state = m.state_dict()
    grads = {n: g.copy() for n, g in m.named_grads()}
    trainable, info, version = _trainable_names(m), dict(m.info), m.version
    with pytest.raises(exc, match=re.escape(text)):
        m.set_policy(bad)  # type: ignore[arg-type]
    assert m.policy == "last_block"
    assert _trainable_names(m) == trainable
    assert m.info["trainable_params"] == info["trainable_params"]
    assert m.info["prefix_pieces"] == info["prefix_pieces"]
    assert m.version == version
    _assert_same_state(state, m.state_dict(), f"after refusing {bad!r}")
    for n, g in m.named_grads():
        assert np.array_equal(g, grads[n]), n
    # The model still trains as before.
    assert np.array_equal(m(x, seed=1), y)


def test_unknown_head_and_policy_in_the_constructor():
    with pytest.raises(ValueError, match="unknown head 'cbam'"):
        M.efficientnet_b3(num_classes=2, head="cbam")
    with pytest.raises(ValueError, match="unknown policy 'last'"):
        M.efficientnet_b3(num_classes=2, head=HEAD, policy="last")
    with pytest.raises(ValueError, match="features.0.0"):
        M.efficientnet_b3(num_classes=2, head=HEAD, policy=["features.0.0"])


# ------------------------------------------- gradients against frozen PyTorch


def _keras_frozen_pair(arch: str, policy: list[str] | str, trainable: list[str], seed: int):
    """The PyTorch reference, well conditioned and frozen like Keras, and our copy."""
    ref = _randomised_reference(arch, HEAD, 2, seed=seed)
    rng = np.random.default_rng(seed + 1)
    _shrink_residual_branches(ref)
    _calibrate(ref, rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
    m = _ours_from(ref, arch, HEAD, 2, policy)
    names = _trainable_names(m)
    assert names == {
        n for n, p in ref.named_parameters() if any(n.startswith(t + ".") for t in trainable)
    }
    ref.train()
    _freeze_like_keras(ref, trainable)
    m.train()
    return ref, m, rng


def test_policy_with_a_frozen_gap_matches_the_keras_frozen_reference():
    """features.6 and the head train; features.7 and features.8 between them are frozen
    (inference-mode BN, folded) yet pass the gradient back to features.6.

    Measured against float64: logits 2e-5, running statistics 1.2e-5, gradients 4e-4 at
    worst (torch float32: 1.3e-5, 6.9e-6, 2.6e-4). A longer gap is worse conditioned for
    any float32 implementation: with ["features.3", "head."] 20 frozen blocks amplify
    rounding to 2e-3 .. 8e-3 in the gradients and 3e-3 .. 0.3 in head.bn's running
    variance, for torch float32 as for us."""
    trainable = ["features.6", "head"]
    ref, m, rng = _keras_frozen_pair("efficientnet_b3", ["features.6", "head."], trainable, 14)
    assert m.info["prefix_pieces"] == 1 + 2 + 3 + 3 + 5 + 5  # stem, features.1-5
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    _check_train_step(ref, m, x, rng.integers(0, 2, 3), trainable_prefixes=trainable)
    grads = dict(m.named_grads(trainable=True))
    assert any(n.startswith("features.6.") and np.any(g) for n, g in grads.items())
    assert not any(n.startswith(("features.7.", "features.8.")) for n in grads)


def _image_gradient_check(arch: str, policy: str) -> None:
    assert policy == "last_block"
    trainable = [p.rstrip(".") for p in LAST_BLOCK[arch]]
    seed = {"efficientnet_b3": 14, "efficientnet_v2_s": 12}[arch]
    ref, m, rng = _keras_frozen_pair(arch, policy, trainable, seed)
    assert m.policy == policy
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    # trainable_prefixes=None: _check_train_step then also compares d loss / d image.
    # The logits, the image gradient and each parameter gradient may also be off by 5x
    # torch float32's own error (see the docstring of the test; measured: at most 1.9x
    # on the parameter gradients; torch float32's train logits are 3.5e-5 off here).
    _check_train_step(ref, m, x, rng.integers(0, 2, 3), trainable_prefixes=None, noise_factor=5.0)


@pytest.mark.parametrize(
    "arch,policy", [("efficientnet_b3", "last_block"), ("efficientnet_v2_s", "last_block")]
)
def test_image_gradient_through_the_frozen_prefix(arch, policy):
    """Keras semantics: freezing stops parameter updates, not the gradient; the input
    gradient passes through the frozen (inference-mode) prefix. Run in a child process:
    a crash in the core must fail this test, not end the test session.

    The image gradient crosses 24 (B3) / 25 (V2-S) frozen blocks, which amplify
    rounding. Measured against float64 at the seeds used: image gradient B3 2.3e-4, V2-S
    1.8e-4 (torch float32 3.2e-4, 0.9e-4); parameter gradients B3 9.7e-4 at worst (torch
    float32 8.9e-4), V2-S 3.2e-4. Over seeds 2-8, 12-17, B3's worst parameter gradient is
    0.8e-3 .. 3e-3 for us and 0.6e-3 .. 3.9e-3 for torch float32 (a 64 x 64 image leaves
    2 x 2 pixels to the last stage's batch statistics), at most 1.9x torch's on every
    tensor; the image gradient reaches 1.1e-3 for us and 1.5e-3 for torch float32. For
    V2-S at seed 14 a ReLU of the channel MLP sits within rounding of its kink and puts
    head.channel.fc2 1.6e-2 off (torch float32 7e-4).
    (Not under "head": 26 frozen blocks of this random network make even the forward
    ill-conditioned; torch float32's own logits are 1e-4 .. 4e-4 off float64 there.)"""
    code = (
        "import test_model_policy as t; "
        f"t._image_gradient_check({arch!r}, {policy!r}); print('image gradient ok')"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    path = [tests, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode < 0:
        pytest.fail(f"the core crashed with signal {-out.returncode}:\n{out.stderr[-3000:]}")
    assert out.returncode == 0 and "image gradient ok" in out.stdout, out.stderr[-3000:]


def test_frozen_features_at_one_by_one_spatial_size():
    """At 32 px B3's prefix output is 1x1, where NHWC and NCHW coincide and oneDNN makes
    no reorder: frozen_features and from_features must still match the full pass."""
    for policy in ("last_block", "head"):
        m = M.efficientnet_b3(num_classes=2, head="multi_attention", policy=policy, seed=0)
        x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
        f = m.frozen_features(x)
        assert f.shape[2:] == (1, 1)
        m.eval()
        full = m.forward(x)
        assert np.array_equal(m.forward(f, from_features=True), full)
        m.train()
        logits, feats = m.forward(x, seed=3, return_features=True)
        assert np.array_equal(feats, f)
        assert np.array_equal(m.forward(f, seed=3, from_features=True), logits)
