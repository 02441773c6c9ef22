"""`leukemia train / evaluate / predict / demo` end to end, Ctrl-C and SIGKILL included.

The signal tests run the command line in a subprocess, as a user would.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from leukemia.cli import main
from leukemia.data import write_cnmc
from leukemia.evaluation import evaluate, load_run, predict
from leukemia.train import load_checkpoint
from leukemia.train.rundir import ARTEFACTS

SIZE = 32
TRAIN = ["--arch", "b3", "--size", str(SIZE), "--batch-size", "8", "--threads", "2", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cnmc")
    write_cnmc(root, 8, 8, SIZE, seed=5, workers=2)
    return root


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "b3"
    assert main(["train", str(data), "--out", str(out), "--epochs", "2", *TRAIN]) == 0
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    )
    env["OMP_NUM_THREADS"] = "2"
    return env


def test_train_writes_a_complete_run(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (
        "config.json",
        "split.json",
        "history.json",
        "history.csv",
        "curves.png",
        "best.ckpt",
        "last.ckpt",
        "evaluation.json",
    ):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert (cfg["arch"], cfg["head"], cfg["split"]) == (
        "efficientnet_b3",
        "multi_attention",
        "patient",
    )
    split = json.loads((run / "split.json").read_text())
    assert split["subjects"]["shared"] == [] and not split["leaky"]
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_weighted_f1", "val_roc_auc"} <= set(rows[0])


def test_evaluate_reports_held_out_subjects(
    run: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run), "--quiet", "--json", str(run / "e.json")]) == 0
    text = capsys.readouterr().out
    for word in ("weighted_f1", "roc_auc", "confusion matrix", "per subject", "sensitivity"):
        assert word in text
    report = json.loads((run / "e.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert sorted(r["subject"] for r in report["subjects"]) == sorted(split["subjects"]["val"])
    # the numbers are those of the API on the same samples
    r = load_run(run)
    api = evaluate(r)
    assert report["metrics"]["accuracy"] == api.metrics["accuracy"]
    for name, (low, high) in report["ci95_subject_bootstrap"].items():
        assert 0.0 <= low <= high <= 1.0, name
    assert set(report["subject_level"]) == {"mean_probability", "fraction_called"}
    for scores in report["subject_level"].values():
        assert set(scores) == {"accuracy", "weighted_f1", "roc_auc"}
    assert "subjects resampled" in text
    # on the whole data folder, the training subjects are leakage: excluded and named
    assert main(["evaluate", str(run), str(data), "--quiet", "--json", str(run / "all.json")]) == 0
    text = capsys.readouterr().out
    allrep = json.loads((run / "all.json").read_text())
    assert sorted(allrep["leaked_subjects"]) == sorted(split["subjects"]["train"])
    assert "were on the training side" in text


def test_predict_writes_probabilities(run: Path, data: Path, tmp_path: Path) -> None:
    folder = data / "validation_data"
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(folder), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    files = sorted(p for p in folder.rglob("*.bmp"))
    assert [Path(r["path"]) for r in rows] == files
    p = np.array([[float(r["p_hem"]), float(r["p_all"])] for r in rows])
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    ref = predict(load_run(run), files)
    assert np.allclose(p, ref, atol=1e-6)
    assert [r["predicted"] for r in rows] == [("hem", "all")[i] for i in ref.argmax(1)]
    assert main(["predict", str(run), str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_train_refuses_bad_requests(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(data), "--out", str(run), *TRAIN]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TRAIN]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["train", str(data), "--out", str(tmp_path / "r"), "--batch-size", "1000", "--quiet"])
        == 1
    )
    assert "larger than" in capsys.readouterr().err
    # --split image is allowed but loudly labelled
    out = tmp_path / "leaky"
    assert (
        main(["train", str(data), "--out", str(out), "--split", "image", "--epochs", "1", *TRAIN])
        == 0
    )
    assert "LEAKY" in capsys.readouterr().err
    assert json.loads((out / "split.json").read_text())["leaky"] is True


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_ctrl_c_saves_the_last_step_and_resume_finishes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "leukemia",
        "train",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--checkpoint-every",
        "1",
        "--head",
        "linear",
        "--policy",
        "head",
        *TRAIN,
    ]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(out / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped" in stderr and "--resume" in stderr
    ck = load_checkpoint(out / "last.ckpt")
    assert ck.meta["trainer"]["global_step"] >= 1 and ck.epoch < 3
    done = subprocess.run(
        [sys.executable, "-m", "leukemia", "train", "--out", str(out), "--resume", "--quiet"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the interrupted-and-resumed run ends where an uninterrupted one does
    ref = tmp_path / "ref"
    assert main(cmd[3:5] + ["--out", str(ref)] + cmd[7:]) == 0
    a, b = load_checkpoint(out / "last.ckpt"), load_checkpoint(ref / "last.ckpt")
    for k in a.model:
        assert np.array_equal(a.model[k], b.model[k]), k


def test_sigkill_while_checkpointing_never_leaves_a_bad_checkpoint(
    data: Path, tmp_path: Path
) -> None:
    """Kill the trainer at random moments while it writes a checkpoint after every step;
    each time the last checkpoint must load, and resuming must go on from it."""
    out = tmp_path / "run"
    rng = random.Random(7)
    base = [
        sys.executable,
        "-m",
        "leukemia",
        "train",
        "--out",
        str(out),
        "--epochs",
        "50",
        "--checkpoint-every",
        "1",
        "--head",
        "linear",
        "--policy",
        "head",
        *TRAIN,
    ]
    kills = 0
    last_step = -1
    for round_ in range(6):
        cmd = base[:4] + [str(data)] + base[4:] if round_ == 0 else base + ["--resume"]
        before = (out / "last.ckpt").stat().st_mtime_ns if round_ else None
        proc = subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _wait_for(out / "last.ckpt", proc)
        end = time.monotonic() + 120
        while (out / "last.ckpt").stat().st_mtime_ns == before:  # this process has saved
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))  # then die at a random point of later saves
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        ck = load_checkpoint(out / "last.ckpt")  # always a whole checkpoint
        step = ck.meta["trainer"]["global_step"]
        assert step >= last_step
        last_step = step
        for f in out.iterdir():  # nothing else looks like a checkpoint
            assert f.name in ARTEFACTS or f.name.startswith("."), f.name
    assert kills >= 4
    assert last_step > 0


def test_demo_learns_from_scratch_patient_wise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's main job at its default size: no weights here, so it says so, trains
    every layer from random initialisation, and its held-out subjects come out well above
    chance (always calling the majority class ALL gives weighted F1 0.53 on this split)."""
    monkeypatch.setenv("LEUKEMIA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--offline", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "random initialisation" in text and "policy 'all'" in text
    cfg = json.loads((out / "run" / "config.json").read_text())["config"]
    assert cfg["policy"] == "all" and cfg["weights"] is None
    report = json.loads((out / "run" / "evaluation.json").read_text())
    split = json.loads((out / "run" / "split.json").read_text())
    assert not split["subjects"]["shared"]
    assert report["metrics"]["weighted_f1"] >= 0.8, report["metrics"]
    assert report["metrics"]["roc_auc"] >= 0.9, report["metrics"]


def test_demo_uses_last_block_when_imagenet_weights_are_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ImageNet weights found, the demo fine-tunes with the study's policy (here a
    stand-in file with torchvision's keys, returned by a patched lookup)."""
    import leukemia.models.pretrained as pretrained
    from leukemia.models import EfficientNet

    weights = tmp_path / "b3.safetensors"
    EfficientNet("efficientnet_b3", 1000, seed=4).save(weights)
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch, **kw: weights)
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--quiet",
        "--subjects",
        "6",
        "--cells-per-subject",
        "6",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "last_block" in text and "random initialisation" not in text
    cfg = json.loads((out / "run" / "config.json").read_text())
    assert cfg["config"]["policy"] == "last_block" and cfg["config"]["weights"] == str(weights)
    # the backbone's frozen part is the file's, untouched by training
    ck = load_checkpoint(out / "run" / "last.ckpt")
    ref = EfficientNet("efficientnet_b3", 1000, seed=4).state_dict()
    assert np.array_equal(ck.model["features.0.0.weight"], ref["features.0.0.weight"])
