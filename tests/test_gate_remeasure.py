"""`gate --remeasure`: the paired verdict on fake predictors (one slowed on purpose, one pair identical), and the
whole command in a temporary git + DVC repository whose committed ONNX model the workspace replaces with a copy
slowed by an extra convolution."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from lprnet.errors import InputError
from lprnet.pipeline import gate, remeasure
from lprnet.pipeline.gate import GateParams
from lprnet.runtime import bench
from lprnet.runtime.bench import TURN_CALLS, BenchConfig
from tests.conftest import params_from_repo, repo_params
from tests.dvc_repo import commit, git_dvc_repo, write_json
from tests.tiny_onnx import tiny_onnx

THRESHOLDS = params_from_repo("gate", GateParams)
# Few rounds (the fewest a verdict takes) keep the tests to a second; warm-up as little.
CONFIG = params_from_repo("bench", BenchConfig, runs=remeasure.MIN_ROUNDS * TURN_CALLS, warmup=2)


def busy(seconds: float):
    """A fake predictor that keeps a core busy for `seconds` per call, as a real kernel would."""
    def call(images):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return np.zeros((len(images), 4, 18), np.float32)
    return call


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    """Fake predictors and tiny ONNX models leave no thread pool spinning: no settling calls needed."""
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)


def verdicts(pairs) -> dict[str, remeasure.Paired]:
    rows = remeasure.remeasure_pairs(pairs, CONFIG, THRESHOLDS.latency_noise_factor, THRESHOLDS.min_latency_slowdown)
    return {row.artifact: row for row in rows}


def test_an_artifact_slowed_on_purpose_fails_and_an_identical_pair_passes():
    rows = verdicts({"slowed": (busy(2e-4), busy(4e-4)), "same": (busy(2e-4), busy(2e-4))})
    assert rows["slowed"].regressed and rows["slowed"].ratio == pytest.approx(2.0, rel=0.25)
    assert "beyond" in rows["slowed"].why and rows["slowed"].rounds == remeasure.MIN_ROUNDS
    assert not rows["same"].regressed and rows["same"].ratio == pytest.approx(1.0, abs=THRESHOLDS.min_latency_slowdown)


def test_the_verdict_needs_both_a_large_slowdown_and_one_beyond_the_paired_noise():
    rounds = remeasure.MIN_ROUNDS
    old = [1.0] * rounds
    steady = [1.10] * rounds  # +10 % in every round: no noise at all
    small = [1.02] * rounds  # +2 %, steady, but under the 5 % floor
    noisy = [0.6, 2.0, 0.7, 2.0, 0.9]  # +9 % on average, all noise
    assert remeasure.paired_verdict("a", old, steady, 3.0, 0.05).regressed
    assert not remeasure.paired_verdict("a", old, small, 3.0, 0.05).regressed
    assert not remeasure.paired_verdict("a", old, noisy, 3.0, 0.05).regressed
    with pytest.raises(InputError, match="a paired verdict needs at least"):
        remeasure.paired_verdict("a", old[:2], steady[:2], 3.0, 0.05)


def test_an_unknown_artifact_is_refused_with_the_valid_names():
    with pytest.raises(InputError, match="^--artifacts: unknown nope; valid: torch_fp32_baseline, .*, deploy$"):
        remeasure.choose(["ort_fp32", "nope"])


# ------------------------------------------------------------------------------------- in a git + DVC repository


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git + DVC repository whose committed models/onnx/fp32.onnx (tracked by DVC) is the plain tiny model."""
    pytest.importorskip("onnxruntime")
    git_dvc_repo(tmp_path, monkeypatch)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gate": repo_params("gate"), "bench": vars(CONFIG)}))
    write_json(tmp_path / "metrics" / "onnx-fp32.json", {"accuracy": 0.9})
    model = tmp_path / "models" / "onnx" / "fp32.onnx"
    tiny_onnx(model, slowed=False)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as dvc:
        dvc.add(str(model))
    commit(tmp_path, "tiny model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_gate(capsys) -> tuple[int, list[str]]:
    status = gate.main(["--against", "HEAD", "--remeasure", "--artifacts", "ort_fp32,deploy"])
    captured = capsys.readouterr()
    assert status != 2, captured.err
    return status, captured.out.splitlines()


def test_the_committed_model_against_a_slowed_copy_fails_and_against_itself_passes(repo, capsys):
    status, lines = run_gate(capsys)  # the workspace holds the committed model: two identical builds
    assert status == 0, lines
    assert lines[-1] == "**re-measured: ok**: 1 artifacts, none slower beyond the noise."
    assert "- deploy: no models/deploy in the workspace, not re-measured" in lines

    tiny_onnx(repo / "models" / "onnx" / "fp32.onnx", slowed=True)
    status, lines = run_gate(capsys)
    assert status == 1, lines
    [row] = [line for line in lines if line.startswith("| ort_fp32 |")]
    assert "| LATENCY: x" in row
    assert lines[-1] == "**re-measured: FAIL**: 1 slower: ort_fp32."

    assert gate.main(["--against", "HEAD", "--remeasure", "--runs", "0"]) == 2
    assert capsys.readouterr().err == "error: --runs must be at least 1, got 0\n"
    assert gate.main(["--against", "no-such-rev", "--remeasure"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown revision 'no-such-rev'")
