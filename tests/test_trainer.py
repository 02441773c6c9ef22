"""The Trainer: resume is bit-identical, the feature cache changes nothing, NaN and bad
input give clear errors and keep what was saved, a full disk loses nothing.

All on a tiny synthetic C-NMC set (32 px, 8 subjects) so that a run takes seconds.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

import leukemia
from leukemia.data import load_dataset, patient_split, write_cnmc
from leukemia.train import (
    CheckpointMismatch,
    FeatureCache,
    RunDirError,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    load_checkpoint,
)

SIZE = 32
TIMING = ("seconds", "train_img_per_s", "load_wait_s")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cnmc")
    write_cnmc(root, 8, 8, SIZE, seed=3, workers=2)
    return root


@pytest.fixture(scope="module")
def split(data: Path):
    return patient_split(load_dataset(data).labelled(), 0.25, seed=0)


def _options(**kw):
    base = dict(
        arch="b3",
        head="multi_attention",
        policy="last_block",
        size=SIZE,
        epochs=4,
        batch_size=8,
        lr=3e-3,
        threads=2,
        loader_workers=1,
    )
    base.update(kw)
    return base


def _no_timing(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.model.keys() == cb.model.keys()
    for k in ca.model:
        assert np.array_equal(ca.model[k], cb.model[k]), k
    for k, v in ca.optimizer["state"].items():
        assert np.array_equal(v, cb.optimizer["state"][k]), k
    assert np.array_equal(ca.optimizer["steps"], cb.optimizer["steps"])
    assert ca.meta["scheduler"] == cb.meta["scheduler"]
    assert _no_timing(ca.meta["history"]) == _no_timing(cb.meta["history"])
    ta, tb = dict(ca.meta["trainer"]), dict(cb.meta["trainer"])
    assert ta == tb


def _stop_after(trainer: Trainer, event: str, count: int):
    seen = {"n": 0}

    def cb(kind, info):
        if kind == event:
            seen["n"] += 1
            if seen["n"] == count:
                trainer.stop()

    return cb


@pytest.fixture(scope="module")
def straight(split, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("straight") / "run"
    return Trainer(progress=False, **_options(epochs=4)).fit(split, out=out)


@pytest.mark.parametrize("where", ["epoch", "step"])
def test_resume_is_bit_identical(split, straight, tmp_path: Path, where: str) -> None:
    """4 epochs straight == 2 epochs, interrupted, resumed for 2 (and the same in mid-epoch)."""
    steps = len(split.train) // 8
    assert len(straight.history) == 4
    t = Trainer(progress=False, **_options(epochs=4))
    t.callback = _stop_after(t, where, 2 if where == "epoch" else 2 * steps + 2)
    with pytest.raises(TrainingInterrupted) as info:
        t.fit(split, out=tmp_path / "b")
    assert "resume" in str(info.value)
    ck = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert (ck.epoch, ck.step_in_epoch) == ((2, 0) if where == "epoch" else (2, 2))
    resumed = leukemia.fit(resume=tmp_path / "b", progress=False)
    assert len(resumed.history) == 4
    a = straight.run_dir
    _assert_same_checkpoint(a / "last.ckpt", tmp_path / "b" / "last.ckpt")
    _assert_same_checkpoint(a / "best.ckpt", tmp_path / "b" / "best.ckpt")
    assert _no_timing(straight.history) == _no_timing(resumed.history)
    for name in ("config.json", "split.json", "history.json", "history.csv", "curves.png"):
        assert (tmp_path / "b" / name).is_file(), name
    # history files agree with the returned history
    on_disk = json.loads((tmp_path / "b" / "history.json").read_text())
    assert _no_timing(on_disk) == _no_timing(resumed.history)


def test_run_dir_records_config_and_split(split, tmp_path: Path) -> None:
    r = Trainer(progress=False, **_options(epochs=1)).fit(split, out=tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["config"]["arch"] == "efficientnet_b3" and cfg["model"]["size"] == SIZE
    rec = json.loads((tmp_path / "r" / "split.json").read_text())
    train_subjects = {s.subject for s in split.train}
    val_subjects = {s.subject for s in split.test}
    assert set(rec["subjects"]["train"]) == train_subjects
    assert set(rec["subjects"]["val"]) == val_subjects
    assert rec["subjects"]["shared"] == [] and rec["leaky"] is False
    assert len(rec["train"]) == len(split.train) and len(rec["val"]) == len(split.test)
    # the best model is returned, and it is the one in best.ckpt
    best = load_checkpoint(tmp_path / "r" / "best.ckpt")
    for k, v in r.model.state_dict().items():
        assert np.array_equal(v, best.model[k]), k


def test_feature_cache_gives_the_uncached_run(
    split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached (with a budget that spills, interrupted in mid-epoch and resumed with an
    empty cache) equals uncached, bit for bit; and the cache is really read."""
    from leukemia.models.efficientnet import EfficientNet

    opts = _options(augment=False, epochs=3)
    off = Trainer(progress=False, cache=False, **opts).fit(split, out=tmp_path / "off")
    hits = {"train": 0, "val": 0}
    real = EfficientNet.forward

    def counting(self, x, *a, **k):
        if k.get("from_features"):
            hits["train" if self.training else "val"] += len(x)
        return real(self, x, *a, **k)

    monkeypatch.setattr(EfficientNet, "forward", counting)
    steps = len(split.train) // 8
    # a budget of a few samples: most features spill to the file in the run directory
    t = Trainer(progress=False, cache=True, cache_memory=40_000, **opts)
    t.callback = _stop_after(t, "step", steps + 2)
    with pytest.raises(TrainingInterrupted):
        t.fit(split, out=tmp_path / "on")
    assert hits["train"] > 0 and hits["val"] > 0  # epoch 2 read epoch 1's features
    on = leukemia.fit(resume=tmp_path / "on", progress=False)
    _assert_same_checkpoint(tmp_path / "off" / "last.ckpt", tmp_path / "on" / "last.ckpt")
    assert _no_timing(off.history) == _no_timing(on.history)
    assert not list((tmp_path / "on").glob("*.cache.f32"))  # spill files removed


def test_feature_cache_budget_and_spill(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((10, 4, 3, 3)).astype(np.float32)
    item = feats[0].nbytes
    cache = FeatureCache(10, (4, 3, 3), 3 * item + 1, tmp_path / "spill.f32")
    assert cache.ram_slots == 3 and cache.disk_slots == 7
    order = rng.permutation(10)
    for chunk in np.array_split(order, 4):
        assert not cache.complete(chunk)
        cache.put(chunk, feats[chunk])
    assert cache.complete(np.arange(10))
    assert (tmp_path / "spill.f32").stat().st_size == 7 * item
    idx = rng.permutation(10)
    assert np.array_equal(cache.get(idx), feats[idx])
    cache.close()
    assert not (tmp_path / "spill.f32").exists()
    with pytest.raises(KeyError):
        cache.get(np.array([1]))
    # without a spill file the cache keeps to its budget and leaves the rest uncached
    small = FeatureCache(10, (4, 3, 3), 2 * item)
    small.put(np.arange(10), feats)
    assert small.filled == 2 and not small.complete(np.arange(3))


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(
    split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leukemia.models.efficientnet import EfficientNet

    calls = {"n": 0}
    real = EfficientNet.forward
    steps = len(split.train) // 8

    def poisoned(self, x, *a, **k):
        out = real(self, x, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] == steps + 3:  # epoch 2, step 3
                logits = out[0] if isinstance(out, tuple) else out
                logits[0, 0] = np.nan
        return out

    monkeypatch.setattr(EfficientNet, "forward", poisoned)
    with pytest.raises(TrainingError, match=rf"epoch 2, step 3 of {steps}.*last good checkpoint"):
        Trainer(progress=False, **_options(epochs=2)).fit(split, out=tmp_path / "n")
    ck = load_checkpoint(tmp_path / "n" / "last.ckpt")
    assert (ck.epoch, ck.step_in_epoch) == (1, 0)
    assert all(np.all(np.isfinite(v)) for v in ck.model.values())


def test_bad_input_is_refused_clearly(data: Path, split, tmp_path: Path) -> None:
    ds = load_dataset(data)
    t = Trainer(progress=False, **_options(epochs=1))
    unlabelled = [s for s in ds.samples if s.label is None]
    with pytest.raises(TrainingError, match="unlabelled"):
        t.fit(unlabelled, split.test, out=tmp_path / "u")
    only_all = [s for s in split.train if s.label == 1]
    with pytest.raises(TrainingError, match="hem has no image on the training side"):
        t.fit(only_all, split.test, out=tmp_path / "c")
    with pytest.raises(TrainingError, match="batch_size 512 is larger than"):
        Trainer(progress=False, **_options(batch_size=512)).fit(split, out=tmp_path / "b")
    with pytest.raises(TrainingError, match="no image"):
        t.fit([], split.test, out=tmp_path / "e")
    # a folder with only unlabelled images
    empty = tmp_path / "nolabels"
    (empty / "x").mkdir(parents=True)
    with pytest.raises(Exception, match="(?i)no .*image|labelled"):
        t.fit(empty, out=tmp_path / "f")


def test_run_directory_rules(split, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    t = Trainer(progress=False, **_options(epochs=1))
    with pytest.raises(RunDirError, match="not empty"):
        t.fit(split, out=out)
    t.fit(split, out=out, force=True)
    assert (out / "notes.txt").read_text() == "mine"  # force removes only run artefacts
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError):
        t.fit(split, out=blocker / "sub")
    with pytest.raises(RunDirError, match="no run to resume"):
        t.fit(resume=tmp_path / "nothing")
    # resuming with a changed setting is refused, naming it
    with pytest.raises(ValueError, match="lr"):
        Trainer(progress=False, **_options(epochs=1, lr=0.5)).fit(resume=out)


def test_checkpoint_of_another_model_is_refused(split, tmp_path: Path) -> None:
    Trainer(progress=False, **_options(epochs=1)).fit(split, out=tmp_path / "b3")
    Trainer(progress=False, **_options(epochs=1, head="linear", policy="head")).fit(
        split, out=tmp_path / "lin"
    )
    os.replace(tmp_path / "lin" / "last.ckpt", tmp_path / "b3" / "last.ckpt")
    with pytest.raises(CheckpointMismatch, match="differ in head"):
        leukemia.fit(resume=tmp_path / "b3", progress=False)


def test_full_disk_while_saving_loses_nothing(
    split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import leukemia.io.atomic as atomic

    out = tmp_path / "full"
    saved = {}

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fill_disk_after_first_epoch(kind, info):
        if kind == "epoch" and info["epoch"] == 1:
            saved["last"] = (out / "last.ckpt").read_bytes()
            saved["best"] = (out / "best.ckpt").read_bytes()
            monkeypatch.setattr(atomic.os, "fsync", no_space)

    t = Trainer(progress=False, callback=fill_disk_after_first_epoch, **_options(epochs=2))
    with pytest.raises(TrainingError, match="No space left on device.*unchanged"):
        t.fit(split, out=out)
    monkeypatch.undo()
    assert (out / "last.ckpt").read_bytes() == saved["last"]
    assert (out / "best.ckpt").read_bytes() == saved["best"]
    assert [p.name for p in out.glob(".*.tmp")] == []  # no temporaries
    assert load_checkpoint(out / "last.ckpt").epoch == 1


def test_early_stopping_and_best_selection(split, tmp_path: Path) -> None:
    """With nothing able to change (lr 0, linear head only: no BatchNorm trains), the
    validation weighted F1 never improves after epoch 1: patience 2 stops after epoch 3,
    and the best model is epoch 1's."""
    r = Trainer(
        progress=False,
        **_options(head="linear", policy="head", lr=0.0, backbone_lr=0.0, epochs=10, patience=2),
    ).fit(split, out=tmp_path / "es")
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.stopped_early and r.best_epoch == 1
    assert len({h["val_weighted_f1"] for h in r.history}) == 1
    ck = load_checkpoint(tmp_path / "es" / "last.ckpt")
    assert ck.meta["trainer"]["stopped_early"] is True
    # resuming a finished run has nothing left to do and returns the same result
    again = leukemia.fit(resume=tmp_path / "es", progress=False)
    assert _no_timing(again.history) == _no_timing(r.history) and again.best_epoch == 1


def test_one_process_per_run_directory_and_checkpoint_from_another_run(
    split, straight, tmp_path: Path
) -> None:
    import shutil

    from leukemia.train.rundir import lock_run_dir

    run = tmp_path / "copy"
    shutil.copytree(straight.run_dir, run)
    held = lock_run_dir(run)
    try:
        with pytest.raises(RunDirError, match="another process is training"):
            leukemia.fit(resume=run, progress=False)
    finally:
        held.close()
    # a last.ckpt written under another configuration (here: another lr) is refused
    other = Trainer(progress=False, **_options(epochs=1, lr=1e-2)).fit(
        split, out=tmp_path / "other"
    )
    shutil.copy(other.run_dir / "last.ckpt", run / "last.ckpt")
    with pytest.raises(CheckpointMismatch, match="differ in .*lr"):
        leukemia.fit(resume=run, progress=False)


def test_three_classes_and_a_failed_start_can_be_rerun(split, tmp_path: Path) -> None:
    from dataclasses import replace

    from leukemia.evaluation import load_run, predict

    # subjects of one ALL patient become a third class
    third = sorted({s.subject for s in split.train if s.label == 1})[0]
    train = [replace(s, label=2) if s.subject == third else s for s in split.train]
    val_third = sorted({s.subject for s in split.test if s.label == 1})[0]
    val = [replace(s, label=2) if s.subject == val_third else s for s in split.test]
    out = tmp_path / "k3"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a start that died before its first checkpoint
    r = Trainer(progress=False, **_options(epochs=1, head="linear", policy="head")).fit(
        train, val, out=out
    )
    assert r.model.num_classes == 3 and np.isfinite(r.history[0]["val_weighted_f1"])
    assert np.isnan(r.history[0]["val_roc_auc"])  # defined for two classes only
    run = load_run(out)
    assert run.class_names == ("hem", "all", "2")
    p = predict(run, [s.path for s in val[:5]])
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1.0)
