"""Transforms: seeded determinism, reference normalisation, rotations keep the cell."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_data import cell_image  # noqa: E402

from leukemia.data.transforms import (  # noqa: E402
    CenterCrop,
    ColorJitter,
    Normalize,
    RandomFlip,
    RandomResizedCrop,
    RandomRot90,
    RandomRotation,
    Resize,
    StainJitter,
    eval_transform,
    hed_to_rgb,
    rgb_to_hed,
    train_transform,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_normalize_matches_hand_computed_reference() -> None:
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    out = Normalize()(img, rng())
    assert out.dtype == np.float32 and out.shape == (3, 2, 2) and out.flags.c_contiguous
    # (255/255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128/255 - 0.406) / 0.225
    np.testing.assert_allclose(out[:, 0, 0], [2.2489083, -2.0357143, 0.4264924], atol=1e-5)
    np.testing.assert_allclose(out[:, 1, 1], [-2.1179039, -2.0357143, -1.8044444], atol=1e-5)
    custom = Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(img, rng())
    np.testing.assert_allclose(custom[:, 0, 0], [1.0, -1.0, 128 / 127.5 - 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        Normalize()(img.astype(np.float32), rng())


@pytest.mark.parametrize("make", [lambda: train_transform(48), lambda: eval_transform(48)])
def test_pipelines_are_deterministic_given_a_seed(make) -> None:  # noqa: ANN001
    img = cell_image(64, seed=1)
    t = make()
    a, b = t(img, rng(5)), t(img, rng(5))
    assert a.shape == (3, 48, 48) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(make()(img, rng(5)), a)  # a fresh pipeline too


def test_train_transform_varies_with_seed() -> None:
    img = cell_image(64, seed=1)
    t = train_transform(48)
    outs = [t(img, rng(s)) for s in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_flips_and_rot90_are_lossless() -> None:
    img = cell_image(40, seed=2)
    ref = np.sort(img.reshape(-1, 3), axis=0)
    for s in range(8):
        for t in (RandomFlip(), RandomRot90()):
            out = t(img, rng(s))
            np.testing.assert_array_equal(np.sort(out.reshape(-1, 3), axis=0), ref)
    seen = {RandomRot90()(img, rng(s)).tobytes() for s in range(40)}
    assert len(seen) == 4


@pytest.mark.parametrize("seed", range(6))
def test_free_rotation_keeps_cell_on_canvas(seed: int) -> None:
    img = cell_image(96, seed=seed)
    out = RandomRotation(180)(img, rng(seed))
    assert out.shape == img.shape
    for corner in (out[:8, :8], out[:8, -8:], out[-8:, :8], out[-8:, -8:]):
        assert corner.max() == 0  # black background stays black
    mass_in, mass_out = img.astype(float).sum(), out.astype(float).sum()
    assert abs(mass_out / mass_in - 1.0) < 0.03
    fg_in, fg_out = (img.max(2) > 30).sum(), (out.max(2) > 30).sum()
    assert abs(fg_out / fg_in - 1.0) < 0.05


def test_resize_crop_shapes() -> None:
    img = cell_image(64)
    assert Resize(32)(img, rng()).shape == (32, 32, 3)
    wide = np.zeros((40, 80, 3), np.uint8)
    assert Resize(20)(wide, rng()).shape == (20, 40, 3)
    assert CenterCrop(30)(img, rng()).shape == (30, 30, 3)
    assert CenterCrop(80)(img, rng()).shape == (80, 80, 3)  # padded with black
    for s in range(10):
        assert RandomResizedCrop(24, scale=(0.3, 1.0))(img, rng(s)).shape == (24, 24, 3)


def test_hed_round_trip_and_stain_jitter_keeps_background() -> None:
    img = cell_image(64, seed=3)
    back = hed_to_rgb(rgb_to_hed(img))
    assert np.abs(back.astype(int) - img.astype(int)).max() <= 1
    out = StainJitter(0.1, 0.1)(img, rng(1))
    bg = img.max(2) == 0
    assert out[bg].max() == 0
    fg = img.max(2) > 40
    assert np.abs(out[fg].astype(int) - img[fg].astype(int)).mean() > 1.0
    np.testing.assert_array_equal(StainJitter(0.1, 0.1)(img, rng(1)), out)


def test_color_jitter_keeps_black_and_changes_cell() -> None:
    img = cell_image(64, seed=4)
    out = ColorJitter(0.3, 0.3, 0.3)(img, rng(2))
    assert out[img.max(2) == 0].max() == 0
    assert not np.array_equal(out, img)
