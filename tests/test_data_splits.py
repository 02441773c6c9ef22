"""Splits: patient-wise (default), C-NMC folds, leaky image-level, and the leakage check."""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_data import save_rgb  # noqa: E402

from leukemia.data import (  # noqa: E402
    Sample,
    SplitError,
    check_leakage,
    cnmc_folds,
    image_split,
    make_split,
    patient_kfold,
    patient_split,
)


def _samples(n_subjects: int = 30, seed: int = 0) -> list[Sample]:
    """Fake C-NMC-like samples (no files): ~2/3 ALL subjects, 20-120 cells each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_subjects):
        label = 1 if i % 3 else 0
        subj = str(i) if label else f"H{i}"
        fold = f"fold_{i % 3}"
        for c in range(int(rng.integers(20, 120))):
            out.append(Sample(Path(f"{subj}_{c}.bmp"), label, subj, fold))
    return out


def test_patient_split_never_shares_subjects_over_many_seeds() -> None:
    samples = _samples()
    per_class = Counter(s.label for s in samples)
    for seed in range(50):
        sp = patient_split(samples, 0.2, seed)
        assert not sp.leaky and sp.kind == "patient-wise"
        train_subj = {s.subject for s in sp.train}
        test_subj = {s.subject for s in sp.test}
        assert not train_subj & test_subj
        assert len(sp.train) + len(sp.test) == len(samples)
        test_counts = Counter(s.label for s in sp.test)
        for label, n in per_class.items():
            assert abs(test_counts[label] / n - 0.2) < 0.08, (seed, label, test_counts)
        assert check_leakage(sp.train, sp.test, images=False).ok


def test_patient_split_is_seeded() -> None:
    samples = _samples()
    a, b = patient_split(samples, 0.2, 7), patient_split(samples, 0.2, 7)
    assert [s.path for s in a.test] == [s.path for s in b.test]
    tests = {frozenset(s.subject for s in patient_split(samples, 0.2, k).test) for k in range(10)}
    assert len(tests) > 3


def test_patient_split_small_and_errors() -> None:
    tiny = [
        Sample(Path("a"), 1, "1"),
        Sample(Path("b"), 1, "2"),
        Sample(Path("c"), 0, "H1"),
        Sample(Path("d"), 0, "H2"),
    ]
    sp = patient_split(tiny, 0.3, 0)
    assert {s.label for s in sp.test} == {0, 1} and {s.label for s in sp.train} == {0, 1}
    with pytest.raises(SplitError, match="no subject id"):
        patient_split([Sample(Path("a"), 1, None), Sample(Path("b"), 0, None)])
    with pytest.raises(SplitError, match="at least two subjects"):
        patient_split([Sample(Path("a"), 1, "1")])
    with pytest.raises(SplitError):
        patient_split(tiny, 1.5)


def test_unlabelled_samples_are_ignored() -> None:
    samples = _samples(9) + [Sample(Path("f.bmp"), None, None, "final")]
    sp = patient_split(samples, 0.2, 0)
    assert all(s.label is not None for s in sp.train + sp.test)


def test_patient_kfold() -> None:
    samples = _samples()
    folds = patient_kfold(samples, 5, seed=3)
    seen: Counter[str] = Counter()
    sizes = []
    for sp in folds:
        assert not {s.subject for s in sp.train} & {s.subject for s in sp.test}
        seen.update({s.subject for s in sp.test})
        sizes.append(len(sp.test))
        assert {s.label for s in sp.test} == {0, 1}
    assert set(seen.values()) == {1} and len(seen) == 30
    assert max(sizes) / min(sizes) < 1.5


def test_cnmc_folds_as_cross_validation() -> None:
    samples = _samples() + [Sample(Path("p.bmp"), 1, "P", "prelim")]
    folds = cnmc_folds(samples)
    assert [sp.description.split()[-1] for sp in folds] == ["fold_0", "fold_1", "fold_2"]
    for sp in folds:
        assert sp.kind == "cnmc-fold"
        assert len({s.fold for s in sp.test}) == 1
        assert sp.test[0].fold not in {s.fold for s in sp.train}
        assert "prelim" not in {s.fold for s in sp.train}
    with pytest.raises(SplitError):
        cnmc_folds([s for s in samples if s.fold == "fold_0"])


def test_image_split_is_labelled_leaky_and_leaks() -> None:
    samples = _samples()
    sp = image_split(samples, 0.2, 0)
    assert sp.leaky and "LEAKY" in sp.description and "WARNING" in sp.summary()
    report = check_leakage(sp.train, sp.test, images=False)
    assert not report.ok and len(report.shared_subjects) > 20
    assert "LEAKAGE" in str(report)
    counts = Counter(s.label for s in sp.test)
    total = Counter(s.label for s in samples)
    for label in total:
        assert abs(counts[label] / total[label] - 0.2) < 0.01
    assert make_split(samples, "image", 0.2, 0).leaky
    assert not make_split(samples).leaky
    with pytest.raises(SplitError):
        make_split(samples, "random")


def test_check_leakage_finds_near_duplicate_images(tmp_path: Path) -> None:
    train = [Sample(save_rgb(tmp_path / f"tr{i}.bmp", 96, seed=i), 1, f"s{i}") for i in range(8)]
    test = [
        Sample(save_rgb(tmp_path / f"te{i}.bmp", 96, seed=100 + i), 1, f"t{i}") for i in range(4)
    ]
    clean = check_leakage(train, test)
    assert clean.ok and clean.images_checked and "OK" in str(clean)
    # A re-encoded, resized and brightened copy of a training image.
    src = Image.open(train[3].path).convert("RGB")
    buf = io.BytesIO()
    src.resize((80, 80)).save(buf, "JPEG", quality=85)
    dup = Image.open(buf).convert("RGB").point(lambda v: min(255, int(v * 1.05)))
    dup_path = tmp_path / "dup.png"
    dup.save(dup_path)
    report = check_leakage(train, [*test, Sample(dup_path, 1, "new")])
    assert not report.shared_subjects
    assert [(a.name, b.name) for a, b, _ in report.near_duplicates] == [("tr3.bmp", "dup.png")]
    assert "near-duplicate" in str(report)
