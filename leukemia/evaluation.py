"""Evaluation of trained runs: probabilities per image, metrics on held-out subjects,
per-subject results, and a leakage check against the run's training subjects.

    run = load_run("runs/b3")                  # best.ckpt, config, recorded split
    report = evaluate(run)                      # the run's validation subjects
    print(report)                               # metrics, confusion matrix, per subject
    probs = predict(run, ["cell1.bmp", "cell2.bmp"])

Every model runs in inference semantics (BatchNorm running statistics, no dropout) and
is left as it was.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.datasets import CLASS_NAMES, Sample
from .data.loader import DataLoader
from .data.transforms import eval_transform
from .metrics import classification_report
from .models.efficientnet import EfficientNet

if TYPE_CHECKING:
    from .ensemble import Ensemble

__all__ = ["Evaluation", "Run", "evaluate", "load_run", "predict", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] (float64) from logits [N, K], computed stably."""
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


@dataclass
class Run:
    """A trained run loaded from its directory.

    Attributes:
        model: the model with the chosen checkpoint's weights, in eval mode.
        run_dir: the directory.
        config: ``config.json``'s ``config`` section.
        split: ``split.json`` (None if absent).
        size: the input side the model was trained at.
        class_names: names by label.
        checkpoint: which file was loaded.
    """

    model: EfficientNet
    run_dir: Path
    config: dict[str, Any]
    split: dict[str, Any] | None
    size: int
    class_names: tuple[str, ...]
    checkpoint: Path

    def validation_samples(self, data_root: str | os.PathLike[str] | None = None) -> list[Sample]:
        """The held-out side of the recorded split (paths under ``data_root`` if given)."""
        from .train.rundir import read_split

        if self.split is None:
            raise ValueError(f"{self.run_dir} has no split.json")
        return read_split(self.split, data_root)[1]

    def training_subjects(self) -> set[str]:
        return set() if self.split is None else set(self.split["subjects"]["train"])

    def training_files(self) -> set[str]:
        """Resolved paths of the training side's images (for data without subject ids)."""
        from .train.rundir import read_split

        if self.split is None:
            return set()
        return {str(s.path.resolve()) for s in read_split(self.split)[0]}


def load_run(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> Run:
    """Load ``RUN_DIR/{best,last}.ckpt`` into a model built from the run's config."""
    from .train.checkpoint import load_checkpoint
    from .train.rundir import read_json

    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    meta = read_json(cfg_path)
    path = run_dir / f"{checkpoint}.ckpt"
    if not path.is_file() and checkpoint == "best":
        path = run_dir / "last.ckpt"
    ckpt = load_checkpoint(path)
    info = meta["model"]
    ckpt.check_model(info["arch"], info["head"], int(info["num_classes"]))
    model = EfficientNet(info["arch"], int(info["num_classes"]), head=info["head"])
    model.load_state_dict(ckpt.model, strict=True)
    model.eval()
    split = read_json(run_dir / "split.json") if (run_dir / "split.json").is_file() else None
    names = tuple(split["class_names"]) if split else CLASS_NAMES
    return Run(model, run_dir, meta["config"], split, int(info["size"]), names, path)


def _as_samples(images: Sequence[Sample | str | os.PathLike[str]]) -> list[Sample]:
    return [s if isinstance(s, Sample) else Sample(Path(s), None) for s in images]


def predict(
    model: EfficientNet | Run | Ensemble,
    images: Sequence[Sample | str | os.PathLike[str]],
    *,
    size: int | None = None,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities [N, K] (float64) for images (paths or samples), in order.

    ``model`` may also be an :class:`~leukemia.ensemble.Ensemble` or
    :class:`~leukemia.ensemble.TTA` (anything with ``predict_proba``).

    Under an MPI launcher with several ranks (see :mod:`leukemia.distributed`), every
    rank calls this with the same arguments: each predicts every size-th image and all
    get the whole result, in the original order."""
    from .distributed import world

    w = world()
    if w.size == 1:
        return _predict(model, images, size, batch_size, workers, progress)
    with w.guard():
        n = len(images)
        mine = np.arange(n)[w.rank :: w.size]
        part = images[mine] if isinstance(images, np.ndarray) else [images[i] for i in mine]
        local = _predict(model, part, size, batch_size, workers, progress and w.is_root)
        return w.gather_rows(mine, local, n)


def _predict(
    model: EfficientNet | Run | Ensemble,
    images: Sequence[Sample | str | os.PathLike[str]],
    size: int | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        return model.predict_proba(
            images, size=size, batch_size=batch_size, workers=workers, progress=progress
        )
    if isinstance(model, Run):
        size = size or model.size
        model = model.model
    size = size or model.default_size
    samples = _as_samples(images)
    if not samples:
        return np.zeros((0, model.num_classes), np.float64)
    loader = DataLoader(samples, eval_transform(size), batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    out = []
    try:
        from tqdm.auto import tqdm

        for x, _ in tqdm(
            loader,
            total=len(loader),
            desc="predict",
            disable=not progress,
            leave=False,
            unit="batch",
        ):
            out.append(softmax(model.forward(x, seed=0)))  # seed: leave its sequence
    finally:
        loader.close()
        model.train(was_training)
    return np.concatenate(out)


@dataclass
class Evaluation:
    """Metrics of one model on labelled images.

    Attributes:
        metrics: :func:`leukemia.metrics.classification_report` at image level.
        subjects: per subject: label, images, accuracy, mean probability of class 1,
            fraction of images called class 1, and the subject-level call by mean
            probability.
        subject_accuracy: fraction of subjects whose call is right.
        leaked_subjects: subjects that were also on the run's training side (excluded).
        probs, labels, samples: the raw results, in order.
    """

    metrics: dict[str, Any]
    subjects: list[dict[str, Any]]
    subject_accuracy: float
    class_names: tuple[str, ...]
    probs: np.ndarray
    labels: np.ndarray
    samples: list[Sample]
    leaked_subjects: list[str] = field(default_factory=list)
    description: str = ""
    leaky: bool = False
    intervals: dict[str, list[float]] = field(default_factory=dict)
    subject_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "metrics": self.metrics,
            "subject_accuracy": self.subject_accuracy,
            "subjects": self.subjects,
            "leaked_subjects": self.leaked_subjects,
            "leaky": self.leaky,
            "ci95_subject_bootstrap": self.intervals,
            "subject_level": self.subject_metrics,
        }

    def __str__(self) -> str:
        m = self.metrics
        lines = [f"Evaluation: {self.description}" if self.description else "Evaluation"]
        if self.leaky:
            lines.append(
                f"WARNING: LEAKY: {len(self.leaked_subjects)} subject(s) are also on the "
                "training side (image-level split); these scores are inflated."
            )
        elif self.leaked_subjects:
            lines.append(
                f"NOTE: {len(self.leaked_subjects)} subject(s) were on the training side and "
                f"are excluded: {', '.join(self.leaked_subjects)}"
            )
        lines.append(f"  images {m['n']}, subjects {len(self.subjects)}")
        keys = (
            "accuracy",
            "balanced_accuracy",
            "weighted_f1",
            "macro_f1",
            "roc_auc",
            "sensitivity",
            "specificity",
        )
        for k in keys:
            if k in m:
                ci = self.intervals.get(k)
                band = f"  (95 % CI {ci[0]:.4f}-{ci[1]:.4f}, subjects resampled)" if ci else ""
                lines.append(f"  {k:18s} {m[k]:.4f}{band}")
        for rule, scores in self.subject_metrics.items():
            text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            lines.append(f"  subject level, {rule.replace('_', ' ')}: {text}")
        if not self.subject_metrics:
            lines.append(f"  {'subject accuracy':18s} {self.subject_accuracy:.4f}")
        names = self.class_names
        cm = m["confusion_matrix"]
        width = max(6, *(len(n) for n in names)) + 2
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * width + "".join(f"{n:>{width}s}" for n in names))
        for i, row in enumerate(cm):
            lines.append("  " + f"{names[i]:>{width}s}" + "".join(f"{v:>{width}d}" for v in row))
        lines.append("  per subject:")
        lines.append("    subject   label  images  accuracy  mean p(all)  called all  call")
        for s in self.subjects:
            lines.append(
                f"    {s['subject']:8s}  {names[s['label']]:5s}  {s['images']:6d}  "
                f"{s['accuracy']:8.3f}  {s['mean_p1']:11.3f}  {s['fraction_called_1']:10.3f}  "
                f"{names[s['call']]}"
            )
        return "\n".join(lines)


def evaluate(
    model: EfficientNet | Run | Ensemble,
    samples: Sequence[Sample] | None = None,
    *,
    size: int | None = None,
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = False,
    allow_leak: bool = False,
    description: str = "",
    bootstrap: int = 1000,
) -> Evaluation:
    """Metrics on labelled ``samples`` (default: the run's held-out validation side).

    With a :class:`Run`, samples of subjects that were on the run's training side are
    leakage: they are excluded and listed (``allow_leak=True`` keeps them).
    Accuracy, weighted F1 and ROC AUC get 95 % intervals from ``bootstrap`` draws that
    resample subjects (0: none); with two classes the subject-level diagnosis (from the
    mean probability of a subject's cells, and from the fraction of its cells called
    blast, each called at 0.5) is scored too. An :class:`~leukemia.ensemble.Ensemble` or
    :class:`~leukemia.ensemble.TTA` needs ``samples`` and gets no leakage check (check
    its members' splits yourself).
    """
    leaked: list[str] = []
    leaky = False
    names: tuple[str, ...] = getattr(model, "class_names", None) or CLASS_NAMES
    if isinstance(model, Run):
        names = model.class_names
        train_subjects = model.training_subjects()
        if samples is None:
            samples = model.validation_samples()
            description = description or f"{model.run_dir}: held-out subjects of its split"
            if model.split is not None and model.split.get("leaky"):
                # the run was trained on a leaky split on purpose: report it as such
                allow_leak = True
        train_files = model.training_files()
        if not allow_leak and train_files:  # the very images it trained on, any layout
            seen = [s for s in samples if str(s.path.resolve()) in train_files]
            if seen:
                leaked = sorted({s.subject or s.path.name for s in seen})
                samples = [s for s in samples if str(s.path.resolve()) not in train_files]
        if allow_leak:
            leaked = sorted({s.subject for s in samples if s.subject in train_subjects})
            leaky = bool(leaked)
        elif train_subjects:
            leaked = sorted(
                set(leaked) | {s.subject for s in samples if s.subject in train_subjects}
            )
            samples = [s for s in samples if s.subject not in train_subjects]
    if samples is None:
        raise TypeError("evaluate(model, samples): give the samples to evaluate on")
    samples = [s for s in samples if s.label is not None]
    if not samples:
        raise ValueError(
            "no labelled images to evaluate on"
            + (" (every subject was on the training side)" if leaked else "")
        )
    probs = predict(
        model, samples, size=size, batch_size=batch_size, workers=workers, progress=progress
    )
    from .distributed import world

    w = world()
    with w.guard():  # with several ranks, rank 0 scores and the others receive the result
        result = (
            _score(probs, samples, names, leaked, description, leaky, bootstrap)
            if w.is_root
            else None
        )
        return w.bcast(result)


def _score(
    probs: np.ndarray,
    samples: Sequence[Sample],
    names: tuple[str, ...],
    leaked: list[str],
    description: str,
    leaky: bool,
    bootstrap: int,
) -> Evaluation:
    labels = np.array([s.label for s in samples], np.int64)
    if probs.shape[1] > len(names):
        names = tuple(str(i) for i in range(probs.shape[1]))
    metrics = classification_report(labels, probs, names)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.subject if s.subject is not None else f"<{s.path.name}>"].append(i)
    rows = []
    for subj in sorted(groups, key=_natural_key):
        idx = np.array(groups[subj])
        lab = int(np.bincount(labels[idx]).argmax())
        pred = probs[idx].argmax(1)
        mean = probs[idx].mean(0)
        rows.append(
            {
                "subject": subj,
                "label": lab,
                "images": int(idx.size),
                "accuracy": float(np.mean(pred == labels[idx])),
                "mean_p1": float(mean[1]) if mean.size > 1 else float("nan"),
                "fraction_called_1": float(np.mean(pred == 1)),
                "call": int(mean.argmax()),
            }
        )
    subject_accuracy = float(np.mean([r["call"] == r["label"] for r in rows]))
    groups = np.array([s.subject if s.subject is not None else str(s.path) for s in samples])
    has_subjects = all(s.subject is not None for s in samples)
    intervals, subject_metrics = subject_uncertainty(
        labels, probs, groups, bootstrap, subject_level=has_subjects
    )
    return Evaluation(
        metrics,
        rows,
        subject_accuracy,
        names,
        probs,
        labels,
        list(samples),
        leaked,
        description,
        leaky,
        intervals,
        subject_metrics,
    )


def _natural_key(text: str) -> tuple:
    import re

    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text))


def subject_uncertainty(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    subject_level: bool = True,
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """95 % intervals of accuracy, weighted F1 and (two classes) ROC AUC from ``n_boot``
    draws that resample the ``groups`` (subjects), and, with two classes and
    ``subject_level``, the subject-level scores of both calling rules ("mean_probability",
    "fraction_called"). A metric undefined on these samples is left out."""
    from . import metrics as M

    k = probs.shape[1]
    intervals: dict[str, list[float]] = {}
    if n_boot and len(set(groups.tolist())) >= 2:
        fns = {
            "accuracy": lambda y, p: M.accuracy(y, p.argmax(1)),
            "weighted_f1": lambda y, p: M.weighted_f1(y, p.argmax(1), k),
        }
        if k == 2:
            fns["roc_auc"] = lambda y, p: M.roc_auc(y, p[:, 1])
        for name, fn in fns.items():
            try:
                ci = M.bootstrap_ci(fn, labels, probs, groups=groups, n_boot=n_boot, seed=0)
            except ValueError:  # undefined on these samples (e.g. one class only)
                continue
            intervals[name] = [float(ci.low), float(ci.high)]
    subject: dict[str, dict[str, float]] = {}
    if k == 2 and subject_level:
        # a patient's call from all of their cells: the mean probability of blast, or the
        # fraction of cells called blast (each called at 0.5)
        for rule, key in (("mean", "mean_probability"), ("fraction", "fraction_called")):
            try:
                ss = M.subject_level(labels, probs[:, 1], groups, rule=rule)
            except ValueError:  # a subject with cells of both labels: no subject truth
                return intervals, {}
            subject[key] = {
                "accuracy": M.accuracy(ss.y_true, ss.pred),
                "weighted_f1": M.weighted_f1(ss.y_true, ss.pred, 2),
                "roc_auc": M.roc_auc(ss.y_true, ss.score),
            }
    return intervals, subject
