"""The notebooks run top to bottom (their code cells, in one namespace), with the
parameter QUICK = True that shrinks their data and schedules, and WORKDIR, the test's own
temporary folder, so that their data sets and runs (about 1 GB each) are cleaned up
instead of piling up in the system's temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, capsys, tmp_path):
    nb = json.loads(path.read_text())
    ns: dict = {"__name__": "__main__", "QUICK": True, "WORKDIR": str(tmp_path)}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{path.name}", "exec"), ns)  # noqa: S102
    assert "notebook finished" in capsys.readouterr().out
    assert any(tmp_path.iterdir()), f"{path.name} ignored WORKDIR"
