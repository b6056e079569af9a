"""The select stage's choice (lprnet/pipeline/select_step.py) over every benchmarked artifact, with fake predictors
whose accuracy on each split is set by the test, so that the choice, the scoring order and the split each decision
reads can be seen. Real runtimes in a deploy folder: tests/test_deploy.py; the stage in `dvc repro`:
tests/test_pipeline.py."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lprnet.errors import InputError
from lprnet.model.alphabet import get_alphabet
from lprnet.model.data import save_split
from lprnet.pipeline import select_step
from lprnet.pipeline.artifacts import ARTIFACTS, REFERENCE, REFERENCE_PATH, flat_benchmark
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.params import read_section
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.deploy import DEPLOY_FILE, read_deploy_manifest
from tests.conftest import params_from_repo, repo_params

# Batch-1 p50 (ms) of each artifact in the fake benchmark, and validation (calib) accuracy; the baseline's is 98 %.
LATENCY = {"torch_fp32_baseline": 8.0, "torch_fp32_pruned": 5.0, "torch_int8": 1.6, "ort_fp32": 1.1,
           "ort_int8": 0.8, "tvm_import_fp32": 40.0, "tvm_import_int8": 30.0, "tvm_graph_fp32": 35.0,
           "tvm_graph_int8": 25.0, "tvm_layout_fp32": 20.0, "tvm_layout_int8": 18.0, "tvm_tune_fp32": 1.3,
           "tvm_tune_int8": 0.6, REFERENCE: 1.5}
VALIDATION = {name: 0.977 for name in LATENCY} | {"torch_fp32_baseline": 0.98, REFERENCE: 0.98,
                                                  "tvm_tune_int8": 0.962, "ort_int8": 0.976}
TEST = {name: 0.95 for name in LATENCY} | {"torch_fp32_baseline": 0.982, REFERENCE: 0.981}


class FakePredictor:
    alphabet = get_alphabet("latin")

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        if name == "tvm":  # a TVM artifact's own manifest: its target and fixed batch
            self.manifest = {"target": {"kind": "llvm", "mcpu": "znver4"}, "input_shape": [1, 3, 24, 94]}


@pytest.fixture
def fake_pipeline(tmp_path, monkeypatch):
    """models/ with a stand-in file (or TVM folder) per artifact, data/prepared with calib and test splits whose
    labels tell them apart, and the stage's predictor loading and scoring replaced by the tables above. Returns
    (models, data, benchmark.json's content, the log of (artifact, split) scored)."""
    models, data = tmp_path / "models", tmp_path / "prepared"
    names = {}
    layout = {**{name: artifact.path for name, artifact in ARTIFACTS.items()}, REFERENCE: REFERENCE_PATH}
    for name, path in ((name, models / path) for name, path in layout.items()):
        if name.startswith("tvm_"):
            path.mkdir(parents=True)
            (path / "model.so").write_bytes(b"x" * 1000)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * {"torch_fp32_baseline": 1_300_000, REFERENCE: 1_200_000}.get(name, 800_000))
        names[path.name] = name

    def load_predictor(path, threads=None):
        path = Path(path)
        runtime = "tvm" if path.is_dir() else "onnxruntime" if path.suffix == ".onnx" else "torch"
        return FakePredictor(path, runtime)

    scored = []

    def evaluate(predictor, images, labels, batch_size=64):
        split = {"C": "calib", "T": "test"}[str(labels[0])[0]]
        name = names.get(predictor.path.name, "delivered")  # the copy in the deploy folder has its runtime's name
        scored.append((name, split))
        table = TEST if split == "test" else VALIDATION
        return {"accuracy": table[delivered[0]] if name == "delivered" else table[name]}

    delivered = []
    real_copy = select_step.copy_artifact

    def copy_artifact(source, folder, runtime):
        delivered.append(names[source.name])
        return real_copy(source, folder, runtime)

    monkeypatch.setattr(select_step, "load_predictor", load_predictor)
    monkeypatch.setattr(select_step, "evaluate", evaluate)
    monkeypatch.setattr(select_step, "copy_artifact", copy_artifact)
    images = np.zeros((4, 24, 94, 3), np.uint8)
    data.mkdir()
    save_split(data / "calib.npz", images, ["C1", "C2", "C3", "C4"])
    save_split(data / "test.npz", images, ["T1", "T2", "T3", "T4"])
    timings = {name: {"latency_ms_p50": ms, "ratio_vs_baseline": ms / 8.0, "ratio_vs_ort_fp32_baseline": ms / 1.5}
               for name, ms in LATENCY.items()}
    return models, data, flat_benchmark({"threads": 2}, timings), scored


def budget(**overrides) -> BudgetParams:
    return params_from_repo("budget", BudgetParams, **overrides)


BENCH = params_from_repo("bench", BenchConfig)


def test_the_fastest_artifact_within_budget_is_delivered_and_slower_ones_are_not_scored(fake_pipeline, tmp_path):
    models, data, benchmark, scored = fake_pipeline
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "deploy", budget(), BENCH)
    # tvm_tune_int8 (0.6 ms) is 1.8 points below the baseline on validation: over the 0.5-point budget.
    assert [(row["artifact"], row["verdict"]) for row in log] == [("tvm_tune_int8", "below the accuracy budget"),
                                                                 ("ort_int8", "delivered")]
    assert [name for name, split in scored if split == "calib"] == ["torch_fp32_baseline", "tvm_tune_int8",
                                                                     "ort_int8"]
    assert metrics["artifact"] == "ort_int8" and metrics["candidates_scored"] == 3
    assert metrics["val_accuracy"] == 0.976 and metrics["baseline_val_accuracy"] == 0.98
    assert metrics["accuracy"] == 0.95 and metrics["baseline_accuracy"] == 0.982
    assert math.isclose(metrics["accuracy_drop"], 0.032) and metrics["latency_ms_p50"] == 0.8
    assert metrics["reference_accuracy"] == 0.981 and metrics["reference_size_bytes"] == 1_200_000
    manifest = read_deploy_manifest(tmp_path / "deploy")
    assert manifest["runtime"] == "onnxruntime" and manifest["artifact"] == "model.onnx"
    assert (tmp_path / "deploy" / "model.onnx").read_bytes() == (models / "onnx/int8.onnx").read_bytes()
    assert manifest["source"]["artifact"] == "ort_int8" and manifest["source"]["path"] == "onnx/int8.onnx"
    assert manifest["source"]["sha256"] == hashlib.sha256((models / "onnx/int8.onnx").read_bytes()).hexdigest()
    assert manifest["validation"] == {"split": "calib", "accuracy": 0.976, "baseline_accuracy": 0.98,
                                      "num_images": 4}
    assert manifest["test"]["accuracy"] == 0.95 and manifest["budget"]["max_accuracy_drop"] == 0.005
    assert manifest["alphabet"]["chars"] == get_alphabet("latin").chars
    assert manifest["input"]["shape"] == ["N", 3, 24, 94] and manifest["input"]["pixel_scale"] == 1 / 128


def test_a_larger_budget_delivers_a_faster_model_a_tvm_folder(fake_pipeline, tmp_path):
    models, data, benchmark, _ = fake_pipeline
    metrics, _ = select_step.select_stage(models, data, benchmark, tmp_path / "deploy",
                                          budget(max_accuracy_drop=0.02), BENCH)
    assert metrics["artifact"] == "tvm_tune_int8"
    manifest = json.loads((tmp_path / "deploy" / DEPLOY_FILE).read_text())
    assert manifest["runtime"] == "tvm" and (tmp_path / "deploy/model/model.so").is_file()
    assert manifest["target"] == {"kind": "llvm", "mcpu": "znver4"} and manifest["input"]["shape"][0] == 1


def test_a_zero_budget_delivers_the_baseline_through_its_fastest_runtime(fake_pipeline, tmp_path):
    models, data, benchmark, scored = fake_pipeline
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "deploy",
                                            budget(max_accuracy_drop=0.0), BENCH)
    # PyTorch int8 (1.6 ms) is within budget.latency_tie of the reference (1.5) and is scored too: below budget.
    assert [(row["artifact"], row["verdict"]) for row in log][-2:] == [(REFERENCE, "delivered"),
                                                                      ("torch_int8", "below the accuracy budget")]
    assert metrics["artifact"] == REFERENCE and metrics["accuracy"] == metrics["reference_accuracy"] == 0.981
    assert metrics["candidates_scored"] == 7 == len([1 for _, split in scored if split == "calib"])
    manifest = read_deploy_manifest(tmp_path / "deploy")
    assert manifest["runtime"] == "onnxruntime" and manifest["source"]["path"] == "onnx/baseline.onnx"


def test_artifacts_as_fast_within_the_latency_tie_go_to_the_most_accurate_on_validation(fake_pipeline, tmp_path,
                                                                                        monkeypatch):
    """ONNX Runtime fp32 10 % slower than int8 and more accurate is delivered; a tie of 0 delivers the fastest; an
    artifact just past the tie, or past the latency goal, is not scored."""
    models, data, benchmark, scored = fake_pipeline
    benchmark = benchmark | {"ort_fp32_latency_ms_p50": 0.88}  # 0.8 ms x 1.1
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "tie", budget(latency_tie=0.1), BENCH)
    assert metrics["artifact"] == "ort_fp32" and metrics["val_accuracy"] == 0.977 and metrics["latency_tie"] == 0.1
    assert metrics["latency_ms_p50"] == 0.88 and read_deploy_manifest(tmp_path / "tie")["source"]["path"] == (
        "onnx/fp32.onnx")
    assert [(row["artifact"], row["verdict"]) for row in log] == [
        ("tvm_tune_int8", "below the accuracy budget"),
        ("ort_int8", "within budget, as fast as ort_fp32 (budget.latency_tie), less accurate"),
        ("ort_fp32", "delivered")]
    scored.clear()
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "fastest", budget(latency_tie=0.0),
                                            BENCH)
    assert metrics["artifact"] == "ort_int8" and [row["artifact"] for row in log] == ["tvm_tune_int8", "ort_int8"]
    assert "ort_fp32" not in {name for name, _ in scored}
    metrics, _ = select_step.select_stage(models, data, benchmark | {"ort_fp32_latency_ms_p50": 0.881},
                                          tmp_path / "past", budget(latency_tie=0.1), BENCH)
    assert metrics["artifact"] == "ort_int8"
    metrics, _ = select_step.select_stage(models, data, benchmark, tmp_path / "goal",
                                          budget(latency_tie=0.1, max_latency_ms=0.85), BENCH)
    assert metrics["artifact"] == "ort_int8"
    # Equal validation accuracy: the faster of the tied artifacts.
    monkeypatch.setitem(VALIDATION, "ort_fp32", 0.976)
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "equal", budget(latency_tie=0.1),
                                            BENCH)
    assert metrics["artifact"] == "ort_int8"
    assert [row["verdict"] for row in log][1:] == ["delivered", "within budget, as accurate as ort_int8, slower"]


def test_no_decision_reads_the_test_split(fake_pipeline, tmp_path, monkeypatch):
    """Test accuracy that would favour another artifact changes nothing but the verification, and the test split is
    scored only once the choice is made (after every validation score)."""
    models, data, benchmark, scored = fake_pipeline
    monkeypatch.setitem(TEST, "tvm_tune_int8", 0.99)
    monkeypatch.setitem(TEST, "ort_int8", 0.10)
    metrics, _ = select_step.select_stage(models, data, benchmark, tmp_path / "deploy", budget(), BENCH)
    assert metrics["artifact"] == "ort_int8" and metrics["accuracy"] == 0.10
    splits = [split for _, split in scored]
    # The verification: the baseline, ONNX Runtime fp32 on the baseline (the report's row of it), the delivered copy.
    assert splits == ["calib"] * 3 + ["test"] * 3
    assert [name for name, split in scored if split == "test"] == ["torch_fp32_baseline", REFERENCE, "delivered"]


def test_a_size_goal_skips_larger_artifacts_and_none_fitting_is_an_error_naming_the_closest(fake_pipeline, tmp_path):
    models, data, benchmark, _ = fake_pipeline
    metrics, log = select_step.select_stage(models, data, benchmark, tmp_path / "deploy",
                                            budget(max_size_mb=0.5), BENCH)
    # Every file but the TVM folders (1 kB) is 0.8 MB or more: the fastest TVM folder within accuracy is chosen.
    assert metrics["artifact"] == "tvm_tune_fp32"
    assert [row["verdict"] for row in log][:3] == ["below the accuracy budget", "larger than budget.max_size_mb",
                                                   "larger than budget.max_size_mb"]
    with pytest.raises(InputError, match=r"^budget\.max_size_mb 0\.0001: no artifact .* the closest is "
                                         r"tvm_tune_int8 \(0\.001 MB, validation accuracy not scored\)"):
        select_step.select_stage(models, data, benchmark, tmp_path / "none", budget(max_size_mb=0.0001), BENCH)
    assert not (tmp_path / "none").exists()


def test_a_latency_goal_the_budget_cannot_reach_is_an_error_naming_the_key_and_artifact(fake_pipeline, tmp_path):
    models, data, benchmark, _ = fake_pipeline
    with pytest.raises(InputError, match=r"^budget\.max_latency_ms 0\.7: the fastest artifact within the accuracy "
                                         r"budget, ort_int8, is the closest at 0\.800 ms"):
        select_step.select_stage(models, data, benchmark, tmp_path / "deploy", budget(max_latency_ms=0.7), BENCH)
    assert not (tmp_path / "deploy").exists()
    metrics, _ = select_step.select_stage(models, data, benchmark, tmp_path / "deploy", budget(max_latency_ms=0.8),
                                          BENCH)
    assert metrics["artifact"] == "ort_int8"


def test_a_benchmark_without_every_artifact_is_refused(fake_pipeline, tmp_path):
    models, data, benchmark, _ = fake_pipeline
    partial = {key: value for key, value in benchmark.items() if not key.startswith("ort_int8_")}
    with pytest.raises(InputError, match="no latency_ms_p50 / .* of ort_int8 "):
        select_step.select_stage(models, data, partial, tmp_path / "deploy", budget(), BENCH)


def test_a_missing_artifact_is_named_before_anything_is_scored(fake_pipeline, tmp_path):
    models, data, benchmark, scored = fake_pipeline
    (models / "onnx/baseline.onnx").unlink()  # export-onnx's reference, as a models folder from before it had one
    with pytest.raises(FileNotFoundError, match=f"^{models / 'onnx/baseline.onnx'}: artifact missing"):
        select_step.select_stage(models, data, benchmark, tmp_path / "deploy", budget(), BENCH)
    assert scored == [] and not (tmp_path / "deploy").exists()


@pytest.mark.parametrize(("key", "value"), [
    ("max_accuracy_drop", -0.01), ("max_accuracy_drop", 1.5), ("max_accuracy_drop", ".nan"),
    ("max_accuracy_drop", "lots"), ("max_accuracy_drop", True), ("max_latency_ms", 0), ("max_latency_ms", -1),
    ("max_latency_ms", ".inf"), ("max_latency_ms", ".nan"), ("max_size_mb", "big"), ("max_size_mb", False),
    ("latency_tie", -0.1), ("latency_tie", 1), ("latency_tie", ".nan"), ("latency_tie", "some")])
def test_a_bad_budget_is_refused_naming_the_key(tmp_path, key, value):
    values = {**repo_params("budget"), key: value}  # YAML as a user writes it: .nan and .inf unquoted
    lines = [f"  {name}: {'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
             for name, v in values.items()]
    (tmp_path / "params.yaml").write_text("budget:\n" + "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"budget\.{key}(: expected| must be)"):
        read_section(tmp_path / "params.yaml", "budget", BudgetParams)


def test_the_budget_floor_tolerates_rounding_only():
    assert budget().keeps_accuracy(0.975, 0.98)  # 0.98 - 0.005 is 0.97500000000000009 in floating point
    assert not budget().keeps_accuracy(0.9749, 0.98)
