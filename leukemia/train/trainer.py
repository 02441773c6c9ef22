"""The Trainer: fine-tune an EfficientNet on cell images with every hot path in C.

One call in Jupyter::

    import leukemia
    result = leukemia.fit("C-NMC_Leukemia", out="runs/b3", arch="b3", epochs=10)
    result.history[-1]["val_weighted_f1"]

What a step does: a loader thread decodes and augments the next batches while the C
core runs forward, loss (softmax cross-entropy with class weights and label smoothing),
backward and the AdamW step; the cosine schedule with warm-up sets the learning rates
(one for the head, one for the trainable backbone layers). After each epoch the
validation side is evaluated in inference semantics, the history is written, and the
checkpoints are saved atomically. Everything random is a function of the seed, the
epoch and the step, so an interrupted run resumed from its checkpoint ends bit-identical
to an uninterrupted one (same seed and thread count).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import get_num_threads, set_num_threads
from ..data.datasets import CLASS_NAMES, Dataset, Sample, load_dataset
from ..data.loader import DataLoader
from ..data.splits import Split, make_split
from ..data.transforms import eval_transform, train_transform
from ..distributed import DataParallel, World, shard, world
from ..evaluation import softmax
from ..functional.loss import cross_entropy_backward, cross_entropy_forward
from ..metrics import classification_report
from ..models.efficientnet import EfficientNet
from ..optim import AdamW, CosineWarmup
from .cache import FeatureCache, parse_bytes
from .checkpoint import Checkpoint, CheckpointMismatch, load_checkpoint, save_checkpoint
from .config import RESUME_MAY_CHANGE, TrainConfig
from .rundir import (
    lock_run_dir,
    prepare_run_dir,
    read_json,
    read_split,
    split_record,
    write_history,
    write_json,
)

__all__ = [
    "DEFAULT_LOADER_WORKERS",
    "FitResult",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "fit",
]

DEFAULT_LOADER_WORKERS = 1
"""Loader threads on machines with up to 4 CPUs when the config leaves it open: measured
on 2 cores (README, "Loader and core threads"), one thread decoding ahead of the core is
up to 10 % faster than decoding between steps and never slower beyond noise, while a
core with one thread fewer loses 25-30 %."""


def default_loader_workers(cpus: int | None = None) -> int:
    """:data:`DEFAULT_LOADER_WORKERS` up to 4 CPUs, then a quarter of them (at most 4):
    decoding a 450 px BMP into an augmented 300 px tensor takes ~15 ms of one core, so
    more cores train faster than one thread can feed them. ``cpus``: the CPUs this
    process may use (default: all; a rank of a data-parallel run gets its share)."""
    cpus = cpus or os.cpu_count() or 1
    return DEFAULT_LOADER_WORKERS if cpus <= 4 else min(4, cpus // 4)


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, unusable data); the message says where and what
    is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary after saving ``last.ckpt``.

    Attributes:
        result: the :class:`FitResult` so far.
    """

    def __init__(self, message: str, result: FitResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        model: the model with the best validation weighted F1 (``best.ckpt``); the last
            epoch's weights are in ``last.ckpt``.
        history: one dict per epoch (see README for the columns).
        run_dir: the run directory.
        best_epoch: epoch (1-based) of the best model, 0 if none finished.
        best_score: its validation weighted F1.
        stopped_early: early stopping ended the run.
        config: the configuration used.
    """

    model: EfficientNet
    history: list[dict[str, Any]]
    run_dir: Path
    best_epoch: int
    best_score: float
    stopped_early: bool
    config: TrainConfig
    timing: dict[str, float] = field(default_factory=dict)


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Dropout / stochastic-depth seed of a global step (splitmix64 of seed and step); the
    ranks of a data-parallel run mix in their rank, so that their masks differ (rank 0
    draws what a single process draws)."""
    z = seed * 0x9E3779B97F4A7C15 + (step + 1) * 0xBF58476D1CE4E5B9 + rank * 0xD1B54A32D192ED03
    z %= 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


@dataclass
class _Data:
    train: list[Sample]
    val: list[Sample]
    root: Path | None
    kind: str
    leaky: bool
    description: str
    class_names: tuple[str, ...]


class Trainer:
    """Fine-tunes one model as :class:`TrainConfig` describes.

    Args:
        config: a TrainConfig; keyword arguments override its fields (or build one).
        progress: tqdm progress bars (terminal or Jupyter) and a line per epoch.
        callback: called as ``callback("step", info)`` after every step (info: epoch,
            step, global_step, loss) and ``callback("epoch", row)`` after every epoch
            with its history row; it may call :meth:`stop`.

    Example::

        trainer = Trainer(arch="v2s", head="multi_attention", policy="last_block",
                          weights="imagenet", epochs=20, batch_size=16)
        result = trainer.fit(split, out="runs/v2s")   # split: leukemia.data.Split
    """

    def __init__(
        self,
        config: TrainConfig | None = None,
        *,
        progress: bool = True,
        callback: Callable[[str, dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> None:
        base = config if config is not None else TrainConfig()
        self.config = base.replace(**options) if options else base
        # What the caller chose; resuming a run checks only these against config.json.
        self._given = set(options) | (set(base.to_dict()) if config is not None else set())
        self.progress = bool(progress)
        self.callback = callback
        self._stop = False
        self._agreed_stop = False
        self._world: World = World()  # fit() finds the real one

    # ------------------------------------------------------------------ data
    def _data(self, train: Any, val: Any, cfg: TrainConfig) -> _Data:
        names: tuple[str, ...] = CLASS_NAMES
        root: Path | None = None
        if isinstance(train, (str, Path)):
            train = load_dataset(train)
        if isinstance(train, Dataset):
            if val is not None:
                raise TypeError("give val only with a list of training samples, not a Dataset")
            names, root = tuple(train.class_names), Path(train.root)
            labelled = train.labelled()
            if not labelled:
                raise TrainingError(f"{train.root} holds no labelled images")
            policy = cfg.split
            if policy == "patient" and any(s.subject is None for s in labelled):
                raise TrainingError(
                    f"{train.root} has no subject ids, so no patient-wise split can be made; "
                    "pass split='image' (leaky) or give train and val sample lists"
                )
            train = make_split(labelled, policy, cfg.val_fraction, cfg.seed)
        if isinstance(train, Split):
            if val is not None:
                raise TypeError("give val only with a list of training samples, not a Split")
            data = _Data(
                list(train.train),
                list(train.test),
                root,
                train.kind,
                train.leaky,
                train.description,
                names,
            )
        else:
            if val is None:
                raise TypeError(
                    "fit(train, val): with a list of training samples give the validation "
                    "samples too (or pass a Split, a Dataset or a data folder)"
                )
            data = _Data(list(train), list(val), root, "given", False, "given by the caller", names)
        if data.root is None:
            data.root = _common_root([s.path for s in data.train + data.val])
        return data

    def _check_data(self, data: _Data, cfg: TrainConfig, quiet: bool = False) -> int:
        for side, samples in (("training", data.train), ("validation", data.val)):
            if not samples:
                raise TrainingError(f"the {side} side holds no images")
            unlabelled = [s for s in samples if s.label is None]
            if unlabelled:
                raise TrainingError(
                    f"the {side} side holds {len(unlabelled)} unlabelled images, e.g. "
                    f"{unlabelled[0].path}"
                )
        k = max(len(data.class_names), 1 + max(s.label for s in data.train + data.val))
        names = tuple(data.class_names) + tuple(str(i) for i in range(len(data.class_names), k))
        data.class_names = names
        counts = np.bincount([s.label for s in data.train], minlength=k)
        missing = [
            data.class_names[c] if c < len(data.class_names) else str(c)
            for c in np.flatnonzero(counts == 0)
        ]
        if missing:
            raise TrainingError(
                f"class {', '.join(missing)} has no image on the training side "
                f"({len(data.train)} images); a model cannot learn a class it never sees"
            )
        if cfg.batch_size > len(data.train):
            raise TrainingError(
                f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training "
                "images; lower it"
            )
        if (data.leaky or data.kind == "image-level") and not quiet:
            self._warn(
                "WARNING: image-level split: the same subjects are on both sides, so "
                "validation scores are inflated (LEAKY)."
            )
        return k

    # ------------------------------------------------------------- plumbing
    def _say(self, text: str) -> None:
        if self._show:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def _warn(self, text: str) -> None:
        """Shown even without progress output (stderr), by rank 0 of a data-parallel run."""
        from tqdm.auto import tqdm

        if self._world.is_root:
            tqdm.write(text, file=sys.stderr)

    @property
    def _show(self) -> bool:
        """Progress output: asked for, and this is rank 0."""
        return self.progress and self._world.is_root

    def _stopping(self) -> bool:
        """Stop was asked: here (one process), or on some rank at the last agreement."""
        return self._stop if self._world.size == 1 else self._agreed_stop

    def _agree_stop(self) -> bool:
        """Every rank learns whether any was asked to stop (Ctrl-C reaches the ranks at
        different moments; they must stop at the same step)."""
        self._agreed_stop = any(self._world.agree(self._stop))
        return self._agreed_stop

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop:  # second Ctrl-C: stop now (the checkpoints on disk are whole)
            raise KeyboardInterrupt
        self._stop = True
        self._warn("Ctrl-C: stopping after this step and saving (press again to abort)")

    def stop(self) -> None:
        """Ask a running :meth:`fit` (e.g. in another thread) to stop at the next step and
        save, as Ctrl-C does."""
        self._stop = True

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train: Any = None,
        val: Sequence[Sample] | None = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        out: str | Path | None = None,
        resume: str | Path | None = None,
        force: bool = False,
    ) -> FitResult:
        """Train, validating after each epoch, and return the best model.

        Args:
            train: a data folder, a :class:`~leukemia.data.Dataset` (split patient-wise
                with ``val_fraction`` of the images held out), a
                :class:`~leukemia.data.Split`, or a list of training samples (then give
                ``val``). May be None with ``resume``: the recorded split is used.
            val: validation samples, with a list for ``train``.
            epochs, batch_size: override the config.
            out: run directory (default ``runs/<date>-<arch>-<head>``); it must be empty
                or missing unless ``force``.
            resume: a run directory to continue from its ``last.ckpt``.
            force: replace an earlier run's files in ``out``.

        Raises:
            TrainingError: unusable data or a NaN loss (``last.ckpt`` stays the last good
                state).
            TrainingInterrupted: Ctrl-C (a KeyboardInterrupt); ``last.ckpt`` holds the last
                finished step, so ``fit(resume=...)`` continues exactly.
            RankFailed: in a data-parallel run, another rank raised (named in the message);
                the rank that raised gets its own exception.

        Under an MPI launcher (``mpiexec -n N``, ``srun``) every rank calls ``fit`` with
        the same arguments; ``batch_size`` is the global batch, split evenly over the
        ranks (see README, "Data-parallel training over MPI").
        """
        changes = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v}
        cfg = self.config.replace(**changes) if changes else self.config
        given = self._given | set(changes)
        self._world = w = world()
        self._agreed_stop = False
        # Rank 0 alone reads and writes the run directory and scans the data; the others
        # get what it found. An error on any rank reaches all of them (World.guard).
        with w.guard():
            prepared = (
                self._prepare(cfg, given, train, val, out, resume, force) if w.is_root else None
            )
            cfg, data, num_classes, run_dir, ckpt = w.bcast(prepared)
            self.config = cfg
            lock = lock_run_dir(run_dir) if w.is_root else None  # one run per directory
            old_threads = get_num_threads()
            if cfg.threads is not None:
                set_num_threads(cfg.threads)
            handler_installed = False
            self._stop = False
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGINT, self._on_sigint)
                handler_installed = True
            try:
                try:
                    result = self._fit(cfg, data, num_classes, run_dir, ckpt)
                except TrainingInterrupted:
                    w.agree()  # rank 0 saved: the others learn whether that failed
                    raise
                w.agree()
                return result
            finally:
                if handler_installed:
                    signal.signal(
                        signal.SIGINT, previous if previous is not None else signal.SIG_DFL
                    )
                if cfg.threads is not None:
                    set_num_threads(old_threads)
                if lock is not None:
                    lock.close()

    def _prepare(
        self,
        cfg: TrainConfig,
        given: set[str],
        train: Any,
        val: Sequence[Sample] | None,
        out: str | Path | None,
        resume: str | Path | None,
        force: bool,
    ) -> tuple[TrainConfig, _Data, int, Path, Checkpoint | None]:
        """The configuration, data, class count, run directory and checkpoint of a new or
        resumed run, checked before anything is written."""
        ckpt: Checkpoint | None = None
        if resume is not None:
            run_dir = prepare_run_dir(resume, resume=True, force=False)
            saved = TrainConfig.from_dict(read_json(run_dir / "config.json")["config"])
            _check_resume_config(saved, cfg, given)
            cfg = saved.replace(**{k: getattr(cfg, k) for k in RESUME_MAY_CHANGE & given})
            _check_world(cfg, self._world)
            record = read_json(run_dir / "split.json")
            if train is None:
                tr, va = read_split(record)
                data = _Data(
                    tr,
                    va,
                    Path(record["data_root"]) if record["data_root"] else None,
                    record["kind"],
                    record["leaky"],
                    record["description"],
                    tuple(record["class_names"]),
                )
            else:
                data = self._data(train, val, cfg)
                _check_same_split(record, data)
            ckpt = load_checkpoint(run_dir / "last.ckpt")
            _check_checkpoint_config(ckpt, saved, run_dir)
        else:
            if train is None:
                raise TypeError("fit() needs training data (or resume=RUN_DIR)")
            _check_world(cfg, self._world)
            data = self._data(train, val, cfg)
            self._check_data(data, cfg)  # before anything is written
            run_dir = prepare_run_dir(out or _default_run_dir(cfg), resume=False, force=force)
        num_classes = self._check_data(data, cfg, quiet=True)
        return cfg, data, num_classes, run_dir, ckpt

    def _build(self, cfg: TrainConfig, num_classes: int, resuming: bool) -> EfficientNet:
        # a resumed run's weights all come from last.ckpt: the original file is not needed;
        # in a data-parallel run rank 0 alone reads (or downloads) it and broadcasts
        weights = None if resuming or not self._world.is_root else cfg.weights
        if weights == "imagenet":
            from ..models.pretrained import imagenet_weights

            weights = str(imagenet_weights(cfg.arch, progress=self.progress))
        return EfficientNet(
            cfg.arch,
            num_classes,
            weights=weights,
            strict=None,
            seed=cfg.seed,
            dropout=cfg.dropout,
            stochastic_depth_prob=cfg.stochastic_depth,
            head=cfg.head,
            policy=cfg.policy,
        )

    def _fit(
        self,
        cfg: TrainConfig,
        data: _Data,
        num_classes: int,
        run_dir: Path,
        ckpt: Checkpoint | None,
    ) -> FitResult:
        w = self._world
        model = self._build(cfg, num_classes, resuming=ckpt is not None)
        size = cfg.size or model.default_size
        local_batch = cfg.batch_size // w.size
        head_prefix = "classifier." if cfg.head == "linear" else "head."
        backbone_lr = cfg.lr / 10 if cfg.backbone_lr is None else cfg.backbone_lr
        opt = AdamW(
            model,
            lr=backbone_lr,
            weight_decay=cfg.weight_decay,
            groups=[{"prefix": head_prefix, "lr": cfg.lr}],
            exclude_norm_and_bias_from_decay=True,
            max_grad_norm=cfg.max_grad_norm,
        )
        steps_per_epoch = len(data.train) // cfg.batch_size
        total = cfg.epochs * steps_per_epoch
        sched = CosineWarmup(
            opt, warmup_steps=round(cfg.warmup * total), total_steps=total, min_lr=cfg.min_lr
        )
        labels = np.array([s.label for s in data.train], np.int64)
        class_weight = None
        if cfg.class_weights == "balanced":
            counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
            class_weight = (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
        elif cfg.class_weights is not None:
            if len(cfg.class_weights) != num_classes:
                raise ValueError(
                    f"class_weights has {len(cfg.class_weights)} entries for {num_classes} classes"
                )
            class_weight = np.array(cfg.class_weights, np.float32)

        state: dict[str, Any] = {
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "best_score": -math.inf,
            "best_epoch": 0,
            "bad_epochs": 0,
            "stopped_early": False,
            "partial": {"loss_sum": 0.0, "correct": 0, "seen": 0},
        }
        history: list[dict[str, Any]] = []
        if ckpt is not None:
            ckpt.check_model(model.arch, model.head, model.num_classes)
            model.load_state_dict(ckpt.model, strict=True)
            if ckpt.optimizer is None:
                raise ValueError(f"{ckpt.path} holds no optimizer state to resume from")
            opt.load_state_dict(ckpt.optimizer)
            sched.load_state_dict(ckpt.meta["scheduler"])
            state.update(ckpt.meta["trainer"])
            history = list(ckpt.meta["history"])
            self._say(
                f"Resuming {run_dir} at epoch {state['epoch'] + 1}, step "
                f"{state['step_in_epoch']} (global step {state['global_step']})"
                + (f" on {w.size} ranks" if w.size > 1 else "")
            )
        elif w.is_root:
            import leukemia

            if cfg.weights is None and model.policy != "all":
                self._warn(
                    f"WARNING: no pretrained weights, yet policy {model.policy!r} freezes "
                    "layers: they keep their random initialisation, which is not transfer "
                    "learning. Use weights='imagenet' (--weights imagenet) or policy='all'."
                )
            write_json(
                run_dir / "config.json",
                {
                    "config": cfg.to_dict(),
                    "leukemia": leukemia.__version__,
                    "core": leukemia.build_info(),
                    "model": {
                        "arch": model.arch,
                        "head": model.head,
                        "num_classes": model.num_classes,
                        "policy": model.policy,
                        "size": size,
                        "parameters": model.num_parameters(),
                        "trainable": model.num_parameters(trainable=True),
                    },
                    "world": {"ranks": w.size, "threads_per_rank": get_num_threads()},
                },
            )
            write_json(
                run_dir / "split.json",
                split_record(
                    data.train,
                    data.val,
                    data.root,
                    data.kind,
                    data.leaky,
                    data.description,
                    data.class_names,
                ),
            )

        self._dp = DataParallel(model, w) if w.size > 1 else None
        if self._dp is not None:
            self._dp.broadcast()  # the replicas start identical, whatever each rank read
            self._say(
                f"Data-parallel over {w.size} ranks: {local_batch} images per rank and step, "
                f"{self._dp.gradient_bytes / 2**20:.1f} MiB of gradients averaged per step"
            )
        workers = cfg.loader_workers
        if workers is None:  # a rank's share of the machine
            workers = default_loader_workers(max(1, (os.cpu_count() or 1) // w.local_size))
        self._workers = workers
        self._timing_lock = threading.Lock()
        train_tf = train_transform(size) if cfg.augment else eval_transform(size)
        train_loader = DataLoader(
            data.train,
            train_tf,
            local_batch,
            shuffle=True,
            seed=cfg.seed,
            num_workers=0,
            drop_last=True,
        )
        eval_bs = cfg.eval_batch_size or 2 * local_batch  # per rank
        val_loader = DataLoader(data.val, eval_transform(size), eval_bs, num_workers=0)

        prefix_empty = model.features_shape(size, size) == (3, size, size)
        use_cache = cfg.cache is True or (cfg.cache == "auto" and not cfg.augment)
        budget = parse_bytes(cfg.cache_memory) // w.local_size  # the machine's, shared
        fshape = model.features_shape(size, size)
        # Validation images are never augmented: their frozen-prefix output is cached
        # whenever there is a prefix (and the cache is not switched off).
        use_val_cache = cfg.cache is not False and not prefix_empty
        train_budget = budget // 2 if use_val_cache else budget
        train_cache = (
            FeatureCache(len(data.train), fshape, train_budget, _spill(run_dir, "train", w))
            if use_cache
            else None
        )
        val_cache = (
            FeatureCache(len(data.val), fshape, budget - train_budget, _spill(run_dir, "val", w))
            if use_val_cache
            else None
        )
        title = (
            f"{model.arch} + {model.head} head, policy {model.policy}, {size}px, {data.description}"
        )
        timing = {"load_wait_s": 0.0, "load_work_s": 0.0, "compute_s": 0.0, "images": 0}
        pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="leukemia-loader") if workers else None
        )
        try:
            while state["epoch"] < cfg.epochs and not state["stopped_early"]:
                epoch = state["epoch"]
                t0 = time.perf_counter()
                wait0 = timing["load_wait_s"]
                ok = self._train_epoch(
                    model,
                    opt,
                    sched,
                    train_loader,
                    train_cache,
                    pool,
                    state,
                    cfg,
                    class_weight,
                    steps_per_epoch,
                    timing,
                    run_dir,
                    history,
                )
                if not ok:  # interrupted: last.ckpt holds the last finished step
                    result = self._result(model, history, run_dir, state, cfg, timing)
                    raise TrainingInterrupted(
                        f"training stopped at epoch {epoch + 1}, step "
                        f"{state['step_in_epoch']} of {steps_per_epoch}; saved "
                        f"{run_dir / 'last.ckpt'}; continue with fit(resume={str(run_dir)!r})"
                        " or `leukemia train ... --resume`",
                        result,
                    )
                train_seconds = time.perf_counter() - t0
                p = state["partial"]
                if self._dp is not None:
                    self._dp.average_running_stats()
                    if not self._dp.parameters_agree():  # a bug, not rounding: fail loudly
                        raise TrainingError(
                            f"the ranks' parameters differ after epoch {epoch + 1}; "
                            "something changed the model on some ranks only"
                        )
                val = self._validate(model, val_loader, val_cache, pool, data.class_names, epoch)
                if val is None:  # Ctrl-C during validation: save the finished epoch's steps
                    self._save(run_dir / "last.ckpt", model, opt, sched, state, history, cfg)
                    raise TrainingInterrupted(
                        f"training stopped during the validation of epoch {epoch + 1}; saved "
                        f"{run_dir / 'last.ckpt'} (validation reruns on resume); continue with "
                        f"fit(resume={str(run_dir)!r}) or `leukemia train ... --resume`",
                        self._result(model, history, run_dir, state, cfg, timing),
                    )
                row = {
                    "epoch": epoch + 1,
                    "lr": float(opt.param_groups[0]["lr"]),
                    "train_loss": p["loss_sum"] / max(p["seen"], 1),
                    "train_accuracy": p["correct"] / max(p["seen"], 1),
                    **val,
                    "seconds": time.perf_counter() - t0,
                    "train_img_per_s": p["seen"] / max(train_seconds, 1e-9),
                    "load_wait_s": timing["load_wait_s"] - wait0,
                }
                history.append(row)
                state["epoch"] = epoch + 1
                state["step_in_epoch"] = 0
                state["partial"] = {"loss_sum": 0.0, "correct": 0, "seen": 0}
                score = row["val_weighted_f1"]
                improved = score > state["best_score"]
                if improved:
                    state["best_score"], state["best_epoch"], state["bad_epochs"] = (
                        score,
                        epoch + 1,
                        0,
                    )
                else:
                    state["bad_epochs"] += 1
                    if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                        state["stopped_early"] = True
                # history first: a kill between the writes leaves it ahead of last.ckpt,
                # and the resumed epoch rewrites it
                self._write_history(run_dir, history, title)
                if improved:
                    self._save(run_dir / "best.ckpt", model, opt, sched, state, history, cfg)
                self._save(run_dir / "last.ckpt", model, opt, sched, state, history, cfg)
                self._say(
                    f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} acc "
                    f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.4f} acc "
                    f"{row['val_accuracy']:.3f} wF1 {row['val_weighted_f1']:.3f} AUC "
                    f"{row['val_roc_auc']:.3f}{'  *best*' if improved else ''} | "
                    f"{row['train_img_per_s']:.1f} img/s"
                )
                if self.callback is not None:
                    self.callback("epoch", dict(row))
                if self._dp is not None:
                    self._agree_stop()  # a stop asked for in the callback: every rank
                if state["stopped_early"]:
                    self._say(
                        f"early stop: no better validation weighted F1 for {cfg.patience} "
                        f"epochs (best {state['best_score']:.4f} at epoch {state['best_epoch']})"
                    )
                if self._stopping() and state["epoch"] < cfg.epochs and not state["stopped_early"]:
                    # Ctrl-C (or stop()) during the epoch's last step or validation
                    raise TrainingInterrupted(
                        f"training stopped after epoch {epoch + 1}; saved "
                        f"{run_dir / 'last.ckpt'}; continue with fit(resume={str(run_dir)!r})"
                        " or `leukemia train ... --resume`",
                        self._result(model, history, run_dir, state, cfg, timing),
                    )
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            for c in (train_cache, val_cache):
                if c is not None:
                    c.close()
        if history:  # also after a kill between the history and checkpoint writes
            self._write_history(run_dir, history, title)
        if state["best_epoch"]:
            best = load_checkpoint(run_dir / "best.ckpt").model if w.is_root else None
            model.load_state_dict(w.bcast(best), strict=True)
        model.eval()
        return self._result(model, history, run_dir, state, cfg, timing)

    @staticmethod
    def _result(
        model: EfficientNet,
        history: list[dict[str, Any]],
        run_dir: Path,
        state: dict[str, Any],
        cfg: TrainConfig,
        timing: dict[str, float],
    ) -> FitResult:
        return FitResult(
            model,
            history,
            run_dir,
            int(state["best_epoch"]),
            float(state["best_score"]) if state["best_epoch"] else float("nan"),
            bool(state["stopped_early"]),
            cfg,
            dict(timing),
        )

    def _save(
        self,
        path: Path,
        model: EfficientNet,
        opt: AdamW,
        sched: CosineWarmup,
        state: dict[str, Any],
        history: list[dict[str, Any]],
        cfg: TrainConfig,
    ) -> None:
        if not self._world.is_root:
            return
        extra = {"config": cfg.to_dict(), "ranks": self._world.size}
        try:
            save_checkpoint(path, model, opt, sched, state, history, extra)
        except OSError as exc:
            raise TrainingError(
                f"could not write {path}: {exc.strerror or exc}; the previous checkpoint "
                "there is unchanged"
            ) from exc

    def _write_history(self, run_dir: Path, history: list[dict[str, Any]], title: str) -> None:
        if not self._world.is_root:
            return
        try:
            write_history(run_dir, history, title)
        except OSError as exc:
            raise TrainingError(
                f"could not write the history in {run_dir}: {exc.strerror or exc}; the files "
                "there are unchanged"
            ) from exc

    # --------------------------------------------------------------- epochs
    def _batches(
        self,
        loader: DataLoader,
        order: np.ndarray,
        batch: int,
        start: int,
        steps: int,
        epoch: int,
        need: Callable[[np.ndarray], bool],
        pool: ThreadPoolExecutor | None,
        timing: dict[str, float],
    ) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]]:
        """(indices, (images, labels) or None where ``need`` says the images are not
        needed), loading up to ``2 x workers`` batches ahead in the pool."""

        def load(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t = time.perf_counter()
            out = loader.load_batch(idx, epoch)
            with self._timing_lock:
                timing["load_work_s"] += time.perf_counter() - t
            return out

        ahead = 2 * self._workers if pool is not None else 0
        pending: deque[tuple[np.ndarray, Future | None]] = deque()
        todo = iter(range(start, steps))

        def submit() -> bool:
            s = next(todo, None)
            if s is None:
                return False
            idx = order[s * batch : (s + 1) * batch]
            fut = pool.submit(load, idx) if (pool is not None and need(idx)) else None
            pending.append((idx, fut))
            return True

        try:
            while len(pending) <= ahead and submit():
                pass
            while pending:
                idx, fut = pending.popleft()
                t = time.perf_counter()
                if fut is not None:
                    item = fut.result()
                elif need(idx):
                    item = load(idx)
                else:
                    item = None
                timing["load_wait_s"] += time.perf_counter() - t
                submit()
                yield idx, item
        finally:
            for _, fut in pending:
                if fut is not None:
                    fut.cancel()

    def _train_epoch(
        self,
        model: EfficientNet,
        opt: AdamW,
        sched: CosineWarmup,
        loader: DataLoader,
        cache: FeatureCache | None,
        pool: ThreadPoolExecutor | None,
        state: dict[str, Any],
        cfg: TrainConfig,
        class_weight: np.ndarray | None,
        steps: int,
        timing: dict[str, float],
        run_dir: Path,
        history: list[dict[str, Any]],
    ) -> bool:
        """Run the rest of the epoch in ``state``; False when Ctrl-C stopped it (saved)."""
        from tqdm.auto import tqdm

        epoch = state["epoch"]
        start = state["step_in_epoch"]
        w = self._world
        # The epoch's global order is the same on every rank; each takes its shard, so
        # global step s covers the same images whatever the number of ranks.
        order = shard(loader.order(epoch), w.rank, w.size)
        p = state["partial"]
        need = (lambda idx: not cache.complete(idx)) if cache is not None else (lambda idx: True)
        bar = tqdm(
            total=steps,
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="step",
            disable=not self._show,
            leave=False,
            dynamic_ncols=True,
        )
        model.train()
        t_start = time.perf_counter()
        seen0 = p["seen"]
        try:
            for idx, item in self._batches(
                loader, order, loader.batch_size, start, steps, epoch, need, pool, timing
            ):
                seed = _step_seed(cfg.seed, state["global_step"], w.rank)
                t = time.perf_counter()
                if item is None:
                    y = np.array([loader.samples[i].label for i in idx], np.int64)
                    logits = model.forward(cache.get(idx), seed=seed, from_features=True)
                else:
                    x, y = item
                    if cache is not None:
                        logits, feats = model.forward(x, seed=seed, return_features=True)
                        cache.put(idx, feats)
                    else:
                        logits = model.forward(x, seed=seed)
                if not np.all(np.isfinite(logits)):
                    self._nan(state, steps, run_dir, history)
                loss, prob = cross_entropy_forward(logits, y, class_weight, cfg.label_smoothing)
                if not math.isfinite(loss):
                    self._nan(state, steps, run_dir, history)
                model.backward(cross_entropy_backward(prob, y, class_weight, cfg.label_smoothing))
                step_loss = loss * len(y)
                correct, seen = int(np.sum(prob.argmax(1) == y)), len(y)
                if self._dp is not None:
                    # one agreement per step: a rank that failed, or was asked to stop, is
                    # known to all before the gradients are exchanged
                    sums = w.agree((step_loss, correct, seen, self._stop))
                    self._agreed_stop = any(x[3] for x in sums)
                    step_loss = sum(x[0] for x in sums)
                    correct, seen = sum(x[1] for x in sums), sum(x[2] for x in sums)
                    self._dp.average_gradients()
                try:
                    opt.step()
                except (FloatingPointError, ValueError) as exc:
                    if "NaN" not in str(exc) and "finite" not in str(exc):
                        raise
                    self._nan(state, steps, run_dir, history)
                sched.step()
                timing["compute_s"] += time.perf_counter() - t
                timing["images"] += len(y)
                state["global_step"] += 1
                state["step_in_epoch"] += 1
                p["loss_sum"] += step_loss
                p["correct"] += correct
                p["seen"] += seen
                bar.update(1)
                if self.callback is not None:
                    self.callback(
                        "step",
                        {
                            "epoch": epoch + 1,
                            "step": state["step_in_epoch"],
                            "global_step": state["global_step"],
                            "loss": step_loss / seen,
                        },
                    )
                rate = (p["seen"] - seen0) / max(time.perf_counter() - t_start, 1e-9)
                bar.set_postfix(
                    loss=f"{p['loss_sum'] / p['seen']:.4f}",
                    acc=f"{p['correct'] / p['seen']:.3f}",
                    img_s=f"{rate:.1f}",
                    refresh=False,
                )
                every = cfg.checkpoint_every
                mid = state["step_in_epoch"] < steps
                stopping = self._stopping()
                if stopping or (every and mid and state["global_step"] % every == 0):
                    if mid:
                        self._save(run_dir / "last.ckpt", model, opt, sched, state, history, cfg)
                    if stopping:
                        return not mid
        finally:
            bar.close()
        return True

    def _nan(self, state: dict[str, Any], steps: int, run_dir: Path, history: list) -> None:
        last = run_dir / "last.ckpt"
        kept = (
            f"the last good checkpoint is {last}"
            if last.exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"the loss became NaN or infinite at epoch {state['epoch'] + 1}, step "
            f"{state['step_in_epoch'] + 1} of {steps} (global step {state['global_step'] + 1});"
            f" training stopped and {kept}. Lower the learning rate or enable max_grad_norm."
        )

    def _validate(
        self,
        model: EfficientNet,
        loader: DataLoader,
        cache: FeatureCache | None,
        pool: ThreadPoolExecutor | None,
        class_names: Sequence[str],
        epoch: int,
    ) -> dict[str, float] | None:
        """Validation metrics in inference semantics (running statistics, no dropout);
        None when Ctrl-C (or :meth:`stop`) interrupted it. Data-parallel: each rank
        validates every size-th image and the probabilities are gathered on all."""
        from tqdm.auto import tqdm

        w = self._world
        n = len(loader.samples)
        bs = loader.batch_size
        order = np.arange(n)[w.rank :: w.size]
        steps = -(-len(order) // bs)
        need = (lambda idx: not cache.complete(idx)) if cache is not None else (lambda idx: True)
        timing = {"load_wait_s": 0.0, "load_work_s": 0.0}
        probs = np.empty((n, model.num_classes), np.float64)
        labels = np.array([s.label for s in loader.samples], np.int64)
        model.eval()
        try:
            with tqdm(
                total=steps,
                desc="validation",
                unit="batch",
                leave=False,
                disable=not self._show,
                dynamic_ncols=True,
            ) as bar:
                for idx, item in self._batches(loader, order, bs, 0, steps, 0, need, pool, timing):
                    if item is None:
                        logits = model.forward(cache.get(idx), from_features=True)
                    elif cache is not None:
                        feats = model.frozen_features(item[0])
                        cache.put(idx, feats)
                        logits = model.forward(feats, from_features=True)
                    else:
                        logits = model.forward(item[0])
                    if not np.all(np.isfinite(logits)):
                        raise TrainingError(
                            f"the model gives NaN or infinite outputs on validation images "
                            f"after epoch {epoch + 1} (e.g. {loader.samples[int(idx[0])].path});"
                            " its weights diverged: lower the learning rate"
                        )
                    probs[idx] = softmax(logits)
                    bar.update(1)
                    if self._stop and w.size == 1:
                        return None
        finally:
            model.train()
        if w.size > 1:
            probs = w.gather_rows(order, probs[order], n)
            if self._agree_stop():
                return None
        nll = -np.log(np.maximum(probs[np.arange(n), labels], 1e-300))
        rep = classification_report(labels, probs, class_names)
        return {
            "val_loss": float(nll.mean()),
            "val_accuracy": rep["accuracy"],
            "val_weighted_f1": rep["weighted_f1"],
            "val_roc_auc": rep.get("roc_auc", float("nan")),
        }


def _common_root(paths: Sequence[Path]) -> Path | None:

    try:
        return Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    except ValueError:
        return None


def _default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    short = "b3" if cfg.arch == "efficientnet_b3" else "v2s"
    return Path("runs") / f"{stamp}-{short}-{cfg.head}"


def _check_resume_config(saved: TrainConfig, given: TrainConfig, keys: set[str]) -> None:
    """A resumed run keeps its configuration: refuse chosen options that would change it."""
    a, b = saved.to_dict(), given.to_dict()
    diff = [k for k in a if k in keys and k not in RESUME_MAY_CHANGE and a[k] != b[k]]
    if diff:
        raise ValueError(
            "resume continues the recorded run, so its settings cannot change; these differ "
            "from config.json: " + ", ".join(f"{k} (run: {a[k]!r}, given: {b[k]!r})" for k in diff)
        )


def _check_checkpoint_config(ckpt: Checkpoint, saved: TrainConfig, run_dir: Path) -> None:
    """last.ckpt must come from the run that config.json describes."""
    theirs = ckpt.meta.get("config") or {}
    mine = saved.to_dict()
    diff = [k for k in mine if k not in RESUME_MAY_CHANGE and theirs.get(k) != mine[k]]
    if diff:
        raise CheckpointMismatch(
            f"{ckpt.path} was written by another run than {run_dir / 'config.json'} "
            f"describes (they differ in {', '.join(diff)}); resume cannot mix them"
        )


def _check_same_split(record: dict[str, Any], data: _Data) -> None:
    theirs = [(Path(p).name, lab) for p, lab, _, _ in record["train"]]
    mine = [(s.path.name, s.label) for s in data.train]
    if theirs != mine:
        raise ValueError(
            "resume: the training images (or their order) differ from the run's split.json; "
            "resume with the same data (or without data to use the recorded split)"
        )


def fit(
    train: Any = None,
    val: Sequence[Sample] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    **options: Any,
) -> FitResult:
    """``Trainer(**options).fit(train, val, out=..., resume=..., force=...)`` in one call;
    ``options`` are :class:`TrainConfig` fields (``arch``, ``epochs``, ``batch_size``...)."""
    return Trainer(progress=progress, **options).fit(
        train, val, out=out, resume=resume, force=force
    )


def _check_world(cfg: TrainConfig, w: World) -> None:
    """The global batch must split evenly over the ranks, at least two images each
    (batch-statistics BatchNorm needs more than one)."""
    if w.size > 1 and (cfg.batch_size % w.size or cfg.batch_size // w.size < 2):
        raise ValueError(
            f"batch_size {cfg.batch_size} is the global batch: it must split evenly over the "
            f"{w.size} ranks with at least 2 images each; use a multiple of {w.size} that is "
            f">= {2 * w.size}"
        )


def _spill(run_dir: Path, side: str, w: World) -> Path:
    """Spill file of a feature cache: in the run directory for rank 0, in the node's
    temporary directory for the others (their own file, and the run directory may not
    be on their machine)."""
    if w.is_root:
        return run_dir / f"{side}.cache.f32"
    import tempfile

    return Path(tempfile.gettempdir()) / f"leukemia-{os.getpid()}-rank{w.rank}-{side}.cache.f32"
