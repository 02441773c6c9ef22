"""Hardening of the data layer (issue 9): bounded transforms, clear errors, a synth --force
that replaces all or nothing, nothing dropped or counted twice in class-folder trees, and
short fixed-seed fuzz runs of the C-NMC labels CSV reader and of image decoding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest_data import cell_image, save_rgb  # noqa: E402

from leukemia import cli  # noqa: E402
from leukemia.data import (  # noqa: E402
    DataLoader,
    DatasetError,
    LoaderError,
    Sample,
    check_image,
    eval_transform,
    load_dataset,
    load_image,
    read_folders,
    write_cnmc,
)
from leukemia.data import datasets as D  # noqa: E402
from leukemia.data import transforms as T  # noqa: E402
from leukemia.data.transforms import CenterCrop, Resize  # noqa: E402

ROOT = HERE.parent
_PATH = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _PATH}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- memory

_WIDE_SCRIPT = """
import resource, sys, time
import numpy as np
from leukemia.data import eval_transform, train_transform
from leukemia.data.transforms import Resize

# Cap the address space at what the interpreter holds now plus 512 MiB: resizing before
# cropping needs 2 GiB for this image and fails with MemoryError under the cap.
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
cap = vm + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
g = np.random.default_rng(0)
for shape in ((4, 30000, 3), (30000, 4, 3)):
    img = g.integers(0, 256, shape, dtype=np.uint8)
    t0 = time.perf_counter()
    out = eval_transform(300)(img)
    assert out.shape == (3, 300, 300) and out.dtype == np.float32, out.shape
    out = train_transform(300)(img, np.random.default_rng(1))
    assert out.shape == (3, 300, 300), out.shape
    took = time.perf_counter() - t0
    assert took < 10, took
    try:
        Resize(300)(img, None)
    except ValueError as exc:
        assert "crop" in str(exc) and "300" in str(exc), exc
    else:
        raise AssertionError("Resize(300) of a 1:7500 image was not refused")
print("bounded")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")
def test_transforms_of_a_very_wide_image_stay_bounded() -> None:
    # main: eval_transform resized to 300x2,250,000 before cropping (+6.4 GiB, 21 s).
    proc = subprocess.run(
        [sys.executable, "-c", _WIDE_SCRIPT], capture_output=True, text=True, env=_ENV, timeout=120
    )
    assert proc.returncode == 0 and "bounded" in proc.stdout, proc.stderr[-2000:]


_SHAPES = [(450, 450), (257, 257), (40, 80), (97, 33), (300, 301), (1000, 31), (31, 64), (320, 500)]


def _test_image(shape: tuple[int, int]) -> np.ndarray:
    img = rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    img[shape[0] // 3 :, : shape[1] // 2] = cell_image(64)[0, 0]  # some flat regions too
    return img


@pytest.mark.parametrize("shape", _SHAPES)
@pytest.mark.parametrize("size", [16, 48, 300, 320])
def test_eval_transform_equals_resize_then_crop(shape: tuple[int, int], size: int) -> None:
    # The bounded pipeline gives the same pixels as resizing everything, then cropping.
    img = _test_image(shape)
    ref = CenterCrop(size)(Resize(size)(img, rng()), rng())
    out = eval_transform(size, mean=(0, 0, 0), std=(1 / 255,) * 3)(img)
    np.testing.assert_array_equal(np.rint(out.transpose(1, 2, 0)).astype(np.uint8), ref)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_resized_center_crop_of_the_kept_part_is_close_to_the_full_resize(
    interpolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forced onto the bounded path (normally taken only beyond 4 Mpx of resized image).
    monkeypatch.setattr(T, "_FULL_RESIZE_PIXELS", 0)
    for shape in _SHAPES:
        for size, crop in ((16, 16), (48, 40), (300, 300), (320, 300), (64, 96)):
            img = _test_image(shape)
            ref = CenterCrop(crop)(Resize(size, interpolation)(img, rng()), rng())
            out = T.ResizedCenterCrop(size, crop, interpolation)(img, rng())
            assert out.shape == ref.shape
            diff = np.abs(out.astype(int) - ref)
            assert diff.max() <= 8 and diff.mean() < 0.3, (shape, size, diff.max(), diff.mean())


def test_absurd_images_are_refused_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((4, 3000, 3), 200, np.uint8)).save(wide)
    reason, _ = check_image(wide)
    assert reason is not None and "aspect" in reason
    with pytest.raises(DatasetError, match="wide.png.*aspect"):
        load_image(wide)
    with DataLoader([Sample(wide, 1)], eval_transform(32), 1, num_workers=0) as dl:
        with pytest.raises(LoaderError, match="wide.png"):
            list(dl)
    # A pixel budget below Pillow's decompression-bomb limit (set small here).
    big = save_rgb(tmp_path / "big.png", size=64)
    monkeypatch.setattr(D, "MAX_PIXELS", 64 * 63)
    reason, _ = check_image(big)
    assert reason is not None and "pixels" in reason
    with pytest.raises(DatasetError, match="big.png.*pixels"):
        load_image(big)


# --------------------------------------------------------------------------- clear errors


@pytest.fixture(scope="module")
def cnmc_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hard") / "cnmc"
    write_cnmc(root, n_subjects=6, cells_per_subject=2, size=16, workers=1)
    return root


def _labels_csv(root: Path) -> Path:
    return root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"


@pytest.mark.parametrize(
    "extra, match",
    [
        (b"UID_H1_9_9_hem.bmp,\xe9t\xe9.bmp,0\n", r"labels\.csv:3: .*UTF-8"),  # Latin-1 'été'
        (b'"' + b"x" * 200_000 + b'",9.bmp,1\n', r"labels\.csv:3: .*field"),
    ],
    ids=["latin1", "huge-field"],
)
def test_malformed_labels_csv_is_a_dataset_error(
    cnmc_tree: Path, tmp_path: Path, extra: bytes, match: str
) -> None:
    # main: UnicodeDecodeError and _csv.Error, without the file or line.
    root = tmp_path / "t"
    shutil.copytree(cnmc_tree, root)
    csv_path = _labels_csv(root)
    lines = csv_path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    csv_path.write_bytes(b"".join(lines[:2]) + extra + b"".join(lines[2:]))
    with pytest.raises(DatasetError, match=match):
        load_dataset(root)


@pytest.mark.parametrize(
    "transform, match",
    [
        (lambda im, r: None, "returned None"),
        (lambda im, r: im, "uint8"),  # forgot Normalize
        (lambda im, r: im.astype(np.float32).tolist(), "list"),
        (lambda im, r: np.zeros((3, 8), np.float32), r"\(3, H, W\)"),
    ],
    ids=["none", "uint8", "list", "2d"],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_transform_returning_the_wrong_thing_names_the_file(
    cnmc_tree: Path, transform, match: str, workers: int
) -> None:  # noqa: ANN001
    # main: AttributeError for None, and a uint8 image was silently cast to float32.
    samples = load_dataset(cnmc_tree).labelled()[:3]
    for on_error in ("raise", "skip"):  # a broken transform is not a bad image: never skipped
        with DataLoader(samples, transform, 2, num_workers=workers, on_error=on_error) as dl:
            with pytest.raises(LoaderError, match=match) as info:
                list(dl)
            assert samples[0].path.name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"num_workers": 1.5}, TypeError, "num_workers"),
        ({"num_workers": False}, TypeError, "num_workers"),
        ({"prefetch": -1}, ValueError, "prefetch"),
        ({"prefetch": 2.0}, TypeError, "prefetch"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 0.5}, TypeError, "seed"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"drop_last": 1}, TypeError, "drop_last"),
        ({"transform": None}, TypeError, "transform"),
        ({"loader": "load_image"}, TypeError, "loader"),
    ],
)
def test_loader_arguments_are_checked_at_construction(
    kwargs: dict, exc: type[Exception], match: str
) -> None:
    # main: batch_size=2.5, num_workers=1.5, bools, negative prefetch/seed were accepted.
    args = {"transform": eval_transform(16), **kwargs}
    with pytest.raises(exc, match=match):
        DataLoader([Sample(Path("x.png"), 1)], **args)
    ok = DataLoader([Sample(Path("x.png"), 1)], eval_transform(16), np.int64(2), num_workers=0)
    assert len(ok) == 1


def test_masked_array_cannot_hide_nan_from_the_model() -> None:
    # main: the NaN under the mask reached the core and came back as NaN logits.
    import leukemia.models as M

    m = M.efficientnet_b3(num_classes=2).eval()
    data = np.zeros((2, 3, 64, 64), np.float32)
    data[0, 0, 5, 5] = np.nan
    with pytest.raises((TypeError, ValueError), match="masked"):
        m(np.ma.masked_invalid(data))
    with pytest.raises((TypeError, ValueError), match="masked"):
        m(np.ma.masked_array(np.zeros_like(data)))  # refused even when nothing is hidden


# --------------------------------------------------------------------------- synth --force


def _synth_args(out: Path, seed: int = 0) -> list[str]:
    opts = "--subjects 6 --cells-per-subject 2 --size 16 --workers 1 --quiet"
    return ["synth", str(out), *opts.split(), "--seed", str(seed)]


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or link target) of everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _hidden_leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(".")]


@pytest.fixture()
def synth_out(tmp_path: Path) -> Path:
    out = tmp_path / "parent" / "OUT"
    assert cli.main(_synth_args(out)) == 0
    return out


def test_synth_force_refuses_a_symlinked_subfolder_before_changing_anything(
    synth_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # main: training_data was replaced, then rmtree refused the link: OUT mixed two sets.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(synth_out / "testing_data", elsewhere)
    os.symlink(elsewhere, synth_out / "testing_data")
    before, before_target = _snapshot(synth_out), _snapshot(elsewhere)
    capsys.readouterr()
    assert cli.main([*_synth_args(synth_out, seed=1), "--force"]) == 1
    err = capsys.readouterr().err
    assert "testing_data" in err and "link" in err
    assert _snapshot(synth_out) == before and _snapshot(elsewhere) == before_target
    assert not _hidden_leftovers(synth_out, synth_out.parent)


def test_synth_force_refuses_a_file_in_the_way(
    synth_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(synth_out / "validation_data")
    (synth_out / "validation_data").write_text("not a folder")
    before = _snapshot(synth_out)
    capsys.readouterr()
    assert cli.main([*_synth_args(synth_out, seed=1), "--force"]) == 1
    assert "validation_data" in capsys.readouterr().err
    assert _snapshot(synth_out) == before
    assert not _hidden_leftovers(synth_out, synth_out.parent)


def test_synth_force_refuses_a_folder_it_could_not_delete(
    synth_out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Simulated (the tests may run as root, who may delete anything): a sub-folder of the
    # old training_data without write permission is found before anything is replaced.
    locked = synth_out / "training_data" / "fold_1"
    real_access = os.access

    def access(path, mode, *a, **k):  # noqa: ANN001, ANN202
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    before = _snapshot(synth_out)
    capsys.readouterr()
    assert cli.main([*_synth_args(synth_out, seed=1), "--force"]) == 1
    assert "fold_1" in capsys.readouterr().err
    assert _snapshot(synth_out) == before


def test_synth_force_failing_mid_swap_leaves_the_old_data_set(
    synth_out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Moving the new testing_data into place fails (say, a full disk): whatever was already
    # replaced goes back, so OUT holds the old data set, whole.
    before = _snapshot(synth_out)
    target = str(synth_out / "testing_data")
    old_inode = (synth_out / "testing_data").stat().st_ino
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def fail_new(src, dst, *a, _real=real, **k):  # noqa: ANN001, ANN202
            if str(dst) == target and os.stat(src).st_ino != old_inode:
                raise OSError(28, "No space left on device (simulated)")
            return _real(src, dst, *a, **k)

        monkeypatch.setattr(os, name, fail_new)
    assert cli.main([*_synth_args(synth_out, seed=1), "--force"]) == 1
    monkeypatch.undo()
    assert _snapshot(synth_out) == before
    assert not _hidden_leftovers(synth_out, synth_out.parent)


def test_write_cnmc_overwrite_validates_before_deleting(synth_out: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(synth_out / "testing_data", elsewhere)
    os.symlink(elsewhere, synth_out / "testing_data")
    before = _snapshot(synth_out)
    with pytest.raises(ValueError, match="testing_data.*link"):
        write_cnmc(synth_out, n_subjects=6, cells_per_subject=2, size=16, overwrite=True)
    assert _snapshot(synth_out) == before


def test_a_killed_synth_leaves_nothing_that_a_later_run_keeps(tmp_path: Path) -> None:
    # main: a SIGKILLed run left a hidden .OUT.xxxx folder that no later run removed.
    out = tmp_path / "parent" / "OUT"
    out.parent.mkdir()
    args = _synth_args(out)
    args[args.index("--cells-per-subject") + 1] = "400"
    args[args.index("--size") + 1] = "96"
    proc = subprocess.Popen(
        [sys.executable, "-m", "leukemia", *args],
        env=_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            hidden = _hidden_leftovers(out, out.parent)
            if any(any(h.rglob("*.bmp")) for h in hidden):
                break
            assert proc.poll() is None, "synth finished before it could be killed"
            time.sleep(0.05)
        else:
            raise AssertionError("synth never started writing")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _hidden_leftovers(out, out.parent)  # the killed run's temporary folder
    assert cli.main([*_synth_args(out), "--force"]) == 0
    assert not _hidden_leftovers(out, out.parent)
    assert len(load_dataset(out)) == 12


def test_a_second_run_into_the_same_folder_waits_for_the_first(synth_out: Path) -> None:
    # A temporary folder whose marker names a live process (this one) is another run's.
    from leukemia.data import synthetic

    live = synth_out / f"{synthetic._TMP_PREFIX}{os.getpid()}-abc"
    live.mkdir()
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    (live / synthetic._MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match="being written by another"):
        write_cnmc(synth_out, 6, 2, 16, overwrite=True)
    assert live.is_dir()


def test_stale_cleanup_keeps_what_is_not_a_dead_run(synth_out: Path) -> None:
    keep = [
        synth_out / ".notes",  # the user's own hidden folder
        synth_out / f".synth-tmp-{os.getppid()}-live",  # a live process's (no marker either)
        synth_out / ".synth-tmp-999999999-nomarker",  # right name, no marker: not ours
    ]
    for k in keep:
        k.mkdir()
        (k / "x.bmp").write_bytes(b"keep me")
    assert cli.main([*_synth_args(synth_out, seed=1), "--force"]) == 0
    assert all((k / "x.bmp").read_bytes() == b"keep me" for k in keep)


# --------------------------------------------------------------------------- class folders


def _all_files(root: Path) -> set[Path]:
    """Every file in <class>/ and <class>/<sub>/: not hidden, or named like an image."""

    def counts(p: Path) -> bool:
        return not p.is_dir() and (not p.name.startswith(".") or p.suffix in {".png", ".gif"})

    found = set()
    for cls in root.iterdir():
        if cls.name.startswith(".") or not cls.is_dir() or cls.is_symlink():
            continue
        for p in cls.iterdir():
            if counts(p):
                found.add(p)
            elif p.is_dir() and not p.is_symlink() and not p.name.startswith("."):
                found |= {q for q in p.iterdir() if counts(q)}
    return found


def test_class_folders_report_every_file(tmp_path: Path) -> None:
    # main: .gif, .webp and extension-less images were left out without a trace.
    root = tmp_path / "tree"
    save_rgb(root / "all" / "a.png")
    save_rgb(root / "all" / "b.gif", fmt="GIF")
    save_rgb(root / "all" / "c.webp", fmt="WEBP", seed=1)
    save_rgb(root / "all" / "d", fmt="PNG", seed=2)
    (root / "all" / "notes.txt").write_text("not an image")
    save_rgb(root / "hem" / "s1" / "e.png", seed=3)
    save_rgb(root / "hem" / "s1" / "f", fmt="BMP", seed=4)
    (root / "all" / ".hidden.png").write_bytes(b"named like an image: reported")
    (root / "all" / ".DS_Store").write_bytes(b"hidden, not named like an image: skipped")
    ds = read_folders(root)
    seen = [s.path for s in ds.samples] + [b.path for b in ds.bad]
    assert len(seen) == len(set(seen))
    assert set(seen) == _all_files(root), set(seen) ^ _all_files(root)
    used = {s.path.name for s in ds.samples}
    assert {"a.png", "c.webp", "d", "e.png", "f"} <= used  # Pillow reads them
    bad = {b.path.name: b.reason for b in ds.bad}
    assert "palette" in bad["b.gif"] and "not an image" in bad["notes.txt"]


def test_class_folders_count_each_real_file_once(tmp_path: Path) -> None:
    # main: a symlinked directory cycle and a linked subject folder counted files twice.
    root = tmp_path / "tree"
    for i in range(3):
        save_rgb(root / "all" / "p1" / f"{i}.png", seed=i)
        save_rgb(root / "hem" / "n1" / f"{i}.png", seed=10 + i)
    save_rgb(root / "all" / "top.png", seed=20)
    os.symlink(".", root / "all" / "loop")  # cycle: all/loop/loop/... is all/
    os.symlink("n1", root / "hem" / "n2")  # the same subject under a second id
    os.symlink("../all/top.png", root / "hem" / "top.png")  # one file in both classes
    os.symlink(".", root / "again")  # the root inside itself
    ds = read_folders(root)
    real = [os.path.realpath(s.path) for s in ds.samples]
    assert len(real) == len(set(real)) == 7
    reasons = {str(b.path.relative_to(root)): b.reason for b in ds.bad}
    for name in ("all/loop", "hem/n2", "again"):
        assert any(k == name or k.startswith(name + "/") for k in reasons), reasons
    assert all("link" in r or "same file" in r for r in reasons.values()), reasons
    assert {s.subject for s in ds.samples if s.label == 0} == {"n1"}


# --------------------------------------------------------------------------- fuzzing


def _fuzz_rss_limit_mb(budget_mb: int = 2048) -> int:
    """libFuzzer's RSS limit for a child process: Linux carries the peak RSS of this
    (pytest) process over fork and exec into the child's ru_maxrss, which libFuzzer reads
    as its own usage; so the budget is counted on top of the parent's peak."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + budget_mb


@pytest.mark.parametrize("harness", ["fuzz_cnmc_csv", "fuzz_image"])
def test_fuzz_harness_short_fixed_seed_run(harness: str, tmp_path: Path) -> None:
    """A few seconds of each harness: only DatasetError or a BadImage reason may come out.

    With atheris installed this is a real coverage-guided run (``-runs``, ``-seed`` fixed);
    without it the harness's plain-Python mutation loop runs over the same target."""
    path = HERE / "fuzz" / f"{harness}.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(path),
            "-runs=1500",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            f"-rss_limit_mb={_fuzz_rss_limit_mb()}",
            "-timeout=20",
        ],
        capture_output=True,
        text=True,
        env={**_ENV, "TMPDIR": str(tmp_path)},  # its work folders go with tmp_path
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done 1500 runs" in proc.stderr or "mutation loop: 1500 runs" in proc.stdout
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))
