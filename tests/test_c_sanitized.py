"""Run the C core's own tests (every layer and both models) built with AddressSanitizer,
UndefinedBehaviorSanitizer and LeakSanitizer; any report or failure fails this test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_c_core_under_sanitizers(tmp_path):
    assert shutil.which("gcc"), "gcc is needed to build the sanitized C tests"
    env = dict(os.environ, PY=sys.executable, LK_SAN_BUILD=str(tmp_path / "san"), LK_NO_INSTALL="1")
    out = subprocess.run(
        ["bash", str(ROOT / "csrc/tests/run_sanitized.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", out.stdout, re.M)
    assert summary, log[-2000:]
    passed, failed = map(int, summary[-1])
    assert failed == 0 and passed > 50, log[-2000:]
