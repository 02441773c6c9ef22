"""The study's comparison: single models and ensembles, scored honestly (patient-wise),
beside what a leaky image-level split of the same data claims.

    from leukemia.compare import compare
    result = compare("out/compare")                 # synthetic C-NMC set by default
    print(result.table_markdown)

Protocol. The labelled images are split by subject three ways: a **test** side (20 % of
the subjects) that nothing is tuned on, a **validation** side (20 % of the rest) for
best-epoch selection and for fitting the weighted ensemble's weights, and the training
side. Each single model (B3 and V2-S, with the multi-attention and the linear head) is
trained with :func:`leukemia.fit` into ``OUT/runs/<name>`` (an existing finished run there
is loaded, not retrained), and scored on the test side: image-level metrics with 95 %
intervals from a bootstrap over **subjects**, subject-level accuracy (each patient called
from the mean blast probability of their cells), parameters, training time and inference
speed. Ensembles (soft, weighted, majority voting over the single models) are scored the
same way from the members' test probabilities. Then B3 + multi-attention is trained once
more on an image-level split of the same images and scored on its own (leaky) test side:
the gap between that row and the honest one is what subject leakage adds.

Writes ``table.md``, ``table.csv``, ``results.json``, ``roc.png``, ``confusion.png`` and
``reliability.png`` into OUT.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .data.datasets import CLASS_NAMES, Sample, load_dataset
from .data.splits import Split, image_split, patient_split
from .ensemble import Ensemble, fit_mixture_weights
from .evaluation import load_run, predict, subject_uncertainty
from .io.atomic import atomic_write

__all__ = ["MODELS", "ComparisonResult", "compare"]

MODELS: tuple[tuple[str, str, str], ...] = (
    ("B3 + multi-attention", "efficientnet_b3", "multi_attention"),
    ("V2-S + multi-attention", "efficientnet_v2_s", "multi_attention"),
    ("B3 + linear", "efficientnet_b3", "linear"),
    ("V2-S + linear", "efficientnet_v2_s", "linear"),
)
"""(row name, architecture, head) of the single models the study compared."""

_COLUMNS = (
    "model",
    "split",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "weighted_f1",
    "weighted_f1_ci",
    "roc_auc",
    "roc_auc_ci",
    "subject_accuracy",
    "parameters",
    "train_seconds",
    "infer_img_per_s",
)


@dataclass
class ComparisonResult:
    """Rows of the comparison table (dicts keyed as the CSV columns) and the files."""

    rows: list[dict[str, Any]]
    out: Path
    table_markdown: str
    files: list[Path] = field(default_factory=list)


def _slug(name: str) -> str:
    """Run-directory name of a row: "B3 + multi-attention" -> "b3-multi-attention"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _row(
    name: str,
    split: str,
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    pred = probs.argmax(1)
    precision, recall, f1, _ = M.precision_recall_f1(labels, pred, 2)
    intervals, subject = subject_uncertainty(labels, probs, groups, n_boot)
    missing = {"weighted_f1", "roc_auc"} - set(intervals)
    if missing or "mean_probability" not in subject:
        raise ValueError(
            f"{name}: {', '.join(sorted(missing)) or 'the subject-level diagnosis'} is "
            "undefined on the test side (one class only, or a subject with both labels)"
        )
    return {
        "model": name,
        "split": split,
        "accuracy": M.accuracy(labels, pred),
        "precision": float(precision[1]),
        "recall": float(recall[1]),
        "f1": float(f1[1]),
        "weighted_f1": M.weighted_f1(labels, pred, 2),
        "weighted_f1_ci": intervals["weighted_f1"],
        "roc_auc": M.roc_auc(labels, probs[:, 1]),
        "roc_auc_ci": intervals["roc_auc"],
        "subject_accuracy": subject["mean_probability"]["accuracy"],
        **extra,
    }


def _train_seconds(history: list[dict[str, Any]]) -> float:
    return float(sum(h.get("seconds", 0.0) for h in history))


def _three_way(samples: Sequence[Sample], seed: int) -> tuple[Split, Split]:
    """(train+val vs test, train vs val), all by subject."""
    outer = patient_split(samples, 0.2, seed)
    inner = patient_split(outer.train, 0.2, seed + 1)
    return outer, inner


def compare(
    out: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    models: Sequence[tuple[str, str, str]] = MODELS,
    epochs: int = 8,
    size: int = 48,
    batch_size: int = 32,
    subjects: int = 30,
    cells: int = 40,
    weights: str | None = None,
    leaky: bool = True,
    seed: int = 0,
    bootstrap: int = 1000,
    progress: bool = True,
    threads: int | None = None,
) -> ComparisonResult:
    """Train (or load) the study's single models and ensembles on ``data`` (default: a
    synthetic C-NMC set of ``subjects`` x ``cells`` images rendered into OUT/data), score
    them on held-out subjects and write the table and figures (see the module docstring).

    ``weights="imagenet"`` fine-tunes with ``last_block`` from ImageNet weights; without
    weights every layer trains from random initialisation (``policy="all"``).
    """
    from .data.synthetic import write_cnmc
    from .train import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = out / "data"
        if not (Path(data) / "training_data").is_dir():
            write_cnmc(data, subjects, cells, size, seed, overwrite=True)
    ds = load_dataset(data)
    labelled = ds.labelled()
    if sorted({s.label for s in labelled}) != [0, 1]:
        raise ValueError(f"{data}: the comparison needs two classes (hem 0, all 1)")
    outer, inner = _three_way(labelled, seed)
    test = outer.test
    options: dict[str, Any] = dict(
        size=size, epochs=epochs, batch_size=batch_size, seed=seed, threads=threads
    )
    if weights is None:
        options.update(policy="all", lr=1e-3, backbone_lr=1e-3, weight_decay=0.05, augment=False)
    else:
        options.update(policy="last_block", weights=weights)

    def train(
        arch: str,
        head: str,
        split_train: list[Sample],
        split_val: list[Sample],
        run_dir: Path,
    ) -> Any:
        last = run_dir / "last.ckpt"
        if last.is_file():  # an earlier comparison's run: finish or load it
            return Trainer(progress=progress).fit(resume=run_dir)
        return Trainer(progress=progress, arch=arch, head=head, **options).fit(
            split_train, split_val, out=run_dir, force=True
        )

    test_labels = np.array([s.label for s in test], np.int64)
    test_groups = np.array([s.subject for s in test])
    val_labels = np.array([s.label for s in inner.test], np.int64)
    rows: list[dict[str, Any]] = []
    test_probs: list[np.ndarray] = []
    val_probs: list[np.ndarray] = []
    times: list[float] = []
    runs: list[Any] = []
    for name, arch, head in models:
        result = train(arch, head, inner.train, inner.test, out / "runs" / _slug(name))
        run = load_run(result.run_dir)
        runs.append(run)
        t0 = time.perf_counter()
        p_test = predict(run, test, batch_size=2 * batch_size)
        infer = len(test) / max(time.perf_counter() - t0, 1e-9)
        p_val = predict(run, inner.test, batch_size=2 * batch_size)
        seconds = _train_seconds(result.history)
        times.append(seconds)
        test_probs.append(p_test)
        val_probs.append(p_val)
        rows.append(
            _row(
                name,
                "patient-wise",
                test_labels,
                p_test,
                test_groups,
                bootstrap,
                {
                    "parameters": run.model.num_parameters(),
                    "train_seconds": seconds,
                    "infer_img_per_s": infer,
                },
            )
        )
    plot_probs: list[np.ndarray] = list(test_probs)
    if len(models) > 1:
        n_params = sum(r["parameters"] for r in rows)
        speed = 1.0 / sum(1.0 / r["infer_img_per_s"] for r in rows)
        w = fit_mixture_weights(val_probs, val_labels)
        combos = {
            "Ensemble, soft voting": Ensemble(runs, "soft"),
            "Ensemble, weighted voting (fitted on validation)": Ensemble(runs, "weighted", w),
            "Ensemble, majority voting": Ensemble(runs, "majority"),
        }
        for name, ensemble in combos.items():
            probs = ensemble.combine(test_probs)
            plot_probs.append(probs)
            rows.append(
                _row(
                    name,
                    "patient-wise",
                    test_labels,
                    probs,
                    test_groups,
                    bootstrap,
                    {
                        "parameters": n_params,
                        "train_seconds": sum(times),
                        "infer_img_per_s": speed,
                        **({"weights": [float(v) for v in w]} if "weighted" in name else {}),
                    },
                )
            )
    if leaky:
        split = image_split(labelled, 0.2, seed)
        inner_leaky = image_split(split.train, 0.2, seed + 1)
        name, arch, head = models[0]
        result = train(
            arch,
            head,
            inner_leaky.train,
            inner_leaky.test,
            out / "runs" / (_slug(name) + "-image-split-LEAKY"),
        )
        run = load_run(result.run_dir)
        labels = np.array([s.label for s in split.test], np.int64)
        probs = predict(run, split.test, batch_size=2 * batch_size)
        # subjects are on both sides here: the bootstrap still resamples subjects
        groups = np.array([s.subject for s in split.test])
        rows.append(
            _row(
                name,
                "image-level (LEAKY)",
                labels,
                probs,
                groups,
                bootstrap,
                {
                    "parameters": run.model.num_parameters(),
                    "train_seconds": _train_seconds(result.history),
                    "infer_img_per_s": float("nan"),
                },
            )
        )
    table = _markdown(rows, ds, outer, test)
    files = _write(out, rows, table, test_labels, plot_probs)
    return ComparisonResult(rows, out, table, files)


def _fmt(v: Any, ci: list[float] | None = None) -> str:
    if isinstance(v, float):
        if np.isnan(v):
            return "-"
        text = f"{v:.3f}"
        return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text
    return str(v)


def _markdown(rows: list[dict[str, Any]], ds: Any, outer: Split, test: list[Sample]) -> str:
    head = (
        "| model | split | accuracy | precision (ALL) | recall (ALL) | F1 (ALL) | "
        "weighted F1 [95 % CI] | ROC AUC [95 % CI] | subject accuracy | parameters | "
        "training s | inference img/s |"
    )
    lines = [
        f"Data: {ds.root} ({len(ds.labelled())} labelled images, "
        f"{len({s.subject for s in ds.labelled()})} subjects). Test side: {len(test)} images "
        f"of {len({s.subject for s in test})} subjects nobody trained or tuned on. Intervals: "
        "bootstrap over subjects.",
        "",
        head,
        "|" + "---|" * 12,
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["split"],
                    _fmt(r["accuracy"]),
                    _fmt(r["precision"]),
                    _fmt(r["recall"]),
                    _fmt(r["f1"]),
                    _fmt(r["weighted_f1"], r["weighted_f1_ci"]),
                    _fmt(r["roc_auc"], r["roc_auc_ci"]),
                    _fmt(r["subject_accuracy"]),
                    f"{r['parameters']:,}",
                    f"{r['train_seconds']:.0f}",
                    _fmt(float(r["infer_img_per_s"])),
                ]
            )
            + " |"
        )
    if any(r["split"].startswith("image") for r in rows):
        lines += [
            "",
            "The image-level row puts cells of the same patients on both sides: its scores "
            "measure how well the model recognises patients, not blasts (LEAKY).",
        ]
    return "\n".join(lines) + "\n"


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    table: str,
    labels: np.ndarray,
    probs: list[np.ndarray],
) -> list[Path]:
    """The table (Markdown, CSV, JSON) and the figures; ``probs`` are the test-side
    probabilities of the patient-wise rows, in row order."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    files = []
    with atomic_write(out / "table.md", "w") as f:
        f.write(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    for r in rows:
        w.writerow(
            [f"{r[c][0]:.6f}-{r[c][1]:.6f}" if c.endswith("_ci") else r[c] for c in _COLUMNS]
        )
    with atomic_write(out / "table.csv", "w") as f:
        f.write(buf.getvalue())
    with atomic_write(out / "results.json", "w") as f:
        json.dump(rows, f, indent=2, allow_nan=True)
    files += [out / "table.md", out / "table.csv", out / "results.json"]

    # the single models and the ensembles share the test side; the leaky row does not
    honest = [(r["model"], p) for r, p in zip(rows, probs, strict=False)]

    def save(fig: Figure, name: str) -> None:
        data = io.BytesIO()
        fig.savefig(data, format="png")
        with atomic_write(out / name) as f:
            f.write(data.getvalue())
        files.append(out / name)

    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for n, p in honest:
        fpr, tpr, _ = M.roc_curve(labels, p[:, 1])
        ax.plot(fpr, tpr, label=f"{n} (AUC {M.roc_auc(labels, p[:, 1]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (HEM called ALL)")
    ax.set_ylabel("true positive rate (ALL found)")
    ax.set_title("ROC on held-out subjects")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, "roc.png")

    cols = min(4, len(honest))
    nrows = -(-len(honest) // cols)
    fig = Figure(figsize=(3.2 * cols, 3 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    for ax, (n, p) in zip(axes, honest, strict=False):
        cm = M.confusion_matrix(labels, p.argmax(1), 2)
        ax.imshow(cm, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center")
        ax.set_xticks([0, 1], CLASS_NAMES)
        ax.set_yticks([0, 1], CLASS_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(n, fontsize=8)
    for ax in axes[len(honest) :]:
        ax.axis("off")
    fig.tight_layout()
    save(fig, "confusion.png")

    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for n, p in honest:
        rd = M.reliability_diagram(labels, p[:, 1], n_bins=10)
        ok = rd.counts > 0
        ax.plot(
            rd.mean_predicted[ok], rd.observed_frequency[ok], "o-", label=f"{n} (ECE {rd.ece:.3f})"
        )
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("predicted probability of ALL")
    ax.set_ylabel("observed fraction ALL")
    ax.set_title("Reliability on held-out subjects")
    ax.legend(fontsize=7, loc="upper left")
    save(fig, "reliability.png")
    return files
