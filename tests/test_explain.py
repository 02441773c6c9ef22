"""Explanations (leukemia.explain, `leukemia explain`) against PyTorch references.

The gradient of a logit with respect to the head's input F comes from the C backward in
eval semantics; the reference is autograd through the PyTorch heads of
tests/_torch_heads.py (torchvision's classifier for the linear head) in eval mode, in
float64. Grad-CAM is checked against the formula applied to the reference's F and dF
(upsampled with torch's bilinear interpolation), the attention maps against the
reference head's intermediate tensors, and the model's state bit for bit.

Tolerances as in test_model_heads.py: F and logits 1e-4 relative to the tensor's max,
gradients 1e-3 relative to the reference gradient's max.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _torch_heads import _run_spatial
from PIL import Image
from test_model_heads import (
    _calibrate,
    _ours_from,
    _randomised_reference,
    _shrink_residual_branches,
)
from test_model_parity import _rel

import leukemia.explain as E
import leukemia.models as M
from leukemia.cli import main
from leukemia.evaluation import load_run, predict
from leukemia.train.checkpoint import save_checkpoint

ARCH = "efficientnet_b3"
LOGIT_RTOL = 1e-4
GRAD_RTOL = 1e-3
CAM_ATOL = 2e-3  # maps scaled to [0, 1]


@pytest.fixture(scope="module", params=["linear", "multi_attention"])
def pair(request):
    """(head, float32 reference, our model with its weights) for a 3-class B3."""
    head = request.param
    ref = _randomised_reference(ARCH, head, 3, seed=2)
    # Running statistics of real activations: with random ones the inference-mode
    # backbone maps every image and position to nearly the same features (flat maps).
    _shrink_residual_branches(ref)
    _calibrate(ref, _images(8, 96, 64, seed=1))
    ref.eval()
    policy = "all" if head == "linear" else "last_block"
    m = _ours_from(ref, ARCH, head, 3, policy)
    m.set_regularization(0.5, 0.2)  # eval semantics must ignore both
    return head, ref, m


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def _reference(ref: torch.nn.Module, head: str, x: np.ndarray, target=None, f=None):
    """Eval-mode float64 reference: logits, F, dF of the target logit (None: predicted)
    and the float64 module. With `f` the head runs on that F instead of the backbone's
    (its gradient then tests the head's backward alone, free of the backbone's float32
    rounding, which may move a max-pool's argmax)."""
    r = copy.deepcopy(ref).double().eval()
    with torch.no_grad():
        ft = r.features(torch.from_numpy(x.astype(np.float64))) if f is None else None
    if f is not None:
        ft = torch.from_numpy(f.astype(np.float64))
    ft.requires_grad_(True)
    y = r.classifier(torch.flatten(r.avgpool(ft), 1)) if head == "linear" else r.head(ft)
    t = y.argmax(1) if target is None else torch.full((len(x),), target)
    y.gather(1, t[:, None]).sum().backward()
    return y.detach().numpy(), ft.detach().numpy(), ft.grad.numpy(), r


def _check_df(df: np.ndarray, rdf: np.ndarray, f: np.ndarray) -> None:
    """dF against the reference. Where a channel's max over positions is tied (dead
    channels: F = 0 everywhere) the global max pool's gradient is a choice: torch splits
    it over the tied positions, the core gives it to the first. There only the sum over
    positions (what Grad-CAM's weights use) is compared."""
    flat = f.reshape(*f.shape[:2], -1)
    tied = (flat == flat.max(2, keepdims=True)).sum(2) > 1  # [N, C]
    assert tied.mean() < 0.5, "too few channels left to compare elementwise"
    scale = max(float(np.abs(rdf).max()), 1e-30)
    err = np.abs(df - rdf)[~tied].max() / scale
    assert err < GRAD_RTOL, f"dF: {err:.3g}"
    s, rs = df.sum((2, 3)), rdf.sum((2, 3))
    err = np.abs(s - rs).max() / max(float(np.abs(rs).max()), 1e-30)
    assert err < GRAD_RTOL, f"dF summed over positions: {err:.3g}"


def _reference_cam(f: np.ndarray, df: np.ndarray, h: int, w: int) -> np.ndarray:
    ft, dft = torch.from_numpy(f), torch.from_numpy(df)
    cam = torch.relu((dft.mean((2, 3))[:, :, None, None] * ft).sum(1))
    up = torch.nn.functional.interpolate(cam[:, None], (h, w), mode="bilinear")[:, 0]
    flat = up.flatten(1)
    lo, span = flat.min(1).values, flat.max(1).values - flat.min(1).values
    out = torch.where(span[:, None] > 0, (flat - lo[:, None]) / span.clamp_min(1e-300)[:, None], 0)
    return out.reshape(up.shape).numpy()


@pytest.mark.parametrize("target", [None, 1])
def test_feature_gradient_and_grad_cam_match_autograd(pair, target):
    head, ref, m = pair
    x = _images(2, 96, 64, seed=3)  # a 3 x 2 feature map: transpositions show
    m.train()  # eval semantics whatever the mode
    logits, f, df = E.feature_gradients(m, x, target)
    y, rf, _, _ = _reference(ref, head, x, target)
    assert f.shape == rf.shape == (2, 1536, 3, 2)
    assert _rel(logits, y) < LOGIT_RTOL, "eval logits"
    assert _rel(f, rf) < LOGIT_RTOL, "F"
    if target is None:
        assert np.array_equal(logits.argmax(1), y.argmax(1))
    _, _, rdf, _ = _reference(ref, head, x, target, f=f)
    assert np.abs(rdf).max() > 0
    _check_df(df, rdf, f)
    cams = E.grad_cam(m, x, target)
    want = _reference_cam(f.astype(np.float64), rdf, 96, 64)
    assert cams.shape == (2, 96, 64) and cams.dtype == np.float32
    assert cams.min() == 0.0 and set(cams.max((1, 2)).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(cams, want, rtol=0, atol=CAM_ATOL)


@pytest.mark.parametrize("head", ["channel_attention", "spatial_attention"])
def test_ablation_heads_feature_gradient_and_maps(head):
    ref = _randomised_reference(ARCH, head, 2, seed=13)
    _shrink_residual_branches(ref)
    _calibrate(ref, _images(6, 64, 64, seed=14))
    ref.eval()
    m = _ours_from(ref, ARCH, head, 2, "last_block")
    x = _images(2, 96, 64, seed=15)
    logits, f, df = E.feature_gradients(m, x, 0)
    y, _, rdf, _ = _reference(ref, head, x, 0, f=f)
    assert _rel(logits, y) < LOGIT_RTOL
    _check_df(df, rdf, f)
    maps = E.attention_maps(m, x)
    assert (maps.channel is None) == (head == "spatial_attention")
    assert (maps.spatial1 is None) == (head == "channel_attention")
    assert maps.spatial2 is None and maps.pool is None


def test_any_dlogits_is_a_linear_combination(pair):
    head, ref, m = pair
    x = _images(2, 64, 64, seed=4)
    dl = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.25]], np.float32)
    _, _, df = E.feature_gradients(m, x, dlogits=dl)
    parts = [E.feature_gradients(m, x, c)[2] for c in range(3)]
    want = sum(dl[:, c, None, None, None] * parts[c] for c in range(3))
    assert _rel(df, want) < 1e-5


def _state(m: M.EfficientNet) -> tuple:
    sd = m.state_dict()
    return (
        {k: v.tobytes() for k, v in sd.items()},
        m.version,
        m.flat_grads().tobytes(),
        m.training,
    )


@pytest.mark.parametrize("training", [True, False])
def test_explaining_leaves_the_model_untouched(pair, training):
    head, ref, m = pair
    m.train(training)
    m.flat_grads()[:] = np.random.default_rng(5).standard_normal(m.flat_grads().size)
    before = _state(m)
    x = _images(3, 64, 64, seed=6)
    E.grad_cam(m, x)
    E.feature_gradients(m, x, dlogits=np.ones((3, 3), np.float32))
    if head != "linear":
        E.attention_maps(m, x)
    assert _state(m) == before


def test_a_train_step_after_explaining_is_unchanged():
    """No explanation setting leaks into later plans: same gradients, bit for bit."""
    ref = _randomised_reference(ARCH, "multi_attention", 2, seed=7)
    a = _ours_from(ref, ARCH, "multi_attention", 2, "last_block")
    b = _ours_from(ref, ARCH, "multi_attention", 2, "last_block")
    x = _images(3, 64, 64, seed=8)
    E.grad_cam(b, x[:2])
    dl = np.full((3, 2), 0.1, np.float32)
    for m in (a, b):
        m.train()
        m(x, seed=1)
        m.backward(dl)
    assert a.flat_grads().tobytes() == b.flat_grads().tobytes()
    # An explanation between a train forward and its backward replaces the plan.
    b(x, seed=2)
    E.grad_cam(b, x[:1])
    with pytest.raises(RuntimeError, match="train mode"):
        b.backward(dl)


def test_attention_maps_match_the_reference_head(pair):
    head, ref, m = pair
    x = _images(2, 96, 64, seed=9)
    if head == "linear":
        with pytest.raises(ValueError, match="linear head"):
            E.attention_maps(m, x)
        return
    maps = E.attention_maps(m, x)
    _, f, _ = E.feature_gradients(m, x)  # the reference head on our F
    y, _, _, r = _reference(ref, head, x, f=f)
    ft = torch.from_numpy(f.astype(np.float64))
    hd = r.head
    with torch.no_grad():
        gap, gmp = ft.mean((2, 3), keepdim=True), ft.amax((2, 3), keepdim=True)
        a = torch.sigmoid(hd.channel(gap) + hd.channel(gmp))
        xc = a * ft
        cs = torch.cat([xc.mean(1, keepdim=True), xc.max(1, keepdim=True).values], 1)
        s1, s2 = _run_spatial(hd.spatial1, cs)[:, 0], _run_spatial(hd.spatial2, cs)[:, 0]
        flat = ft.flatten(2).transpose(1, 2)
        pool = torch.softmax(hd.attn_pool(flat).squeeze(-1), 1).reshape(s1.shape)
    assert _rel(maps.logits, y) < LOGIT_RTOL
    want = {
        "channel": a[:, :, 0, 0],
        "channel_map": xc.mean(1),
        "spatial1": s1,
        "spatial2": s2,
        "pool": pool,
    }
    for name, t in want.items():
        got = getattr(maps, name)
        assert got.shape == tuple(t.shape), name
        assert _rel(got, t.numpy()) < LOGIT_RTOL, f"{name}: {_rel(got, t.numpy()):.3g}"
    np.testing.assert_allclose(maps.pool.sum((1, 2)), 1.0, atol=1e-5)


def test_bad_requests_are_named(pair):
    head, ref, m = pair
    x = _images(2, 64, 64)
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 3\)"):
        E.grad_cam(m, x, 3)
    with pytest.raises(ValueError, match="2 ints"):
        E.grad_cam(m, x, [0, 1, 2])
    with pytest.raises(TypeError, match="float32"):
        E.grad_cam(m, x.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        E.grad_cam(m, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="dlogits"):
        E.feature_gradients(m, x, dlogits=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="image size"):
        E.grad_cam(m, _images(1, 16, 16))


def test_resize_and_overlay():
    maps = np.random.default_rng(1).random((2, 3, 5))
    want = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], (11, 7), mode="bilinear"
    )[:, 0].numpy()
    np.testing.assert_allclose(E.resize_bilinear(maps, 11, 7), want, atol=1e-12)
    img = np.full((6, 4, 3), 100, np.uint8)
    heat = np.zeros((6, 4))
    heat[0, 0] = 1.0
    out = E.overlay(img, heat, alpha=0.5, cmap="gray")
    assert out.dtype == np.uint8 and out.shape == (6, 4, 3)
    assert tuple(out[0, 0]) == (178, 178, 178) and tuple(out[5, 3]) == (50, 50, 50)
    assert E.overlay(img[:, :, 0], np.ones((2, 2)), alpha=0.0).tolist() == img.tolist()
    with pytest.raises(ValueError, match="colormap"):
        E.overlay(img, heat, cmap="no-such-map")
    with pytest.raises(TypeError, match="uint8"):
        E.overlay(img.astype(np.float32), heat)


def _run_dir(root: Path, head: str, size: int) -> Path:
    """A run directory as `leukemia train` writes it (config.json and best.ckpt)."""
    ref = _randomised_reference(ARCH, head, 2, seed=11)
    m = _ours_from(ref, ARCH, head, 2, "all")
    run = root / head
    run.mkdir()
    model = {"arch": ARCH, "head": head, "num_classes": 2, "policy": "all", "size": size}
    (run / "config.json").write_text(json.dumps({"config": {}, "model": model}))
    save_checkpoint(run / "best.ckpt", m)
    return run


@pytest.mark.parametrize("head,tiles", [("linear", 2), ("multi_attention", 6)])
def test_cli_writes_pngs_and_predictions(tmp_path, head, tiles, capsys):
    run = _run_dir(tmp_path, head, 64)
    rng = np.random.default_rng(12)
    files = []
    for name, shape in (("a.png", (70, 60)), ("b.bmp", (64, 64)), ("c.png", (40, 90))):
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        files.append(path)
    out = tmp_path / "out"
    assert (
        main(["explain", str(run), *map(str, files), "--out", str(out), "--batch-size", "2"]) == 0
    )
    assert "Wrote 3 explanations" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "explain.csv").open()))
    assert [Path(r["path"]) for r in rows] == files
    probs = predict(load_run(run), files)
    got = np.array([[float(r["p_hem"]), float(r["p_all"])] for r in rows])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    for r, p in zip(rows, probs, strict=True):
        assert r["predicted"] == r["explained"] == ("hem", "all")[int(p.argmax())]
        img = np.asarray(Image.open(out / r["png"]))
        tile = 192  # 64-px inputs enlarged 3x, 4-px gaps, a 14-px title bar
        assert img.shape == (tile + 14, tiles * (tile + 4) - 4, 3)
        assert img[14:].std() > 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    assert main(["explain", str(run), str(files[0]), "--out", str(out), "--target", "all"]) == 0
    assert next(csv.DictReader((out / "explain.csv").open()))["explained"] == "all"
    assert main(["explain", str(run), str(files[0]), "--out", str(out), "--target", "x"]) == 1
    assert "--target 'x'" in capsys.readouterr().err
