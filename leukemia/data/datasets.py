"""Readers for single-cell image data sets: C-NMC 2019, ALL-IDB2 and class-per-folder trees.

Every reader returns a :class:`Dataset`: a list of :class:`Sample` (path, label, subject,
fold) plus a list of :class:`BadImage` for every file that could not be used, each with
the reason.  Files are checked when the data set is read (decoded fully, mode checked), so
a bad file is reported up front instead of crashing an epoch half-way, and nothing is
dropped without a trace.

Labels follow C-NMC: ``1`` = ALL (leukaemic blast), ``0`` = HEM (normal), ``None`` =
unlabelled (the C-NMC final test set).

Supported layouts (see :func:`detect_layout`):

``cnmc``
    ``training_data/fold_{0,1,2}/{all,hem}/UID_<subject>_<image>_<cell>_<all|hem>.bmp``,
    ``validation_data/C-NMC_test_prelim_phase_data/{1,2,...}.bmp`` with
    ``C-NMC_test_prelim_phase_data_labels.csv`` (``Patient_ID,new_names,labels``) and
    ``testing_data/C-NMC_test_final_phase_data/*.bmp`` (no labels).  The root may be the
    ``C-NMC_Leukemia`` folder itself or a folder that contains it.
``all-idb2``
    ``ImXXX_Y.tif`` (``Y`` = 1 blast, 0 normal), directly in the root or in ``img/``.
``folders``
    ``<class>/*.{bmp,png,jpg,jpeg,tif,tiff,gif,webp}`` with one folder per class, optionally
    ``<class>/<subject>/*.png`` to carry subject ids.  Files without one of these
    extensions are identified by their content; each real file counts once however many
    links reach it.

Limits: an image may hold at most :data:`MAX_PIXELS` pixels, with sides at most
:data:`MAX_ASPECT` times apart (checked from the header, before decoding), and a labels
CSV at most :data:`MAX_CSV_BYTES` bytes.  Larger files are reported, not decoded.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ALL",
    "HEM",
    "CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "BadImage",
    "Dataset",
    "DatasetError",
    "ImageError",
    "MAX_ASPECT",
    "MAX_CSV_BYTES",
    "MAX_PIXELS",
    "Sample",
    "check_image",
    "detect_layout",
    "image_hash",
    "load_dataset",
    "load_image",
    "parse_cnmc_name",
    "read_all_idb2",
    "read_cnmc",
    "read_folders",
    "summary_table",
]

ALL = 1
"""Label of leukaemic blasts (C-NMC class ``all``)."""
HEM = 0
"""Label of normal cells (C-NMC class ``hem``)."""
CLASS_NAMES: tuple[str, ...] = ("hem", "all")
"""Class names indexed by label."""

IMAGE_EXTENSIONS = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp"})
MAX_PIXELS = 1 << 26
"""Largest image accepted, in pixels (67 Mpx, e.g. 8192 x 8192: 192 MiB as RGB).  Checked
from the header before decoding; below Pillow's own decompression-bomb limit."""
MAX_ASPECT = 100
"""Largest ratio of an image's long side to its short side.  Microscope images are near
square; a 4 x 30000 strip is not a cell, and cropping it to a square keeps 0.01 %."""
MAX_CSV_BYTES = 64 << 20
"""Largest labels CSV read (C-NMC's has 1,867 rows, about 70 kB)."""
CNMC_FOLDS = ("fold_0", "fold_1", "fold_2")
PRELIM = "prelim"
FINAL = "final"

_CNMC_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)\.[A-Za-z]+$", re.IGNORECASE)
_IDB2_NAME = re.compile(r"^Im(\d+)_([01])\.(tif|tiff|jpg|jpeg|png|bmp)$", re.IGNORECASE)
_PRELIM_DIR = "C-NMC_test_prelim_phase_data"
_PRELIM_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
_FINAL_DIR = "C-NMC_test_final_phase_data"

LAYOUTS: dict[str, str] = {
    "cnmc": (
        "C-NMC 2019: training_data/fold_{0,1,2}/{all,hem}/UID_<subject>_<image>_<cell>_"
        "<all|hem>.bmp [+ validation_data/C-NMC_test_prelim_phase_data/ with "
        "C-NMC_test_prelim_phase_data_labels.csv, testing_data/C-NMC_test_final_phase_data/]"
    ),
    "all-idb2": "ALL-IDB2: ImXXX_Y.tif (Y = 1 blast, 0 normal) in the folder or in img/",
    "folders": "class folders: <class>/*.bmp|png|jpg|tif (e.g. all/ and hem/)",
}
"""Layout name -> one-line description of what the reader expects."""

_CLASS_ALIASES = {
    "all": ALL,
    "blast": ALL,
    "blasts": ALL,
    "leukemia": ALL,
    "leukaemia": ALL,
    "1": ALL,
    "hem": HEM,
    "normal": HEM,
    "healthy": HEM,
    "0": HEM,
}


class DatasetError(ValueError):
    """A data set cannot be read at all (missing folder, no images, malformed CSV)."""


class ImageError(DatasetError):
    """An image file cannot be used.  The message names the file and the reason.

    Attributes:
        path: the file.
        reason: the same short text :func:`check_image` gives ("truncated: ...").
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class Sample:
    """One cell image.

    Attributes:
        path: image file.
        label: 1 = ALL (blast), 0 = HEM (normal), None = unlabelled.
        subject: patient id (``"12"``, ``"H10"``) or None when the layout has none.
        fold: C-NMC fold (``"fold_0"`` ... ``"fold_2"``, ``"prelim"``, ``"final"``) or None.
    """

    path: Path
    label: int | None
    subject: str | None = None
    fold: str | None = None


@dataclass(frozen=True)
class BadImage:
    """A file that was found but not used, and why."""

    path: Path
    reason: str


@dataclass
class Dataset:
    """Samples read from one folder, plus the files that were rejected.

    Attributes:
        root: the folder that was read.
        layout: one of :data:`LAYOUTS`.
        samples: usable images, in a stable (sorted) order.
        bad: rejected files with reasons (unreadable, truncated, wrong mode, unlabelled).
        class_names: names indexed by label.
        hashes: perceptual hash per sample path, filled when the images were verified
            (used by :func:`leukemia.data.splits.check_leakage` to avoid decoding twice).
    """

    root: Path
    layout: str
    samples: list[Sample]
    bad: list[BadImage] = field(default_factory=list)
    class_names: tuple[str, ...] = CLASS_NAMES
    hashes: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def labelled(self) -> list[Sample]:
        """Samples that carry a label (everything except the C-NMC final test set)."""
        return [s for s in self.samples if s.label is not None]

    def in_folds(self, *folds: str) -> list[Sample]:
        """Samples whose ``fold`` is one of ``folds``."""
        wanted = set(folds)
        return [s for s in self.samples if s.fold in wanted]

    def subjects(self) -> list[str]:
        """Sorted distinct subject ids (samples without a subject are skipped)."""
        return sorted({s.subject for s in self.samples if s.subject is not None}, key=_natural)

    def bad_report(self) -> str:
        """A readable list of rejected files, or a line saying there were none."""
        if not self.bad:
            return "Unreadable or rejected files: none"
        lines = [f"Unreadable or rejected files ({len(self.bad)}):"]
        for b in self.bad:
            lines.append(f"  {_rel(b.path, self.root)}: {b.reason}")
        return "\n".join(lines)

    def summary(self) -> str:
        """Layout line, per-fold/per-class and per-subject tables, and the bad-file report."""
        head = f"Data set: {self.root}  (layout: {self.layout}, {len(self.samples)} images)"
        table = summary_table(self.samples, self.class_names)
        return "\n\n".join([head, table, self.bad_report()])


def _natural(text: str) -> tuple:
    """Sort key that orders ``H2`` before ``H10`` and numbers numerically."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def parse_cnmc_name(name: str) -> tuple[str, int] | None:
    """Parse a C-NMC file name ``UID_<subject>_<image>_<cell>_<all|hem>.bmp``.

    Returns ``(subject, label)``, e.g. ``("H10", 0)`` for ``UID_H10_14_1_hem.bmp``, or None
    when the name does not follow the pattern.
    """
    m = _CNMC_NAME.match(Path(name).name)
    if m is None:
        return None
    return m.group(1).upper(), (ALL if m.group(4).lower() == "all" else HEM)


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image to a ``uint8`` array of shape (H, W, 3), RGB.

    Any mode Pillow can convert is converted; use :func:`check_image` to reject files
    whose mode is not RGB.  Raises :class:`ImageError` naming the file and the reason for
    anything that cannot be decoded, also for images over :data:`MAX_PIXELS` pixels or
    with sides more than :data:`MAX_ASPECT` times apart (refused before decoding).
    """
    reason, array = _decode(Path(path), None, "array")
    if reason is not None:
        raise ImageError(path, reason)
    return array  # type: ignore[return-value]


_MODE_NAMES = {
    "L": "grayscale",
    "1": "1-bit",
    "P": "palette",
    "RGBA": "RGB with alpha",
    "I": "32-bit integer",
    "I;16": "16-bit grayscale",
    "F": "float",
    "CMYK": "CMYK",
    "LA": "grayscale with alpha",
}


def image_hash(im: Image.Image | np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Perceptual hash of an image for near-duplicate detection.

    The image is reduced to a ``hash_size x hash_size`` grey thumbnail (area average),
    mean-centred and scaled to unit length (``float32``, ``hash_size**2`` values).  Two
    images are compared by ``1 - dot(a, b)``: 0 for identical pictures, unchanged by
    brightness scaling.  JPEG-re-encoded, rescaled and 5 %-brightened copies of synthetic
    cells stayed below 0.0005; distinct cells were above 0.008 (600 cells).
    """
    if isinstance(im, np.ndarray):
        if im.ndim not in (2, 3) or im.size == 0:
            raise ValueError(f"image_hash needs a 2-D or 3-D image array, got shape {im.shape}")
        im = Image.fromarray(im)
    grey = np.asarray(
        im.convert("L").resize((hash_size, hash_size), Image.BOX), dtype=np.float32
    ).ravel()
    grey = grey - grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 0 else grey


def check_image(
    path: Path, modes: Sequence[str] = ("RGB",), want_hash: bool = False
) -> tuple[str | None, np.ndarray | None]:
    """Decode ``path`` (a path or str) fully and say what, if anything, is wrong with it.

    Returns ``(reason, hash)``: ``reason`` is None for a usable image, otherwise a short
    text ("empty file (0 bytes)", "truncated: ...", "mode L (grayscale), expected RGB",
    "aspect ratio 1:7500 ..."); ``hash`` is :func:`image_hash` of a usable image when
    ``want_hash``.  Never raises for a bad file, whatever its bytes.
    """
    reason, h = _decode(Path(path), tuple(modes), "hash" if want_hash else "check")
    return reason, h


def _size_problem(width: int, height: int) -> str | None:
    """Why an image of this size is refused before decoding, or None."""
    if width < 1 or height < 1:
        return f"image is {width}x{height} pixels"
    if width * height > MAX_PIXELS:
        return (
            f"image is {width}x{height} = {width * height} pixels, more than "
            f"MAX_PIXELS = {MAX_PIXELS}"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        long, short = max(width, height), min(width, height)
        return (
            f"aspect ratio 1:{long / short:.0f} ({width}x{height} pixels) is beyond 1:"
            f"{MAX_ASPECT}; not a cell image"
        )
    return None


def _decode(
    path: Path, modes: tuple[str, ...] | None, want: str
) -> tuple[str | None, np.ndarray | None]:
    """Open and decode ``path``; return ``(reason, None)`` if it cannot be used, else
    ``(None, result)`` with the RGB array (``want="array"``), the hash (``"hash"``) or
    None (``"check"``).  ``modes`` None accepts any mode (converted to RGB)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing file (broken link?)", None
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", None
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not an image file", None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever
        return "not a regular file", None
    if st.st_size == 0:
        return "empty file (0 bytes)", None
    try:
        with Image.open(path) as im:
            problem = _size_problem(*im.size)
            if problem is not None:
                return problem, None
            im.load()
            if modes is not None and im.mode not in modes:
                kind = _MODE_NAMES.get(im.mode, "unsupported")
                return f"mode {im.mode} ({kind}), expected {'/'.join(modes)}", None
            if im.width < 2 or im.height < 2:
                return f"image is only {im.width}x{im.height} pixels", None
            if want == "hash":
                return None, image_hash(im)
            if want == "array":
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                return None, np.asarray(rgb, dtype=np.uint8)
            return None, None
    except UnidentifiedImageError:
        return "not a readable image (unknown or corrupt header)", None
    except MemoryError:
        return "too large to decode (out of memory)", None
    except Exception as exc:  # noqa: BLE001 - a decoder fed arbitrary bytes may raise anything
        text = str(exc).strip() or type(exc).__name__
        if "truncated" in text.lower() or "not enough data" in text.lower():
            return f"truncated: {text}", None
        return f"cannot decode: {text}", None


def _verify(
    samples: list[Sample],
    bad: list[BadImage],
    verify: bool,
    modes: Sequence[str],
    workers: int | None,
) -> tuple[list[Sample], dict[Path, np.ndarray]]:
    """Decode every sample; move failures to ``bad``; return good samples and hashes."""
    if not verify:
        return samples, {}
    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        results = list(pool.map(lambda s: check_image(s.path, modes, want_hash=True), samples))
    good: list[Sample] = []
    hashes: dict[Path, np.ndarray] = {}
    for s, (reason, h) in zip(samples, results, strict=True):
        if reason is None:
            good.append(s)
            if h is not None:
                hashes[s.path] = h
        else:
            bad.append(BadImage(s.path, reason))
    return good, hashes


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # Not only regular files: a broken link or a folder named like an image is kept so
    # that verification reports it instead of it vanishing silently.
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: _natural(p.name),
    )


def _no_images(root: Path, layout: str) -> DatasetError:
    return DatasetError(f"no images found in {root} (expected layout {LAYOUTS[layout]})")


# --------------------------------------------------------------------------- layouts


def _cnmc_root(root: Path) -> Path | None:
    """The folder holding ``training_data`` (root itself or a ``C-NMC_Leukemia`` child)."""
    for cand in (root, root / "C-NMC_Leukemia"):
        if (
            (cand / "training_data").is_dir()
            or (cand / "validation_data").is_dir()
            or any((cand / f).is_dir() for f in CNMC_FOLDS)
        ):
            return cand
    return None


def _idb2_files(root: Path) -> list[Path]:
    out: list[Path] = []
    for folder in (root, root / "img"):
        if folder.is_dir():
            out += [p for p in folder.iterdir() if p.is_file() and _IDB2_NAME.match(p.name)]
    return sorted(out, key=lambda p: _natural(p.name))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(root: str | os.PathLike[str]) -> str:
    """Name the layout of ``root``: ``"cnmc"``, ``"all-idb2"`` or ``"folders"``.

    Raises :class:`DatasetError` if ``root`` is not a folder or matches no layout; the
    message lists the layouts that were expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if _cnmc_root(root) is not None:
        return "cnmc"
    if _idb2_files(root):
        return "all-idb2"
    if any(_has_images(d) for d in _class_dirs(root)):
        return "folders"
    expected = "; ".join(LAYOUTS.values())
    raise DatasetError(
        f"no images found in {root} in any known layout (expected one of: {expected})"
    )


def _read_prelim_csv(csv_path: Path) -> dict[str, tuple[str, int]]:
    """``new_names -> (Patient_ID, label)`` from the preliminary-test labels CSV.

    Every problem (unreadable, too large, not UTF-8, malformed CSV, bad rows) is a
    :class:`DatasetError` naming the file and, where there is one, the line.
    """
    try:
        size = csv_path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DatasetError(
                f"{csv_path}: {size} bytes, more than MAX_CSV_BYTES = {MAX_CSV_BYTES} "
                "for a labels CSV"
            )
        data = csv_path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot read: {exc.strerror or exc}") from None
    return _parse_prelim_csv(data, csv_path)


def _parse_prelim_csv(data: bytes, csv_path: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
    """Parse the bytes of a C-NMC preliminary-test labels CSV (``Patient_ID,new_names,labels``).

    Returns ``new_names -> (Patient_ID, label)``.  ``csv_path`` only names the file in
    errors.  Raises :class:`DatasetError` with ``file:line`` for text that is not UTF-8,
    malformed CSV (e.g. a field over the ``csv`` module's limit), missing columns, labels
    other than 0/1, a name listed twice, or a label contradicting the class in Patient_ID.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark, as Excel writes
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DatasetError(
            f"{csv_path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from None
    rows: dict[str, tuple[str, int]] = {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        need = {"Patient_ID", "new_names", "labels"}
        cols = {c.strip() for c in (reader.fieldnames or [])}
        if not need <= cols:
            raise DatasetError(
                f"{csv_path}: expected columns Patient_ID,new_names,labels, "
                f"found {','.join(sorted(cols))[:200] or 'none'}"
            )
        for row in reader:
            lineno = reader.line_num
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                label = int(row["labels"])
                if label not in (ALL, HEM):
                    raise ValueError
            except ValueError:
                raise DatasetError(
                    f"{csv_path}:{lineno}: label {row['labels'][:40]!r} is not 0 or 1"
                ) from None
            name = row["new_names"]
            if name in rows:
                raise DatasetError(f"{csv_path}:{lineno}: {name[:80]!r} is listed twice")
            parsed = parse_cnmc_name(row["Patient_ID"])
            if parsed is not None and parsed[1] != label:
                raise DatasetError(
                    f"{csv_path}:{lineno}: label {label} contradicts the class "
                    f"in Patient_ID {row['Patient_ID']!r}"
                )
            rows[name] = (row["Patient_ID"], label)
    except csv.Error as exc:
        line = reader.reader.line_num  # DictReader.line_num lags on a failed row
        raise DatasetError(f"{csv_path}:{line}: malformed CSV: {exc}") from None
    return rows


def read_cnmc(
    root: str | os.PathLike[str],
    *,
    verify: bool = True,
    modes: Sequence[str] = ("RGB",),
    workers: int | None = None,
) -> Dataset:
    """Read C-NMC 2019 as distributed (training folds, preliminary and final test sets).

    Args:
        root: the ``C-NMC_Leukemia`` folder or a folder containing it.
        verify: decode every image and move unusable ones to ``Dataset.bad``.
        modes: accepted Pillow modes; others are reported as wrong-mode images.
        workers: threads used to verify (default ``min(4, cpu_count)``).

    Raises:
        DatasetError: the folder has no C-NMC structure, no images, or a malformed CSV.
    """
    root = Path(root)
    base = _cnmc_root(root) if root.is_dir() else None
    if base is None:
        raise DatasetError(f"{root} does not look like C-NMC 2019 (expected {LAYOUTS['cnmc']})")
    samples: list[Sample] = []
    bad: list[BadImage] = []
    train = base / "training_data" if (base / "training_data").is_dir() else base
    for fold in CNMC_FOLDS:
        for cls, label in (("all", ALL), ("hem", HEM)):
            for p in _images_in(train / fold / cls):
                parsed = parse_cnmc_name(p.name)
                if parsed is None:
                    bad.append(
                        BadImage(
                            p, "name does not match UID_<subject>_<image>_<cell>_<all|hem>.bmp"
                        )
                    )
                elif parsed[1] != label:
                    bad.append(
                        BadImage(
                            p,
                            f"name says {CLASS_NAMES[parsed[1]]} but the file "
                            f"is in the {cls}/ folder",
                        )
                    )
                else:
                    samples.append(Sample(p, label, parsed[0], fold))
    # Preliminary test set: renamed images + labels CSV.
    val = base / "validation_data"
    prelim_dir = val / _PRELIM_DIR
    if prelim_dir.is_dir():
        csv_path = next(
            (
                c
                for c in (val / _PRELIM_CSV, prelim_dir / _PRELIM_CSV, base / _PRELIM_CSV)
                if c.is_file()
            ),
            None,
        )
        images = _images_in(prelim_dir)
        if csv_path is None:
            bad += [BadImage(p, f"no labels: {_PRELIM_CSV} not found") for p in images]
        else:
            rows = _read_prelim_csv(csv_path)
            seen: set[str] = set()
            for p in images:
                row = rows.get(p.name)
                if row is None:
                    bad.append(BadImage(p, f"no row for {p.name} in {csv_path.name}"))
                    continue
                seen.add(p.name)
                patient, label = row
                parsed = parse_cnmc_name(patient)
                subject = parsed[0] if parsed else (patient or None)
                samples.append(Sample(p, label, subject, PRELIM))
            for name in sorted(set(rows) - seen, key=_natural):
                bad.append(
                    BadImage(
                        prelim_dir / name, f"listed in {csv_path.name} but the file is missing"
                    )
                )
    # Final test set: no labels.
    final_dir = base / "testing_data" / _FINAL_DIR
    for p in _images_in(final_dir):
        parsed = parse_cnmc_name(p.name)
        samples.append(Sample(p, None, parsed[0] if parsed else None, FINAL))
    if not samples and not bad:
        raise _no_images(root, "cnmc")
    samples, hashes = _verify(samples, bad, verify, modes, workers)
    return Dataset(root, "cnmc", samples, bad, CLASS_NAMES, hashes)


def read_all_idb2(
    root: str | os.PathLike[str],
    *,
    verify: bool = True,
    modes: Sequence[str] = ("RGB",),
    workers: int | None = None,
) -> Dataset:
    """Read ALL-IDB2 (``ImXXX_Y.tif``, Y = 1 blast / 0 normal; no subject ids).

    Raises :class:`DatasetError` if no ``ImXXX_Y`` images are found.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    files = _idb2_files(root)
    if not files:
        raise _no_images(root, "all-idb2")
    samples = []
    for p in files:
        m = _IDB2_NAME.match(p.name)
        assert m is not None
        samples.append(Sample(p, ALL if m.group(2) == "1" else HEM, None, None))
    bad: list[BadImage] = []
    samples, hashes = _verify(samples, bad, verify, modes, workers)
    return Dataset(root, "all-idb2", samples, bad, CLASS_NAMES, hashes)


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to, or None if it cannot be stat'ed."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _listing(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """``(images, others, subdirs)`` of ``folder`` in natural order: entries with an image
    extension (hidden or not, folders too, so that verification reports them), other
    non-hidden files, and non-hidden sub-folders.  Raises OSError if it cannot be listed."""
    images, others, subdirs = [], [], []
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        elif p.name.startswith("."):
            continue  # hidden files and folders (.DS_Store, .git) are not data
        elif p.is_dir():
            subdirs.append(p)
        else:
            others.append(p)
    key = lambda q: _natural(q.name)  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key), sorted(subdirs, key=key)


def _sniff(path: Path) -> str | None:
    """None if Pillow recognises the content of ``path`` (no known extension) as an image,
    otherwise the reason it is not one.  Reads the header only."""
    try:
        st = path.stat()
    except OSError:
        return "missing file (broken link?)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return "not an image file (no image extension, content not recognised)"
    except Exception:  # noqa: BLE001 - recognised but broken: verification says why
        return None


@dataclass
class _Folder:
    """One folder of a class-folder tree with its files sorted out."""

    path: Path
    files: list[Path]  # images, and extension-less files recognised as images
    rejected: list[BadImage]  # non-image files
    subdirs: list[Path]

    @property
    def has_images(self) -> bool:
        return bool(self.files)


def _scan(folder: Path) -> _Folder:
    try:
        images, others, subdirs = _listing(folder)
    except OSError as exc:
        return _Folder(folder, [], [BadImage(folder, f"cannot list: {exc.strerror or exc}")], [])
    files, rejected = list(images), []
    for p in others:
        reason = _sniff(p)
        if reason is None:
            files.append(p)
        else:
            rejected.append(BadImage(p, reason))
    files.sort(key=lambda q: _natural(q.name))
    return _Folder(folder, files, rejected, subdirs)


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` or one of its sub-folders holds images (a class folder)."""
    top = _scan(folder)
    return top.has_images or any(_scan(s).has_images for s in top.subdirs)


def read_folders(
    root: str | os.PathLike[str],
    *,
    verify: bool = True,
    modes: Sequence[str] = ("RGB",),
    workers: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Read a class-per-folder tree: ``<class>/*.png`` or ``<class>/<subject>/*.png``.

    Folder names ``all``/``blast``/``1`` map to label 1 and ``hem``/``normal``/``0`` to 0;
    any other names are numbered in sorted order (or in the order of ``class_names``).
    Subject ids come from ``<class>/<subject>/`` folders or from C-NMC-style file names.

    Nothing in a class folder is left out silently: files with an image extension
    (:data:`IMAGE_EXTENSIONS`) and files without one that Pillow recognises are images;
    other files and folders below ``<class>/<subject>/`` are listed in ``Dataset.bad``
    with the reason; hidden files without an image extension (``.DS_Store``) are skipped.
    Each real file and folder is read once: a second path to it through a symbolic link
    (a link cycle, a subject folder linked under another id, a file linked into two
    classes) is reported in ``Dataset.bad`` instead, and the path without links is kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    bad: list[BadImage] = []
    classes = []
    for d in _class_dirs(root):
        top = _scan(d)
        subs = [_scan(s) for s in top.subdirs]
        if top.has_images or any(s.has_images for s in subs):
            classes.append((top, subs))
    if not classes:
        raise _no_images(root, "folders")

    # Folders reachable without a symbolic link win over links to them, wherever they are.
    direct = [root] + [
        f.path
        for top, subs in classes
        if not top.path.is_symlink()
        for f in (top, *subs)
        if not f.path.is_symlink()
    ]
    real: dict[tuple[int, int], Path] = {}
    for folder in direct:
        key = _file_id(folder)
        if key is not None:
            real.setdefault(key, folder)

    visited: dict[tuple[int, int], Path] = {}

    def first_visit(folder: Path) -> bool:
        """False (and reported) if ``folder`` is a second path to a folder read elsewhere."""
        key = _file_id(folder)
        if key is None:
            return True
        owner = real.get(key) or visited.setdefault(key, folder)
        if owner == folder:
            return True
        where = _rel(owner, root) if owner != root else "the data set's root"
        bad.append(BadImage(folder, f"the same folder as {where} (through a symbolic link)"))
        return False

    kept = [(top, subs) for top, subs in classes if first_visit(top.path)]
    names = [top.path.name for top, _ in kept]
    if class_names is not None:
        missing = set(names) - set(class_names)
        if missing:
            raise DatasetError(f"{root}: folders {sorted(missing)} not in class_names")
        mapping = {n: list(class_names).index(n) for n in names}
        out_names = tuple(class_names)
    elif all(n.lower() in _CLASS_ALIASES for n in names) and len(
        {_CLASS_ALIASES[n.lower()] for n in names}
    ) == len(names):
        mapping = {n: _CLASS_ALIASES[n.lower()] for n in names}
        out_names = CLASS_NAMES
    else:
        mapping = {n: i for i, n in enumerate(sorted(names))}
        out_names = tuple(sorted(names))
    samples: list[Sample] = []
    for top, subs in kept:
        label = mapping[top.path.name]
        bad += top.rejected
        for p in top.files:
            parsed = parse_cnmc_name(p.name)
            samples.append(Sample(p, label, parsed[0] if parsed else None, None))
        for sub in subs:
            if not first_visit(sub.path):
                continue
            bad += sub.rejected
            samples += [Sample(p, label, sub.path.name, None) for p in sub.files]
            for deeper in sub.subdirs:
                if first_visit(deeper):
                    bad.append(
                        BadImage(
                            deeper,
                            "folder not read: images go in <class>/ or <class>/<subject>/",
                        )
                    )
    samples = _drop_linked_duplicates(samples, bad, root)
    samples, hashes = _verify(samples, bad, verify, modes, workers)
    return Dataset(root, "folders", samples, bad, out_names, hashes)


def _drop_linked_duplicates(samples: list[Sample], bad: list[BadImage], root: Path) -> list[Sample]:
    """One sample per real file: a path that is not a link if there is one, else the first.
    The other paths go to ``bad``."""
    keep: dict[tuple[int, int], Sample] = {}
    for s in samples:
        key = _file_id(s.path)
        cur = keep.get(key) if key is not None else s
        if cur is None or (cur.path.is_symlink() and not s.path.is_symlink()):
            keep[key] = s  # type: ignore[index]
    out = []
    for s in samples:
        key = _file_id(s.path)
        if key is None or keep[key] is s:
            out.append(s)
        else:
            other = _rel(keep[key].path, root)
            bad.append(BadImage(s.path, f"the same file as {other} (a link); counted once"))
    return out


_READERS = {"cnmc": read_cnmc, "all-idb2": read_all_idb2, "folders": read_folders}


def load_dataset(
    root: str | os.PathLike[str],
    layout: str | None = None,
    *,
    verify: bool = True,
    modes: Sequence[str] = ("RGB",),
    workers: int | None = None,
) -> Dataset:
    """Read ``root`` with the reader for ``layout`` (auto-detected when None).

    Raises :class:`DatasetError` when the folder is missing, matches no layout, or holds
    no images; when *every* image found is unusable the error lists the first reasons.
    """
    root = Path(root)
    if layout is None:
        layout = detect_layout(root)
    if layout not in _READERS:
        raise DatasetError(f"unknown layout {layout!r}; choose from {', '.join(_READERS)}")
    ds = _READERS[layout](root, verify=verify, modes=modes, workers=workers)
    if not ds.samples:
        first = "; ".join(f"{b.path.name}: {b.reason}" for b in ds.bad[:3])
        raise DatasetError(
            f"no usable images in {root} (layout {layout}); {len(ds.bad)} rejected, e.g. {first}"
        )
    return ds


# --------------------------------------------------------------------------- summary


def _format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def summary_table(
    samples: Sequence[Sample], class_names: Sequence[str] = CLASS_NAMES, per_subject: bool = True
) -> str:
    """Counts per fold and class, then per subject, as fixed-width text tables."""
    classes = list(class_names)
    fold_names = sorted({s.fold or "-" for s in samples}, key=_fold_key)
    has_unlabelled = any(s.label is None for s in samples)
    header = ["fold", *classes] + (["unlabelled"] if has_unlabelled else []) + ["total", "subjects"]

    def counts(group: list[Sample]) -> list[object]:
        c = Counter(s.label for s in group)
        row: list[object] = [c.get(i, 0) for i in range(len(classes))]
        if has_unlabelled:
            row.append(c.get(None, 0))
        row += [len(group), len({s.subject for s in group if s.subject is not None})]
        return row

    rows = [[f, *counts([s for s in samples if (s.fold or "-") == f])] for f in fold_names]
    rows.append(["total", *counts(list(samples))])
    parts = ["Images per fold and class:", _format_table(header, rows)]
    if per_subject:
        by_subject: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            by_subject[s.subject or "(none)"].append(s)
        srows = []
        for subj in sorted(by_subject, key=_natural):
            group = by_subject[subj]
            labels = sorted({s.label for s in group}, key=lambda x: -1 if x is None else x)
            cls = "/".join("?" if x is None else classes[x] for x in labels)
            folds = ",".join(sorted({s.fold or "-" for s in group}, key=_fold_key))
            srows.append([subj, cls, folds, len(group)])
        parts += [
            "",
            f"Images per subject ({sum(k != '(none)' for k in by_subject)} subjects"
            + ("; '(none)': images without a subject id" if "(none)" in by_subject else "")
            + "):",
            _format_table(["subject", "class", "folds", "images"], srows),
        ]
    return "\n".join(parts)


def _fold_key(name: str) -> tuple:
    order = {**{f: i for i, f in enumerate(CNMC_FOLDS)}, PRELIM: 10, FINAL: 11}
    return (order.get(name, 20), name)
