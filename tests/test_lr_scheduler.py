"""leukemia.optim.lr_scheduler against torch.optim.lr_scheduler: StepLR and
ReduceLROnPlateau step for step, CosineWarmup against a LambdaLR carrying the same
formula; state_dict round trips; argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _fake_model import FakeModel

from leukemia.optim import SGD, AdamW, CosineWarmup, ReduceLROnPlateau, StepLR

LRS = (0.01, 0.1)  # head group, default group


def _ours(cls=SGD):
    return cls(FakeModel(), lr=LRS[1], groups=[{"prefix": "head.", "lr": LRS[0]}])


def _torch():
    return torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in LRS], lr=LRS[1]
    )


def _lrs(opt) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def test_steplr_matches_torch():
    ours, theirs = _ours(), _torch()
    a, b = StepLR(ours, step_size=4, gamma=0.5), torch.optim.lr_scheduler.StepLR(theirs, 4, 0.5)
    assert a.get_last_lr() == b.get_last_lr() == list(LRS)
    for t in range(25):
        if t == 6:  # a change made in between is kept, as in torch
            ours.param_groups[1]["lr"] = theirs.param_groups[1]["lr"] = 0.3
        ours.step()
        a.step()
        theirs.step()
        b.step()
        assert a.get_last_lr() == b.get_last_lr(), t
        assert _lrs(ours) == _lrs(theirs), t
    assert a.get_last_lr()[0] < LRS[0] / 50


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_reduce_on_plateau_matches_torch(mode, threshold_mode):
    kw = dict(
        mode=mode,
        factor=0.5,
        patience=3,
        threshold=0.01,
        threshold_mode=threshold_mode,
        cooldown=2,
        min_lr=[1e-4, 2e-3],
    )
    ours, theirs = _ours(), _torch()
    a = ReduceLROnPlateau(ours, **kw)
    b = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kw)
    rng = np.random.default_rng(0)
    metric, reductions = 1.0, 0
    for t in range(80):
        # Improves early, then mostly plateaus with occasional small gains.
        metric += (-0.05 if t < 10 else rng.choice([0.0, 0.002, -0.004, 0.02])) * (
            1 if mode == "min" else -1
        )
        before = _lrs(ours)
        a.step(metric)
        b.step(metric)
        reductions += _lrs(ours) != before
        assert a.get_last_lr() == b.get_last_lr(), t
        assert _lrs(ours) == _lrs(theirs), t
        for k in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
            assert getattr(a, k) == getattr(b, k), (t, k)
    assert reductions >= 2
    assert _lrs(ours)[1] == 2e-3  # clamped at its min_lr


def _cosine_lambda(base, warmup, total, f, min_lr):
    def lam(t):
        if t < warmup:
            return f + (1 - f) * t / warmup
        p = min((t - warmup) / max(1, total - warmup), 1.0)
        return (min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * p))) / base

    return lam


@pytest.mark.parametrize(
    "warmup,total,f,min_lr",
    [(5, 30, 0.1, 1e-4), (0, 12, 0.0, 0.0), (3, 3, 0.0, (1e-3, 2e-2)), (4, 20, 1.0, 0.0)],
)
def test_cosine_warmup_matches_lambdalr(warmup, total, f, min_lr):
    ours, theirs = _ours(), _torch()
    a = CosineWarmup(ours, warmup, total, warmup_start_factor=f, min_lr=min_lr)
    mins = min_lr if isinstance(min_lr, tuple) else (min_lr, min_lr)
    b = torch.optim.lr_scheduler.LambdaLR(
        theirs, [_cosine_lambda(lr, warmup, total, f, m) for lr, m in zip(LRS, mins, strict=True)]
    )
    for t in range(total + 10):
        assert a.last_epoch == t
        assert a.get_last_lr() == pytest.approx(b.get_last_lr(), rel=1e-12, abs=0), t
        assert _lrs(ours) == a.get_last_lr()
        if t == 0:
            assert a.get_last_lr() == pytest.approx([lr * f if warmup else lr for lr in LRS])
        if t == warmup:
            assert a.get_last_lr() == pytest.approx(list(LRS), rel=1e-15)
        if t >= max(total, warmup + 1):  # (the peak at t = warmup comes first)
            assert a.get_last_lr() == pytest.approx(list(mins), rel=1e-12, abs=1e-18)
        a.step()
        theirs.step()
        b.step()


def test_schedulers_drive_a_torch_optimizer_too():
    theirs = _torch()
    CosineWarmup(theirs, 10, 100, warmup_start_factor=0.5)
    assert _lrs(theirs) == [lr * 0.5 for lr in LRS]


def _run(sched, opt, steps, metrics=None):
    out = []
    for t in range(steps):
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[t])
        out.append(_lrs(opt))
    return out


@pytest.mark.parametrize(
    "make,with_metric",
    [
        (lambda o: CosineWarmup(o, 4, 30, warmup_start_factor=0.2, min_lr=1e-5), False),
        (lambda o: StepLR(o, 3, 0.7), False),
        (lambda o: ReduceLROnPlateau(o, patience=1, cooldown=1, factor=0.3), True),
    ],
    ids=["cosine", "step", "plateau"],
)
def test_state_dict_round_trip(make, with_metric):
    metrics = list(np.random.default_rng(1).uniform(0.9, 1.0, 40)) if with_metric else None
    opt_a = _ours(AdamW)
    a = make(opt_a)
    _run(a, opt_a, 12, metrics)
    saved_opt, saved = opt_a.state_dict(), a.state_dict()
    opt_b = _ours(AdamW)
    b = make(opt_b)  # fresh: its own first step
    opt_b.load_state_dict(saved_opt)
    b.load_state_dict(saved)
    assert b.get_last_lr() == a.get_last_lr()
    rest = metrics[12:] if metrics else None
    assert _run(a, opt_a, 20, rest) == _run(b, opt_b, 20, rest)
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"last_epoch": 3})
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict(dict(saved, unexpected=1))


def test_get_last_lr_is_a_copy():
    opt = _ours()
    s = StepLR(opt, 2)
    s.get_last_lr()[0] = 123.0
    assert s.get_last_lr() == list(LRS)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda o: CosineWarmup(o, 10, 5), ValueError, "total_steps"),
        (lambda o: CosineWarmup(o, -1, 5), ValueError, "warmup_steps"),
        (lambda o: CosineWarmup(o, 1, 0), ValueError, "total_steps"),
        (lambda o: CosineWarmup(o, 1, 5, warmup_start_factor=1.5), ValueError, "factor"),
        (lambda o: CosineWarmup(o, 1, 5, min_lr=(0.1,)), ValueError, "min_lr"),
        (lambda o: CosineWarmup(o, 1, 5, min_lr=-1.0), ValueError, "min_lr"),
        (lambda o: StepLR(o, 0), ValueError, "step_size"),
        (lambda o: StepLR(o, 2.5), ValueError, "step_size"),
        (lambda o: StepLR(o, 2, gamma=float("nan")), ValueError, "gamma"),
        (lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, "factor"),
        (lambda o: ReduceLROnPlateau(o, mode="mid"), ValueError, "mode"),
        (lambda o: ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, "threshold_mode"),
        (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
        (lambda o: ReduceLROnPlateau(o, min_lr=[0.1, 0.2, 0.3]), ValueError, "min_lr"),
        (lambda o: StepLR(object(), 2), TypeError, "param_groups"),
    ],
)
def test_bad_arguments(make, exc, match):
    opt = _ours()
    with pytest.raises(exc, match=match):
        make(opt)
    assert _lrs(opt) == list(LRS)


def test_plateau_metric_must_be_a_number():
    s = ReduceLROnPlateau(_ours())
    with pytest.raises(TypeError, match="metrics"):
        s.step("low")
    s.step(np.float32(0.5))
    assert s.best == 0.5
