"""Smoke test of the benchmark scripts (no timings asserted): they start, and bench_infer's
leukemia and PyTorch workers run the same weights. ONNX Runtime and OpenVINO (the `bench`
extra) are not needed here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("script", ["bench_infer.py", "bench_train.py"])
def test_help(script):
    r = _run([f"benchmarks/{script}", "--help"])
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "--threads" in r.stdout


def test_bench_infer_tiny_run_ours_and_torch(tmp_path):
    r = _run(
        [
            "benchmarks/bench_infer.py",
            "--models",
            "b3",
            "--size",
            "32",
            "--batches",
            "1",
            "--frameworks",
            "ours,torch",
            "--threads",
            "1",
            "--rounds",
            "1",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--work-dir",
            str(tmp_path),
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "# CPU:" in out and "# command:" in out and "# fp32 peak = 1 cores x" in out
    assert "oneDNN ISA" in out and "torch 2." in out
    rows = {
        m.group(1): m for m in re.finditer(r"^\| b3@32 \| 1 \| (\S+) \|.*\| (\S+) \|$", out, re.M)
    }
    assert set(rows) == {"leukemia", "PyTorch"}, out
    # The same seeded torchvision weights in both: logits agree to float32 accuracy.
    assert float(rows["leukemia"].group(2)) < 1e-3, out


def test_bench_train_tiny_run_with_ceiling():
    r = _run(
        [
            "benchmarks/bench_train.py",
            *("--size", "32", "--batch", "2", "--reps", "1", "--warmup", "0"),
            *("--policies", "head", "--threads", "1", "--measure-peak"),
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "# attainable peak:" in out and "| ceiling |" in out, out
    row = re.search(r"^\| head \|.*? \| (\S+)x \|[^|]+\|[^|]+\| (\S+)x \| \d+ / \d+ \|$", out, re.M)
    assert row, out
    ratio, ceiling = float(row.group(1)), float(row.group(2))
    # At the peak, ours would be at least as far ahead as it is now.
    assert ceiling >= ratio > 0, out


def test_least_flops_count_the_winograd_layers_at_a_quarter(tmp_path):
    """The ceilings' least arithmetic: V2-S's dense 3x3 stride-1 convolutions (the
    FusedMBConv stages, from DESIGN.md's table) at a quarter, nothing else changed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_infer import worker_prep
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    b3 = worker_prep("b3", 32, [1], 0, tmp_path, False, "dynamo")
    v2 = worker_prep("v2s", 32, [1], 0, tmp_path, False, "dynamo")
    assert b3["least_flops_per_image"] == b3["flops_per_image"]  # no such layer in B3
    # 32x32 input: stage 1 (24->24, 2 blocks) at 16x16, stage 2's last three blocks
    # (48->192) at 8x8, stage 3's last three (64->256) at 4x4; 2 FLOPs per multiply-add
    wino = (
        2 * 16 * 16 * 24 * 24 * 9 * 2 + 3 * 8 * 8 * 48 * 192 * 9 * 2 + 3 * 4 * 4 * 64 * 256 * 9 * 2
    )
    assert v2["least_flops_per_image"] == pytest.approx(v2["flops_per_image"] - 0.75 * wino)
