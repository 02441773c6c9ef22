"""Synthetic renderer: C-NMC layout, determinism, speed, separable-but-not-trivially classes,
measurable per-subject variation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from leukemia.data import ALL, HEM, load_dataset, make_subjects, parse_cnmc_name, render_cell
from leukemia.data.synthetic import write_cnmc


def _features(size: int, n_subjects: int, cells: int, seed: int):  # noqa: ANN202
    """Per image: mean RGB, mean RGB of the cell, morphology; with labels and subjects."""
    mean_rgb, fg_rgb, morph, labels, subjects = [], [], [], [], []
    for si, st in enumerate(make_subjects(n_subjects, seed)):
        for ci in range(cells):
            im = render_cell(st, np.random.default_rng([seed, si, ci]), size).astype(float)
            fg = im.max(2) > 0
            g = im[..., 1][fg]
            lo, hi = np.percentile(g, 5), np.percentile(g, 95)
            nuc = g < (lo + hi) / 2
            mean_rgb.append(im.reshape(-1, 3).mean(0))
            fg_rgb.append(im[fg].mean(0))
            morph.append(
                [
                    np.log(fg.sum()),
                    nuc.mean(),
                    g[nuc].std() / g[nuc].mean(),
                    g[nuc].mean() / g[~nuc].mean(),
                ]
            )
            labels.append(st.label)
            subjects.append(si)
    return (
        np.array(mean_rgb),
        np.array(fg_rgb),
        np.array(morph),
        np.array(labels),
        np.array(subjects),
    )


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
    z = (x - mu) / sd
    c0, c1 = z[train & (y == 0)].mean(0), z[train & (y == 1)].mean(0)
    pred = (np.linalg.norm(z - c1, axis=1) < np.linalg.norm(z - c0, axis=1)).astype(int)
    return float((pred[~train] == y[~train]).mean())


@pytest.fixture(scope="module")
def features():  # noqa: ANN201
    return [_features(64, 16, 12, seed) for seed in (0, 1)]


def test_mean_colour_alone_does_not_separate_classes(features) -> None:  # noqa: ANN001
    for mean_rgb, fg_rgb, _, y, subj in features:
        train = subj % 2 == 0  # train on half of the subjects, test on the others
        assert _nearest_centroid_accuracy(mean_rgb, y, train) < 0.95
        assert _nearest_centroid_accuracy(fg_rgb, y, train) < 0.95


def test_morphology_separates_classes(features) -> None:  # noqa: ANN001
    accs = [_nearest_centroid_accuracy(m, y, subj % 2 == 0) for _, _, m, y, subj in features]
    assert np.mean(accs) > 0.8


def test_per_subject_variation_is_measurable(features) -> None:  # noqa: ANN001
    for _, fg_rgb, _, _, subj in features:
        ids = np.unique(subj)
        means = np.array([fg_rgb[subj == s].mean(0) for s in ids])
        within = np.mean([fg_rgb[subj == s].var(0, ddof=1).mean() for s in ids])
        cells = len(fg_rgb) // len(ids)
        f_ratio = cells * means.var(0, ddof=1).mean() / within  # one-way ANOVA F
        assert f_ratio > 5.0


def test_render_cell_basic_properties() -> None:
    st = make_subjects(4, 0)
    for size in (32, 64, 450):
        img = render_cell(st[0], np.random.default_rng(1), size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        k = max(2, size // 20)
        assert img[:k, :k].max() == 0 and img[-k:, -k:].max() == 0
        assert (img.max(2) > 0).mean() > 0.1
    a = render_cell(st[1], np.random.default_rng(7), 64)
    np.testing.assert_array_equal(a, render_cell(st[1], np.random.default_rng(7), 64))
    blast = np.mean(
        [(render_cell(st[0], np.random.default_rng(i), 64).max(2) > 0).sum() for i in range(20)]
    )
    normal = np.mean(
        [(render_cell(st[-1], np.random.default_rng(i), 64).max(2) > 0).sum() for i in range(20)]
    )
    assert blast > normal  # blasts are larger on average
    assert [s.subject for s in st] == ["1", "2", "3", "H1"]


def test_write_cnmc_layout_and_determinism(tmp_path: Path) -> None:
    res = write_cnmc(tmp_path / "a", n_subjects=10, cells_per_subject=6, size=32, seed=4)
    root = res.root
    assert res.n_images == 60
    train_files = sorted((root / "training_data").rglob("*.bmp"))
    for p in train_files:
        parsed = parse_cnmc_name(p.name)
        assert parsed is not None and p.parent.name == ("all" if parsed[1] == ALL else "hem")
        assert p.parent.parent.name == res.folds[parsed[0]]
    prelim = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    with open(root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["Patient_ID", "new_names", "labels"]
    assert sorted(int(r["new_names"].split(".")[0]) for r in rows) == list(range(1, len(rows) + 1))
    assert {p.name for p in prelim.iterdir()} == {r["new_names"] for r in rows}
    for r in rows:
        parsed = parse_cnmc_name(r["Patient_ID"])
        assert parsed is not None and res.folds[parsed[0]] == "prelim"
        assert int(r["labels"]) == parsed[1]
    final = list((root / "testing_data" / "C-NMC_test_final_phase_data").iterdir())
    assert final and all(p.stem.isdigit() for p in final)
    assert len(train_files) + len(rows) + len(final) == 60
    # Subjects never span two folds; both classes present in training.
    ds = load_dataset(root)
    by_subject: dict[str, set[str]] = {}
    for s in ds:
        if s.subject:
            by_subject.setdefault(s.subject, set()).add(s.fold)
    assert all(len(f) == 1 for f in by_subject.values())
    assert {s.label for s in ds.in_folds("fold_0", "fold_1", "fold_2")} == {ALL, HEM}
    # Same seed -> same bytes, whatever the worker count.
    again = write_cnmc(tmp_path / "b", 10, 6, 32, 4, workers=1)
    for p in train_files[:5]:
        assert (again.root / p.relative_to(root)).read_bytes() == p.read_bytes()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_cnmc(tmp_path, n_subjects=1)
    with pytest.raises(ValueError):
        write_cnmc(tmp_path, cells_per_subject=0)
    with pytest.raises(ValueError):
        make_subjects(0)
