"""Learning-rate schedules in the manner of torch.optim.lr_scheduler.

Each acts on `optimizer.param_groups[i]["lr"]` (any object with such a list of dicts
works, a leukemia optimizer or a torch one). Call `step()` once per epoch or per
batch, after the optimizer's step; `ReduceLROnPlateau.step(metric)` takes the
monitored value.

    opt = leukemia.optim.AdamW(model, lr=3e-4)
    sched = CosineWarmup(opt, warmup_steps=100, total_steps=3000)
    for batch in batches:
        ...; opt.step(); sched.step()
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from .._util import is_int

__all__ = ["LRScheduler", "CosineWarmup", "StepLR", "ReduceLROnPlateau"]


def _groups(optimizer: Any) -> list[dict[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"{type(optimizer).__name__} has no param_groups (a non-empty list of dicts with "
            "'lr'); pass an optimizer"
        )
    return groups


def _number(v: object, what: str, lo: float | None = None, hi: float | None = None) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(float(v)):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    f = float(v)
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {v!r}")
    return f


def _count(v: object, what: str, lo: int = 0) -> int:
    if not is_int(v) or int(v) < lo:  # type: ignore[call-overload]
        raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
    return int(v)  # type: ignore[call-overload]


def _per_group(v: object, n: int, what: str) -> list[float]:
    """A number for every group (one number is repeated), each >= 0."""
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) != n:
            raise ValueError(f"expected {n} values of {what} (one per group), got {len(v)}")
        return [_number(x, f"{what}[{i}]", lo=0.0) for i, x in enumerate(v)]
    return [_number(v, what, lo=0.0)] * n


class LRScheduler:
    """Base of the step-indexed schedules: sets every group's lr from `last_epoch`.

    Like torch, construction records each group's starting lr as "initial_lr" (kept if
    already there, e.g. by an earlier scheduler) and takes the first step (last_epoch 0).
    """

    def __init__(self, optimizer: Any) -> None:
        groups = _groups(optimizer)
        for i, g in enumerate(groups):
            _number(g.get("lr"), f"param_groups[{i}]['lr']", lo=0.0)
        self.optimizer = optimizer
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs: list[float] = [float(g["initial_lr"]) for g in groups]
        self.last_epoch = -1
        self._last_lr: list[float] = [float(g["lr"]) for g in groups]
        self.step()

    def get_lr(self) -> list[float]:
        """The learning rates for the current `last_epoch` (set by `step`)."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and write the new learning rates into the param_groups."""
        groups = _groups(self.optimizer)
        if len(groups) != len(self.base_lrs):
            raise ValueError(
                f"the optimizer has {len(groups)} param_groups, the scheduler was made for "
                f"{len(self.base_lrs)}"
            )
        self.last_epoch += 1
        lrs = self.get_lr()
        for g, lr in zip(groups, lrs, strict=True):
            g["lr"] = lr
        self._last_lr = [float(lr) for lr in lrs]

    def get_last_lr(self) -> list[float]:
        """The learning rates the last `step` set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the optimizer (copies)."""
        return {
            k: list(v) if isinstance(v, list) else v
            for k, v in vars(self).items()
            if k != "optimizer"
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output (of a scheduler of the same class and groups)."""
        mine = self.state_dict()
        if not isinstance(state, dict) or set(state) != set(mine):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"not a {type(self).__name__} state: expected keys {sorted(mine)}, got {got}"
            )
        for k, v in mine.items():
            if isinstance(v, list) and (not isinstance(state[k], list) or len(state[k]) != len(v)):
                raise ValueError(f"state[{k!r}] must be a list of {len(v)} values (one per group)")
        for k, v in state.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)


class CosineWarmup(LRScheduler):
    """Linear warm-up, then cosine decay to `min_lr`.

    At step t (0-based; `base_lr` is each group's initial lr, f = warmup_start_factor):
        t < warmup_steps:  lr = base_lr * (f + (1 - f) * t / warmup_steps)
        otherwise:         p = min((t - warmup_steps) / max(1, total_steps - warmup_steps), 1)
                           lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2
    so the warm-up ends at base_lr at t = warmup_steps and the cosine reaches min_lr at
    t = total_steps and stays there (with total_steps == warmup_steps the peak at
    t = warmup_steps is kept and min_lr follows one step later).

    Args:
        optimizer: an object with `param_groups`.
        warmup_steps: steps of linear warm-up (0: none).
        total_steps: steps of the whole schedule, >= warmup_steps.
        warmup_start_factor: fraction of base_lr at step 0, in [0, 1] (default 0).
        min_lr: final learning rate, one number or one per group (default 0).
    """

    def __init__(
        self,
        optimizer: Any,
        warmup_steps: int,
        total_steps: int,
        warmup_start_factor: float = 0.0,
        min_lr: float | Sequence[float] = 0.0,
    ) -> None:
        self.warmup_steps = _count(warmup_steps, "warmup_steps")
        self.total_steps = _count(total_steps, "total_steps", lo=1)
        if self.total_steps < self.warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})"
            )
        self.warmup_start_factor = _number(warmup_start_factor, "warmup_start_factor", 0.0, 1.0)
        self.min_lrs = _per_group(min_lr, len(_groups(optimizer)), "min_lr")
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        t, w = self.last_epoch, self.warmup_steps
        if t < w:
            f = self.warmup_start_factor
            return [b * (f + (1.0 - f) * t / w) for b in self.base_lrs]
        p = min((t - w) / max(1, self.total_steps - w), 1.0)
        c = 0.5 * (1.0 + math.cos(math.pi * p))
        return [m + (b - m) * c for b, m in zip(self.base_lrs, self.min_lrs, strict=True)]


class StepLR(LRScheduler):
    """Multiply every group's lr by `gamma` every `step_size` steps (torch's StepLR,
    which scales the current lr: changes made in between are kept)."""

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _count(step_size, "step_size", lo=1)
        self.gamma = _number(gamma, "gamma", lo=0.0)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        groups = _groups(self.optimizer)
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [float(g["lr"]) for g in groups]
        return [float(g["lr"]) * self.gamma for g in groups]


class ReduceLROnPlateau:
    """Reduce every group's lr by `factor` when a metric stops improving (torch's
    ReduceLROnPlateau semantics).

    Args:
        optimizer: an object with `param_groups`.
        mode: "min" (lower is better) or "max".
        factor: new lr = max(lr * factor, min_lr), in [0, 1).
        patience: epochs without improvement tolerated before a reduction.
        threshold: how much better counts as better; threshold_mode "rel" compares with
            best * (1 -/+ threshold), "abs" with best -/+ threshold.
        cooldown: epochs after a reduction during which bad epochs are not counted.
        min_lr: lower bound, one number or one per group.
        eps: a reduction smaller than this is skipped.
    """

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        groups = _groups(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = _number(factor, "factor", lo=0.0)
        if self.factor >= 1.0:
            raise ValueError(f"factor must be < 1.0, got {factor!r}")
        self.optimizer = optimizer
        self.mode = mode
        self.threshold = _number(threshold, "threshold", lo=0.0)
        self.threshold_mode = threshold_mode
        self.patience = _count(patience, "patience")
        self.cooldown = _count(cooldown, "cooldown")
        self.min_lrs = _per_group(min_lr, len(groups), "min_lr")
        self.eps = _number(eps, "eps", lo=0.0)
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = [float(g["lr"]) for g in groups]

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return a < best * (1.0 - self.threshold)
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: float) -> None:
        """Record one epoch's metric; reduce the learning rates after `patience` epochs
        without improvement (outside the cooldown)."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics must be a number, got {metrics!r}") from None
        groups = _groups(self.optimizer)
        if len(groups) != len(self.min_lrs):
            raise ValueError(
                f"the optimizer has {len(groups)} param_groups, the scheduler was made for "
                f"{len(self.min_lrs)}"
            )
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            for g, min_lr in zip(groups, self.min_lrs, strict=True):
                old = float(g["lr"])
                new = max(old * self.factor, min_lr)
                if old - new > self.eps:
                    g["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(g["lr"]) for g in groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates after the last `step`, one per group."""
        return list(self._last_lr)

    state_dict = LRScheduler.state_dict
    load_state_dict = LRScheduler.load_state_dict
