"""End-to-end: `dvc repro` and `dvc exp run` of the real dvc.yaml in a temporary copy of the repo, tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "data", "models", "__pycache__", "*.egg-info", "cache",
                                     "tmp", ".pytest_cache", ".ruff_cache", ".hypothesis")
TINY = {
    "data": {"train_size": 96, "calib_size": 32, "test_size": 32},
    "baseline": {"epochs": 1.0, "batch_size": 16, "eval_every": 3},
    "bench": {"runs": 5, "warmup": 1, "throughput_runs": 2, "throughput_batch": 4},
    "prune": {"finetune_steps": 2, "batch_size": 8},
    "quantize": {"max_accuracy_drop": 1.0},  # an untrained model's accuracy is noise
    "export_onnx": {"int8_min_agreement": 0.0},
    "tvm": {"int8_max_accuracy_drop": 1.0},
    "tune": {"total_trials": 0},  # no MetaSchedule here: tests/test_tune_tvm.py tunes a small module
}

pytestmark = pytest.mark.e2e


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC copy of the project with tiny params, after one full `dvc repro`."""
    root = tmp_path_factory.mktemp("repo") / "lprnet"
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stale in (root / "dvc.lock", *root.glob("metrics/*.json")):
        stale.unlink(missing_ok=True)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny"], root)
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


def test_repro_writes_artifacts_metrics_and_plots(repo):
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data == {"num_train": 96, "num_calib": 32, "num_test": 32}
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    for key in ("accuracy", "char_accuracy", "latency_ms_p50", "latency_ms_p90", "throughput_ips", "threads",
                "size_bytes", "params", "macs"):
        assert key in baseline, key
    assert baseline["size_bytes"] == (repo / "models/baseline.pt").stat().st_size
    assert baseline["latency_ms_p50"] <= baseline["latency_ms_p90"]
    curve = (repo / "reports/baseline_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) > 2
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "--json"], repo)
    assert "baseline_curve.csv" in plots.stdout


def test_unchanged_repro_runs_nothing(repo):
    result = run([sys.executable, "-m", "dvc", "repro"], repo)
    assert "Running stage" not in result.stdout


def test_param_change_reruns_exactly_the_downstream_stages(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "first results"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prune"]["ratio"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = {line.split("'")[1] for line in run([sys.executable, "-m", "dvc", "repro"], repo).stdout.splitlines()
           if line.startswith("Running stage")}
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "data" not in ran and "baseline" not in ran
    assert ran == set(stages) - {"data", "baseline"}
    diff = json.loads(run([sys.executable, "-m", "dvc", "metrics", "diff", "--json", "HEAD"], repo).stdout)
    assert diff["metrics/prune.json"]["params"]["diff"] < 0  # a higher ratio leaves fewer parameters
    assert "metrics/baseline.json" not in diff or not any(v.get("diff") for v in diff["metrics/baseline.json"].values())
    run(["git", "checkout", "-q", "--", "params.yaml"], repo)
    run([sys.executable, "-m", "dvc", "checkout", "-q"], repo)


def test_folder_profile_with_published_weights(repo, published_weights, published_images):
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "data.source=folder", "-S",
         f"data.folder={published_images}", "-S", f"baseline.weights={published_weights}",
         # A smaller test share keeps the untuned TVM stages quick; still about 100 plates.
         "-S", "data.finetune_fraction=0.6", "-S", "data.test_fraction=0.2"], repo)
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["num_calib"] + data["num_train"] + data["num_test"] == len(list(published_images.iterdir()))
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    assert baseline["train_steps"] == 0
    assert baseline["accuracy"] > 0.85  # the published weights, on a hash-chosen fifth of the shared images


def test_stage_refuses_bad_params_with_one_line(repo, tmp_path):
    bad = tmp_path / "params.yaml"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["sauce"] = "synthetic"
    bad.write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "stages/data.py", "--params", str(bad), "--out", str(tmp_path / "o"),
                             "--metrics", str(tmp_path / "m.json")], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown key(s) sauce" in result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.json").exists()
