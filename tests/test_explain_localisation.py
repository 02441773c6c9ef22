"""Grad-CAM points at the evidence of a trained model, and computing it changes nothing.

B3 with the study's multi-attention head is trained from random initialisation (policy
"all": no pretrained weights here) to tell a reddish disc (class 1, the "blast") from a
greenish one (class 0), one disc of radius 8-14 px at a random place on a dark, noisy
64 x 64 background. Being fully convolutional, the trained model is then shown 256 x 256
mosaics: one quadrant holds a disc of the class asked about, each other quadrant a disc of
the other class. Grad-CAM for the asked class (``target``) must put most of its mass in that
quadrant (chance: 0.25), though three decoys of the other class are as salient to the eye.

Why these sizes: B3's last feature map is 1/32 of the input. At 64-128 px (2 x 2 - 4 x 4
cells) a cell's receptive field spills into its neighbours and the share of a quadrant
stayed at 0.38-0.43 in every variant tried; evidence in a fixed quadrant let the model
route it to other cells (share 0.15), and the multi-attention head trained on 128 px
quadrant images gathered its evidence in the bottom row of cells whatever the quadrant.
Trained on whole 64 px images and shown at 256 px (8 x 8 cells, 4 x 4 per quadrant), the
map follows the evidence. Measured by this test (seed 7, 768 images, 4 epochs of 16):
accuracy 1.0 at 64 px; blast class: mean share 0.94, smallest 0.54, the right quadrant
first in 32/32 mosaics; normal class: mean share 0.49, smallest 0.31, first in 31/32 (a
trial run with other mosaics: 0.88 and 0.50). The normal class is
weaker because a two-class network may learn one direction ("reddish") and call its absence
normal, so the normal logit's evidence is partly "no red here". About 45 s on 2 idle cores.
"""

from __future__ import annotations

import numpy as np
from test_learning import _cross_entropy

import leukemia.models as M
from leukemia.explain import grad_cam
from leukemia.optim import AdamW, CosineWarmup

TRAIN_SIZE, MOSAIC = 64, 256
N_TRAIN, EPOCHS, BATCH = 768, 4, 16
N_MOSAIC = 64
RED, GREEN = np.array([0.85, 0.35, 0.35]), np.array([0.35, 0.75, 0.4])


def _disc(img: np.ndarray, cy: float, cx: float, r: float, colour: np.ndarray) -> None:
    """Paint an anti-aliased disc of ``colour`` (jittered) into img [3, H, W] in place."""
    yy, xx = np.mgrid[0 : img.shape[1], 0 : img.shape[2]] + 0.5
    m = np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0, 1)
    img *= 1 - m
    img += colour[:, None, None] * m


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 0.03, (3, size, size))


def _standardise(x: np.ndarray) -> np.ndarray:
    return ((x - 0.45) / 0.25).astype(np.float32)


def _colour(label: int, rng: np.random.Generator) -> np.ndarray:
    return (RED if label else GREEN) + rng.uniform(-0.1, 0.1, 3)


def _training_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    x = np.empty((n, 3, TRAIN_SIZE, TRAIN_SIZE))
    for i, label in enumerate(labels):
        x[i] = _background(TRAIN_SIZE, rng)
        r = rng.uniform(8, 14)
        cy, cx = rng.uniform(r + 1, TRAIN_SIZE - r - 1, 2)
        _disc(x[i], cy, cx, r, _colour(label, rng))
    return _standardise(x), labels


def _mosaics(n: int, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n mosaics [n, 3, 256, 256] and the quadrant (0..3, row-major) of each one's disc of
    class ``label``; the other three quadrants hold a disc of the other class each."""
    half = MOSAIC // 2
    quadrant = rng.integers(0, 4, n)
    x = np.empty((n, 3, MOSAIC, MOSAIC))
    for i in range(n):
        x[i] = _background(MOSAIC, rng)
        for q in range(4):
            r = rng.uniform(8, 14)
            qy, qx = divmod(q, 2)
            cy = qy * half + rng.uniform(r + 1, half - r - 1)
            cx = qx * half + rng.uniform(r + 1, half - r - 1)
            _disc(x[i], cy, cx, r, _colour(label if q == quadrant[i] else 1 - label, rng))
    return _standardise(x), quadrant


def _quadrant_mass(maps: np.ndarray) -> np.ndarray:
    """[n, 4] mass of each map [n, S, S] in each quadrant (row-major)."""
    n, s = len(maps), maps.shape[1] // 2
    return maps.reshape(n, 2, s, 2, s).transpose(0, 1, 3, 2, 4).reshape(n, 4, -1).sum(2)


def test_grad_cam_of_a_trained_model_lies_on_the_evidence() -> None:
    rng = np.random.default_rng(7)
    x_train, y_train = _training_images(N_TRAIN, rng)
    model = M.efficientnet_b3(num_classes=2, head="multi_attention", policy="all", seed=0)
    opt = AdamW(
        model, lr=1e-3, weight_decay=0.05, exclude_norm_and_bias_from_decay=True, max_grad_norm=1.0
    )
    steps = N_TRAIN // BATCH
    sched = CosineWarmup(opt, warmup_steps=EPOCHS * steps // 10, total_steps=EPOCHS * steps)
    model.train()
    for _ in range(EPOCHS):
        order = rng.permutation(N_TRAIN)
        for s in range(steps):
            idx = order[s * BATCH : (s + 1) * BATCH]
            _, dlogits = _cross_entropy(model(x_train[idx]), y_train[idx])
            model.backward(dlogits)
            opt.step()
            sched.step()
    model.eval()
    x_val, y_val = _training_images(128, rng)
    pred = np.concatenate([model(x_val[i : i + 32]).argmax(1) for i in range(0, 128, 32)])
    accuracy = float(np.mean(pred == y_val))
    assert accuracy >= 0.9, f"the model did not learn red from green (accuracy {accuracy:.3f})"

    state = {k: v.copy() for k, v in model.state_dict().items()}
    version = model.version
    results = {}
    for label in (1, 0):
        x, quadrant = _mosaics(N_MOSAIC // 2, label, rng)
        mass = _quadrant_mass(grad_cam(model, x, label).astype(np.float64))
        assert np.all(mass.sum(1) > 0), "a Grad-CAM map is zero everywhere"
        share = mass[np.arange(len(x)), quadrant] / mass.sum(1)
        first = float(np.mean(mass.argmax(1) == quadrant))
        results[label] = (float(share.mean()), float(share.min()), first)
    print(
        f"accuracy {accuracy:.3f}; (mean share, smallest share, right quadrant first): "
        f"blast {np.round(results[1], 3)}, normal {np.round(results[0], 3)} (chance 0.25)"
    )
    # Computing the maps left the model exactly as it was.
    assert model.version == version and not model.training
    for k, v in model.state_dict().items():
        assert np.array_equal(v, state[k]), f"{k} changed while computing Grad-CAM"

    share, _, first = results[1]
    assert share > 0.6, f"blast Grad-CAM: only {share:.3f} of the mass on the blast disc"
    assert first >= 0.9, f"blast Grad-CAM: right quadrant first in only {first:.0%}"
    share, _, first = results[0]
    assert share > 0.375, f"normal Grad-CAM: {share:.3f} of the mass on the normal disc"
    # 31/32 on an AVX-512 machine, 24/32 on an AVX2 one (the training's rounding differs):
    # both far above chance (8/32; 19 or more by chance has probability below 1e-6).
    assert first >= 0.6, f"normal Grad-CAM: right quadrant first in only {first:.0%}"
