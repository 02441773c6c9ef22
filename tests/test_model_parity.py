"""Whole-network parity with torchvision: structure, eval/train logits, every gradient,
the input gradient and the BatchNorm running statistics, for EfficientNet-B3 and
EfficientNetV2-S, with weights loaded through both the .pth and the safetensors paths.

Tolerances: logits 1e-4 relative to max |logit|; gradients 1e-3 relative to the
tensor's own max |grad|; running stats 1e-4 absolute. One exception: the bias of each
block's projection BN (the last BN of a block, no activation after it) shifts the block
output by a per-channel constant that the next convolution + batch-statistics BN removes,
so its true gradient is zero (up to border effects of padded convolutions) and both
implementations return rounding noise (~1e-7); those tensors are compared against 1e-3
of the largest gradient in the network instead.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

import leukemia.models as M
from leukemia.io import save_safetensors

LOGIT_RTOL = 1e-4
GRAD_RTOL = 1e-3
STAT_ATOL = 1e-4
# Both frameworks in float32: a running variance of 2.6 differed by 1.06e-4 on AVX2 (V2-S
# features.7, 4e-5 relative); a wrong momentum or variance correction is off by >= 1e-2.
STAT_RTOL = 1e-4

PARAMS = {
    ("efficientnet_b3", 1000): 12_233_232,
    ("efficientnet_b3", 2): 10_699_306,
    ("efficientnet_v2_s", 1000): 21_458_488,
    ("efficientnet_v2_s", 2): 20_180_050,
}


@pytest.mark.parametrize("arch,k", list(PARAMS))
def test_parameter_count_and_names(arch, k):
    m = M.EfficientNet(arch, k)
    assert m.num_parameters() == PARAMS[(arch, k)]
    tv = getattr(torchvision.models, arch)(num_classes=k)
    assert m.num_parameters() == sum(p.numel() for p in tv.parameters())
    ours = m.state_dict()
    ref = tv.state_dict()
    assert list(ours) == list(ref)
    for name, t in ref.items():
        assert ours[name].shape == tuple(t.shape), name


def _torch_model(arch: str, k: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, arch)(num_classes=k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in tv.modules():  # non-trivial BN state so eval mode is a real test
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
    return tv


def _no_regularisation(tv: torch.nn.Module) -> None:
    tv.classifier[0].p = 0.0
    for mod in tv.modules():
        if isinstance(mod, torchvision.ops.StochasticDepth):
            mod.p = 0.0


def _project_bn_biases(names: list[str]) -> set[str]:
    """`features.S.B.block.I.1.bias` of the last unit of every block with two or more."""
    last: dict[str, int] = {}
    for name in names:
        m = re.match(r"(features\.\d+\.\d+\.block)\.(\d+)\.", name)
        if m:
            last[m.group(1)] = max(last.get(m.group(1), 0), int(m.group(2)))
    return {f"{blk}.{i}.1.bias" for blk, i in last.items() if i >= 1}


def _rel(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor, 1e-30))


@pytest.mark.parametrize(
    "arch,via", [("efficientnet_b3", "pth"), ("efficientnet_v2_s", "safetensors")]
)
def test_parity_with_torchvision(arch, via, tmp_path):
    k = 3
    tv = _torch_model(arch, k, seed=1)
    path = tmp_path / f"w.{via}"
    if via == "pth":
        torch.save(tv.state_dict(), path)
    else:
        save_safetensors(path, {n: t.numpy() for n, t in tv.state_dict().items()})
    m = M.EfficientNet(arch, k, weights=path, strict=True)
    # The other file format must load the very same numbers.
    other = tmp_path / ("w.safetensors" if via == "pth" else "w.pth")
    if via == "pth":
        save_safetensors(other, {n: t.numpy() for n, t in tv.state_dict().items()})
    else:
        torch.save(tv.state_dict(), other)
    twin = M.EfficientNet(arch, k, weights=other, strict=True).state_dict()
    for name, value in m.state_dict().items():
        assert np.array_equal(value, twin[name]), name
    _no_regularisation(tv)
    m.set_regularization(0.0, 0.0)
    rng = np.random.default_rng(0)

    # Two sizes on one model (the second, non-square, forces a re-plan), batch >= 2.
    for n, h, w in [(2, 64, 64), (3, 72, 56)]:
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        tv.eval()
        m.eval()
        with torch.no_grad():
            ref = tv(torch.from_numpy(x)).numpy()
        assert _rel(m(x), ref) < LOGIT_RTOL, f"eval logits at {h}x{w}"

        tv.train()
        m.train()
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = tv(xt)
        y = m(x, input_grad=True)
        assert _rel(y, yt.detach().numpy()) < LOGIT_RTOL, f"train logits at {h}x{w}"
        labels = rng.integers(0, k, n)
        torch.nn.functional.cross_entropy(yt, torch.from_numpy(labels)).backward()
        prob = np.exp(y - y.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        dlogits = prob.copy()
        dlogits[np.arange(n), labels] -= 1.0
        dx = m.backward((dlogits / n).astype(np.float32), input_grad=True)
        assert _rel(dx, xt.grad.numpy()) < GRAD_RTOL, "input gradient"
        ref_grads = {name: p.grad.numpy() for name, p in tv.named_parameters()}
        top = max(float(np.max(np.abs(g))) for g in ref_grads.values())
        grads = dict(m.named_grads())
        assert set(grads) == set(ref_grads)
        project_bn_biases = _project_bn_biases(list(grads))
        assert project_bn_biases <= set(grads)
        for name, g in grads.items():
            assert np.all(np.isfinite(g)), name
            floor = 1e-3 * top if name in project_bn_biases else 0.0
            err = _rel(g, ref_grads[name], floor=floor)
            assert err < GRAD_RTOL, f"gradient of {name}: {err:.3g}"
        tv.zero_grad()
        ours = m.state_dict()
        for name, t in tv.state_dict().items():
            if "running" in name:
                np.testing.assert_allclose(
                    ours[name], t.numpy(), rtol=STAT_RTOL, atol=STAT_ATOL, err_msg=name
                )
            if name.endswith("num_batches_tracked"):
                assert int(ours[name]) == int(t), name
    assert m.info["plans_made"] >= 4  # eval + train at each of the two sizes


def test_replan_batch_change_stays_correct():
    tv = _torch_model("efficientnet_v2_s", 2, seed=3).eval()
    m = M.EfficientNet("efficientnet_v2_s", 2)
    m.load_state_dict({n: t.numpy() for n, t in tv.state_dict().items()})
    m.eval()
    rng = np.random.default_rng(5)
    for n, h, w in [(1, 48, 48), (4, 48, 48), (1, 48, 48), (2, 40, 56)]:
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = tv(torch.from_numpy(x)).numpy()
        assert _rel(m(x), ref) < LOGIT_RTOL
