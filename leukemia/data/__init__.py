"""Data: readers (C-NMC 2019, ALL-IDB2, class folders), patient-wise splits and a leakage
check, seeded transforms, a threaded batch loader, and a synthetic cell renderer.

Typical use::

    from leukemia.data import load_dataset, patient_split, check_leakage, DataLoader
    from leukemia.data import train_transform

    ds = load_dataset("C-NMC_Leukemia")          # layout auto-detected, images verified
    print(ds.summary())                           # counts + unreadable files with reasons
    split = patient_split(ds.labelled(), test_fraction=0.2, seed=0)
    print(check_leakage(split.train, split.test, hashes=ds.hashes))
    for x, y in DataLoader(split.train, train_transform(300), 32, shuffle=True):
        ...                                       # x: float32 (N, 3, 300, 300), y: int64
"""

from .datasets import (
    ALL,
    CLASS_NAMES,
    HEM,
    LAYOUTS,
    BadImage,
    Dataset,
    DatasetError,
    ImageError,
    Sample,
    check_image,
    detect_layout,
    image_hash,
    load_dataset,
    load_image,
    parse_cnmc_name,
    read_all_idb2,
    read_cnmc,
    read_folders,
    summary_table,
)
from .loader import DataLoader, LoaderError
from .splits import (
    LeakageReport,
    Split,
    SplitError,
    check_leakage,
    cnmc_folds,
    image_split,
    make_split,
    patient_kfold,
    patient_split,
)
from .synthetic import SubjectStyle, SynthResult, make_subjects, render_cell, write_cnmc
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
)

__all__ = [
    "ALL",
    "CLASS_NAMES",
    "HEM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "BadImage",
    "DataLoader",
    "Dataset",
    "DatasetError",
    "ImageError",
    "LeakageReport",
    "LoaderError",
    "Sample",
    "Split",
    "SplitError",
    "SubjectStyle",
    "SynthResult",
    "check_image",
    "check_leakage",
    "cnmc_folds",
    "detect_layout",
    "eval_transform",
    "image_hash",
    "image_split",
    "load_dataset",
    "load_image",
    "make_split",
    "make_subjects",
    "parse_cnmc_name",
    "patient_kfold",
    "patient_split",
    "read_all_idb2",
    "read_cnmc",
    "read_folders",
    "render_cell",
    "summary_table",
    "train_transform",
    "write_cnmc",
]
