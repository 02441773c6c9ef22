"""Run directories: what a training run leaves behind, written atomically.

``RUN_DIR/``
    ``config.json``   the :class:`~leukemia.train.config.TrainConfig` and the versions
    ``split.json``    the samples on each side (paths relative to the data root, labels,
                      subjects, folds) and the subject ids per side, so that evaluation
                      can prove there is no leakage
    ``history.json``, ``history.csv``, ``curves.png``   per-epoch metrics
    ``last.ckpt``, ``best.ckpt``   checkpoints (:mod:`leukemia.train.checkpoint`)
    ``*.cache.f32``   spill files of the feature cache while training runs
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.datasets import Sample
from ..io.atomic import atomic_write

__all__ = [
    "ARTEFACTS",
    "RunDirError",
    "prepare_run_dir",
    "read_json",
    "read_split",
    "split_record",
    "write_history",
    "write_json",
]

ARTEFACTS = (
    "config.json",
    "split.json",
    "history.json",
    "history.csv",
    "curves.png",
    "last.ckpt",
    "best.ckpt",
    "train.cache.f32",
    "val.cache.f32",
    "evaluation.json",
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (not empty, unwritable, no run)."""


def prepare_run_dir(out: str | os.PathLike[str], resume: bool, force: bool) -> Path:
    """Check (and create) ``out`` for a new run, or for resuming one.

    A new run refuses a directory that already holds files unless ``force``, which
    removes the artefacts of an earlier run (only those, see :data:`ARTEFACTS`).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if resume:
        if not (path / "config.json").is_file():
            raise RunDirError(f"{path} holds no run to resume (no config.json)")
        if not (path / "last.ckpt").is_file():
            raise RunDirError(
                f"{path} holds no checkpoint to resume from (the run stopped before its "
                "first checkpoint); start it again: the same command without resume"
            )
    else:
        if path.is_dir() and _unfinished_start(path):
            force = True  # a run that failed before its first checkpoint: nothing to keep
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {path} is not empty; resume the run in it, choose another "
                    "directory, or pass force to replace it"
                )
            for name in ARTEFACTS:
                try:
                    (path / name).unlink()
                except FileNotFoundError:
                    pass
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {path}: {exc.strerror}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise RunDirError(f"run directory {path} is not writable: {exc.strerror}") from None
    return path


def _unfinished_start(path: Path) -> bool:
    """Only a run's own files and no checkpoint: a start that failed early."""
    names = [p.name for p in path.iterdir()]
    return (
        bool(names)
        and "last.ckpt" not in names
        and all(
            n in ARTEFACTS or (n.startswith(".") and (n.endswith(".tmp") or n == ".lock"))
            for n in names
        )
    )


class _RunLock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


def lock_run_dir(path: Path) -> _RunLock:
    """Hold ``RUN_DIR/.lock`` for the whole run (released when the process ends, however
    it ends), so that two processes never train into one directory; then remove
    temporaries that killed earlier writers of the run's files left behind."""
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirError(
            f"another process is training in {path}; wait for it, stop it, or choose "
            "another run directory"
        ) from None
    for p in path.glob(".*.tmp"):
        if any(p.name.startswith(f".{name}.") for name in ARTEFACTS):
            try:
                p.unlink()
            except OSError:
                pass
    return _RunLock(fd)


def write_json(path: Path, data: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=True)
        f.write("\n")


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from None


def _sample_row(s: Sample, root: Path | None) -> list[Any]:
    p = s.path
    if root is not None:
        try:
            p = p.relative_to(root)
        except ValueError:
            p = s.path.resolve()
    return [str(p), s.label, s.subject, s.fold]


def split_record(
    train: Sequence[Sample],
    val: Sequence[Sample],
    root: Path | None,
    kind: str,
    leaky: bool,
    description: str,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The JSON form of a split (see the module docstring)."""

    def subjects(part: Sequence[Sample]) -> list[str]:
        return sorted({s.subject for s in part if s.subject is not None})

    shared = sorted(set(subjects(train)) & set(subjects(val)))
    return {
        "kind": kind,
        "leaky": bool(leaky or shared),
        "description": description,
        "data_root": None if root is None else str(root.resolve()),
        "class_names": list(class_names),
        "subjects": {"train": subjects(train), "val": subjects(val), "shared": shared},
        "columns": ["path", "label", "subject", "fold"],
        "train": [_sample_row(s, root) for s in train],
        "val": [_sample_row(s, root) for s in val],
    }


def read_split(
    record: dict[str, Any], data_root: str | os.PathLike[str] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """Samples of both sides of a :func:`split_record`, with paths under ``data_root``
    (default: the recorded one)."""
    root = Path(data_root) if data_root is not None else None
    if root is None and record.get("data_root"):
        root = Path(record["data_root"])

    def side(rows: list[list[Any]]) -> list[Sample]:
        out = []
        for path, label, subject, fold in rows:
            p = Path(path)
            if not p.is_absolute() and root is not None:
                p = root / p
            out.append(Sample(p, label, subject, fold))
        return out

    return side(record["train"]), side(record["val"])


_TIMING = ("seconds", "train_img_per_s", "load_wait_s")


def write_history(run_dir: Path, history: list[dict[str, Any]], title: str) -> None:
    """history.json, history.csv and curves.png (losses; accuracy, weighted F1, AUC)."""
    write_json(run_dir / "history.json", history)
    if not history:
        return
    columns = list(history[0])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in history:
        w.writerow([_csv_cell(row.get(c)) for c in columns])
    with atomic_write(run_dir / "history.csv", "w") as f:
        f.write(buf.getvalue())
    with atomic_write(run_dir / "curves.png") as f:
        f.write(plot_history(history, title))


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def plot_history(history: list[dict[str, Any]], title: str) -> bytes:
    """The training curves as PNG bytes (matplotlib's Agg canvas; pyplot's global state
    and the notebook's backend are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy (log scale)")
    ax1.set_yscale("log")
    ax1.set_title("loss")
    ax1.legend()
    for key, label in (
        ("train_accuracy", "train accuracy"),
        ("val_accuracy", "val accuracy"),
        ("val_weighted_f1", "val weighted F1"),
        ("val_roc_auc", "val ROC AUC"),
    ):
        ax2.plot(epochs, [h[key] for h in history], "o-", label=label)
    ax2.set_ylim(0.0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.set_title("metrics (validation subjects held out)")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if len(epochs) < 20:
            ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
