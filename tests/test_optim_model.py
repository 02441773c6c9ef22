"""leukemia.optim on the real network against torch.optim on the PyTorch reference.

EfficientNet-B3 with the multi-attention head under "last_block" (features.7, features.8
and the head train; dropout and stochastic depth 0), the reference frozen like Keras
(frozen BatchNorm2d in eval mode, requires_grad False), the same weights in both. For
each of SGD (momentum, Nesterov, weight decay), Adam and AdamW (with the norm/bias decay
exclusion): two prefix groups ("features." and "head." with their own lr and weight
decay), global-norm clipping that acts, 20 steps over three cycling batches with
cross-entropy (ours computed in NumPy from our logits).

At every step the loss from our forward must equal the reference's (float64) to 1e-3
(measured: 7e-6), our global gradient norm its own to 1e-3 (measured: 6e-5) and each
gradient tensor its own to 0.1 in L2 norm (a rough check, test_model_heads.py does the
exact one; measured 0.04 at worst, where a ReLU in the channel MLP sat within rounding of
its kink and flipped). The reference's optimizer is then given our gradients (as
float64) and both optimizers step: after 20 steps every trainable weight agrees to 1e-5
of the tensor's max |w| (measured: 2e-6), the clipping norms to 1e-5, and the running
statistics of the trained BatchNorms to 1e-4; then eval-mode logits to 1e-4.

Why the reference steps on our gradients rather than its own: free-running, the two
trajectories part for reasons that have nothing to do with the optimizer, and so does
torch's own float32 run from its float64 run (measured with these groups, clipping at
5: SGD losses 12 % apart after 20 steps for torch float32, 18 % for ours; Adam/AdamW
weights up to 1.4e-2 / 3e-2 of max |w|). On
one of the batches a train-mode BatchNorm at 2x2 pixels x 4 images is ill-conditioned
(gradient error 6e-4 for torch float32, 2e-3 for ours, against float64), training
amplifies it, and Adam turns the sign of every near-zero (noise) gradient element into
a full +-lr step. Steering by our gradients keeps both sides on one trajectory, so any
error of the optimizer on the real arena (offsets, groups, clipping set, state), or a
forward that does not see the updated weights, shows at O(1).

Also: frozen parameters and frozen running statistics bit-identical, num_batches_tracked
equal to torch's; a state_dict saved after 10 steps continues bit-identically in a fresh
optimizer on a copy of the model; foreign states are refused and change nothing; an
empty policy and a NaN gradient are refused.
"""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import torch
from _gradcheck import rel_err
from test_model_heads import (
    _calibrate,
    _dlogits,
    _freeze_like_keras,
    _ours_from,
    _randomised_reference,
    _shrink_residual_branches,
)
from test_model_parity import _project_bn_biases

import leukemia.models as M
from leukemia.optim import SGD, Adam, AdamW

ARCH, HEAD, K = "efficientnet_b3", "multi_attention", 2
TRAINABLE = ["features.7", "features.8", "head"]  # B3's last_block, from DESIGN.md
STEPS = 20
MAX_NORM = 2.0
LOSS_RTOL = 1e-3
GRAD_NORM_RTOL = 1e-3  # global gradient norm against the reference's own gradients
GRAD_L2_RTOL = 0.1  # each tensor's gradient, in L2 norm (see the module docstring)
WEIGHT_RTOL = 1e-5
EVAL_RTOL = 1e-4

# name: (ours, torch's, default hyper-parameters, "features." group, "head." group, exclude)
CASES = {
    "sgd_nesterov": (
        SGD,
        torch.optim.SGD,
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"lr": 1e-3},
        {"lr": 1e-2, "weight_decay": 1e-2},
        False,
    ),
    "adam": (
        Adam,
        torch.optim.Adam,
        {"weight_decay": 1e-3},
        {"lr": 1e-5},
        {"lr": 1e-4, "weight_decay": 1e-2, "betas": (0.8, 0.99)},
        False,
    ),
    "adamw": (
        AdamW,
        torch.optim.AdamW,
        {"weight_decay": 1e-2, "eps": 1e-6},
        {"lr": 1e-5},
        {"lr": 1e-4, "weight_decay": 0.1},
        True,
    ),
}


def _cross_entropy(y: np.ndarray, labels: np.ndarray) -> float:
    z = y.astype(np.float64)
    z -= z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]))


@pytest.fixture(autouse=True)
def _onednn_depthwise_forward():
    """The frozen prefix's depthwise units on oneDNN's primitive, whose rounding the
    tolerances above were measured with. On AVX2 our inference kernel would run them
    (its SiLU's refined reciprocal, the SE pool summed in another order: 7.0e-5 of the
    prefix output's largest value against float64, oneDNN 5.5e-5), and the ill-conditioned
    2x2 BatchNorm turned that into a 5e-3 gradient-norm difference at step 19 of Adam.
    That kernel has its own parity tests (test_depthwise_inference_on_our_kernel)."""
    from leukemia import _core

    before = _core._dwfwd_policy("onednn")
    yield
    _core._dwfwd_policy(before)


@pytest.fixture(scope="module")
def reference():
    """A well-conditioned random reference (float32, train mode, frozen like Keras) and
    three batches of 4 images at 64 x 64 with labels."""
    ref = _randomised_reference(ARCH, HEAD, K, seed=2)
    rng = np.random.default_rng(3)
    _shrink_residual_branches(ref)
    _calibrate(ref, rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
    batches = [
        (rng.standard_normal((4, 3, 64, 64)).astype(np.float32), rng.integers(0, K, 4))
        for _ in range(3)
    ]
    return ref, batches


def _pair(reference):
    """Our model and a float64 copy of the reference, frozen like Keras, same weights."""
    ref0, batches = reference
    m = _ours_from(ref0, ARCH, HEAD, K, "last_block")
    m.train()
    ref = copy.deepcopy(ref0)
    ref.train()
    _freeze_like_keras(ref, TRAINABLE)
    return m, ref.double(), batches


def _ours(case: str, m: M.EfficientNet):
    cls, _, base, feat, head, exclude = CASES[case]
    return cls(
        m,
        **base,
        groups=[{"prefix": "features.", **feat}, {"prefix": "head.", **head}],
        max_grad_norm=MAX_NORM,
        exclude_norm_and_bias_from_decay=exclude,
    )


def _theirs(case: str, ref: torch.nn.Module):
    """torch's optimizer with the same groups written out by name; with the exclusion,
    each group split into a decayed part and a part without decay (1-D tensors, biases)."""
    _, tcls, base, feat, head, exclude = CASES[case]
    named = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    groups = []
    for prefix, over in (("features.", feat), ("head.", head)):
        names = [n for n in named if n.startswith(prefix)]
        hyper = {**base, **over}
        if exclude:
            no_decay = [n for n in names if named[n].ndim <= 1 or n.endswith(".bias")]
            decay = [n for n in names if n not in no_decay]
            groups.append({"params": [named[n] for n in decay], **hyper})
            groups.append({"params": [named[n] for n in no_decay], **hyper, "weight_decay": 0.0})
        else:
            groups.append({"params": [named[n] for n in names], **hyper})
    return tcls(groups, foreach=False), named


@pytest.mark.parametrize("case", list(CASES))
def test_twenty_steps_match_torch_optim(case, reference):
    m, ref, batches = _pair(reference)
    opt = _ours(case, m)
    assert [g["prefix"] for g in opt.param_groups] == ["features.", "head."]
    topt, tparams = _theirs(case, ref)
    trainable = dict(m.named_parameters(trainable=True))
    assert set(trainable) == set(tparams)
    assert all(n.startswith(tuple(t + "." for t in TRAINABLE)) for n in trainable)
    before = m.state_dict()
    floors = _project_bn_biases(list(trainable))
    clipped = 0
    for step in range(STEPS):
        x, labels = batches[step % len(batches)]
        y = m(x)
        loss = _cross_entropy(y, labels)
        yt = ref(torch.from_numpy(x).double())
        tloss = torch.nn.functional.cross_entropy(yt, torch.from_numpy(labels))
        assert abs(loss - tloss.item()) <= LOSS_RTOL * tloss.item(), f"step {step} loss"
        topt.zero_grad()
        tloss.backward()
        m.backward(_dlogits(y, labels))
        grads = dict(m.named_grads(trainable=True))
        own_norm = float(np.sqrt(sum(float((p.grad**2).sum()) for p in tparams.values())))
        for name, p in tparams.items():
            g = p.grad.numpy()
            if name not in floors:  # (true gradient 0: both sides return rounding noise)
                err = np.linalg.norm(grads[name] - g) / np.linalg.norm(g)
                assert err <= GRAD_L2_RTOL, f"step {step}: gradient of {name} off by {err:.3g}"
            p.grad = torch.from_numpy(grads[name].astype(np.float64))  # steer by ours
        tnorm = float(torch.nn.utils.clip_grad_norm_(list(tparams.values()), MAX_NORM))
        assert abs(tnorm - own_norm) <= GRAD_NORM_RTOL * own_norm, f"step {step}: norm"
        norm = opt.step()
        topt.step()
        assert abs(norm - tnorm) <= 1e-5 * tnorm, f"step {step}: norm {norm} vs {tnorm}"
        clipped += norm > MAX_NORM
    assert clipped >= STEPS // 2, f"clipping acted at {clipped} of {STEPS} steps only"
    # Eval mode after the steps: BatchNorm folded from the trained weights and running
    # statistics (measured 8e-6; the eval logits before training are 20-30x their size
    # away).
    m.eval()
    ref.eval()
    x, _ = batches[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(x).double()).numpy()
    err = np.max(np.abs(m(x) - want)) / np.max(np.abs(want))
    assert err <= EVAL_RTOL, f"eval logits after training off by {err:.3g}"

    after = m.state_dict()
    for name, p in tparams.items():
        err = rel_err(after[name], p.detach().numpy())
        assert err <= WEIGHT_RTOL, f"{case}: {name} off by {err:.3g} of its max |w|"
        assert not np.array_equal(after[name], before[name]), f"{name} did not train"
    tsd = ref.state_dict()
    for name, v in before.items():
        trains = name.rsplit(".", 1)[0] + ".weight" in tparams
        if name.endswith(".num_batches_tracked"):
            assert int(after[name]) == int(tsd[name]), name
            assert int(after[name]) == (STEPS if trains else 0), name
        elif name not in tparams and not trains:  # frozen parameter or frozen statistics
            assert np.array_equal(after[name], v), f"frozen {name} changed"
        elif "running" in name:  # statistics of a BN that trains
            np.testing.assert_allclose(after[name], tsd[name].numpy(), rtol=1e-4, atol=1e-4)


def test_state_dict_after_10_steps_continues_bit_identically(reference):
    ref0, batches = reference
    weights = {n: t.detach().numpy() for n, t in ref0.state_dict().items()}

    def model(seed: int) -> M.EfficientNet:  # dropout and stochastic depth on, seeded
        return M.efficientnet_b3(
            num_classes=K,
            head=HEAD,
            policy="last_block",
            dropout=0.3,
            stochastic_depth_prob=0.2,
            seed=seed,
        )

    for case in CASES:
        a = model(0)
        a.load_state_dict(weights)
        a.train()
        oa = _ours(case, a)
        for step in range(10):
            x, labels = batches[step % 3]
            a.backward(_dlogits(a(x, seed=step), labels))
            oa.step()
        oa.param_groups[1]["lr"] *= 0.5  # a schedule's change is part of the state
        saved = pickle.loads(pickle.dumps(oa.state_dict()))
        b = model(1)
        b.load_state_dict(a.state_dict())
        b.train()
        ob = _ours(case, b)
        ob.load_state_dict(saved)
        assert ob.param_groups[1]["lr"] == oa.param_groups[1]["lr"]
        for step in range(10, 20):
            x, labels = batches[step % 3]
            ya, yb = a(x, seed=step), b(x, seed=step)
            assert np.array_equal(ya, yb), f"{case} step {step}"
            a.backward(_dlogits(ya, labels))
            b.backward(_dlogits(yb, labels))
            assert oa.step() == ob.step()
        sa, sb = a.state_dict(), b.state_dict()
        for name in sa:
            assert np.array_equal(sa[name], sb[name]), f"{case}: {name}"
        xa, xb = oa.state_dict(), ob.state_dict()
        assert np.array_equal(xa["steps"], xb["steps"])
        for k, v in xa["state"].items():
            assert v is not None and np.array_equal(v, xb["state"][k]), f"{case}: {k}"


def _snapshot(m: M.EfficientNet, opt) -> tuple:
    return m.state_dict(), m.version, pickle.dumps(opt.state_dict())


def _assert_unchanged(m: M.EfficientNet, opt, snap: tuple, what: str = "") -> None:
    sd, version, ostate = snap
    assert m.version == version, what
    for name, v in m.state_dict().items():
        assert np.array_equal(v, sd[name]), f"{what}: {name}"
    assert pickle.dumps(opt.state_dict()) == ostate, what


def test_foreign_optimizer_state_is_refused_and_changes_nothing(reference):
    ref0, batches = reference
    m = _ours_from(ref0, ARCH, HEAD, K, "last_block").train()
    opt = _ours("adamw", m)
    x, labels = batches[0]
    m.backward(_dlogits(m(x), labels))
    opt.step()
    snap = _snapshot(m, opt)

    def trained_state(model: M.EfficientNet, make) -> dict:
        model.train()
        o = make(model)
        xx = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
        model.backward(_dlogits(model(xx), np.array([0, 1, 0])))
        o.step()
        return o.state_dict()

    groups = [{"prefix": "features.", "lr": 1e-5}, {"prefix": "head.", "lr": 1e-4}]
    v2s = M.efficientnet_v2_s(num_classes=K, head=HEAD, policy="last_block")
    other = "belongs to another model or other parameters"
    foreign = {  # what: (state, what the error says)
        "V2-S": (trained_state(v2s, lambda mm: AdamW(mm, groups=groups)), other),
        "policy head": (
            trained_state(
                M.efficientnet_b3(num_classes=K, head=HEAD, policy="head"),
                lambda mm: AdamW(mm, groups=[{"prefix": "head.", "lr": 1e-4}]),
            ),
            other,
        ),
        "policy all": (
            trained_state(
                M.efficientnet_b3(num_classes=K, head=HEAD, policy="all"),
                lambda mm: AdamW(mm, groups=groups),
            ),
            other,
        ),
        "3 classes": (
            trained_state(
                M.efficientnet_b3(num_classes=3, head=HEAD, policy="last_block"),
                lambda mm: AdamW(mm, groups=groups),
            ),
            "shape mismatch: head.out.weight",
        ),
        "Adam": (
            trained_state(
                M.efficientnet_b3(num_classes=K, head=HEAD, policy="last_block"),
                lambda mm: Adam(mm, groups=groups),
            ),
            "'adam' optimizer",
        ),
        "one group": (
            trained_state(
                M.efficientnet_b3(num_classes=K, head=HEAD, policy="last_block"),
                lambda mm: AdamW(mm),
            ),
            "the state has 1 parameter groups",
        ),
    }
    for what, (state, message) in foreign.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            opt.load_state_dict(state)
        _assert_unchanged(m, opt, snap, what)
    # And the optimizer still steps as before.
    m.backward(_dlogits(m(x), labels))
    opt.step()


def test_nothing_trainable_is_refused():
    m = M.efficientnet_b3(num_classes=K, head=HEAD, policy=[])
    assert m.policy == () and m.num_parameters(trainable=True) == 0
    assert m.info["trainable_params"] == 0
    for cls in (SGD, Adam, AdamW):
        with pytest.raises(ValueError, match="no trainable parameters"):
            cls(m)
    # A group whose prefix selects nothing that trains is refused too, naming it.
    m.set_policy("head")
    with pytest.raises(ValueError, match="features.7"):
        AdamW(m, groups=[{"prefix": "features.7", "lr": 1e-3}])


def test_nan_gradient_is_refused_and_changes_nothing(reference):
    ref0, batches = reference
    m = _ours_from(ref0, ARCH, HEAD, K, "last_block").train()
    for case in CASES:
        opt = _ours(case, m)
        x, labels = batches[1]
        m.backward(_dlogits(m(x), labels))
        opt.step()  # state arrays exist
        m.backward(_dlogits(m(x), labels))
        grads = dict(m.named_grads(trainable=True))
        g = grads["features.7.1.block.1.0.weight"]
        g.flat[17] = np.nan
        snap = _snapshot(m, opt)
        saved_grads = {n: v.copy() for n, v in m.named_grads()}
        with pytest.raises(FloatingPointError, match=r"features\.7\.1\.block\.1\.0\.weight"):
            opt.step()
        _assert_unchanged(m, opt, snap)
        for n, v in m.named_grads():  # not clipped either (NaN compares equal here)
            np.testing.assert_array_equal(v, saved_grads[n], err_msg=n)
        g.flat[17] = np.inf
        with pytest.raises(FloatingPointError):
            opt.step()
        _assert_unchanged(m, opt, snap)
        # A NaN where no trainable parameter lies (a frozen tensor's gradient) is not read.
        g.flat[17] = 0.0
        frozen = dict(m.named_grads(trainable=False))["features.3.0.block.0.0.weight"]
        frozen.flat[0] = np.nan
        opt.step()
        assert m.version > snap[1]
        frozen.flat[0] = 0.0
