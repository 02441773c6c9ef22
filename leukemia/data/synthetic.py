"""A synthetic single-cell renderer that writes data sets in the C-NMC 2019 layout.

No real smear images can be downloaded where the tests run, so the project renders its
own: one segmented cell on black per image, like C-NMC, with class-dependent morphology

* blasts (ALL): larger; large round or indented (cleaved) nucleus filling most of the
  cell (high N:C ratio); fine, open, lighter chromatin; 1-3 pale nucleoli; a thin rim of
  basophilic cytoplasm;
* normal lymphocytes (HEM): smaller; dense, darker, clumped chromatin; no nucleoli; a
  slightly wider rim of pale cytoplasm;

and per-subject variation (stain hue and intensity, cell size, focus blur, sensor noise)
so that cells of one subject resemble each other and patient-wise splits matter.  The
class distributions overlap (size, N:C ratio, chromatin density all vary per cell and per
subject), so mean colour alone does not separate the classes.

Colour follows Beer-Lambert: each pixel's optical density is a haematoxylin-like
nuclear stain times chromatin density plus a cytoplasm stain, per subject; RGB is
``255 * exp(-OD)``.  Geometry and texture are computed with vectorised NumPy at a low
resolution (at most 160 px), blurred, upscaled with Pillow, masked with a crisp binary
segmentation mask and given per-pixel noise at the output size.

:func:`write_cnmc` writes ``training_data/fold_{0,1,2}/{all,hem}/UID_...bmp``,
``validation_data/C-NMC_test_prelim_phase_data/{1,2,..}.bmp`` with
``C-NMC_test_prelim_phase_data_labels.csv`` and the unlabelled
``testing_data/C-NMC_test_final_phase_data/``; subjects never span two folds.  It renders
into a hidden temporary folder inside the output folder and moves the three folders into
place only when everything is written, so a failed or interrupted run leaves the output
as it was; temporary folders of runs that were killed are removed by the next run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .datasets import ALL, CLASS_NAMES, HEM

__all__ = ["SubjectStyle", "SynthResult", "make_subjects", "render_cell", "write_cnmc"]

_CNMC_DIRS = ("training_data", "validation_data", "testing_data")
_TMP_PREFIX = ".synth-tmp-"
_TMP_NAME = re.compile(r"^\.synth-tmp-(\d+)-[A-Za-z0-9_]+$")
_MARKER = ".leukemia-synth"  # in each temporary folder: who made it, where and when
_OLD = ".old"  # in a temporary folder: the replaced folders, until they are deleted
_STALE_SECONDS = 7 * 24 * 3600  # a temporary folder of a process on another host

_RENDER_RES = 160
_HEMA_OD = np.array([0.75, 1.45, 0.47], np.float32)  # purple nuclear stain, OD per unit
_CYTO_OD = np.array([0.95, 0.70, 0.22], np.float32)  # light-blue cytoplasm stain


@dataclass(frozen=True)
class SubjectStyle:
    """Everything that is shared by the cells of one synthetic subject.

    Attributes:
        subject: id as in C-NMC file names (``"7"`` for ALL, ``"H3"`` for normal).
        label: 1 = ALL, 0 = HEM.
        size_scale: multiplies every cell radius.
        hema_od: nuclear stain optical density per unit chromatin (R, G, B).
        cyto_od: cytoplasm stain optical density per unit (R, G, B).
        intensity: overall staining strength (multiplies all densities).
        blur: focus blur, Gaussian sigma in pixels of a 450-pixel image.
        noise: pixel noise standard deviation (0-255 scale).
    """

    subject: str
    label: int
    size_scale: float
    hema_od: tuple[float, float, float]
    cyto_od: tuple[float, float, float]
    intensity: float
    blur: float
    noise: float


def make_subjects(
    n_subjects: int, seed: int = 0, all_fraction: float = 2 / 3
) -> list[SubjectStyle]:
    """Draw ``n_subjects`` subject styles, about ``all_fraction`` of them ALL.

    ALL subjects are named ``"1"``, ``"2"``, ...; normal ones ``"H1"``, ``"H2"``, ...
    (as in C-NMC).  At least one subject of each class when ``n_subjects >= 2``.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if not 0.0 <= all_fraction <= 1.0:
        raise ValueError(f"all_fraction must be in [0, 1], got {all_fraction!r}")
    n_all = min(max(round(n_subjects * all_fraction), 1), max(n_subjects - 1, 1))
    out = []
    for i in range(n_subjects):
        label = ALL if i < n_all else HEM
        name = str(i + 1) if label == ALL else f"H{i - n_all + 1}"
        rng = np.random.default_rng([seed, 1, i])
        hema = _HEMA_OD * np.exp(rng.normal(0.0, 0.12, 3))
        cyto = _CYTO_OD * np.exp(rng.normal(0.0, 0.12, 3))
        out.append(
            SubjectStyle(
                subject=name,
                label=label,
                size_scale=float(np.exp(rng.normal(0.0, 0.08))),
                hema_od=tuple(float(v) for v in hema),  # type: ignore[arg-type]
                cyto_od=tuple(float(v) for v in cyto),  # type: ignore[arg-type]
                intensity=float(np.exp(rng.normal(0.0, 0.14))),
                blur=float(rng.uniform(0.5, 2.5)),
                noise=float(rng.uniform(1.5, 6.0)),
            )
        )
    return out


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    g = ((np.arange(n, dtype=np.float32) + 0.5) / n) * 2.0 - 1.0
    return g[None, :].repeat(n, 0), g[:, None].repeat(n, 1)


def _noise(rng: np.random.Generator, cells: int, n: int) -> np.ndarray:
    """Smooth unit-variance-ish noise: a ``cells x cells`` random grid upsampled to n x n."""
    cells = max(2, min(cells, n))
    im = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(im.resize((n, n), Image.BICUBIC))


def _soft(edge: np.ndarray, rho: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased inside-mask: 1 inside ``rho < edge``, 0 outside, ~1 px ramp."""
    return np.clip((edge - rho) / px + 0.5, 0.0, 1.0)


def _outline(
    rng: np.random.Generator, theta: np.ndarray, radius: float, ellipticity: float, wobble: float
) -> np.ndarray:
    """Radius of a slightly elliptical, wobbly outline at each angle."""
    r = 1.0 + ellipticity * np.cos(2.0 * (theta - rng.uniform(0, math.pi)))
    for k in (3, 4, 5):
        r = r + rng.normal(0.0, wobble) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    return radius * r


def render_cell(style: SubjectStyle, rng: np.random.Generator, size: int = 450) -> np.ndarray:
    """Render one segmented cell of ``style``'s subject and class: uint8 (size, size, 3).

    The cell lies inside the inscribed circle of the canvas (so rotations keep it) and
    everything outside the segmentation mask is exactly black.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    n = min(size, _RENDER_RES)
    px = 2.0 / n
    x, y = _grid(n)
    blast = style.label == ALL

    # Cell outline.
    radius = (0.60 if blast else 0.50) * style.size_scale * math.exp(rng.normal(0.0, 0.09))
    radius = min(max(radius, 0.28), 0.78)
    cx, cy = rng.normal(0.0, 0.03, 2)
    dx, dy = x - cx, y - cy
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    cell = _soft(_outline(rng, theta, radius, rng.uniform(0, 0.10), 0.012), rho, px)

    # Nucleus: large, central-ish; blasts often indented.
    frac = rng.uniform(0.76, 0.90) if blast else rng.uniform(0.66, 0.82)
    nr = frac * radius
    beta = rng.uniform(0, 2 * math.pi)
    off = (radius - nr) * rng.uniform(0.2, 0.8)
    nx, ny = cx + off * math.cos(beta), cy + off * math.sin(beta)
    ndx, ndy = x - nx, y - ny
    nrho, ntheta = np.hypot(ndx, ndy), np.arctan2(ndy, ndx)
    nuc = _soft(_outline(rng, ntheta, nr, rng.uniform(0, 0.08), 0.015), nrho, px)
    if rng.random() < (0.4 if blast else 0.1):
        psi = rng.uniform(0, 2 * math.pi)
        ir = nr * rng.uniform(0.25, 0.42)
        ix, iy = nx + nr * 1.02 * math.cos(psi), ny + nr * 1.02 * math.sin(psi)
        nuc = nuc * (1.0 - _soft(np.float32(ir), np.hypot(x - ix, y - iy), px))
    nuc = np.minimum(nuc, cell)

    # Chromatin density.
    fine = _noise(rng, n // 3, n)
    coarse = _noise(rng, 18, n)
    if blast:
        dens = rng.uniform(0.52, 0.74) + 0.10 * fine + 0.05 * coarse
        for _ in range(int(rng.integers(1, 4))):
            a, d = rng.uniform(0, 2 * math.pi), nr * rng.uniform(0.0, 0.5)
            r0 = nr * rng.uniform(0.08, 0.14)
            spot = _soft(
                np.float32(r0), np.hypot(x - nx - d * math.cos(a), y - ny - d * math.sin(a)), px
            )
            dens = dens - 0.32 * spot
        cyto_dens = rng.uniform(0.38, 0.55)
    else:
        clump = 1.0 / (1.0 + np.exp(-4.0 * (coarse - 0.2)))
        dens = rng.uniform(0.70, 0.88) + 0.38 * (clump - 0.5) + 0.04 * fine
        cyto_dens = rng.uniform(0.25, 0.42)
    dens = np.maximum(dens, 0.05)

    # Beer-Lambert colour.
    gain = style.intensity * math.exp(rng.normal(0.0, 0.03))
    hema = np.asarray(style.hema_od, np.float32) * gain
    cyto = np.asarray(style.cyto_od, np.float32) * (gain * cyto_dens)
    nd = (nuc * dens)[..., None]
    od = nd * hema + (1.0 - nuc)[..., None] * cyto + (0.03 * fine)[..., None] * cyto
    rgb = np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)

    im = Image.fromarray(rgb)
    sigma = style.blur * n / 450.0
    if sigma > 0.3:
        im = im.filter(ImageFilter.GaussianBlur(sigma))
    if n != size:
        im = im.resize((size, size), Image.BICUBIC)
        mask_im = Image.fromarray((cell * 255).astype(np.uint8)).resize(
            (size, size), Image.BILINEAR
        )
        mask = np.asarray(mask_im) >= 128
    else:
        mask = cell >= 0.5
    out = np.asarray(im, dtype=np.float32)
    out = out + rng.standard_normal(out.shape, dtype=np.float32) * style.noise
    out = np.clip(out, 1.0, 255.0) * mask[..., None]
    return out.astype(np.uint8)


@dataclass
class SynthResult:
    """What :func:`write_cnmc` wrote.

    Attributes:
        root: output folder (the C-NMC_Leukemia equivalent).
        subjects: subject styles, in order.
        folds: subject id -> ``"fold_0"``/``"fold_1"``/``"fold_2"``/``"prelim"``/``"final"``.
        n_images: images written.
        seconds: wall time.
    """

    root: Path
    subjects: list[SubjectStyle]
    folds: dict[str, str]
    n_images: int
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def _assign_folds(subjects: list[SubjectStyle], seed: int) -> dict[str, str]:
    """Subject-disjoint assignment: ~15 % prelim, ~10 % final, the rest over 3 folds."""
    rng = np.random.default_rng([seed, 2])
    n = len(subjects)
    by_class = {c: [s.subject for s in subjects if s.label == c] for c in (ALL, HEM)}
    for c in by_class:
        by_class[c] = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
    folds: dict[str, str] = {}
    wanted = {
        "prelim": max(1, round(0.15 * n)) if n >= 4 else 0,
        "final": max(1, round(0.10 * n)) if n >= 6 else 0,
    }
    turn = 0
    for part in ("prelim", "final"):
        taken = 0
        stalls = 0
        while taken < wanted[part] and stalls < 2:
            pool = by_class[(ALL, HEM)[turn % 2]]
            turn += 1
            if len(pool) > 2:  # keep at least two training subjects per class
                folds[pool.pop()] = part
                taken += 1
                stalls = 0
            else:
                stalls += 1
    k = int(rng.integers(3))
    for c in (ALL, HEM):
        for subj in by_class[c]:
            folds[subj] = f"fold_{k % 3}"
            k += 1
    return folds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a pid we cannot ask about): not ours to judge
    return True


def _temporaries(root: Path) -> list[tuple[Path, dict]]:
    """Temporary folders that a write_cnmc made in ``root``: the name pattern, a real
    folder of this user, and a readable marker naming the process."""
    found = []
    for p in root.iterdir():
        if not _TMP_NAME.match(p.name) or p.is_symlink() or not p.is_dir():
            continue
        try:
            if p.stat().st_uid != os.getuid():
                continue
            info = json.loads((p / _MARKER).read_text(encoding="utf-8"))
            int(info["pid"]), str(info["host"]), float(info["started"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not made by us, or not recognisably: leave it alone
        found.append((p, info))
    return found


def _is_live(info: dict) -> bool:
    """Whether the run that made a temporary folder may still be running."""
    if info["host"] != socket.gethostname():
        return time.time() - float(info["started"]) < _STALE_SECONDS
    return _pid_alive(int(info["pid"]))


def _remove_stale(root: Path) -> None:
    """Delete the temporary folders of dead runs (SIGKILL, power loss) in ``root``, and
    refuse to go on while another live run is writing there."""
    for tmp, info in _temporaries(root):
        if _is_live(info):
            raise ValueError(
                f"{root} is being written by another leukemia synth (process {info['pid']} "
                f"on {info['host']}, temporary folder {tmp.name}); wait for it to finish"
            )
        old = tmp / _OLD
        if old.is_dir() and any(old.iterdir()):
            warnings.warn(
                f"{tmp} holds folders of an earlier data set that an interrupted run did "
                f"not put back; move them into {root} or delete {tmp}",
                stacklevel=3,
            )
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _check_output(root: Path, overwrite: bool) -> bool:
    """Validate the output folder before anything is written or replaced; True if it must
    be created.  Every problem is a ValueError naming the path."""
    if root.is_symlink() and not root.exists():
        raise ValueError(f"{root} is a broken symbolic link")
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder")
    if not root.exists():
        return True
    if not os.access(root, os.W_OK | os.X_OK):
        raise ValueError(f"{root}: no permission to write in this folder")
    _remove_stale(root)
    if any(root.iterdir()) and not overwrite:
        raise ValueError(
            f"{root} is not empty; pass overwrite=True (leukemia synth --force) to replace "
            "its data set"
        )
    for name in _CNMC_DIRS:
        _check_replaceable(root / name)
    return False


def _check_replaceable(path: Path) -> None:
    """ValueError unless ``path`` is absent or a real folder this process can move aside
    and delete (a link, a file in the way, or a folder without write permission is
    refused before anything changes)."""
    if path.is_symlink():
        raise ValueError(
            f"{path} is a symbolic link; overwriting replaces only real folders (remove the "
            "link, or write the data set elsewhere)"
        )
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path} is in the way: it is not a folder")

    def unreadable(exc: OSError) -> None:
        raise ValueError(f"{exc.filename}: cannot be listed, so it cannot be replaced") from None

    for dirpath, _, _ in os.walk(path, onerror=unreadable):
        if not os.access(dirpath, os.W_OK | os.X_OK):
            raise ValueError(f"{dirpath}: no permission to delete its contents")


def _swap_in(root: Path, tmp: Path) -> None:
    """Move the three folders rendered in ``tmp`` into ``root``, replacing root's: first
    the old ones into ``tmp/.old``, then the new ones in.  If any move fails, the moves
    done are undone, so root holds either the old or the new data set, never a mix."""
    for name in _CNMC_DIRS:  # the folder may have changed while rendering
        _check_replaceable(root / name)
    old = tmp / _OLD
    old.mkdir()
    moved: list[tuple[Path, Path]] = []
    try:
        for name in _CNMC_DIRS:
            if (root / name).exists():
                os.rename(root / name, old / name)
                moved.append((root / name, old / name))
        for name in _CNMC_DIRS:
            os.rename(tmp / name, root / name)
            moved.append((tmp / name, root / name))
    except BaseException as exc:
        failed = []
        for src, dst in reversed(moved):
            try:
                os.rename(dst, src)
            except OSError as undo_exc:
                failed.append(f"{dst} -> {src}: {undo_exc}")
        if failed:
            raise RuntimeError(
                f"replacing the data set in {root} failed ({exc}) and so did putting "
                f"back: {'; '.join(failed)}. The earlier folders are in {old}"
            ) from exc
        raise


def write_cnmc(
    out: str | os.PathLike[str],
    n_subjects: int = 12,
    cells_per_subject: int = 20,
    size: int = 450,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> SynthResult:
    """Render a synthetic data set into ``out`` in the C-NMC 2019 layout.

    The images are rendered into a hidden temporary folder inside ``out`` and moved into
    place at the end, so a failed or interrupted run leaves ``out`` as it was.  The
    temporary folders of runs that were killed (their process is gone) are deleted first;
    while another run is writing into ``out``, this one is refused.

    Args:
        out: output folder; created if missing. A folder that already holds files is
            refused unless ``overwrite``: then the three C-NMC sub-folders are replaced
            (all three or none), so no stale images or CSV rows of an earlier data set
            remain.  Everything is checked before anything is replaced: a sub-folder that
            is a symbolic link, a file in its place, or one that cannot be deleted is a
            ValueError and nothing changes.
        n_subjects: subjects (about 2/3 ALL, at least one of each class if >= 2).
        cells_per_subject: images per subject.
        size: image side in pixels (C-NMC: 450).
        seed: everything is a function of the seed (not of ``workers``).
        workers: rendering threads (default: CPU count).
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        a :class:`SynthResult` with subject styles and fold assignment.
    """
    if n_subjects < 2:
        raise ValueError(f"need at least 2 subjects (one ALL, one normal), got {n_subjects}")
    if cells_per_subject < 1:
        raise ValueError(f"cells_per_subject must be >= 1, got {cells_per_subject}")
    if not 8 <= size <= 4096:
        raise ValueError(f"size must be in 8..4096, got {size}")
    t0 = time.perf_counter()
    root = Path(out)
    created = _check_output(root, overwrite)
    if created:
        root.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=root))
    done_ok = False
    try:
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (tmp / _MARKER).write_text(json.dumps(marker), encoding="utf-8")
        subjects, folds, n_jobs = _render_cnmc(
            tmp, n_subjects, cells_per_subject, size, seed, workers, progress
        )
        _swap_in(root, tmp)
        done_ok = True
    finally:
        old = tmp / _OLD
        if done_ok or not (old.is_dir() and any(old.iterdir())):
            shutil.rmtree(tmp, ignore_errors=True)
        if not done_ok and created:
            try:
                root.rmdir()  # only if still empty
            except OSError:
                pass
    if tmp.exists():
        warnings.warn(f"could not delete the temporary folder {tmp}", stacklevel=2)
    counts: dict[str, int] = {}
    for st in subjects:
        counts[folds[st.subject]] = counts.get(folds[st.subject], 0) + cells_per_subject
    return SynthResult(root, subjects, folds, n_jobs, time.perf_counter() - t0, counts)


def _render_cnmc(
    root: Path,
    n_subjects: int,
    cells_per_subject: int,
    size: int,
    seed: int,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[SubjectStyle], dict[str, str], int]:
    """Write the three C-NMC folders into the empty folder ``root``."""
    train = root / "training_data"
    prelim_dir = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    final_dir = root / "testing_data" / "C-NMC_test_final_phase_data"
    for d in [train / f / c for f in ("fold_0", "fold_1", "fold_2") for c in ("all", "hem")] + [
        prelim_dir,
        final_dir,
    ]:
        d.mkdir(parents=True, exist_ok=True)
    subjects = make_subjects(n_subjects, seed)
    folds = _assign_folds(subjects, seed)

    # Job list: (subject index, cell index, original name, destination or None).
    jobs: list[tuple[int, int, str]] = []
    for si, st in enumerate(subjects):
        for ci in range(cells_per_subject):
            image, cell = ci // 4 + 1, ci % 4 + 1
            jobs.append((si, ci, f"UID_{st.subject}_{image}_{cell}_{CLASS_NAMES[st.label]}.bmp"))
    rng = np.random.default_rng([seed, 3])
    dest: list[Path] = []
    csv_rows: list[tuple[str, str, int]] = []
    renamed = {
        "prelim": [j for j in range(len(jobs)) if folds[subjects[jobs[j][0]].subject] == "prelim"],
        "final": [j for j in range(len(jobs)) if folds[subjects[jobs[j][0]].subject] == "final"],
    }
    new_name: dict[int, str] = {}
    for idx in renamed.values():
        for k, j in enumerate(rng.permutation(len(idx)), start=1):
            new_name[idx[j]] = f"{k}.bmp"
    for j, (si, _ci, name) in enumerate(jobs):
        st = subjects[si]
        fold = folds[st.subject]
        if fold == "prelim":
            dest.append(prelim_dir / new_name[j])
            csv_rows.append((name, new_name[j], st.label))
        elif fold == "final":
            dest.append(final_dir / new_name[j])
        else:
            dest.append(train / fold / CLASS_NAMES[st.label] / name)
    csv_rows.sort(key=lambda r: int(r[1].split(".")[0]))
    with open(
        root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv",
        "w",
        newline="",
        encoding="utf-8",
    ) as fh:
        w = csv.writer(fh)
        w.writerow(["Patient_ID", "new_names", "labels"])
        w.writerows(csv_rows)

    done = 0

    def one(j: int) -> None:
        si, ci, _ = jobs[j]
        img = render_cell(subjects[si], np.random.default_rng([seed, 4, si, ci]), size)
        Image.fromarray(img).save(dest[j], format="BMP")

    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers <= 1:
        for j in range(len(jobs)):
            one(j)
            done += 1
            if progress:
                progress(done, len(jobs))
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for _ in pool.map(one, range(len(jobs))):
                done += 1
                if progress:
                    progress(done, len(jobs))
    return subjects, folds, len(jobs)
