"""`leukemia compare`: the table's numbers are those of the metrics on the saved runs'
test-side probabilities, ensembles combine the members, the leaky row is labelled, and a
second call loads the runs instead of training them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from leukemia import metrics as M
from leukemia.cli import main
from leukemia.compare import MODELS, _slug, _three_way
from leukemia.data import load_dataset
from leukemia.evaluation import load_run, predict

ARGS = [
    "--subjects",
    "12",
    "--cells-per-subject",
    "8",
    "--size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--bootstrap",
    "50",
    "--models",
    "0,2",
    "--quiet",
]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--out", str(out), *ARGS]) == 0
    return out


def test_table_rows_and_files(out: Path) -> None:
    for name in (
        "table.md",
        "table.csv",
        "results.json",
        "roc.png",
        "confusion.png",
        "reliability.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in rows]
    assert names[:2] == [MODELS[0][0], MODELS[2][0]]
    assert sum(n.startswith("Ensemble") for n in names) == 3
    assert rows[-1]["split"] == "image-level (LEAKY)"
    assert "LEAKY" in (out / "table.md").read_text()
    assert len(list(csv.DictReader((out / "table.csv").open()))) == len(rows)
    weights = next(r["weights"] for r in rows if "weighted" in r["model"])
    assert len(weights) == 2 and abs(sum(weights) - 1) < 1e-9 and min(weights) >= 0


def test_numbers_are_the_metrics_of_the_runs(out: Path) -> None:
    ds = load_dataset(out / "data")
    outer, inner = _three_way(ds.labelled(), 0)
    test = outer.test
    labels = np.array([s.label for s in test])
    rows = {
        r["model"]: r
        for r in json.loads((out / "results.json").read_text())
        if r["split"] == "patient-wise"
    }
    probs = []
    for name, _, _ in (MODELS[0], MODELS[2]):
        run = load_run(out / "runs" / _slug(name))
        # nothing of the test side was trained or tuned on
        assert not {s.subject for s in test} & set(run.split["subjects"]["train"])
        assert not {s.subject for s in test} & set(run.split["subjects"]["val"])
        p = predict(run, test)
        probs.append(p)
        r = rows[name]
        assert r["accuracy"] == pytest.approx(M.accuracy(labels, p.argmax(1)))
        assert r["weighted_f1"] == pytest.approx(M.weighted_f1(labels, p.argmax(1), 2))
        assert r["roc_auc"] == pytest.approx(M.roc_auc(labels, p[:, 1]))
        lo, hi = r["weighted_f1_ci"]
        assert 0 <= lo <= hi <= 1
    soft = np.mean(probs, 0)
    assert rows["Ensemble, soft voting"]["roc_auc"] == pytest.approx(M.roc_auc(labels, soft[:, 1]))


def test_second_call_loads_the_runs(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.ckpt")}
    assert main(["compare", "--out", str(out), *ARGS]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.ckpt")}
    assert before == after  # nothing retrained
    assert main(["compare", "--out", str(out), "--models", "9", "--quiet"]) == 1
    assert "row numbers" in capsys.readouterr().err
