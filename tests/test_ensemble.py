"""Ensembles and test-time augmentation: voting rules against hand-computed references,
fitted weights against a grid search, TTA against np.flip / np.rot90 by hand, and members
left exactly as they were.

Small B3 models (linear head, random initialisation) on 24 synthetic 32 px images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import leukemia
from leukemia.data import load_dataset, write_cnmc
from leukemia.data.datasets import CLASS_NAMES, Sample
from leukemia.data.loader import DataLoader
from leukemia.data.transforms import eval_transform
from leukemia.ensemble import DIHEDRAL, TTA, Ensemble, fit_mixture_weights
from leukemia.evaluation import Run, evaluate, load_run, predict
from leukemia.models.efficientnet import EfficientNet
from leukemia.train import save_checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("cnmc")
    write_cnmc(root, 6, 4, SIZE, seed=0, workers=1)
    return load_dataset(root).labelled()


def _symmetries(x: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square applied to a batch, written out by hand."""
    return [
        x,
        x[..., ::-1],  # hflip
        x[..., ::-1, :],  # vflip
        np.rot90(x, 1, axes=(2, 3)),
        np.rot90(x, 2, axes=(2, 3)),
        np.rot90(x, 3, axes=(2, 3)),
        x.transpose(0, 1, 3, 2),  # mirror about the main diagonal
        x.transpose(0, 1, 3, 2)[..., ::-1, ::-1],  # about the anti-diagonal
    ]


def _model(seed: int, x: np.ndarray, num_classes: int = 2) -> EfficientNet:
    """A B3 whose eval-mode outputs vary from image to image and between transforms.

    Freshly initialised, its eval-mode logits are almost constant (the kaiming init of
    the depthwise convolutions shrinks the signal layer after layer and BN's initial
    running statistics 0 / 1 do not undo it). So BN gets the batch statistics of the test
    images and their 8 symmetries: one train-mode forward from zero running statistics
    leaves 0.1 x the batch statistics (momentum 0.1), scaled back by 10.
    """
    m = EfficientNet("efficientnet_b3", num_classes, head="linear", seed=seed)
    m.set_regularization(0.0, 0.0)
    stats = (".running_mean", ".running_var")
    with m.writable() as p:
        for name, v in p.items():
            if name.endswith(stats):
                v[...] = 0.0
    m.train()
    m.forward(np.ascontiguousarray(np.concatenate(_symmetries(x))), seed=0)
    m.eval()
    with m.writable() as p:
        for name, v in p.items():
            if name.endswith(stats):
                v[...] *= 10.0
        p["classifier.1.weight"][...] *= 0.1  # logits of order 1, not saturated
    return m


@pytest.fixture(scope="module")
def models(samples: list[Sample]) -> list[EfficientNet]:
    x = _batch(samples)
    return [_model(1, x), _model(2, x)]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _batch(samples: list[Sample], size: int = SIZE) -> np.ndarray:
    """Every sample decoded and normalised as the evaluation pipeline does, one array."""
    loader = DataLoader(samples, eval_transform(size), len(samples), num_workers=1)
    try:
        (x, _), *_ = list(loader)
    finally:
        loader.close()
    return x


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(p[np.arange(y.size), y], 1e-12))))


def test_soft_voting_is_the_mean_of_the_members(samples, models) -> None:
    m0, m1 = models
    p0 = predict(m0, samples, size=SIZE, batch_size=8)
    p1 = predict(m1, samples, size=SIZE, batch_size=8)
    assert np.abs(p0 - p1).max() > 0.05  # the members really differ
    got = Ensemble(models, size=SIZE).predict_proba(samples, batch_size=8)
    np.testing.assert_allclose(got, (p0 + p1) / 2, rtol=0, atol=1e-12)
    # identical members: the single model
    same = Ensemble([m0, m0, m0], size=SIZE).predict_proba(samples, batch_size=8)
    np.testing.assert_allclose(same, p0, rtol=0, atol=1e-12)


def test_each_member_keeps_its_own_input_size(samples, models) -> None:
    runs = [
        Run(models[0], Path("a"), {}, None, SIZE, CLASS_NAMES, Path("a/best.ckpt")),
        Run(models[1], Path("b"), {}, None, 40, CLASS_NAMES, Path("b/best.ckpt")),
    ]
    ref = (predict(runs[0], samples) + predict(runs[1], samples)) / 2
    ens = Ensemble(runs)
    assert ens.sizes == [SIZE, 40]
    # size= applies to bare models only: the Runs keep theirs
    np.testing.assert_allclose(ens.predict_proba(samples, size=64), ref, rtol=0, atol=1e-12)


def test_weighted_voting(samples, models) -> None:
    p0 = predict(models[0], samples, size=SIZE)
    p1 = predict(models[1], samples, size=SIZE)
    ens = Ensemble(models, "weighted", (1, 0), size=SIZE)
    np.testing.assert_allclose(ens.predict_proba(samples), p0, rtol=0, atol=1e-12)
    ens = Ensemble(models, "weighted", (0.25, 0.75), size=SIZE)
    np.testing.assert_allclose(ens.predict_proba(samples), 0.25 * p0 + 0.75 * p1, atol=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        Ensemble(models, "weighted", (0.5, 0.6))
    with pytest.raises(ValueError, match=">= 0"):
        Ensemble(models, "weighted", (1.5, -0.5))
    with pytest.raises(ValueError, match="one value per member"):
        Ensemble(models, "weighted", (1.0,))
    with pytest.raises(ValueError, match="method='weighted'"):
        Ensemble(models, "soft", (0.5, 0.5))
    with pytest.raises(ValueError, match="fit_weights"):
        Ensemble(models, "weighted", size=SIZE).predict_proba(samples)
    with pytest.raises(ValueError, match="unknown method"):
        Ensemble(models, "mean")


def test_fitted_weights_on_validation_images(samples, models) -> None:
    ens = Ensemble(models, size=SIZE)
    member = ens.member_probas(samples)
    y = np.array([s.label for s in samples])
    w = ens.fit_weights(samples)
    assert ens.method == "weighted" and abs(w[0] - 0.5) > 1e-3  # not just uniform
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    uniform = _log_loss((member[0] + member[1]) / 2, y)
    fitted = _log_loss(w[0] * member[0] + w[1] * member[1], y)
    assert fitted <= uniform + 1e-12
    np.testing.assert_allclose(ens.predict_proba(samples), w[0] * member[0] + w[1] * member[1])
    # the same weights from the probabilities themselves
    np.testing.assert_allclose(Ensemble(models).fit_weights((member, y)), w, atol=1e-12)


def test_fitted_weights_favour_the_good_member_and_match_a_grid_search() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.05)
    good[np.arange(200), y] = 0.9
    noise = rng.dirichlet(np.ones(3), 200)
    mid = 0.5 * good + 0.5 * rng.dirichlet(np.ones(3), 200)
    w = fit_mixture_weights([noise, good], y)
    assert w[1] > 0.9 and abs(w.sum() - 1) < 1e-12 and np.all(w >= 0)
    # against a brute-force grid over the 3-member simplex
    probs = [noise, good, mid]
    w3 = fit_mixture_weights(probs, y)
    best = np.inf
    for a in np.linspace(0, 1, 101):
        for b in np.linspace(0, 1 - a, max(2, int(round((1 - a) * 100)) + 1)):
            mix = a * noise + b * good + (1 - a - b) * mid
            best = min(best, _log_loss(mix, y))
    fitted = _log_loss(sum(wi * p for wi, p in zip(w3, probs, strict=True)), y)
    assert fitted <= best + 1e-4
    assert fitted <= _log_loss(sum(probs) / 3, y)
    with pytest.raises(ValueError, match="labels"):
        fit_mixture_weights([noise, good], y[:10])
    with pytest.raises(ValueError, match="one shape"):
        fit_mixture_weights([noise, good[:10]], y)


def test_majority_voting_on_constructed_probabilities(models) -> None:
    ens = Ensemble([models[0]] * 3, "majority")
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.35, 0.25], [0.2, 0.2, 0.6]])
    b = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.1, 0.2, 0.7]])
    c = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    votes = np.array([[2, 1, 0], [1, 2, 0], [1, 0, 2], [0, 1, 2]]) / 3
    got = ens.combine([a, b, c])
    np.testing.assert_allclose(got, votes, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    assert got.argmax(1).tolist() == [0, 1, 2, 2]
    # a tie (one vote each) goes to the class with the higher soft mean
    tie = Ensemble(models, "majority")
    p = tie.combine([np.array([[0.6, 0.4], [0.9, 0.1]]), np.array([[0.1, 0.9], [0.45, 0.55]])])
    np.testing.assert_allclose(p, 0.5, atol=1e-5)
    assert p.argmax(1).tolist() == [1, 0]


def test_tta_identity_is_the_plain_model(samples, models) -> None:
    ref = predict(models[0], samples, size=SIZE, batch_size=8)
    got = TTA(models[0], ["identity"], size=SIZE).predict_proba(samples, batch_size=8)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_tta_is_the_average_over_flipped_and_rotated_inputs(samples, models) -> None:
    m = models[0]
    x = _batch(samples)
    by_hand = _symmetries(x)
    # the eight really are the eight different symmetries of the square
    flat = {t.tobytes() for t in map(np.ascontiguousarray, by_hand)}
    assert len(flat) == 8
    ref = np.mean([_softmax(m.forward(np.ascontiguousarray(t))) for t in by_hand], axis=0)
    plain = _softmax(m.forward(x))
    assert np.abs(ref - plain).max() > 1e-2  # the transforms change the outputs
    tta = TTA(m, size=SIZE)
    assert tta.transforms == DIHEDRAL
    np.testing.assert_allclose(tta.predict_proba(x), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tta.predict_proba(samples, batch_size=8), ref, atol=1e-6)
    # and a subset, over an ensemble: the mean of each member's TTA
    names = ["hflip", "rot90"]
    ens_tta = TTA(Ensemble(models, size=SIZE), names).predict_proba(x)
    single = [TTA(mm, names, size=SIZE).predict_proba(x) for mm in models]
    np.testing.assert_allclose(ens_tta, (single[0] + single[1]) / 2, rtol=0, atol=1e-12)
    one = np.mean([_softmax(m.forward(np.ascontiguousarray(t))) for t in by_hand[1:4:2]], 0)
    np.testing.assert_allclose(single[0], one, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown TTA transform"):
        TTA(m, ["identity", "rot45"])
    with pytest.raises(ValueError, match="empty"):
        TTA(m, [])


def test_members_are_left_exactly_as_they_were(samples, models) -> None:
    m0, m1 = models
    m1.train()  # a member left in train mode must come back in train mode
    before = [(m.training, m.version, m._step_seed, m.state_dict()) for m in models]
    ens = Ensemble(models, size=SIZE)
    ens.predict_proba(samples, batch_size=8)
    ens.fit_weights(samples)
    TTA(ens, ["identity", "rot180"]).predict_proba(samples)
    Ensemble(models, "majority", size=SIZE).predict_proba(samples)
    with pytest.raises(TypeError, match="float32"):  # an error half-way restores too
        ens.predict_proba(np.zeros((2, 3, SIZE, SIZE)))
    try:
        for m, (training, version, step_seed, state) in zip(models, before, strict=True):
            assert m.training == training
            assert m.version == version
            assert m._step_seed == step_seed  # the dropout seed sequence did not move
            after = m.state_dict()
            assert after.keys() == state.keys()
            for k, v in state.items():
                assert np.array_equal(after[k], v), k
    finally:
        m1.eval()


def test_members_must_agree_on_the_classes(models) -> None:
    three = EfficientNet("efficientnet_b3", 3, head="linear")
    with pytest.raises(ValueError, match="num_classes: \\[2, 3\\]"):
        Ensemble([models[0], three])
    with pytest.raises(TypeError, match="member 1"):
        Ensemble([models[0], "x" and 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-empty"):
        Ensemble([])


def test_evaluate_and_predict_accept_ensembles(samples, models) -> None:
    ens = Ensemble(models, size=SIZE)
    ev = evaluate(ens, samples, batch_size=8)
    np.testing.assert_allclose(ev.probs, ens.predict_proba(samples, batch_size=8), atol=1e-12)
    assert ev.metrics["n"] == len(samples) and 0 <= ev.metrics["accuracy"] <= 1
    assert ev.labels.tolist() == [s.label for s in samples]
    tta = TTA(models[0], ["identity", "vflip"], size=SIZE)
    np.testing.assert_allclose(predict(tta, samples), tta.predict_proba(samples), atol=1e-12)


def test_run_directories_as_members(samples, models, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    info = {"arch": "efficientnet_b3", "head": "linear", "num_classes": 2, "size": SIZE}
    (run_dir / "config.json").write_text(json.dumps({"config": {}, "model": info}))
    save_checkpoint(run_dir / "best.ckpt", models[1])
    ens = leukemia.Ensemble([models[0], str(run_dir)], size=SIZE)
    ref = (predict(models[0], samples, size=SIZE) + predict(load_run(run_dir), samples)) / 2
    np.testing.assert_allclose(ens.predict_proba(samples), ref, rtol=0, atol=1e-12)
    assert leukemia.TTA is TTA
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Ensemble([tmp_path / "missing"])
