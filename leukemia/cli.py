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
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


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
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator form of :func:`register` for a ``run(args) -> int`` function."""

    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        register(Command(name, help, add_arguments, run, description))
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


_SYNTH_DIRS = ("training_data", "validation_data", "testing_data")


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
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise CLIError(f"{out} is not empty; choose another folder or pass --force")
    # Render into a hidden sibling and move it into place at the end, so that an
    # interrupted or failed run leaves OUT as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
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
    try:
        res = write_cnmc(
            tmp,
            args.subjects,
            args.cells_per_subject,
            args.size,
            args.seed,
            workers=args.workers,
            progress=(lambda done, total: bar.update(1)) if bar else None,
        )
        out.mkdir(exist_ok=True)
        for name in _SYNTH_DIRS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
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
    if args.models:
        from .models import ARCHS, EfficientNet

        for arch in ARCHS:
            m = EfficientNet(arch, 1000)
            print(
                f"{arch:18s} {m.num_parameters():>11,} parameters (1000 classes), "
                f"default input {m.default_size}x{m.default_size}"
            )
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
    """Run the command line; returns the exit status (0 ok, 1 runtime error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help/--version (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "_run", None) is None:
        parser.print_usage(sys.stderr)
        print("leukemia: error: a COMMAND is required (see leukemia --help)", file=sys.stderr)
        return 2
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("leukemia: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
        if os.environ.get("LEUKEMIA_DEBUG"):
            raise
        text = str(exc).strip().splitlines()
        message = text[0] if text else type(exc).__name__
        if isinstance(exc, (FileNotFoundError, PermissionError)) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"leukemia: error: {message}", file=sys.stderr)
        return 1
