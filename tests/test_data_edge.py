"""Edge cases of the C-NMC reader: odd directory entries and an inconsistent labels CSV."""

from __future__ import annotations

import pytest

from leukemia.data import DatasetError, load_dataset, write_cnmc


@pytest.fixture()
def tree(tmp_path):
    res = write_cnmc(tmp_path / "d", n_subjects=4, cells_per_subject=3, size=32, seed=1, workers=1)
    return res.root


def test_links_and_folders_named_like_images_are_reported(tree):
    folder = next((tree / "training_data").glob("fold_*/all"))
    (folder / "UID_99_1_1_all.bmp").mkdir()
    (folder / "UID_98_1_1_all.bmp").symlink_to(folder / "does_not_exist.bmp")
    ds = load_dataset(tree)
    reasons = {b.path.name: b.reason for b in ds.bad}
    assert "folder" in reasons["UID_99_1_1_all.bmp"]
    assert "broken link" in reasons["UID_98_1_1_all.bmp"]
    assert all(s.path.name not in reasons for s in ds)


def _csv(tree):
    return next(tree.rglob("C-NMC_test_prelim_phase_data_labels.csv"))


def test_duplicate_csv_row_is_an_error(tree):
    csv = _csv(tree)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DatasetError, match="listed twice"):
        load_dataset(tree)


def test_csv_label_contradicting_patient_id_is_an_error(tree):
    csv = _csv(tree)
    lines = csv.read_text().splitlines()
    pid, name, label = lines[1].split(",")
    lines[1] = ",".join([pid, name, "0" if label.strip() == "1" else "1"])
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="contradicts"):
        load_dataset(tree)


def test_loader_can_skip_and_collect_bad_images(tree):
    from leukemia.data import DataLoader, LoaderError
    from leukemia.data.transforms import eval_transform

    ds = load_dataset(tree)
    samples = ds.labelled()[:9]
    samples[0].path.write_bytes(b"BM not really")  # broken after the data set was read
    samples[4].path.write_bytes(b"")
    for workers in (0, 2):
        with DataLoader(
            samples, eval_transform(32), batch_size=4, num_workers=workers, on_error="skip"
        ) as dl:
            got = [len(y) for _, y in dl]
            assert sum(got) == 7 and all(x.shape[1:] == (3, 32, 32) for x, _ in dl)
            assert sorted(b.path.name for b in dl.bad[:2]) == sorted(
                [samples[0].path.name, samples[4].path.name]
            )
        with DataLoader(samples, eval_transform(32), batch_size=4, num_workers=workers) as dl:
            with pytest.raises(LoaderError, match=samples[0].path.name):
                list(dl)
    with pytest.raises(ValueError, match="on_error"):
        DataLoader(samples, eval_transform(32), on_error="ignore")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda T: T.eval_transform("32"), "size"),
        (lambda T: T.eval_transform(0), "size"),
        (lambda T: T.eval_transform(-5), "size"),
        (lambda T: T.eval_transform(32, std=(0, 1, 1)), "std"),
        (lambda T: T.eval_transform(32, mean=(0.5, 0.5)), "3 values"),
        (lambda T: T.train_transform(32, scale=(1.5, 0.2)), "scale"),
        (lambda T: T.train_transform(32, scale=(0.9, 0.2)), "low <= high"),
        (lambda T: T.train_transform(32, stain=-1), "stain"),
        (lambda T: T.train_transform(32, color=float("nan")), "color"),
        (lambda T: T.Resize(32, interpolation="cubic"), "interpolation"),
        (lambda T: T.RandomFlip(horizontal=2), "horizontal"),
    ],
)
def test_transform_arguments_are_checked(make, match):
    from leukemia.data import transforms

    with pytest.raises(ValueError, match=match):
        make(transforms)


def test_eval_transform_needs_no_rng_and_checks_images():
    import numpy as np

    from leukemia.data.transforms import eval_transform

    t = eval_transform(16)
    img = np.zeros((20, 24, 3), np.uint8)
    assert t(img).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        t(img.astype(np.float32))


def test_write_cnmc_refuses_a_non_empty_folder(tree):
    with pytest.raises(ValueError, match="not empty"):
        write_cnmc(tree, n_subjects=2, cells_per_subject=1, size=32)
    write_cnmc(tree, n_subjects=2, cells_per_subject=1, size=32, overwrite=True)
    ds = load_dataset(tree)
    assert len(ds) == 2 and not ds.bad  # nothing of the earlier data set remains
    with pytest.raises(ValueError, match="8..4096"):
        write_cnmc(tree / "big", size=100_000)


def test_data_api_argument_checks(tree):
    import numpy as np

    from leukemia.data import (
        SplitError,
        check_image,
        check_leakage,
        image_hash,
        patient_kfold,
        patient_split,
    )
    from leukemia.data.synthetic import make_subjects, render_cell

    ds = load_dataset(tree)
    lab = ds.labelled()
    for bad in ("0.2", -0.1, 1.0, True):
        with pytest.raises(SplitError, match="test_fraction"):
            patient_split(lab, test_fraction=bad)  # type: ignore[arg-type]
    with pytest.raises(SplitError, match="seed"):
        patient_split(lab, seed=-1)
    with pytest.raises(SplitError, match="k must be"):
        patient_kfold(lab, k="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_distance"):
        check_leakage(lab[:2], lab[2:4], max_distance=-1)
    with pytest.raises(ValueError, match="all_fraction"):
        make_subjects(4, all_fraction=2)
    with pytest.raises(TypeError, match="Generator"):
        render_cell(make_subjects(2)[0], 0, 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_hash"):
        image_hash(np.zeros(5, np.uint8))
    reason, _ = check_image(str(lab[0].path))
    assert reason is None
