"""`python -m lprnet eval` and `predict` on pipeline artifacts and on the published state dict."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from lprnet.__main__ import main
from lprnet.model.checkpoint import save_model
from lprnet.model.data import list_images
from tests.conftest import repo_params


@pytest.fixture
def folder_and_artifact(tmp_path, random_model, latin, images_and_labels):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    images, labels = images_and_labels
    for i, (image, label) in enumerate(zip(images[:6], labels[:6])):
        Image.fromarray(image[:, :, ::-1]).save(folder / f"{label}_{i}.png")
    artifact = tmp_path / "model.pt"
    save_model(artifact, random_model, latin)
    return folder, artifact


def test_eval_prints_the_common_metrics(folder_and_artifact, capsys):
    folder, artifact = folder_and_artifact
    assert main(["eval", str(artifact), "--images", str(folder), "--runs", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_images"] == 6 and metrics["threads"] == 2
    assert metrics["size_bytes"] == artifact.stat().st_size and metrics["params"] > 0 and metrics["macs"] > 0


def test_predict_prints_one_plate_per_image(folder_and_artifact, capsys):
    folder, artifact = folder_and_artifact
    files = list_images(folder)
    assert main(["predict", str(artifact), *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, files))


def test_missing_artifact_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "lprnet", "predict", "missing.pt", "x.jpg"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: missing.pt: no such artifact"


def test_published_weights_reach_the_reference_accuracy_at_any_batch(published_weights, published_images, capsys):
    accuracies = []
    for batch in ("1", "64"):
        assert main(["eval", str(published_weights), "--images", str(published_images), "--batch", batch,
                     "--runs", "3"]) == 0
        accuracies.append(json.loads(capsys.readouterr().out)["accuracy"])
    # ../shared/lprnet-pretrained/README.md: 445 / 498 at batch 1.
    assert accuracies == [445 / 498, 445 / 498]


TUNE_BUDGET_PARAMS = yaml.safe_dump({
    "bench": repo_params("bench"), "tvm": repo_params("tvm"),
    "tune": {**repo_params("tune"), "total_trials": 0, "trials_per_task": 12, "trials_per_iteration": 3,
             "population": 16, "seed": 5, "weight_layout_rewrite": True}})


@pytest.mark.parametrize("extra, message", [
    (["--checkpoints", "10,x"], "error: --checkpoints '10,x': expected comma-separated integers"),
    (["--checkpoints", "5,11"], "error: checkpoints [5, 11]: expected trial counts in 1..10 (--trials)"),
    (["--checkpoints", "10"], "no-models/tvm/layout/fp32.json"),
])
def test_tune_budget_refuses_bad_input_before_tuning(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(TUNE_BUDGET_PARAMS)
    assert main(["tune-budget", "--trials", "10", "--models", "no-models", *extra]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not (tmp_path / "no-models").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize("extra, expected", [
    ([], {"trials_per_task": 12, "trials_per_iteration": 3, "population": 16, "seed": 5,
          "weight_layout_rewrite": True}),
    (["--per-task", "64", "--per-iteration", "8", "--population", "512", "--seed", "0", "--no-weight-layout-rewrite"],
     {"trials_per_task": 64, "trials_per_iteration": 8, "population": 512, "seed": 0, "weight_layout_rewrite": False}),
])
def test_tune_budget_takes_the_search_settings_from_params_unless_given(tmp_path, capsys, monkeypatch, extra,
                                                                        expected):
    import pandas as pd

    from lprnet.pipeline import tune_budget

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(TUNE_BUDGET_PARAMS)
    studies = []
    monkeypatch.setattr(tune_budget, "write_budget_study", lambda out, **study: studies.append(study) or pd.DataFrame())
    assert main(["tune-budget", "--trials", "10", "--checkpoints", "10", *extra]) == 0
    (study,) = studies
    assert {key: study[key] for key in expected} == expected
    assert study["total_trials"] == 10 and study["checkpoints"] == [10]
