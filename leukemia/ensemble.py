"""Ensembles of trained models and test-time augmentation (TTA).

    ens = Ensemble(["runs/b3", "runs/v2s"])            # soft voting over two runs
    probs = ens.predict_proba(samples)                 # [N, K]
    ens = Ensemble(runs, method="weighted")
    ens.fit_weights(val_samples)                       # weights on the simplex
    evaluate(TTA(ens), test_samples)                   # flips and 90-degree rotations

Members are :class:`~leukemia.models.efficientnet.EfficientNet` models, :class:`Run` s or
run directories (loaded with :func:`~leukemia.evaluation.load_run`). Each member keeps its
own input side (``Run.size``): the images are decoded once per distinct side, and every
member of that side sees the same batch. TTA transforms the normalised batch with array
operations, so the loader decodes each image once whatever the number of transforms.

Members run in inference semantics and are left as they were: training flag restored,
``version``, parameters, running statistics and dropout seed sequence untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._util import is_int
from .data.datasets import Sample
from .data.loader import DataLoader
from .data.transforms import eval_transform
from .evaluation import Run, _as_samples, load_run, softmax
from .models.efficientnet import EfficientNet

__all__ = ["DIHEDRAL", "METHODS", "Ensemble", "TTA"]

METHODS = ("soft", "weighted", "majority")

# Array ops on the last two axes (H, W) of an (N, 3, H, W) batch. rot90 turns
# counter-clockwise (np.rot90's direction); transpose / transverse mirror about the main /
# anti-diagonal. Together: the 8 symmetries of the square (a cell has no orientation).
_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "hflip": lambda x: np.flip(x, -1),
    "vflip": lambda x: np.flip(x, -2),
    "rot90": lambda x: np.rot90(x, 1, axes=(-2, -1)),
    "rot180": lambda x: np.rot90(x, 2, axes=(-2, -1)),
    "rot270": lambda x: np.rot90(x, 3, axes=(-2, -1)),
    "transpose": lambda x: np.swapaxes(x, -2, -1),
    "transverse": lambda x: np.rot90(np.swapaxes(x, -2, -1), 2, axes=(-2, -1)),
}
DIHEDRAL = tuple(_TRANSFORMS)
"""Every TTA transform: identity, flips, 90-degree rotations and diagonal mirrors."""

# Majority voting adds this much of the soft mean to the vote fractions (then
# renormalises): far below one vote (1 / members), so it only orders tied classes.
_TIE_BREAK = 1e-6

Member = EfficientNet | Run | str | os.PathLike
Images = Sequence[Sample | str | os.PathLike] | np.ndarray


def _check_transforms(transforms: object) -> tuple[str, ...]:
    if isinstance(transforms, str) or not isinstance(transforms, (list, tuple)):
        raise TypeError(f"transforms must be a list of names, got {transforms!r}")
    if not transforms:
        raise ValueError("transforms is empty; give at least 'identity'")
    for t in transforms:
        if t not in _TRANSFORMS:
            raise ValueError(f"unknown TTA transform {t!r}; choose from {', '.join(DIHEDRAL)}")
    return tuple(transforms)


def _check_weights(weights: object, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per member ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {w.tolist()} (sum {w.sum():.6g})")
    return w / w.sum()


def _stack_probs(probs: Sequence[np.ndarray], what: str) -> np.ndarray:
    """Member probabilities as one float64 array [M, N, K], checked."""
    if isinstance(probs, np.ndarray) and probs.ndim == 3:
        arr = probs.astype(np.float64)
    else:
        if not isinstance(probs, (list, tuple)) or not probs:
            raise TypeError(f"{what}: give a non-empty list of [N, K] probability arrays")
        arrs = [np.asarray(p, dtype=np.float64) for p in probs]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1 or arrs[0].ndim != 2:
            raise ValueError(
                f"{what}: every member's probabilities must be [N, K] of one shape, "
                f"got {[a.shape for a in arrs]}"
            )
        arr = np.stack(arrs)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{what}: probabilities must be finite and >= 0")
    return arr


def fit_mixture_weights(
    probs: Sequence[np.ndarray], labels: object, max_iter: int = 2000, tol: float = 1e-10
) -> np.ndarray:
    """Weights w on the simplex (w >= 0, sum 1) minimising the log-loss of the weighted
    mean of member probabilities, -mean_i log(sum_m w_m p_m[i, y_i]).

    With the members' probabilities fixed this is the maximum-likelihood estimate of
    mixture proportions, a convex problem; it is solved by the EM (multiplicative)
    update w_m <- mean_i w_m p_m[i, y_i] / sum_k w_k p_k[i, y_i], which stays on the
    simplex, never increases the loss, and is deterministic. It starts from uniform
    weights, so the result is never worse than them on these data. Probabilities are
    floored at 1e-12 so a confident mistake has a finite cost.
    """
    arr = _stack_probs(probs, "fit_weights")
    y = np.asarray(labels)
    m, n, k = arr.shape
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers, got dtype {y.dtype} shape {y.shape}")
    if n == 0:
        raise ValueError("fit_weights needs at least one labelled image")
    if np.any(y < 0) or np.any(y >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    p = np.maximum(arr[:, np.arange(n), y].T, 1e-12)  # [N, M]: each member's p(true class)
    w = np.full(m, 1.0 / m)
    mix = p @ w
    loss = -np.mean(np.log(mix))
    for _ in range(max_iter):
        w_new = w * np.mean(p / mix[:, None], axis=0)
        w_new /= w_new.sum()
        mix_new = p @ w_new
        loss_new = -np.mean(np.log(mix_new))
        if loss_new > loss:  # rounding only: EM is monotone
            break
        done = loss - loss_new < tol
        w, mix, loss = w_new, mix_new, loss_new
        if done:
            break
    return w


class Ensemble:
    """Soft, weighted or majority voting over trained models, with optional TTA.

    Args:
        members: EfficientNet models, :class:`Run` s, or run directories (paths).
        method: "soft" (mean of the members' probabilities), "weighted" (weighted mean;
            give ``weights`` or call :meth:`fit_weights`), or "majority" (fraction of the
            members voting for each class; a member votes for its most probable class;
            ties between classes are broken by the soft mean, which is added with a
            weight of 1e-6 so the rows still sum to 1 and the argmax picks the tied class
            with the higher mean probability).
        weights: one non-negative weight per member, summing to 1 (method "weighted").
        size: input side of bare EfficientNet members (default: the architecture's);
            Runs and run directories use the side they were trained at.
        tta: False, True (every transform of :data:`DIHEDRAL`) or a list of transform
            names; each member's probabilities are averaged over the transformed batches
            before voting.

    Every member must have the same number of classes (and Runs the same class names).
    """

    def __init__(
        self,
        members: Sequence[Member],
        method: str = "soft",
        weights: Sequence[float] | np.ndarray | None = None,
        *,
        size: int | None = None,
        tta: bool | Sequence[str] = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if size is not None and (not is_int(size) or size < 1):
            raise ValueError(f"size must be a positive int, got {size!r}")
        if isinstance(members, (str, os.PathLike, EfficientNet, Run)):
            members = [members]
        if not isinstance(members, (list, tuple)) or not members:
            raise ValueError("an Ensemble needs a non-empty list of members")
        self.models: list[EfficientNet] = []
        self.sizes: list[int] = []
        self._fixed: list[bool] = []  # a Run's side is fixed; a bare model's follows size=
        self.class_names: tuple[str, ...] | None = None
        for i, member in enumerate(members):
            if isinstance(member, (str, os.PathLike)):
                member = load_run(member)
            if isinstance(member, Run):
                if self.class_names is not None and member.class_names != self.class_names:
                    raise ValueError(
                        f"member {i} ({member.run_dir}) has classes {member.class_names}, "
                        f"the ensemble {self.class_names}"
                    )
                self.class_names = member.class_names
                self.models.append(member.model)
                self.sizes.append(int(member.size))
                self._fixed.append(True)
            elif isinstance(member, EfficientNet):
                self.models.append(member)
                self.sizes.append(int(size) if size else member.default_size)
                self._fixed.append(False)
            else:
                raise TypeError(
                    f"member {i}: expected an EfficientNet, a Run or a run directory, "
                    f"got {type(member).__name__}"
                )
        classes = [mod.num_classes for mod in self.models]
        if len(set(classes)) != 1:
            raise ValueError(
                f"ensemble members disagree on num_classes: {classes}; every member must "
                "predict the same classes"
            )
        self.num_classes = classes[0]
        self.method = method
        self.weights: np.ndarray | None = None
        if weights is not None:
            if method != "weighted":
                raise ValueError(f"weights are for method='weighted', not {method!r}")
            self.weights = _check_weights(weights, len(self.models))
        self.transforms: tuple[str, ...] = (
            DIHEDRAL if tta is True else ("identity",) if tta is False else _check_transforms(tta)
        )

    def __len__(self) -> int:
        return len(self.models)

    def __repr__(self) -> str:
        names = ", ".join(
            f"{m.arch}/{m.head}@{s}" for m, s in zip(self.models, self.sizes, strict=True)
        )
        w = "" if self.weights is None else f", weights={np.round(self.weights, 4).tolist()}"
        t = "" if self.transforms == ("identity",) else f", tta={list(self.transforms)}"
        return f"{type(self).__name__}([{names}], method={self.method!r}{w}{t})"

    # ------------------------------------------------------------ combine
    def combine(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's [N, K] probabilities from each member's [N, K] (this ensemble's
        method and weights); usable on probabilities computed elsewhere."""
        arr = _stack_probs(member_probs, "combine")
        if arr.shape[0] != len(self.models):
            raise ValueError(
                f"expected {len(self.models)} members' probabilities, got {arr.shape[0]}"
            )
        soft = arr.mean(0)
        if self.method == "soft":
            return soft
        if self.method == "weighted":
            if self.weights is None:
                raise ValueError(
                    "method 'weighted' has no weights: pass weights= or call fit_weights"
                )
            return np.tensordot(self.weights, arr, axes=1)
        k = arr.shape[2]
        votes = np.eye(k)[arr.argmax(2)].mean(0)  # [N, K] fraction of members per class
        return (votes + _TIE_BREAK * soft) / (1.0 + _TIE_BREAK)

    # ------------------------------------------------------------ predict
    def member_probas(
        self,
        images: Images,
        *,
        size: int | None = None,
        batch_size: int = 32,
        workers: int = 1,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Each member's [N, K] probabilities (TTA-averaged), in member order.

        ``images``: paths or samples (decoded once per distinct member size), or a float32
        array [N, 3, H, W] already normalised (given to every member as is). ``size``
        overrides the side of bare EfficientNet members, not of Runs.
        """
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if size is not None and (not is_int(size) or size < 1):
            raise ValueError(f"size must be a positive int, got {size!r}")
        sizes = [
            s if fixed or size is None else int(size)
            for s, fixed in zip(self.sizes, self._fixed, strict=True)
        ]
        out: list[list[np.ndarray]] = [[] for _ in self.models]
        states = [(m, m.training) for m in self.models]
        try:
            for m in self.models:
                m.eval()
            if isinstance(images, np.ndarray):
                if images.ndim != 4 or images.shape[1] != 3:
                    raise ValueError(f"images array must be [N, 3, H, W], got {images.shape}")
                if images.dtype != np.float32:
                    raise TypeError(f"images array must be float32, got {images.dtype}")
                for start in range(0, images.shape[0], batch_size):
                    x = images[start : start + batch_size]
                    for i in range(len(self.models)):
                        out[i].append(self._probs(i, x))
            else:
                samples = _as_samples(images)
                for side in sorted(set(sizes)):
                    idx = [i for i, s in enumerate(sizes) if s == side]
                    self._run_loader(samples, side, idx, out, batch_size, workers, progress)
        finally:
            for m, was_training in states:
                m.train(was_training)
        k = self.num_classes
        return [np.concatenate(o) if o else np.zeros((0, k)) for o in out]

    def _run_loader(
        self,
        samples: list[Sample],
        side: int,
        idx: list[int],
        out: list[list[np.ndarray]],
        batch_size: int,
        workers: int,
        progress: bool,
    ) -> None:
        if not samples:
            return
        loader = DataLoader(samples, eval_transform(side), batch_size, num_workers=workers)
        try:
            from tqdm.auto import tqdm

            for x, _ in tqdm(
                loader,
                total=len(loader),
                desc=f"ensemble {side}px",
                disable=not progress,
                leave=False,
                unit="batch",
            ):
                for i in idx:
                    out[i].append(self._probs(i, x))
        finally:
            loader.close()

    def _probs(self, i: int, x: np.ndarray) -> np.ndarray:
        """Member i's probabilities for batch x, averaged over the TTA transforms."""
        model = self.models[i]
        acc = None
        for name in self.transforms:
            xt = np.ascontiguousarray(_TRANSFORMS[name](x))
            # seed=0: eval mode draws nothing, and a fixed seed leaves the model's own
            # seed sequence (used by later train-mode forwards) where it was
            p = softmax(model.forward(xt, seed=0))
            acc = p if acc is None else acc + p
        assert acc is not None
        return acc / len(self.transforms)

    def predict_proba(
        self,
        images: Images,
        *,
        size: int | None = None,
        batch_size: int = 32,
        workers: int = 1,
        progress: bool = False,
    ) -> np.ndarray:
        """The ensemble's class probabilities [N, K] (float64), in order. See
        :meth:`member_probas` for ``images`` and ``size``."""
        probs = self.member_probas(
            images, size=size, batch_size=batch_size, workers=workers, progress=progress
        )
        return self.combine(probs)

    __call__ = predict_proba

    # ------------------------------------------------------------ weights
    def fit_weights(
        self,
        validation: Sequence[Sample] | tuple[Sequence[np.ndarray], Any],
        *,
        size: int | None = None,
        batch_size: int = 32,
        workers: int = 1,
        progress: bool = False,
    ) -> np.ndarray:
        """Fit the weights of weighted soft voting on validation data and switch the
        ensemble to method "weighted"; returns them (>= 0, sum 1).

        ``validation``: labelled samples, or a pair (list of the members' [N, K]
        probabilities, labels [N]). The weights minimise the validation log-loss over
        the simplex (see :func:`fit_mixture_weights`), so they are never worse there
        than uniform weights (plain soft voting).
        """
        pair = isinstance(validation, tuple) and len(validation) == 2
        if pair and not isinstance(validation[0], (Sample, str, os.PathLike)):
            probs, labels = validation
            if len(probs) != len(self.models):
                raise ValueError(
                    f"expected {len(self.models)} members' probabilities, got {len(probs)}"
                )
        else:
            samples = _as_samples(validation)
            missing = [s.path for s in samples if s.label is None]
            if missing:
                raise ValueError(f"fit_weights needs labelled samples; {missing[0]} has no label")
            probs = self.member_probas(
                samples, size=size, batch_size=batch_size, workers=workers, progress=progress
            )
            labels = np.array([s.label for s in samples], np.int64)
        self.weights = fit_mixture_weights(probs, labels)
        self.method = "weighted"
        return self.weights.copy()


class TTA(Ensemble):
    """Test-time augmentation of a model, Run, run directory or Ensemble: probabilities
    averaged over ``transforms`` (default: all 8 symmetries of the square,
    :data:`DIHEDRAL`) applied to the normalised batch [N, 3, H, W] with np.flip /
    np.rot90 on the last two axes. An Ensemble's members, method and weights are copied
    (fitting weights on the TTA changes the TTA only)."""

    def __init__(
        self,
        model: Member | Ensemble,
        transforms: Sequence[str] = DIHEDRAL,
        *,
        size: int | None = None,
    ) -> None:
        transforms = _check_transforms(transforms)
        if isinstance(model, Ensemble):
            self.__dict__.update(
                {k: (list(v) if isinstance(v, list) else v) for k, v in model.__dict__.items()}
            )
            if model.weights is not None:
                self.weights = model.weights.copy()
            self.transforms = transforms
        else:
            super().__init__([model], size=size, tta=transforms)
