"""Data-parallel training and sharded evaluation over MPI, with 2 ranks on this machine
launched by ``mpiexec -n 2`` (tests/_mpi_worker.py), against one process.

- shards follow torch's DistributedSampler;
- exact equivalence where BatchNorm uses no batch statistics (policy "head", linear
  head, no dropout): 2 ranks with b images each == 1 rank with 2b;
- DDP semantics elsewhere (last_block, multi-attention head, dropout, stochastic depth,
  class weights): the gradient the ranks apply is the mean of the two shards' gradients
  computed one after the other in this process, and BatchNorm running statistics are
  averaged at the end of the epoch;
- learning: a 2-rank run learns as well as one rank, its checkpoint loads in one process
  and the run resumes on one rank;
- evaluate and predict split over 2 ranks give the one-process results, in order;
- a rank that raises mid-epoch ends every rank with the error named, within a timeout;
- Ctrl-C stops both ranks after the same step, and one rank resumes the run.

The mpi extra (mpi4py, mpich) is part of the test install: without it these tests fail.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import leukemia
from leukemia import distributed
from leukemia.data import DataLoader, load_dataset, make_split, write_cnmc
from leukemia.data.transforms import eval_transform
from leukemia.distributed import launcher_size, shard
from leukemia.evaluation import evaluate, load_run, predict
from leukemia.functional.loss import cross_entropy_backward, cross_entropy_forward
from leukemia.models import EfficientNet
from leukemia.train import load_checkpoint
from leukemia.train.trainer import _step_seed

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_mpi_worker.py")
SIZE = 32
TIMEOUT = 240  # seconds for one mpiexec run on a busy 2-core machine

_LAUNCHER_VARS = (
    "PMI_SIZE",
    "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "SLURM_STEP_NUM_TASKS",
)


def _mpiexec() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is missing: install the test environment with '.[test,mpi]'")
    exe = Path(sys.executable).with_name("mpiexec")
    found = str(exe) if exe.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpiexec next to the interpreter or on PATH: pip install mpich")
    return found


def _env(threads: int | None = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _launch(
    args: list[str], ranks: int = 2, threads: int | None = 1
) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=_env(threads), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args[:2])} on {ranks} ranks hung ({TIMEOUT} s): {exc.stderr}")
    return proc, time.perf_counter() - start


def _worker(mode: str, out: Path, options: dict, *extra: object, **kw):
    return _launch([str(WORKER), mode, str(out), json.dumps(options), *map(str, extra)], **kw)


def _rank_lines(out: Path, ranks: int = 2) -> dict[int, str]:
    """What each rank of tests/_mpi_worker.py reported."""
    return {
        r: (out / f"rank{r}.txt").read_text().strip()
        for r in range(ranks)
        if (out / f"rank{r}.txt").exists()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cnmc")
    write_cnmc(root, 8, 8, SIZE, seed=3, workers=2)
    return root


def _options(data: Path, **kw) -> dict:
    base = dict(
        data=str(data),
        arch="b3",
        size=SIZE,
        epochs=2,
        batch_size=8,
        augment=False,
        loader_workers=0,
        seed=5,
    )
    base.update(kw)
    return base


# ------------------------------------------------------------------ one process


@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_is_torchs_distributed_sampler(drop_last: bool) -> None:
    from torch.utils.data.distributed import DistributedSampler

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 11, 16):
        order = rng.permutation(n)
        for size in (1, 2, 3, 4):
            if drop_last and n < size:
                continue
            for rank in range(size):
                ref = DistributedSampler(
                    range(n), num_replicas=size, rank=rank, shuffle=False, drop_last=drop_last
                )
                mine = shard(order, rank, size, drop_last)
                assert mine.tolist() == order[list(ref)].tolist(), (n, size, rank)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        shard(np.arange(4), 2, 2)


def test_one_process_never_imports_mpi4py() -> None:
    code = (
        "import sys, leukemia.distributed as d, leukemia.cli, leukemia.train\n"
        "w = d.world()\n"
        "assert (w.rank, w.size) == (0, 1), w\n"
        "assert 'mpi4py' not in sys.modules\n"
        "print('ok')\n"
    )
    for extra in ({}, {"PMI_SIZE": "1", "PMI_RANK": "0"}, {"PMI_SIZE": "2", "LEUKEMIA_MPI": "0"}):
        env = {**_env(), **extra}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (extra, proc.stderr)


def test_launcher_without_mpi4py_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.delenv("LEUKEMIA_MPI", raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    monkeypatch.setattr(distributed, "_WORLD", None)
    assert launcher_size() == 2
    with pytest.raises(ImportError, match=r"one of 2 .*pip install 'leukemia\[mpi\]'"):
        distributed.world()


def test_cli_refuses_a_global_batch_that_does_not_split(data: Path, tmp_path: Path) -> None:
    """Also: an error on rank 0 before training (here the check of the batch) reaches
    rank 1, and every rank names it."""
    args = ["-m", "leukemia", "train", str(data), "--out", str(tmp_path / "r"), "--quiet"]
    proc, seconds = _launch([*args, "--size", "32", "--batch-size", "7", "--epochs", "1"])
    assert proc.returncode != 0
    err = proc.stderr
    assert "leukemia: error (rank 0 of 2): batch_size 7 is the global batch" in err, err
    assert "leukemia: error (rank 1 of 2): rank 0 failed: ValueError: batch_size 7" in err, err
    proc, _ = _launch(["-m", "leukemia", "synth", str(tmp_path / "s"), "--subjects", "4"])
    assert "runs in one process" in proc.stderr and proc.returncode != 0, proc.stderr


def test_named_buffers_of_the_layers_that_train() -> None:
    """DataParallel averages these: the running statistics that change in train mode."""
    head = EfficientNet("efficientnet_b3", 2, policy="head")
    assert [n for n, _ in head.named_buffers(trainable=True)] == []
    m = EfficientNet("efficientnet_b3", 2, head="multi_attention", policy="last_block")
    trains = [n for n, _ in m.named_buffers(trainable=True)]
    frozen = [n for n, _ in m.named_buffers(trainable=False)]
    assert sorted(trains + frozen) == sorted(n for n, _ in m.named_buffers())
    assert "head.bn.running_var" in trains and "features.0.1.running_mean" in frozen
    assert all(n.startswith(("features.7.", "features.8.", "head.")) for n in trains)


# ------------------------------------------------------------------ 2 ranks


def test_two_ranks_equal_one_rank_with_twice_the_batch(data: Path, tmp_path: Path) -> None:
    """policy 'head' with the linear head and no dropout: the gradient of a global batch
    of 8 is the mean of the two shards' gradients exactly, so 2 ranks x 4 images follow
    1 rank x 8 images step for step (to float rounding of the sums)."""
    opts = _options(
        data,
        head="linear",
        policy="head",
        dropout=0.0,
        class_weights=None,
        lr=3e-2,
        epochs=3,
        max_grad_norm=0.5,  # clipping acts on the averaged gradient, as in one process
    )
    proc, seconds = _worker("train", tmp_path / "two", opts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _rank_lines(tmp_path / "two") == {0: "ok 3 epochs", 1: "ok 3 epochs"}, proc.stderr
    one = {k: v for k, v in opts.items() if k != "data"}
    leukemia.fit(data, out=tmp_path / "one", progress=False, threads=1, **one)

    a = load_checkpoint(tmp_path / "two" / "run" / "last.ckpt")
    b = load_checkpoint(tmp_path / "one" / "last.ckpt")
    assert a.meta["ranks"] == 2 and b.meta["ranks"] == 1
    assert a.meta["trainer"]["global_step"] == b.meta["trainer"]["global_step"] > 10
    trainable = {
        n for n, _, _ in EfficientNet("efficientnet_b3", 2, policy="head").param_segments()
    }
    start = EfficientNet("efficientnet_b3", 2, seed=5).state_dict()
    moved = 0
    for k, v in b.model.items():
        if k in trainable:
            np.testing.assert_allclose(a.model[k], v, rtol=1e-4, atol=2e-6, err_msg=k)
            moved += not np.allclose(v, start[k], atol=1e-3)
        else:  # frozen: untouched, bit for bit
            assert np.array_equal(a.model[k], v), k
    assert moved == len(trainable)  # the comparison is not of two unchanged models
    for x, y in zip(a.meta["history"], b.meta["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["train_accuracy"] == y["train_accuracy"]
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
    print(f"2-rank run {seconds:.1f} s")


def test_ddp_gradient_is_the_mean_of_the_shard_gradients(data: Path, tmp_path: Path) -> None:
    """last_block with the multi-attention head: batch-statistics BatchNorm, dropout and
    stochastic depth with rank-mixed seeds, balanced class weights. Rank r's first
    gradient is that of its shard of the epoch's order, computed here one shard after the
    other; the ranks then apply their mean; the trainable BatchNorm running statistics
    are averaged after the epoch."""
    opts = _options(data, head="multi_attention", policy="last_block", epochs=1)
    proc, _ = _worker("record", tmp_path, opts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before = [np.load(tmp_path / f"grad_before_{r}.npy") for r in (0, 1)]
    after = [np.load(tmp_path / f"grad_after_{r}.npy") for r in (0, 1)]
    assert np.array_equal(after[0], after[1])  # the replicas stay identical
    np.testing.assert_allclose(after[0], (before[0] + before[1]) / 2, rtol=1e-6, atol=1e-9)

    # the same first step, shard by shard, in this process
    cfg = leukemia.TrainConfig(**{k: v for k, v in opts.items() if k != "data"})
    ds = load_dataset(data)
    train = make_split(ds.labelled(), cfg.split, cfg.val_fraction, cfg.seed).train
    labels = np.array([s.label for s in train])
    weight = (len(labels) / (2 * np.bincount(labels, minlength=2))).astype(np.float32)
    loader = DataLoader(train, eval_transform(SIZE), 8, shuffle=True, seed=cfg.seed)
    model = EfficientNet(
        cfg.arch, 2, seed=cfg.seed, head=cfg.head, policy=cfg.policy
    )  # as the Trainer builds it
    segments = model.param_segments()
    lo = min(o for _, o, _ in segments)
    hi = max(o + int(np.prod(s)) for _, o, s in segments)
    model.train()
    for rank in (0, 1):
        idx = shard(loader.order(0), rank, 2)[:4]
        x, y = loader.load_batch(idx, 0)
        logits = model.forward(x, seed=_step_seed(cfg.seed, 0, rank))
        _, prob = cross_entropy_forward(logits, y, weight)
        model.backward(cross_entropy_backward(prob, y, weight))
        np.testing.assert_allclose(
            model.flat_grads()[lo:hi], before[rank], rtol=1e-5, atol=1e-7, err_msg=f"rank {rank}"
        )
    assert not np.allclose(before[0], before[1])  # the shards differ: the mean is a mean

    bn = [dict(np.load(tmp_path / f"bn_before_{r}.npz")) for r in (0, 1)]
    bn_after = [dict(np.load(tmp_path / f"bn_after_{r}.npz")) for r in (0, 1)]
    assert bn[0].keys() == bn_after[0].keys() and "head.bn.running_mean" in bn[0]
    # each rank saw other images (a layer whose 1x1 maps are constant over the batch at
    # this small size keeps the same statistics everywhere)
    differ = [k for k in bn[0] if not np.array_equal(bn[0][k], bn[1][k])]
    assert "head.bn.running_var" in differ and len(differ) > len(bn[0]) // 2, differ
    for k in bn[0]:
        np.testing.assert_allclose(bn_after[0][k], (bn[0][k] + bn[1][k]) / 2, rtol=1e-6)
        assert np.array_equal(bn_after[0][k], bn_after[1][k]), k


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_failing_mid_epoch_ends_every_rank(data: Path, tmp_path: Path, rank: int) -> None:
    """Rank `rank` raises after global step 3 of an epoch of 5; the other learns of it at
    its next collective; both exit with the error named, well within the timeout, and
    last.ckpt (written after every step by rank 0) is a whole checkpoint."""
    opts = _options(data, head="linear", policy="head", epochs=2, checkpoint_every=1)
    proc, seconds = _worker("fault", tmp_path, opts, rank, 3)
    assert proc.returncode != 0
    lines = _rank_lines(tmp_path)
    assert lines[rank] == f"ValueError: injected fault on rank {rank} after step 3", proc.stderr
    other = 1 - rank
    assert lines[other].startswith(f"RankFailed: rank {rank} failed: ValueError: injected fault")
    # the other rank stopped right after the failing one (the subprocess timeout catches a hang)
    stamps = [(tmp_path / f"rank{r}.txt").stat().st_mtime for r in (0, 1)]
    assert abs(stamps[0] - stamps[1]) < 20, (stamps, seconds)
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt.meta["trainer"]["global_step"] == (3 if rank == 1 else 2)
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_ctrl_c_stops_both_ranks_at_one_step_and_one_rank_resumes(
    data: Path, tmp_path: Path
) -> None:
    """mpiexec forwards Ctrl-C to every rank; they reach it at different moments but stop
    after the same step (the next agreement), rank 0 saves, both exit with 130, and the
    run finishes on one rank."""
    out = tmp_path / "run"
    args = ["-m", "leukemia", "train", str(data), "--out", str(out), "--quiet"]
    args += ["--head", "linear", "--policy", "head", "--size", "32", "--batch-size", "8"]
    args += ["--epochs", "6", "--checkpoint-every", "1"]
    proc = subprocess.Popen(
        [_mpiexec(), "-n", "2", sys.executable, *args],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    end = time.monotonic() + TIMEOUT
    while not (out / "last.ckpt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the ranks did not stop after Ctrl-C: {proc.communicate()}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # (mpiexec may interleave the ranks' lines, so the messages are found, not split)
    stopped = re.findall(r"leukemia: training stopped (?:at|after) epoch \d+(?:, step \d+)?", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err  # the same step on both
    ck = load_checkpoint(out / "last.ckpt")
    assert ck.meta["trainer"]["global_step"] >= 1 and ck.epoch < 6
    from leukemia.cli import main

    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


LEARN = {"subjects": 24, "cells": 40, "size": 32, "epochs": 8, "stop_after": 6}
"""The demo's data and recipe (``leukemia demo`` without ImageNet weights) at 32 px
instead of 48 to halve the time."""
ONE_RANK_F1 = 0.963
"""The same run in one process (2 threads), measured: validation weighted F1 0.64, 0.10,
0.64, 0.67, 0.91, 0.96, 0.96, 0.95 over the 8 epochs (AUC 0.99 from epoch 4). Two ranks
do not repeat it bit for bit (each rank's BatchNorm sees its own half of the batch, and
the dropout masks differ), so "as well" allows 0.1 below its best."""


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("learn")
    write_cnmc(root, LEARN["subjects"], LEARN["cells"], LEARN["size"], seed=0, workers=2)
    return root


def test_two_ranks_learn_as_one_and_resume_on_one(learn_data: Path, tmp_path: Path) -> None:
    """The demo's recipe on 2 ranks (threads per rank left to the default), stopped by a
    request on rank 1 after epoch 6 of 8 and resumed on one rank, learns as well as one
    process does. The checkpoint of 2 ranks loads in one process, and evaluation and
    prediction split over 2 ranks (the CLI) give the one-process results in order."""
    opts = _options(
        learn_data,
        head="multi_attention",
        policy="all",
        size=LEARN["size"],
        epochs=LEARN["epochs"],
        batch_size=32,
        lr=1e-3,
        backbone_lr=1e-3,
        weight_decay=0.05,
        seed=0,
    )
    proc, seconds_two = _worker("stop", tmp_path, opts, 1, LEARN["stop_after"], threads=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _rank_lines(tmp_path)
    assert lines[0].startswith(f"stopped: training stopped after epoch {LEARN['stop_after']};")
    assert lines[1] == lines[0], lines
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())
    cpus = len(os.sched_getaffinity(0))
    assert cfg["world"] == {"ranks": 2, "threads_per_rank": max(1, cpus // 2)}
    two = load_checkpoint(run / "last.ckpt")
    assert (two.epoch, two.step_in_epoch) == (LEARN["stop_after"], 0)

    # the checkpoint of 2 ranks, in one process
    mid = evaluate(load_run(run, "last"), bootstrap=0)
    assert mid.metrics["n"] == len(mid.samples) > 0

    start = time.perf_counter()
    resumed = leukemia.fit(resume=run, progress=False)
    seconds_resume = time.perf_counter() - start
    assert len(resumed.history) == LEARN["epochs"]
    assert resumed.history[: LEARN["stop_after"]] == two.meta["history"]
    f1 = [round(h["val_weighted_f1"], 3) for h in resumed.history]
    auc = resumed.history[-1]["val_roc_auc"]
    print(
        f"validation weighted F1 per epoch {f1}, final AUC {auc:.3f}; 2 ranks "
        f"{seconds_two:.0f} s, resumed on 1 rank {seconds_resume:.0f} s"
    )
    assert max(f1) >= ONE_RANK_F1 - 0.1 and resumed.best_epoch > 2, f1
    assert auc >= 0.9, resumed.history

    # evaluate and predict split over 2 ranks (CLI): the one-process numbers, in order
    files = sorted(p for p in learn_data.rglob("*.bmp"))[::7]
    report = tmp_path / "eval.json"
    preds = tmp_path / "p.csv"
    for args in (
        ["evaluate", str(run), "--json", str(report), "--quiet", "--batch-size", "8"],
        ["predict", str(run), *map(str, files), "--out", str(preds), "--quiet"],
    ):
        proc, _ = _launch(["-m", "leukemia", *args])
        assert proc.returncode == 0, proc.stderr
    local = evaluate(load_run(run))
    got = json.loads(report.read_text())
    for k in ("n", "accuracy", "weighted_f1", "roc_auc"):
        assert got["metrics"][k] == pytest.approx(local.metrics[k], abs=1e-9), k
    assert len(got["subjects"]) == len(local.subjects)
    for a, b in zip(got["subjects"], local.subjects, strict=True):
        assert (a["subject"], a["images"], a["call"]) == (b["subject"], b["images"], b["call"])
        assert a["mean_p1"] == pytest.approx(b["mean_p1"], abs=1e-6)
    with open(preds) as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == [str(p) for p in files]  # the original order
    probs = predict(load_run(run), files)
    np.testing.assert_allclose(np.array([r[1:3] for r in rows], float), probs, atol=2e-6)
