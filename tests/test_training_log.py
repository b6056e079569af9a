"""lprnet/pipeline/training_log.py: the stages' DVCLive curves, read back as DVC reads them (TSV per curve, summary
JSON). How `dvc plots` draws them: tests/test_plots.py."""

from __future__ import annotations

import csv
import json

from lprnet.pipeline.training_log import CURVES, training_log


def curve(folder, key: str) -> list[tuple[int, float]]:
    with open(folder / "plots" / "metrics" / f"{key}.tsv", encoding="utf-8") as file:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(file, delimiter="\t")]


def row(step: int, loss: float, accuracy: float) -> dict:
    return {"step": step, "epoch": 0.0, "train_loss": loss, "val_accuracy": accuracy, "val_char_accuracy": accuracy,
            "lr": 1e-3}


def test_runs_follow_each_other_on_the_step_axis_and_the_summary_holds_the_latest(tmp_path):
    """Two fine-tunings (prune's ratio auto): the second's step 0 is where the first ended. The start row's NaN loss
    (no training yet) is left out of the loss curve."""
    folder = tmp_path / "training" / "prune"
    with training_log(folder) as curves:
        first = curves.run()
        first(row(0, float("nan"), 0.5))
        first(row(10, 2.0, 0.7))
        second = curves.run()
        second(row(0, float("nan"), 0.4))
        second(row(10, 1.5, 0.6))
    assert curve(folder, "val_accuracy") == [(0, 0.5), (10, 0.7), (10, 0.4), (20, 0.6)]
    assert curve(folder, "train_loss") == [(10, 2.0), (20, 1.5)]
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["step"] == 20 and summary["val_accuracy"] == 0.6
    assert not (tmp_path / "dvc.yaml").exists() and not (folder / "dvc.yaml").exists()  # dvc.yaml is the project's


def test_a_stage_that_does_not_train_leaves_empty_curves_and_summary(tmp_path):
    with training_log(tmp_path / "live"):
        pass
    assert all(curve(tmp_path / "live", key) == [] for key in CURVES)
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {}
