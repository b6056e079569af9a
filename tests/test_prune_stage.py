"""The `prune` stage script: distillation instead of, or added to, label fine-tuning, `ratio: auto` against the
accuracy budget, and its settings refused when invalid. The search's bisection with set accuracies:
tests/test_prune_search.py."""

from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lprnet.model.checkpoint import save_model
from lprnet.model.data import save_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_prune_stage(tmp_path, random_model, latin, images_and_labels, monkeypatch, capsys):
    """Run stages/prune.py in this process (a subprocess would import torch again, seconds per case) on a tiny split
    of the random model, with params.yaml's prune and budget sections updated; returns its exit code and stderr."""

    def run(budget: dict | None = None, **overrides) -> SimpleNamespace:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["prune"].update(overrides)
        params["budget"].update(budget or {})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        images, labels = images_and_labels
        for split, (start, stop) in {"train": (0, 16), "calib": (16, 24), "test": (16, 24)}.items():
            save_split(data / f"{split}.npz", images[start:stop], labels[start:stop])
        (data / "alphabet.json").write_text(json.dumps({"alphabet": latin.name}))
        save_model(tmp_path / "baseline.pt", random_model, latin)
        monkeypatch.setattr(sys, "argv", [
            "stages/prune.py", "--params", str(tmp_path / "params.yaml"), "--baseline", str(tmp_path / "baseline.pt"),
            "--data", str(data), "--model", str(tmp_path / "pruned.pt"), "--metrics", str(tmp_path / "metrics.json"),
            "--search", str(tmp_path / "search.csv"), "--live", str(tmp_path / "training")])
        capsys.readouterr()
        try:
            runpy.run_path(str(REPO / "stages/prune.py"), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    return run


def test_distilled_fine_tuning_validates_and_reports_like_label_fine_tuning(tmp_path, run_prune_stage):
    result = run_prune_stage(ratio=0.5, finetune_steps=4,
                             batch_size=8, distill=True, distill_temperature=3.0)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["macs_ratio"] < 0.7 and metrics["num_images"] == 8
    assert {"finetune_val_accuracy_start", "finetune_val_accuracy", "finetune_kept_step"} <= set(metrics)
    assert "distill" in result.stderr  # its progress bar, not train_ctc's


@pytest.mark.parametrize(("distill_alpha", "progress"), [(1.0, "train+distill"), (0.0, "train:")])
def test_label_fine_tuning_adds_the_distillation_term_only_with_a_positive_alpha(tmp_path, run_prune_stage,
                                                                                  distill_alpha, progress):
    result = run_prune_stage(ratio=0.5, finetune_steps=4,
                             batch_size=8, distill=False, distill_alpha=distill_alpha)
    assert result.returncode == 0, result.stderr
    assert progress in result.stderr  # train_ctc's progress bar names the loss
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"finetune_val_accuracy_start", "finetune_val_accuracy", "finetune_kept_step"} <= set(metrics)


@pytest.mark.parametrize(("temperature", "message"), [
    (0, "prune.distill_temperature must be positive, got 0.0"),
    (-1, "prune.distill_temperature must be positive, got -1.0"),
    (float("nan"), "prune.distill_temperature: expected a finite number, got nan"),  # params.py, for every key
])
def test_a_bad_distillation_temperature_is_a_one_line_error_without_output(tmp_path, run_prune_stage, temperature,
                                                                           message):
    result = run_prune_stage(distill=True,
                             distill_temperature=temperature)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "pruned.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_distillation_without_fine_tuning_steps_is_refused(tmp_path, run_prune_stage):
    result = run_prune_stage(distill=True, finetune_steps=0)
    assert result.returncode != 0 and "prune.finetune_steps is 0" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "pruned.pt").exists()


@pytest.mark.parametrize("round_to", [0, -16])
def test_a_bad_round_to_is_a_one_line_error_without_output(tmp_path, run_prune_stage,
                                                           round_to):
    result = run_prune_stage(round_to=round_to)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(f"prune.round_to must be a positive integer, got {round_to}")
    assert not (tmp_path / "pruned.pt").exists()


def test_ratio_auto_searches_against_the_budget_and_lists_each_ratio_tried(tmp_path, run_prune_stage):
    """A random model reads no plate (0 % before and after pruning), so every ratio keeps any share of the budget:
    the bisection climbs to the largest ratio in three fine-tunings (0.3, 0.5, 0.6)."""
    result = run_prune_stage(ratio="auto", finetune_steps=2,
                             batch_size=8, auto_ratios=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ratio"] == 0.6 and metrics["auto_ratios_tried"] == 3
    rows = list(csv.DictReader((tmp_path / "search.csv").open()))
    assert [float(row["ratio"]) for row in rows] == [0.3, 0.5, 0.6]
    assert all(row["verdict"] == "kept: within the budget's share" for row in rows)
    assert [int(row["macs"]) for row in rows] == sorted((int(row["macs"]) for row in rows), reverse=True)
    assert int(rows[-1]["macs"]) == metrics["macs"]


def test_ratio_auto_without_fine_tuning_judges_the_pruned_models_as_they_are(tmp_path, run_prune_stage):
    """finetune_steps 0 (weights trained elsewhere, whose pruned models may keep their accuracy untrained): the same
    bisection, on each pruned model's own validation accuracy."""
    result = run_prune_stage(ratio="auto", finetune_steps=0, auto_ratios=[0.2, 0.4, 0.6])
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ratio"] == 0.6 and metrics["auto_ratios_tried"] == 2
    assert "finetune_val_accuracy" not in metrics
    rows = list(csv.DictReader((tmp_path / "search.csv").open()))
    assert [float(row["ratio"]) for row in rows] == [0.4, 0.6]
    assert all(float(row["val_accuracy"]) == float(row["val_accuracy_start"]) == 0.0 for row in rows)
    assert all(row["verdict"] == "kept: within the budget's share" for row in rows)


def test_an_explicit_ratio_writes_its_one_row_checked_against_the_budget(tmp_path, run_prune_stage):
    """No search, but the same check on validation: a random model reads 0 % before and after, within any share."""
    result = run_prune_stage(ratio=0.5, finetune_steps=0)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ratio"] == 0.5
    [row] = list(csv.DictReader((tmp_path / "search.csv").open()))
    assert float(row["ratio"]) == 0.5 and int(row["macs"]) == metrics["macs"]
    assert float(row["val_accuracy"]) == float(row["val_accuracy_start"]) == 0.0
    assert float(row["val_accuracy_floor"]) < 0 and row["verdict"] == "explicit: within the budget's share"


@pytest.mark.parametrize(("overrides", "budget", "message"), [
    ({"ratio": "automatic"}, {}, "prune.ratio must be a number in [0, 1) or auto, got 'automatic'"),
    ({"auto_ratios": []}, {}, "prune.auto_ratios must be a non-empty list"),
    ({"auto_ratios": [0.3, 0.2]}, {}, "prune.auto_ratios must be a non-empty list of increasing numbers"),
    ({"auto_ratios": [0.2, 1.0]}, {}, "prune.auto_ratios must be"),
    ({"auto_ratios": 0.3}, {}, "prune.auto_ratios must be"),
    ({}, {"prune_share": 0}, "budget.prune_share must be a share of the budget in (0, 1], got 0"),
    ({}, {"prune_share": float("nan")}, "budget.prune_share: expected a finite number, got nan"),
])
def test_bad_search_settings_are_one_line_errors_without_output(tmp_path, run_prune_stage,
                                                                 overrides, budget, message):
    result = run_prune_stage(budget=budget, **overrides)
    assert result.returncode == 1 and message in result.stderr.strip().splitlines()[-1], result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pruned.pt").exists() and not (tmp_path / "search.csv").exists()
