"""Readers: C-NMC, ALL-IDB2 and class-folder layouts, bad files, empty folders."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_data import (  # noqa: E402
    count_files,
    save_corrupt,
    save_gray,
    save_rgb,
    save_truncated,
    save_zero,
)

from leukemia.data import (  # noqa: E402
    ALL,
    HEM,
    DatasetError,
    detect_layout,
    load_dataset,
    parse_cnmc_name,
    read_cnmc,
    write_cnmc,
)

CSV = "C-NMC_test_prelim_phase_data_labels.csv"


@pytest.fixture(scope="module")
def cnmc_clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("cnmc") / "C-NMC_Leukemia"
    res = write_cnmc(root, n_subjects=8, cells_per_subject=4, size=32, seed=1, workers=1)
    return root, res


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_parse_cnmc_name() -> None:
    assert parse_cnmc_name("UID_H10_14_1_hem.bmp") == ("H10", HEM)
    assert parse_cnmc_name("UID_57_29_1_all.bmp") == ("57", ALL)
    assert parse_cnmc_name("uid_h3_1_2_HEM.bmp") == ("H3", HEM)
    assert parse_cnmc_name("1.bmp") is None
    assert parse_cnmc_name("UID_57_29_all.bmp") is None


def test_cnmc_reads_folds_prelim_and_final(cnmc_clean: tuple[Path, object]) -> None:
    root, res = cnmc_clean
    ds = load_dataset(root)
    assert ds.layout == "cnmc" and not ds.bad
    assert len(ds) == res.n_images == count_files(root)
    for s in ds:
        fold = res.folds.get(s.subject) if s.subject else "final"
        assert s.fold == fold
        if s.fold and s.fold.startswith("fold_"):
            assert s.path.parent.name == ("all" if s.label == ALL else "hem")
            assert (s.subject.startswith("H")) == (s.label == HEM)
    prelim = ds.in_folds("prelim")
    assert prelim and all(s.subject is not None and s.label is not None for s in prelim)
    assert all(s.path.stem.isdigit() for s in prelim)
    final = ds.in_folds("final")
    assert final and all(s.label is None for s in final)
    assert len(ds.labelled()) == len(ds) - len(final)
    assert len(ds.hashes) == len(ds)


def test_cnmc_parent_folder_is_detected(cnmc_clean: tuple[Path, object]) -> None:
    root, _ = cnmc_clean
    assert detect_layout(root) == "cnmc"
    assert detect_layout(root.parent) == "cnmc"
    assert len(load_dataset(root.parent)) == len(load_dataset(root))


def test_cnmc_bad_files_are_reported_not_dropped(
    cnmc_clean: tuple[Path, object], tmp_path: Path
) -> None:
    root = _copy(cnmc_clean[0], tmp_path / "c")
    f0 = root / "training_data" / "fold_0"
    bad = {
        save_corrupt(f0 / "all" / "UID_90_1_1_all.bmp"): "",
        save_zero(f0 / "all" / "UID_90_1_2_all.bmp"): "empty file",
        save_gray(f0 / "hem" / "UID_H90_1_3_hem.bmp"): "mode L",
        save_truncated(f0 / "hem" / "UID_H90_1_4_hem.bmp"): "truncated",
        save_rgb(f0 / "all" / "UID_H91_1_1_hem.bmp"): "folder",
        save_rgb(f0 / "all" / "cell.bmp"): "name does not match",
    }
    # CSV with a missing row, and a row for a file that does not exist.
    csv_path = root / "validation_data" / CSV
    rows = list(csv.reader(csv_path.open()))
    dropped = rows.pop(1)
    rows.append(["UID_99_1_1_all.bmp", "9999.bmp", "1"])
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    prelim_dir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    bad[prelim_dir / dropped[1]] = "no row"
    bad[prelim_dir / "9999.bmp"] = "file is missing"

    ds = load_dataset(root)
    reasons = {b.path: b.reason for b in ds.bad}
    assert set(reasons) == set(bad)
    for path, word in bad.items():
        assert word in reasons[path], (path, reasons[path])
    # Nothing silently dropped: every file on disk is a sample or a reported bad file.
    assert len(ds) + len(ds.bad) - 1 == count_files(root)  # -1: the CSV-only row
    report = ds.summary()
    for path in bad:
        assert str(path.relative_to(root)) in report


def test_cnmc_malformed_csv_is_an_error(cnmc_clean: tuple[Path, object], tmp_path: Path) -> None:
    root = _copy(cnmc_clean[0], tmp_path / "c")
    (root / "validation_data" / CSV).write_text("name,label\n1.bmp,1\n")
    with pytest.raises(DatasetError, match="Patient_ID,new_names,labels"):
        read_cnmc(root)


def test_cnmc_empty_structure_names_folder_and_layout(tmp_path: Path) -> None:
    for fold in ("fold_0", "fold_1", "fold_2"):
        (tmp_path / "training_data" / fold / "all").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert str(tmp_path) in str(err.value) and "fold_{0,1,2}" in str(err.value)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "C-NMC" in msg and "ALL-IDB2" in msg
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "missing")


def test_all_bad_images_is_an_error(tmp_path: Path) -> None:
    save_zero(tmp_path / "all" / "a.png")
    save_gray(tmp_path / "hem" / "b.png")
    with pytest.raises(DatasetError, match="no usable images.*2 rejected"):
        load_dataset(tmp_path)


def test_all_idb2(tmp_path: Path) -> None:
    img = tmp_path / "img"
    for i in range(1, 7):
        save_rgb(img / f"Im{i:03d}_{i % 2}.tif", seed=i)
    save_zero(img / "Im007_1.tif")
    save_gray(img / "Im008_0.tif")
    save_corrupt(img / "Im009_1.tif")
    save_truncated(img / "Im010_0.tif", fmt="TIFF")
    (img / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "all-idb2"
    ds = load_dataset(tmp_path)
    assert ds.layout == "all-idb2"
    assert [s.label for s in ds] == [1, 0, 1, 0, 1, 0]
    assert all(s.subject is None and s.fold is None for s in ds)
    assert sorted(b.path.name for b in ds.bad) == [
        "Im007_1.tif",
        "Im008_0.tif",
        "Im009_1.tif",
        "Im010_0.tif",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(empty, "all-idb2")


def test_class_folders(tmp_path: Path) -> None:
    for i in range(3):
        save_rgb(tmp_path / "all" / f"a{i}.png", seed=i)
        save_rgb(tmp_path / "hem" / f"h{i}.jpg", seed=10 + i)
    save_rgb(tmp_path / "hem" / "UID_H5_1_1_hem.bmp")
    save_zero(tmp_path / "all" / "z.png")
    save_gray(tmp_path / "hem" / "g.png")
    save_corrupt(tmp_path / "all" / "c.bmp")
    save_truncated(tmp_path / "hem" / "t.bmp")
    assert detect_layout(tmp_path) == "folders"
    ds = load_dataset(tmp_path)
    assert ds.class_names == ("hem", "all")
    assert sum(s.label == ALL for s in ds) == 3 and sum(s.label == HEM for s in ds) == 4
    assert {s.subject for s in ds} == {None, "H5"}
    assert {b.path.name for b in ds.bad} == {"z.png", "g.png", "c.bmp", "t.bmp"}
    assert "g.png: mode L (grayscale), expected RGB" in ds.bad_report()


def test_class_folders_with_subjects_and_other_names(tmp_path: Path) -> None:
    for cls in ("benign", "malignant"):
        for subj in ("p1", "p2"):
            save_rgb(tmp_path / cls / subj / "x.png")
    ds = load_dataset(tmp_path, "folders")
    assert ds.class_names == ("benign", "malignant")
    assert {(s.label, s.subject) for s in ds} == {(0, "p1"), (0, "p2"), (1, "p1"), (1, "p2")}


def test_grayscale_accepted_when_asked(tmp_path: Path) -> None:
    save_gray(tmp_path / "all" / "g.png")
    save_rgb(tmp_path / "hem" / "r.png")
    ds = load_dataset(tmp_path, modes=("RGB", "L"))
    assert len(ds) == 2 and not ds.bad


def test_summary_table_counts(cnmc_clean: tuple[Path, object]) -> None:
    root, res = cnmc_clean
    text = load_dataset(root).summary()
    assert "Images per fold and class" in text and "Images per subject" in text
    total_line = next(line for line in text.splitlines() if line.startswith("total"))
    assert str(res.n_images) in total_line.split()
    for subj in res.folds:
        if res.folds[subj] != "final":
            assert any(line.split()[:1] == [subj] for line in text.splitlines())
    assert "Unreadable or rejected files: none" in text
