"""The ``leukemia`` command line (also ``python -m leukemia``).

Each subcommand is a :class:`Command`: a name, a one-line help, a function that adds its
arguments to an ``argparse`` parser, and a function that runs it and returns the exit
status.  Adding a subcommand is one registration, e.g. for training::

    def _train_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("data", help="data folder")

    @command("train", "fine-tune an EfficientNet on a data set", _train_arguments)
    def _train(args: argparse.Namespace) -> int:
        from .train import train          # import heavy modules inside run, not at top
        ...
        return 0

Conventions: bad arguments are argparse usage errors (exit 2); failures while running
raise any exception, which :func:`main` prints as one line ``leukemia: error: ...`` on
stderr with exit status 1 (set ``LEUKEMIA_DEBUG=1`` to get the traceback instead).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["COMMANDS", "Command", "CLIError", "build_parser", "command", "main", "register"]


class CLIError(RuntimeError):
    """A runtime failure to report as ``leukemia: error: <message>`` (exit status 1)."""


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: the word typed after ``leukemia``.
        help: one line for ``leukemia --help``.
        add_arguments: adds the subcommand's arguments to its parser.
        run: executes the parsed arguments; returns the exit status.
        description: longer text for ``leukemia NAME --help`` (defaults to ``help``).
        distributed: runs on several MPI ranks (``mpiexec -n N leukemia NAME``); the
            others refuse to, since every rank would write the same files.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    distributed: bool = False


COMMANDS: dict[str, Command] = {}
"""Registered subcommands by name, in registration order."""


def register(cmd: Command) -> Command:
    """Add ``cmd`` to :data:`COMMANDS` (a name may be registered once)."""
    if cmd.name in COMMANDS:
        raise ValueError(f"subcommand {cmd.name!r} is already registered")
    COMMANDS[cmd.name] = cmd
    return cmd


def command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    description: str = "",
    distributed: bool = False,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator form of :func:`register` for a ``run(args) -> int`` function."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        register(Command(name, help, add_arguments, run, description, distributed))
        return run

    return wrap


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    at_least = _int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    parse.__name__ = f"integer in {low}..{high}"
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# --------------------------------------------------------------------------- synth


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="output folder (becomes the C-NMC_Leukemia root)")
    p.add_argument(
        "--subjects",
        type=_int_at_least(2),
        default=12,
        metavar="N",
        help="number of subjects, about 2/3 ALL (default: 12)",
    )
    p.add_argument(
        "--cells-per-subject",
        type=_int_at_least(1),
        default=20,
        metavar="M",
        help="images per subject (default: 20)",
    )
    p.add_argument(
        "--size",
        type=_int_in(16, 4096),
        default=450,
        metavar="S",
        help="image side in pixels (default: 450, as C-NMC)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, metavar="K", help="random seed (default: 0)"
    )
    p.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        metavar="W",
        help="rendering threads (default: number of CPUs)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace training_data/, validation_data/, testing_data/ if OUT has them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "synth",
    "write a synthetic data set in the C-NMC 2019 layout",
    _synth_arguments,
    "Render synthetic single-cell images (ALL blasts and normal lymphocytes, per-subject "
    "stain, size, blur and noise) into OUT in the C-NMC 2019 layout: training_data/"
    "fold_{0,1,2}/{all,hem}/, the renamed preliminary test set with its labels CSV, "
    "and the unlabelled final test set. Subjects never span two folds.",
)
def _synth(args: argparse.Namespace) -> int:
    from .data.synthetic import write_cnmc

    out = Path(args.out)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(
            total=args.subjects * args.cells_per_subject,
            unit="img",
            file=sys.stderr,
            desc="rendering",
            leave=False,
        )
    # write_cnmc checks OUT (links, files in the way, permissions, another run writing
    # there) before it writes anything, renders into a hidden folder inside OUT, removes
    # those of killed runs, and swaps the three folders in all together or not at all.
    try:
        res = write_cnmc(
            out,
            args.subjects,
            args.cells_per_subject,
            args.size,
            args.seed,
            workers=args.workers,
            progress=(lambda done, total: bar.update(1)) if bar else None,
            overwrite=args.force,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    finally:
        if bar is not None:
            bar.close()
    n_all = sum(1 for s in res.subjects if s.label == 1)
    rate = res.n_images / max(res.seconds, 1e-9) * 60
    print(
        f"Wrote {res.n_images} images ({args.size}x{args.size}) of {len(res.subjects)} "
        f"subjects ({n_all} ALL, {len(res.subjects) - n_all} normal) to {out} in "
        f"{res.seconds:.1f} s ({rate:.0f} images/min)"
    )
    for part in ("fold_0", "fold_1", "fold_2", "prelim", "final"):
        subj = sorted(s for s, f in res.folds.items() if f == part)
        print(
            f"  {part:7s} {res.counts.get(part, 0):6d} images  subjects: "
            f"{', '.join(subj) if subj else '-'}"
        )
    print(f"Next: leukemia inspect {out} --split")
    return 0


# --------------------------------------------------------------------------- inspect


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="data folder")
    p.add_argument(
        "--layout",
        choices=("auto", "cnmc", "all-idb2", "folders"),
        default="auto",
        help="data layout (default: auto-detect)",
    )
    p.add_argument(
        "--split", action="store_true", help="show a split and run the leakage check on it"
    )
    p.add_argument(
        "--policy",
        choices=("patient", "image"),
        default="patient",
        help="split policy: patient-wise (default) or image-level (LEAKY)",
    )
    p.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="fraction of images on the test side (default: 0.2)",
    )
    p.add_argument(
        "--seed", type=_int_at_least(0), default=0, metavar="K", help="split seed (default: 0)"
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not decode every image (faster; bad files go unnoticed)",
    )
    p.add_argument(
        "--no-image-check",
        action="store_true",
        help="leakage check on subject ids only, not near-duplicate images",
    )
    p.add_argument("--no-subjects", action="store_true", help="omit the per-subject table")


@command(
    "inspect",
    "detect a data set's layout, count it, list bad files, check splits",
    _inspect_arguments,
    "Detect the layout of DIR (C-NMC 2019, ALL-IDB2 or class folders), print images per "
    "fold, class and subject, and list unreadable files with the reason. With --split, "
    "show a patient-wise split (or --policy image, labelled leaky) and check it for "
    "shared subjects and near-duplicate images; for C-NMC also check the official folds.",
)
def _inspect(args: argparse.Namespace) -> int:
    from .data.datasets import load_dataset, summary_table
    from .data.splits import SplitError, check_leakage, cnmc_folds, make_split

    root = Path(args.dir)
    if not root.exists():
        raise CLIError(f"{root} does not exist")
    ds = load_dataset(
        root, None if args.layout == "auto" else args.layout, verify=not args.no_verify
    )
    print(f"Data set: {ds.root}  (layout: {ds.layout}, {len(ds)} images)")
    print()
    print(summary_table(ds.samples, ds.class_names, per_subject=not args.no_subjects))
    print()
    print(ds.bad_report())
    if not args.split:
        return 0
    images = not args.no_image_check
    print()
    policy = args.policy
    labelled = ds.labelled()
    if policy == "patient" and any(s.subject is None for s in labelled):
        print(
            "Note: this layout carries no subject ids, so a patient-wise split is impossible;"
            " falling back to an image-level split, which is LEAKY."
        )
        policy = "image"
    split = make_split(labelled, policy, args.test_fraction, args.seed)
    print(split.summary())
    print(check_leakage(split.train, split.test, images=images, hashes=ds.hashes))
    if ds.layout == "cnmc":
        try:
            folds = cnmc_folds(ds.samples)
        except SplitError as exc:
            print(f"\nC-NMC official folds: not usable ({exc})")
        else:
            print("\nC-NMC official folds as cross-validation:")
            for f in folds:
                print(f.summary())
                print(check_leakage(f.train, f.test, images=images, hashes=ds.hashes))
        train = [s for s in labelled if s.fold in ("fold_0", "fold_1", "fold_2")]
        prelim = [s for s in labelled if s.fold == "prelim"]
        if train and prelim:
            print("\nTraining folds vs preliminary test set:")
            print(check_leakage(train, prelim, images=images, hashes=ds.hashes))
    return 0


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- info
def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        action="store_true",
        help="also build both architectures and list their parameter counts",
    )


@command(
    "info",
    "show the C core's build (oneDNN version, runtime, ISA, threads) and the models",
    _info_arguments,
    "Print what the compiled core runs on; with --models, also the architectures "
    "with their parameter counts and default input sizes.",
)
def _info(args: argparse.Namespace) -> int:
    import leukemia

    info = leukemia.build_info()
    print(f"leukemia {leukemia.__version__}")
    print(
        f"oneDNN {info['onednn_version']} ({info['cpu_runtime']} runtime), "
        f"ISA {info['isa']}, {info['num_threads']} threads"
    )
    print(
        f"hand-written kernels: {info['kernel_isa']} (this CPU runs: "
        f"{', '.join(leukemia.kernel_isas())}; LEUKEMIA_KERNEL_ISA or "
        "leukemia.set_kernel_isa() chooses)"
    )
    if args.models:
        from .models import ARCHS, EfficientNet

        for arch in ARCHS:
            m = EfficientNet(arch, 1000)
            print(
                f"{arch:18s} {m.num_parameters():>11,} parameters (1000 classes), "
                f"default input {m.default_size}x{m.default_size}"
            )
    return 0


# --------------------------------------------------------------------------- train

_ARCH_CHOICES = ("b3", "v2s", "efficientnet_b3", "efficientnet_v2_s")
_HEAD_CHOICES = ("multi_attention", "linear", "channel_attention", "spatial_attention")


def _memory(text: str) -> str:
    from .train.cache import parse_bytes

    try:
        parse_bytes(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="data folder (C-NMC layout, ALL-IDB2 or class folders); optional with --resume",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--arch", choices=_ARCH_CHOICES, default=None, help="backbone (default b3)")
    p.add_argument(
        "--head",
        choices=_HEAD_CHOICES,
        default=None,
        help="classification head (default multi_attention)",
    )
    p.add_argument(
        "--policy",
        default=None,
        metavar="P",
        help="what trains: last_block (default for attention heads), head, all, or "
        "comma-separated state_dict prefixes",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="W",
        help="'imagenet' (torchvision's published file) or a weights file; "
        "default: random initialisation",
    )
    p.add_argument("--epochs", type=_int_at_least(1), default=None, metavar="N")
    p.add_argument("--batch-size", type=_int_at_least(2), default=None, metavar="B")
    p.add_argument(
        "--size",
        type=_int_in(16, 2048),
        default=None,
        metavar="S",
        help="input side in pixels (default: the architecture's, 300 / 384)",
    )
    p.add_argument("--lr", type=_positive_float, default=None, help="head learning rate")
    p.add_argument(
        "--backbone-lr",
        type=_positive_float,
        default=None,
        help="learning rate of the trainable backbone layers (default lr/10)",
    )
    p.add_argument("--weight-decay", type=_positive_float, default=None)
    p.add_argument("--label-smoothing", type=_positive_float, default=None)
    p.add_argument(
        "--class-weights",
        choices=("balanced", "none"),
        default=None,
        help="loss weights per class (default balanced)",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="no random augmentation (enables the feature cache)",
    )
    p.add_argument(
        "--cache",
        choices=("auto", "on", "off"),
        default=None,
        help="frozen-prefix feature cache (default auto)",
    )
    p.add_argument(
        "--cache-memory",
        type=_memory,
        default=None,
        metavar="BYTES",
        help="memory for the feature cache, e.g. 2GiB; the rest spills to disk",
    )
    p.add_argument(
        "--patience",
        type=_int_at_least(1),
        default=None,
        metavar="E",
        help="early stopping after E epochs without a better val weighted F1",
    )
    p.add_argument(
        "--split",
        choices=("patient", "image"),
        default=None,
        help="patient-wise (default) or image-level (LEAKY) validation split",
    )
    p.add_argument("--val-fraction", type=_fraction, default=None, metavar="F")
    p.add_argument("--seed", type=_int_at_least(0), default=None, metavar="K")
    p.add_argument(
        "--threads", type=_int_at_least(1), default=None, metavar="T", help="threads of the C core"
    )
    p.add_argument(
        "--workers", type=_int_at_least(0), default=None, metavar="W", help="image-loading threads"
    )
    p.add_argument(
        "--checkpoint-every",
        type=_int_at_least(0),
        default=None,
        metavar="STEPS",
        help="also save last.ckpt every STEPS steps",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="replace an earlier run in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_options(args: argparse.Namespace) -> dict:
    """TrainConfig fields the user gave (defaults stay the config's, so --resume only
    compares what was typed)."""
    names = {
        "arch": "arch",
        "head": "head",
        "weights": "weights",
        "epochs": "epochs",
        "batch_size": "batch_size",
        "size": "size",
        "lr": "lr",
        "backbone_lr": "backbone_lr",
        "weight_decay": "weight_decay",
        "label_smoothing": "label_smoothing",
        "patience": "patience",
        "split": "split",
        "val_fraction": "val_fraction",
        "seed": "seed",
        "threads": "threads",
        "workers": "loader_workers",
        "checkpoint_every": "checkpoint_every",
        "cache_memory": "cache_memory",
    }
    out = {field: getattr(args, a) for a, field in names.items() if getattr(args, a) is not None}
    if args.policy is not None:
        parts = [p.strip() for p in args.policy.split(",") if p.strip()]
        out["policy"] = (
            parts[0] if len(parts) == 1 and parts[0] in ("last_block", "head", "all") else parts
        )
    if args.class_weights is not None:
        out["class_weights"] = None if args.class_weights == "none" else "balanced"
    if args.no_augment:
        out["augment"] = False
    if args.cache is not None:
        out["cache"] = {"auto": "auto", "on": True, "off": False}[args.cache]
    return out


def _is_root() -> bool:
    """Rank 0 of an MPI run, or the only process: the one that writes files."""
    from .distributed import world

    return world().is_root


def _print_evaluation(run_dir: Path, quiet: bool) -> None:
    from .evaluation import evaluate, load_run
    from .train.rundir import write_json

    run = load_run(run_dir)
    report = evaluate(run, progress=not quiet)
    if _is_root():
        write_json(run_dir / "evaluation.json", report.to_dict())
    print(report)


@command(
    "train",
    "fine-tune an EfficientNet on a data folder (patient-wise validation)",
    _train_arguments,
    "Train a model on DATA, holding out whole subjects for validation (patient-wise; "
    "--split image is allowed but LEAKY), with AdamW, a cosine schedule with warm-up and "
    "class weights. RUN_DIR receives config.json, split.json, the history (JSON, CSV, PNG) "
    "and the best and last checkpoints. Ctrl-C stops at the next step and saves; "
    "--resume continues exactly. Under mpiexec -n N (or srun) the N ranks train one model "
    "data-parallel; --batch-size is then the global batch.",
    distributed=True,
)
def _train(args: argparse.Namespace) -> int:
    from .train import Trainer, TrainingInterrupted

    options = _train_options(args)
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    if args.data is None and not args.resume:
        raise CLIError("DATA is required (except with --resume)")
    if args.data is not None and not Path(args.data).exists():
        raise CLIError(f"{args.data} does not exist")
    if options.get("split") == "image":
        print(
            "WARNING: --split image puts cells of the same subjects on both sides: the "
            "validation scores will be inflated (LEAKY).",
            file=sys.stderr,
        )
    trainer = Trainer(progress=not args.quiet, **options)
    try:
        result = trainer.fit(
            args.data,
            out=None if args.resume else args.out,
            resume=args.out if args.resume else None,
            force=args.force,
        )
    except TrainingInterrupted as exc:
        print(f"leukemia: {exc}", file=sys.stderr)
        return 130
    h = result.history
    if h:
        print(
            f"Trained {len(h)} epochs; best validation weighted F1 {result.best_score:.4f} at "
            f"epoch {result.best_epoch}{' (early stop)' if result.stopped_early else ''}."
        )
    print(f"Run directory: {result.run_dir}")
    _print_evaluation(result.run_dir, args.quiet)
    return 0


# --------------------------------------------------------------------------- evaluate


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of `leukemia train`")
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="data folder to evaluate on (default: the run's held-out subjects)",
    )
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, metavar="B")
    p.add_argument("--workers", type=_int_at_least(0), default=1, metavar="W")
    p.add_argument(
        "--allow-leak",
        action="store_true",
        help="keep subjects that were on the run's training side (LEAKY)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command(
    "evaluate",
    "metrics of a trained run on held-out subjects, with per-subject results",
    _evaluate_arguments,
    "Evaluate RUN_DIR's best (or last) checkpoint on the held-out subjects of its split, "
    "or on the labelled images of DATA; subjects the run trained on are excluded and "
    "named (leakage) unless --allow-leak. Prints accuracy, weighted F1, ROC AUC, "
    "sensitivity/specificity, the confusion matrix and per-subject accuracy. Under mpiexec "
    "the images are split over the ranks.",
    distributed=True,
)
def _evaluate(args: argparse.Namespace) -> int:
    from .data.datasets import load_dataset
    from .evaluation import evaluate, load_run
    from .train.rundir import write_json

    run = load_run(args.run, args.checkpoint)
    samples = None
    description = ""
    if args.data is not None:
        if not Path(args.data).exists():
            raise CLIError(f"{args.data} does not exist")
        ds = load_dataset(args.data)
        if tuple(ds.class_names) != tuple(run.class_names)[: len(ds.class_names)]:
            raise CLIError(
                f"{args.data} names its classes {', '.join(ds.class_names)} (by label) but "
                f"the run was trained on {', '.join(run.class_names)}; the labels would not "
                "mean the same"
            )
        samples = ds.labelled()
        if not samples:
            raise CLIError(f"{args.data} holds no labelled images")
        description = f"{run.run_dir} ({run.checkpoint.name}) on {args.data}"
    report = evaluate(
        run,
        samples,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.quiet,
        allow_leak=args.allow_leak,
        description=description,
    )
    print(report)
    if args.json and _is_root():
        write_json(Path(args.json), report.to_dict())
    return 0


# --------------------------------------------------------------------------- predict


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of `leukemia train`")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="CSV", help="predictions file")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, metavar="B")
    p.add_argument("--workers", type=_int_at_least(0), default=1, metavar="W")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _image_files(items: Sequence[str]) -> list[Path]:
    from .data.datasets import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise CLIError(f"{p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"{p} does not exist")
    return files


@command(
    "predict",
    "class probabilities per image from a trained run, as CSV",
    _predict_arguments,
    "Run RUN_DIR's model on image files (folders are searched recursively) and write one "
    "row per image: path, the probability of each class, and the predicted class. Under "
    "mpiexec the images are split over the ranks.",
    distributed=True,
)
def _predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from .evaluation import load_run, predict
    from .io.atomic import atomic_write

    files = _image_files(args.images)
    run = load_run(args.run, args.checkpoint)
    probs = predict(
        run, files, batch_size=args.batch_size, workers=args.workers, progress=not args.quiet
    )
    names = list(run.class_names)[: probs.shape[1]]
    if not _is_root():
        return 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", *(f"p_{n}" for n in names), "predicted"])
    for f, p in zip(files, probs, strict=True):
        w.writerow([str(f), *(f"{v:.6f}" for v in p), names[int(p.argmax())]])
    with atomic_write(args.out, "w") as fh:
        fh.write(buf.getvalue())
    counts = np.bincount(probs.argmax(1), minlength=len(names))
    print(
        f"Wrote {len(files)} predictions to {args.out} ("
        + ", ".join(f"{n}: {c}" for n, c in zip(names, counts, strict=True))
        + ")"
    )
    return 0


# --------------------------------------------------------------------------- demo


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        default="leukemia-demo",
        metavar="DIR",
        help="folder for the data set and the run (default: leukemia-demo)",
    )
    p.add_argument("--arch", choices=_ARCH_CHOICES, default="b3")
    p.add_argument("--subjects", type=_int_at_least(4), default=DEMO["subjects"], metavar="N")
    p.add_argument("--cells-per-subject", type=_int_at_least(2), default=DEMO["cells"], metavar="M")
    p.add_argument(
        "--size",
        type=_int_in(32, 512),
        default=DEMO["size"],
        metavar="S",
        help="image side, rendered and trained (default: %(default)s)",
    )
    p.add_argument("--epochs", type=_int_at_least(1), default=DEMO["epochs"], metavar="E")
    p.add_argument("--batch-size", type=_int_at_least(2), default=DEMO["batch_size"], metavar="B")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="K")
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not try to download ImageNet weights (use them only if cached)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


DEMO = {"subjects": 24, "cells": 40, "size": 48, "epochs": 8, "batch_size": 32}
"""The demo's defaults: measured to learn from random initialisation in a few minutes on
two cores (see README, "The demo")."""


@command(
    "demo",
    "render a synthetic C-NMC set, train the multi-attention model, evaluate patient-wise",
    _demo_arguments,
    "The whole workflow in a few minutes on a laptop: render a synthetic data set in the "
    "C-NMC 2019 layout, fine-tune EfficientNet-B3 with the study's multi-attention head "
    "(from ImageNet weights with the study's last_block policy when they are available, "
    "otherwise from random initialisation with every layer trained), and evaluate on "
    "held-out subjects.",
    distributed=True,
)
def _demo(args: argparse.Namespace) -> int:
    import time

    from .data.synthetic import write_cnmc
    from .distributed import world
    from .models.pretrained import WeightsUnavailableError, imagenet_weights
    from .train import Trainer, TrainingInterrupted, resolve_arch

    w = world()  # with several MPI ranks, rank 0 renders and looks for the weights
    start = time.perf_counter()
    out = Path(args.out)
    data, run = out / "data", out / "run"
    arch = resolve_arch(args.arch)
    print(
        f"1. Rendering {args.subjects} subjects x {args.cells_per_subject} cells "
        f"({args.size} px) in the C-NMC 2019 layout into {data}"
    )
    cells = args.cells_per_subject
    res = w.bcast(
        write_cnmc(data, args.subjects, cells, args.size, args.seed, overwrite=True)
        if w.is_root
        else None
    )
    print(f"   {res.n_images} images in {res.seconds:.1f} s")

    def find_weights() -> tuple[Path | None, str]:
        try:
            return imagenet_weights(arch, download=not args.offline, progress=not args.quiet), ""
        except WeightsUnavailableError as exc:
            return None, str(exc).strip().splitlines()[0]

    weights, reason = w.bcast(find_weights() if w.is_root else None)
    if weights is None:
        print(
            "2. ImageNet weights are not available here, so this demo trains from random "
            "initialisation with every layer trainable (policy 'all'): frozen random "
            "features would not be transfer learning.\n"
            f"   ({reason})"
        )
        options = {
            "weights": None,
            "policy": "all",
            "lr": 1e-3,
            "backbone_lr": 1e-3,
            "weight_decay": 0.05,
            # measured: from scratch on the small synthetic set, un-augmented training
            # learns in fewer epochs (README, "The demo"); the cache then keeps the
            # decoded images, so later epochs skip the loader
            "augment": False,
        }
    else:
        print(
            f"2. ImageNet weights found ({weights}): fine-tuning with the study's "
            "last_block policy (last stage, final 1x1 conv and head train)."
        )
        options = {"weights": str(weights), "policy": "last_block", "lr": 1e-3, "backbone_lr": 1e-4}
    print(
        f"3. Training {arch} + multi-attention head, {args.epochs} epochs, batch "
        f"{args.batch_size}, patient-wise validation split, run directory {run}"
    )
    trainer = Trainer(
        arch=arch,
        head="multi_attention",
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    try:
        result = trainer.fit(data, out=run, force=True)
    except TrainingInterrupted as exc:
        print(f"leukemia: {exc}", file=sys.stderr)
        return 130
    for h in result.history:
        print(
            f"   epoch {h['epoch']:2d}: train loss {h['train_loss']:.3f} acc "
            f"{h['train_accuracy']:.3f} | val loss {h['val_loss']:.3f} acc "
            f"{h['val_accuracy']:.3f} weighted F1 {h['val_weighted_f1']:.3f}"
        )
    print(
        f"4. Patient-wise evaluation of the best epoch ({result.best_epoch}) on the "
        "held-out subjects:"
    )
    _print_evaluation(run, True)
    print(
        f"Done in {time.perf_counter() - start:.0f} s. Curves: {run / 'curves.png'}; "
        f"next: leukemia evaluate {run} | leukemia predict {run} IMAGES --out p.csv"
    )
    return 0


# --------------------------------------------------------------------------- compare


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    from .compare import MODELS

    p.add_argument(
        "--out",
        default="leukemia-compare",
        metavar="DIR",
        help="folder for the runs, the table and the figures",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DATA",
        help="a data folder (C-NMC layout...); default: a synthetic C-NMC set",
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="LIST",
        help="comma-separated row numbers of the single models to include "
        f"(default all: {'; '.join(f'{i}={m[0]}' for i, m in enumerate(MODELS))})",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="W",
        help="'imagenet' to fine-tune with last_block (default: from scratch)",
    )
    p.add_argument("--epochs", type=_int_at_least(1), default=8, metavar="E")
    p.add_argument("--size", type=_int_in(32, 1024), default=48, metavar="S")
    p.add_argument("--batch-size", type=_int_at_least(2), default=32, metavar="B")
    p.add_argument(
        "--subjects",
        type=_int_at_least(8),
        default=30,
        metavar="N",
        help="subjects of the synthetic set (default 30)",
    )
    p.add_argument("--cells-per-subject", type=_int_at_least(2), default=40, metavar="M")
    p.add_argument(
        "--bootstrap",
        type=_int_at_least(0),
        default=1000,
        metavar="B",
        help="bootstrap draws over subjects for the intervals",
    )
    p.add_argument(
        "--no-leaky", action="store_true", help="skip the image-level (leaky) comparison row"
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="K")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "compare",
    "the study's comparison: single models and ensembles on held-out subjects",
    _compare_arguments,
    "Train (or load from OUT/runs) B3 and V2-S with the multi-attention and the linear "
    "head, build soft, weighted and majority-voting ensembles, and score everything on "
    "subjects held out from training and tuning, with subject-bootstrap intervals; add "
    "what an image-level (leaky) split of the same data claims. Writes table.md, "
    "table.csv, results.json, roc.png, confusion.png and reliability.png into OUT.",
)
def _compare(args: argparse.Namespace) -> int:
    from .compare import MODELS, compare

    models = MODELS
    if args.models is not None:
        try:
            models = tuple(MODELS[int(i)] for i in args.models.split(","))
        except (ValueError, IndexError):
            raise CLIError(
                f"--models: give row numbers 0..{len(MODELS) - 1}, got {args.models!r}"
            ) from None
    if args.data is not None and not Path(args.data).exists():
        raise CLIError(f"{args.data} does not exist")
    result = compare(
        args.out,
        args.data,
        models=models,
        epochs=args.epochs,
        size=args.size,
        batch_size=args.batch_size,
        subjects=args.subjects,
        cells=args.cells_per_subject,
        weights=args.weights,
        leaky=not args.no_leaky,
        seed=args.seed,
        bootstrap=args.bootstrap,
        progress=not args.quiet,
    )
    print(result.table_markdown)
    print("Wrote " + ", ".join(str(f) for f in result.files))
    return 0


# --------------------------------------------------------------------------- explain


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of `leukemia train`")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and CSV")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class whose logit Grad-CAM explains (a name or index; default: the predicted)",
    )
    p.add_argument("--alpha", type=_fraction, default=0.45, help="overlay opacity (0.45)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap (jet)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=8, metavar="B")


def _explain_panel(tiles: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Tiles side by side, each under its title (Pillow's default font)."""
    from PIL import Image, ImageDraw

    h, w = tiles[0][1].shape[:2]
    scale = max(1, 192 // max(h, w))  # small inputs are enlarged to be seen
    th, tw, bar, gap = h * scale, w * scale, 14, 4
    canvas = Image.new("RGB", (len(tiles) * (tw + gap) - gap, th + bar), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, tile) in enumerate(tiles):
        img = Image.fromarray(tile).resize((tw, th), Image.Resampling.NEAREST)
        canvas.paste(img, (i * (tw + gap), bar))
        draw.text((i * (tw + gap) + 2, 1), title, fill=(0, 0, 0))
    return np.asarray(canvas)


@command(
    "explain",
    "Grad-CAM and attention maps of a trained run, as PNG overlays",
    _explain_arguments,
    "Run RUN_DIR's model (in eval semantics; it is not changed) on image files (folders "
    "are searched recursively) and write, per image, one PNG: the cell as the model sees "
    "it, its Grad-CAM on the last feature map and, for attention heads, the channel "
    "attention (mean of a * F), both spatial maps and the attention-pool weights, each "
    "over the cell. Also writes explain.csv: the probabilities, the prediction, the class "
    "explained and the PNG of each image.",
)
def _explain(args: argparse.Namespace) -> int:
    import csv
    import io

    from PIL import Image

    from . import explain as E
    from .data.datasets import load_image
    from .data.transforms import eval_transform
    from .evaluation import load_run, softmax
    from .io.atomic import atomic_write

    files = _image_files(args.images)
    run = load_run(args.run, args.checkpoint)
    model = run.model
    k = model.num_classes
    names = list(run.class_names)[:k]
    target = None
    if args.target is not None:
        if args.target in names:
            target = names.index(args.target)
        elif args.target.isdigit() and int(args.target) < k:
            target = int(args.target)
        else:
            raise CLIError(
                f"--target {args.target!r} is neither a class name ({', '.join(names)}) "
                f"nor an index below {k}"
            )
    transform = eval_transform(run.size)
    crop, normalize = transform.transforms[0], transform.transforms[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, used = [], set()
    for i in range(0, len(files), args.batch_size):
        batch = files[i : i + args.batch_size]
        cells = [crop(load_image(f), rng) for f in batch]
        x = np.stack([normalize(c, rng) for c in cells])
        maps = E.attention_maps(model, x) if model.head != "linear" else None
        logits, feat, dfeat = E.feature_gradients(model, x, target)
        cams = E.cam_from_gradients(feat, dfeat, x.shape[2], x.shape[3])
        probs = softmax(logits)
        for j, (f, cell) in enumerate(zip(batch, cells, strict=True)):
            cls = int(probs[j].argmax()) if target is None else target
            tiles = [
                ("image", cell),
                (
                    f"Grad-CAM {names[cls]}",
                    E.overlay(cell, cams[j], alpha=args.alpha, cmap=args.cmap),
                ),
            ]
            if maps is not None:
                for title, m in (
                    ("channel", maps.channel_map),
                    ("spatial 1", maps.spatial1),
                    ("spatial 2", maps.spatial2),
                    ("attn pool", maps.pool),
                ):
                    if m is not None:
                        heat = E.normalize_map(m[j : j + 1])[0]
                        tiles.append(
                            (title, E.overlay(cell, heat, alpha=args.alpha, cmap=args.cmap))
                        )
            stem, n = f.stem, 1
            while stem in used:
                n += 1
                stem = f"{f.stem}_{n}"
            used.add(stem)
            png = out / f"{stem}.png"
            buf = io.BytesIO()
            Image.fromarray(_explain_panel(tiles)).save(buf, format="PNG")
            with atomic_write(png, "wb") as fh:
                fh.write(buf.getvalue())
            rows.append(
                [
                    str(f),
                    *(f"{v:.6f}" for v in probs[j]),
                    names[int(probs[j].argmax())],
                    names[cls],
                    png.name,
                ]
            )
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["path", *(f"p_{n}" for n in names), "predicted", "explained", "png"])
    w.writerows(rows)
    with atomic_write(out / "explain.csv", "w") as fh:
        fh.write(text.getvalue())
    print(f"Wrote {len(rows)} explanations to {out} (one PNG per image, explain.csv)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered :class:`Command`."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="leukemia",
        description="Fine-tune EfficientNets to tell leukaemic blasts (ALL) from normal "
        "cells (HEM) in blood-smear cell images.",
    )
    parser.add_argument("--version", action="version", version=f"leukemia {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime error, 2 usage).

    Under an MPI launcher with several ranks, rank 0 alone prints results and writes
    files; an error on any rank is printed by every rank, naming the one that failed.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "_run", None) is None:
        parser.print_usage(sys.stderr)
        print("leukemia: error: a COMMAND is required (see leukemia --help)", file=sys.stderr)
        return 2
    where = ""
    try:
        from .distributed import launcher_size, world

        if launcher_size() > 1:
            w = world()
            where = f" (rank {w.rank} of {w.size})"
            cmd = COMMANDS[args.command]
            if not cmd.distributed:
                raise CLIError(
                    f"`leukemia {cmd.name}` runs in one process; of the commands, "
                    + ", ".join(c.name for c in COMMANDS.values() if c.distributed)
                    + " run on several MPI ranks"
                )
            with w.guard(), _quiet_unless(w.is_root):
                status = int(args._run(args))
                w.agree()  # every rank finished: none is left waiting for another
            return status
        return int(args._run(args))
    except KeyboardInterrupt:
        print(f"leukemia: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        if os.environ.get("LEUKEMIA_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        message = text[0] if text else type(exc).__name__
        if type(exc).__module__.startswith("leukemia.") and len(text) > 1:
            message = "\n".join(text)  # our own messages: every line is meant for the user
        if isinstance(exc, (FileNotFoundError, PermissionError)) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"leukemia: error{where}: {message}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _quiet_unless(root: bool) -> Iterator[None]:
    """Standard output of ranks other than 0 goes nowhere (rank 0 prints the results)."""
    if root:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
