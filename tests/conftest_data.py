"""Helpers shared by the data tests: tiny image trees and broken files.

Imported by the ``tests/test_data_*.py``, ``test_synthetic.py`` and ``test_cli.py``
modules (not a pytest plugin, so it does not clash with ``conftest.py``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from leukemia.data import make_subjects, render_cell


def cell_image(size: int = 32, seed: int = 0, label: int = 1) -> np.ndarray:
    """One synthetic cell, uint8 (size, size, 3)."""
    styles = make_subjects(2, seed)
    style = styles[0] if label == 1 else styles[1]
    return render_cell(style, np.random.default_rng(seed), size)


def save_rgb(path: Path, size: int = 32, seed: int = 0, fmt: str | None = None) -> Path:
    """Write a valid RGB cell image to ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(cell_image(size, seed)).save(path, format=fmt)
    return path


def save_gray(path: Path, size: int = 32, fmt: str | None = None) -> Path:
    """Write a valid but single-channel (mode L) image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(cell_image(size)).convert("L").save(path, format=fmt)
    return path


def save_zero(path: Path) -> Path:
    """Write an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def save_corrupt(path: Path) -> Path:
    """Write a file whose name says image but whose bytes are not one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"BM\x00\x01garbage, not a bitmap" * 4)
    return path


def save_truncated(path: Path, size: int = 32, fmt: str = "BMP") -> Path:
    """Write a valid image cut to half its bytes (header intact, pixel data short)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(cell_image(size)).save(buf, format=fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def count_files(root: Path) -> int:
    """Image-like files under ``root`` (everything except CSVs)."""
    return sum(1 for p in root.rglob("*") if p.is_file() and p.suffix.lower() != ".csv")
