"""Train/test splits that keep patients apart, and a leakage check.

Cells of one patient share stain, focus and morphology, so a split that puts cells of the
same patient on both sides measures how well a model recognises *patients*, not blasts:
image-level random splits on C-NMC give ~99 % accuracy while honest patient-wise splits
give ~0.86-0.92 weighted F1.  :func:`patient_split` (the default) never shares a subject;
:func:`image_split` exists for comparison and is marked ``leaky``; :func:`check_leakage`
finds shared subjects and near-duplicate images in any pair of sample lists.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .._util import is_int
from .datasets import CNMC_FOLDS, Sample, _natural, image_hash

__all__ = [
    "LeakageReport",
    "Split",
    "SplitError",
    "check_leakage",
    "cnmc_folds",
    "image_split",
    "make_split",
    "patient_kfold",
    "patient_split",
]


class SplitError(ValueError):
    """A split cannot be made as asked (no subject ids, too few subjects, ...)."""


@dataclass(frozen=True)
class Split:
    """Two disjoint sample lists and how they were made.

    Attributes:
        train: samples to fit on.
        test: samples to evaluate on (validation or test).
        kind: ``"patient-wise"``, ``"cnmc-fold"`` or ``"image-level"``.
        leaky: True when subjects may appear on both sides (image-level splits).
        description: one line for logs, e.g. ``"patient-wise, seed 0, test 20 %"``.
    """

    train: list[Sample]
    test: list[Sample]
    kind: str
    leaky: bool = False
    description: str = ""

    def summary(self) -> str:
        """Counts per side: images per class and subjects."""
        lines = [f"Split: {self.description or self.kind}"]
        if self.leaky:
            lines.append(
                "WARNING: image-level split - the same patients appear in train and "
                "test, so scores are inflated (leaky). Use a patient-wise split."
            )
        for name, part in (("train", self.train), ("test", self.test)):
            c = Counter(s.label for s in part)
            subj = len({s.subject for s in part if s.subject is not None})
            lines.append(
                f"  {name:5s}: {len(part):6d} images  (all {c.get(1, 0)}, "
                f"hem {c.get(0, 0)})  {subj} subjects"
            )
        return "\n".join(lines)


def _labelled(samples: Sequence[Sample]) -> list[Sample]:
    out = [s for s in samples if s.label is not None]
    if not out:
        raise SplitError("no labelled samples to split")
    return out


def _subject_groups(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    missing = sum(1 for s in samples if s.subject is None)
    if missing:
        raise SplitError(
            f"{missing} of {len(samples)} samples have no subject id, so a "
            "patient-wise split is impossible; use image_split (leaky) or a "
            "layout with subject ids"
        )
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.subject].append(s)  # type: ignore[index]
    return groups


def _subject_label(group: Sequence[Sample]) -> int:
    """Majority label of a subject (C-NMC subjects are all-ALL or all-HEM)."""
    return Counter(s.label for s in group).most_common(1)[0][0]  # type: ignore[return-value]


def _check_fraction(test_fraction: object) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float, np.floating))
        or not 0.0 < float(test_fraction) < 1.0
    ):
        raise SplitError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")


def _check_seed(seed: object) -> None:
    if not is_int(seed) or seed < 0:  # type: ignore[operator]
        raise SplitError(f"seed must be a non-negative int, got {seed!r}")


def patient_split(
    samples: Sequence[Sample], test_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> Split:
    """Split by subject so that no patient is on both sides (the default split).

    Subjects are shuffled with ``seed`` and, separately per class when ``stratify``,
    moved to the test side until it holds about ``test_fraction`` of that class's images.
    Each class with at least two subjects keeps at least one subject on each side.
    Unlabelled samples are ignored.

    Raises:
        SplitError: samples without subject ids, or fewer than two subjects.
    """
    _check_fraction(test_fraction)
    _check_seed(seed)
    groups = _subject_groups(_labelled(samples))
    if len(groups) < 2:
        raise SplitError(f"a patient-wise split needs at least two subjects, found {len(groups)}")
    rng = np.random.default_rng(seed)
    strata: dict[int, list[str]] = defaultdict(list)
    for subj in sorted(groups):
        strata[_subject_label(groups[subj]) if stratify else 0].append(subj)
    test_subjects: set[str] = set()
    for key in sorted(strata):
        subjects = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        total = sum(len(groups[s]) for s in subjects)
        target = test_fraction * total
        taken = 0
        chosen: list[str] = []
        for subj in subjects:
            n = len(groups[subj])
            if abs(taken + n - target) < abs(taken - target) and len(chosen) < len(subjects) - 1:
                chosen.append(subj)
                taken += n
        if not chosen and len(subjects) >= 2:
            chosen.append(min(subjects, key=lambda s: abs(len(groups[s]) - target)))
        test_subjects.update(chosen)
    if not test_subjects:  # one subject per stratum: fall back to unstratified
        order = sorted(groups)
        test_subjects.add(order[int(rng.integers(len(order)))])
    train = [s for subj in sorted(groups) if subj not in test_subjects for s in groups[subj]]
    test = [s for subj in sorted(groups) if subj in test_subjects for s in groups[subj]]
    return Split(
        train,
        test,
        "patient-wise",
        False,
        f"patient-wise, seed {seed}, test {test_fraction:.0%}"
        f"{', stratified by class' if stratify else ''}",
    )


def patient_kfold(samples: Sequence[Sample], k: int = 5, seed: int = 0) -> list[Split]:
    """Patient-wise, class-stratified k-fold cross-validation.

    Subjects of each class are shuffled and dealt, largest first, to the fold that holds
    the fewest images of that class, so folds are balanced in images and classes.
    """
    if not is_int(k) or k < 2:  # type: ignore[operator]
        raise SplitError(f"k must be an int >= 2, got {k!r}")
    _check_seed(seed)
    groups = _subject_groups(_labelled(samples))
    if len(groups) < k:
        raise SplitError(f"{k}-fold needs at least {k} subjects, found {len(groups)}")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    strata: dict[int, list[str]] = defaultdict(list)
    for subj in sorted(groups):
        strata[_subject_label(groups[subj])].append(subj)
    for key in sorted(strata):
        subjects = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        subjects.sort(key=lambda s: -len(groups[s]))  # stable: ties keep the shuffle
        load = np.zeros(k)
        offset = int(rng.integers(k))
        for subj in subjects:
            f = min(range(k), key=lambda i: (load[i], (i - offset) % k))
            fold_of[subj] = f
            load[f] += len(groups[subj])
    splits = []
    for f in range(k):
        test = [s for subj in sorted(groups) if fold_of[subj] == f for s in groups[subj]]
        train = [s for subj in sorted(groups) if fold_of[subj] != f for s in groups[subj]]
        splits.append(
            Split(
                train, test, "patient-wise", False, f"patient-wise {k}-fold, fold {f}, seed {seed}"
            )
        )
    return splits


def cnmc_folds(samples: Sequence[Sample]) -> list[Split]:
    """C-NMC's own training folds as 3-fold cross-validation (test = one fold).

    Only samples whose ``fold`` is ``fold_0``, ``fold_1`` or ``fold_2`` are used.
    """
    by_fold = {f: [s for s in samples if s.fold == f and s.label is not None] for f in CNMC_FOLDS}
    present = [f for f in CNMC_FOLDS if by_fold[f]]
    if len(present) < 2:
        raise SplitError(
            f"C-NMC fold cross-validation needs at least two non-empty training "
            f"folds, found {present or 'none'}"
        )
    return [
        Split(
            [s for g in present if g != f for s in by_fold[g]],
            by_fold[f],
            "cnmc-fold",
            False,
            f"C-NMC official folds, test = {f}",
        )
        for f in present
    ]


def image_split(samples: Sequence[Sample], test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Random image-level split, stratified by class.  LEAKY: patients end up on both sides.

    Only for comparison with published image-level numbers; the returned split has
    ``leaky=True`` and says so in its description.
    """
    _check_fraction(test_fraction)
    _check_seed(seed)
    items = _labelled(samples)
    rng = np.random.default_rng(seed)
    test_idx: set[int] = set()
    for label in sorted({s.label for s in items}):  # type: ignore[type-var]
        idx = [i for i, s in enumerate(items) if s.label == label]
        perm = rng.permutation(len(idx))
        n = int(round(test_fraction * len(idx)))
        test_idx.update(idx[j] for j in perm[:n])
    train = [s for i, s in enumerate(items) if i not in test_idx]
    test = [s for i, s in enumerate(items) if i in test_idx]
    return Split(
        train,
        test,
        "image-level",
        True,
        f"image-level (LEAKY: subjects shared between train and test), seed {seed}, "
        f"test {test_fraction:.0%}",
    )


def make_split(
    samples: Sequence[Sample], policy: str = "patient", test_fraction: float = 0.2, seed: int = 0
) -> Split:
    """``policy="patient"`` (default) -> :func:`patient_split`; ``"image"`` -> leaky split."""
    if policy == "patient":
        return patient_split(samples, test_fraction, seed)
    if policy == "image":
        return image_split(samples, test_fraction, seed)
    raise SplitError(f"unknown split policy {policy!r}; use 'patient' or 'image'")


# --------------------------------------------------------------------------- leakage


@dataclass
class LeakageReport:
    """What :func:`check_leakage` found.

    Attributes:
        shared_subjects: subject ids present on both sides.
        near_duplicates: ``(train_path, test_path, distance)`` for image pairs whose
            perceptual hashes are within ``max_distance``.
        images_checked: whether images were compared at all.
        max_distance: the threshold used.
    """

    shared_subjects: list[str] = field(default_factory=list)
    near_duplicates: list[tuple[Path, Path, float]] = field(default_factory=list)
    images_checked: bool = False
    max_distance: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no subject is shared and no near-duplicate image was found."""
        return not self.shared_subjects and not self.near_duplicates

    def __str__(self) -> str:
        if self.ok:
            extra = (
                f", no near-duplicate images (hash distance <= {self.max_distance:g})"
                if self.images_checked
                else " (images not compared)"
            )
            return f"Leakage check: OK - no subject shared between train and test{extra}"
        lines = ["Leakage check: LEAKAGE FOUND"]
        if self.shared_subjects:
            shown = ", ".join(self.shared_subjects[:20])
            more = "" if len(self.shared_subjects) <= 20 else ", ..."
            lines.append(
                f"  {len(self.shared_subjects)} subject(s) in both train and test: {shown}{more}"
            )
        if self.near_duplicates:
            lines.append(f"  {len(self.near_duplicates)} near-duplicate image pair(s):")
            for a, b, d in self.near_duplicates[:20]:
                lines.append(f"    {a}  ~  {b}  (distance {d:.4f})")
            if len(self.near_duplicates) > 20:
                lines.append("    ...")
        return "\n".join(lines)


def _hashes_for(samples: Sequence[Sample], known: Mapping[Path, np.ndarray]) -> np.ndarray:
    def one(s: Sample) -> np.ndarray:
        h = known.get(s.path)
        if h is None:
            with Image.open(s.path) as im:
                h = image_hash(im)
        return h

    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(one, samples))) if samples else np.zeros((0, 256), np.float32)


def check_leakage(
    train: Sequence[Sample],
    test: Sequence[Sample],
    *,
    images: bool = True,
    max_distance: float = 0.002,
    hashes: Mapping[Path, np.ndarray] | None = None,
) -> LeakageReport:
    """Report subjects and near-duplicate images shared by ``train`` and ``test``.

    Args:
        train, test: the two sides of a split (any sample lists).
        images: also compare images by :func:`~leukemia.data.datasets.image_hash`
            (reads every image unless its hash is in ``hashes``).
        max_distance: pairs with ``1 - cosine(hash_a, hash_b)`` at most this are
            near-duplicates.
        hashes: precomputed hashes, e.g. :attr:`Dataset.hashes`.
    """
    if not 0.0 <= max_distance <= 2.0:
        raise ValueError(f"max_distance must be in [0, 2], got {max_distance!r}")
    a = {s.subject for s in train if s.subject is not None}
    b = {s.subject for s in test if s.subject is not None}
    report = LeakageReport(sorted(a & b, key=_natural), [], images, max_distance)
    if images and train and test:
        ha = _hashes_for(train, hashes or {})
        hb = _hashes_for(test, hashes or {})
        chunk = max(1, 4_000_000 // max(1, len(ha)))
        for start in range(0, len(hb), chunk):
            block = hb[start : start + chunk]
            dist = 1.0 - block @ ha.T
            for j, i in zip(*np.nonzero(dist <= max_distance), strict=True):
                report.near_duplicates.append(
                    (train[i].path, test[start + j].path, float(dist[j, i]))
                )
    return report
