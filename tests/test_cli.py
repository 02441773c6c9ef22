"""The ``leukemia`` command line: synth and inspect end to end, usage and runtime errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_data import save_gray, save_rgb, save_zero  # noqa: E402

from leukemia import cli  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leukemia", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    proc = run(
        "synth",
        str(out),
        "--subjects",
        "10",
        "--cells-per-subject",
        "5",
        "--size",
        "48",
        "--seed",
        "2",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Wrote 50 images (48x48) of 10 subjects (7 ALL, 3 normal)" in proc.stdout
    return out


def test_synth_then_inspect_split(synth_dir: Path) -> None:
    proc = run("inspect", str(synth_dir), "--split")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "layout: cnmc, 50 images" in out
    assert (
        "Images per fold and class" in out
        and "Images per subject (9 subjects; '(none)': images without a subject id)" in out
    )
    for fold in ("fold_0", "fold_1", "fold_2", "prelim", "final"):
        assert fold in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total[-2:] == ["50", "9"]  # 50 images, 9 known subjects (final is anonymous)
    assert "Unreadable or rejected files: none" in out
    assert "Split: patient-wise" in out
    assert "Leakage check: OK" in out and "LEAKAGE" not in out
    assert "C-NMC official folds" in out and "preliminary test set" in out
    assert "Traceback" not in proc.stderr


def test_inspect_lists_unreadable_files_in_process(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = tmp_path / "c"
    shutil.copytree(synth_dir, root)
    save_zero(root / "training_data" / "fold_1" / "all" / "UID_77_1_1_all.bmp")
    save_gray(root / "training_data" / "fold_1" / "hem" / "UID_H77_1_1_hem.bmp")
    assert cli.main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Unreadable or rejected files (2):" in out
    assert "UID_77_1_1_all.bmp: empty file (0 bytes)" in out
    assert "UID_H77_1_1_hem.bmp: mode L (grayscale), expected RGB" in out


def test_inspect_image_split_is_flagged_leaky(
    synth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["inspect", str(synth_dir), "--split", "--policy", "image", "--no-subjects"]) == 0
    )
    out = capsys.readouterr().out
    assert "LEAKY" in out and "LEAKAGE FOUND" in out and "subject(s) in both" in out


def test_inspect_folders_without_subjects_falls_back_to_leaky(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(5):
        save_rgb(tmp_path / "all" / f"a{i}.png", seed=i)
        save_rgb(tmp_path / "hem" / f"h{i}.png", seed=20 + i)
    assert cli.main(["inspect", str(tmp_path), "--split"]) == 0
    out = capsys.readouterr().out
    assert "layout: folders" in out and "patient-wise split is impossible" in out
    assert "LEAKY" in out


def test_synth_in_process_and_refuses_non_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    args = [
        "synth",
        str(out),
        "--subjects",
        "3",
        "--cells-per-subject",
        "2",
        "--size",
        "32",
        "--quiet",
    ]
    assert cli.main(args) == 0
    assert "Wrote 6 images" in capsys.readouterr().out
    assert cli.main(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["synth"],
        ["synth", "x", "--subjects", "one"],
        ["synth", "x", "--subjects", "1"],
        ["synth", "x", "--size", "-5"],
        ["inspect"],
        ["inspect", "x", "--test-fraction", "2"],
        ["inspect", "x", "--layout", "png"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    proc = run(*argv)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_errors_are_one_line(tmp_path: Path) -> None:
    for target in (tmp_path / "missing", tmp_path):
        proc = run("inspect", str(target))
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("leukemia: error: ")
        assert str(target) in lines[0]


def test_help_on_every_subcommand() -> None:
    proc = run("--help")
    assert proc.returncode == 0 and "synth" in proc.stdout and "inspect" in proc.stdout
    for name in cli.COMMANDS:
        assert cli.main([name, "--help"]) == 0
    assert run("synth", "--help").returncode == 0


def test_registry_plugs_in_a_new_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n", type=int, default=1)

    def go(args: argparse.Namespace) -> int:
        if args.n < 0:
            raise RuntimeError("n must not be negative\nsecond line")
        print(f"hello {args.n}")
        return 0

    cli.register(cli.Command("hello-test", "say hello", add, go))
    try:
        assert cli.main(["hello-test", "--n", "3"]) == 0
        assert "hello 3" in capsys.readouterr().out
        assert cli.main(["hello-test", "--n", "-1"]) == 1
        assert capsys.readouterr().err == "leukemia: error: n must not be negative\n"
        with pytest.raises(ValueError, match="already registered"):
            cli.register(cli.Command("hello-test", "again", add, go))
    finally:
        cli.COMMANDS.pop("hello-test", None)


def test_info_command(capsys):
    from leukemia.cli import main

    assert main(["info", "--models"]) == 0
    out = capsys.readouterr().out
    assert "oneDNN 3.2.0 (OpenMP runtime)" in out
    assert "efficientnet_b3     12,233,232 parameters" in out
    assert "efficientnet_v2_s   21,458,488 parameters" in out
