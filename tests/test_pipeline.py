"""End-to-end: `dvc repro` and `dvc exp run` of the real dvc.yaml in a temporary copy of the repo, tiny params."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lprnet.io import leftovers
from lprnet.model.data import load_prepared, save_split
from tests.conftest import TEST_LLVM_TARGET
from tests.pause_writes import pause_env, sitecustomize_dir, wait_until_paused

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "data", "models", "__pycache__", "*.egg-info", "cache",
                                     "tmp", ".pytest_cache", ".ruff_cache", ".hypothesis")
TINY = {
    "data": {"train_size": 96, "calib_size": 32, "test_size": 32},
    "baseline": {"epochs": 1.0, "batch_size": 16, "eval_every": 3},
    "bench": {"threads": 1, "runs": 5, "warmup": 1, "throughput_runs": 2, "throughput_batch": 4},
    "prune": {"finetune_steps": 2, "batch_size": 8},
    "quantize": {"qat_steps": 2, "qat_batch_size": 8},
    "export_onnx": {"int8_min_agreement": 0.0},
    "tvm": {"int8_max_accuracy_drop": 1.0, "target": TEST_LLVM_TARGET},
    "tune": {"total_trials": 0},  # no MetaSchedule here: tests/test_tune_tvm.py tunes a small module
}

pytestmark = pytest.mark.e2e


DVC = [sys.executable, "-m", "dvc"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def tiny_copy(root: Path) -> Path:
    """A git repo at `root` with the project's files, tiny params and no results."""
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
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC copy of the project with tiny params, after one full `dvc repro`."""
    root = tiny_copy(tmp_path_factory.mktemp("repo") / "lprnet")
    run([*DVC, "repro"], root)
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
    quantize = json.loads((repo / "metrics/quantize.json").read_text())
    assert quantize["qat_steps"] == 2 and quantize["qat_gain_vs_ptq"] == quantize["accuracy"] - quantize["ptq_accuracy"]
    curve = (repo / "reports/training/baseline/plots/metrics/val_accuracy.tsv").read_text().splitlines()
    assert curve[0] == "step\tval_accuracy" and len(curve) > 2  # DVCLive's, one row per validation
    assert json.loads((repo / "reports/training/quantize/metrics.json").read_text())["step"] == 2  # QAT's last step
    plots = json.loads(run([*DVC, "plots", "show", "--json"], repo).stdout)
    assert "errors" not in plots and plots["data"]["training-accuracy"][0]["content"]["data"]["values"]


def test_select_delivers_one_model_that_predicts(repo):
    """The tiny models are untrained (every accuracy near 0, all within any budget), so the fastest artifact of the
    benchmark is delivered; which one it is, is timing. tests/test_select.py checks the choice itself."""
    chosen = json.loads((repo / "metrics/select.json").read_text())
    timings = json.loads((repo / "metrics/benchmark.json").read_text())
    fastest = min((value, key[:-len("_latency_ms_p50")]) for key, value in timings.items()
                  if key.endswith("_latency_ms_p50"))
    assert chosen["artifact"] == fastest[1] and chosen["latency_ms_p50"] == fastest[0]
    manifest = json.loads((repo / "models/deploy/deploy.json").read_text())
    assert manifest["source"]["artifact"] == chosen["artifact"] and manifest["test"]["num_images"] == 32
    candidates = (repo / "reports/select.csv").read_text().splitlines()
    assert candidates[0] == "artifact,latency_ms_p50,size_mb,val_accuracy,verdict"
    assert candidates[1].startswith(f"{chosen['artifact']},") and candidates[1].endswith(",delivered")
    assert "## The delivered model" in (repo / "reports/report.md").read_text()
    images = repo / "plates"
    images.mkdir()
    for i, image in enumerate(load_prepared(repo / "data/prepared", "test")[0][:2]):
        Image.fromarray(image[:, :, ::-1]).save(images / f"P{i}.png")
    lines = run([sys.executable, "-m", "lprnet", "predict", "models/deploy", *map(str, sorted(images.iterdir()))],
                repo).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in sorted(images.iterdir())]
    shutil.rmtree(images)


# Stages whose artifacts depend on time measured while they run: MetaSchedule keeps the fastest schedule it timed
# (with tune.total_trials 0, as here, tvm-tune only builds and is deterministic), benchmark and report are
# timings, and select chooses by them. Every metrics file's latency and throughput keys are timings too.
TIMED_STAGES = {"benchmark", "select", "report"}
TIMING_KEYS = ("latency", "throughput_ips", "seconds")


def untimed_metrics(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not any(t in k for t in TIMING_KEYS)}


# Metrics measured on the test split: they change with it, as nothing else may (validation keys included).
TEST_KEYS = {"accuracy", "char_accuracy", "fp32_accuracy", "accuracy_drop", "ptq_accuracy", "qat_gain_vs_ptq",
             "agreement_with_torch_int8", "max_abs_logit_diff", "max_abs_logit_diff_vs_ort", "torch_fp32_rounding"}


def untimed_untested_metrics(path: Path) -> dict:
    return {k: v for k, v in untimed_metrics(path).items() if k not in TEST_KEYS}


def test_two_from_scratch_runs_give_identical_artifacts_and_no_decision_reads_the_test_split(repo, tmp_path):
    """A second run from scratch, whose test split has other images and labels, writes byte-identical artifacts:
    every stage is deterministic, and none takes a decision (training, pruning, calibration, quantization, export,
    compilation) from the test split, which only scores. The select stage's choice: tests/test_select.py."""
    second = tiny_copy(tmp_path / "lprnet")
    run([*DVC, "repro", "data"], second)
    prepared = second / "data/prepared"
    images, labels = load_prepared(prepared, "test")
    other_images, other_labels = load_prepared(prepared, "train")
    save_split(prepared / "test.npz", other_images[:len(images)], np.roll(other_labels[:len(labels)], 1))
    run([*DVC, "commit", "-f", "data"], second)
    # Up to the first TVM build: tvm-graph-passes, -layout-passes and (untuned) -tune build the same way, and
    # running them too would cost a minute of the test budget.
    run([*DVC, "repro", "tvm-import"], second)
    locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (repo, second)]
    assert set(locks[1]) == set(locks[0]) - TIMED_STAGES - {"tvm-graph-passes", "tvm-layout-passes", "tvm-tune"}
    for stage, spec in locks[1].items():
        for out, first in zip(spec["outs"], locks[0][stage]["outs"]):
            assert out["path"] == first["path"]
            if out["path"].startswith("metrics/"):
                assert (untimed_untested_metrics(second / out["path"])
                        == untimed_untested_metrics(repo / out["path"])), out["path"]
            elif stage != "data":  # its test split is the one changed
                assert out["md5"] == first["md5"], f"{stage}: {out['path']} differs between two runs"
    assert list(load_prepared(prepared, "test")[1]) != list(labels)  # the split the stages read was another


def test_unchanged_repro_runs_nothing(repo):
    result = run([*DVC, "repro"], repo)
    assert "Running stage" not in result.stdout


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], repo)


def test_a_remote_round_trips_every_artifact(repo, tmp_path):
    run([*DVC, "remote", "add", "-d", "storage", str(tmp_path / "remote")], repo)
    commit(repo, "results and a remote")
    run([*DVC, "push"], repo)
    assert json.loads(run([*DVC, "status", "--cloud", "--json"], repo).stdout) == {}  # the remote has everything
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run([*DVC, "pull"], clone)
    assert json.loads(run([*DVC, "status", "--json"], clone).stdout) == {}
    assert "Running stage" not in run([*DVC, "repro"], clone).stdout
    for out in ("models/baseline.pt", "models/quantized.pt", "models/onnx/int8.onnx", "models/deploy/deploy.json"):
        assert (clone / out).read_bytes() == (repo / out).read_bytes(), out
    # The delivered model by its name in dvc.yaml's artifacts section, at its latest registered version (a GTO git
    # tag, as `gto register lprnet` writes it), from the repository and from a clone made after the tag.
    run(["git", "tag", "-a", "lprnet@v0.1.0", "-m", "Registering artifact lprnet version 0.1.0"], repo)
    run(["git", "fetch", "-q", "--tags"], clone)
    for source in (repo, clone):
        got = tmp_path / f"artifact-from-{source.name}"
        run([*DVC, "artifacts", "get", str(source), "lprnet", "-o", str(got)], tmp_path)
        assert sorted(p.relative_to(got) for p in got.rglob("*")) == sorted(
            p.relative_to(repo / "models/deploy") for p in (repo / "models/deploy").rglob("*"))
        assert (got / "deploy.json").read_bytes() == (repo / "models/deploy/deploy.json").read_bytes()


def stage_outputs(repo: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    return [repo / (next(iter(out)) if isinstance(out, dict) else out)
            for kind in ("outs", "metrics", "plots") for out in spec.get(kind, [])]


def test_a_stage_killed_while_writing_an_output_leaves_none_and_the_next_repro_completes(tmp_path):
    """`dvc repro data` SIGKILLed (DVC and the stage, as the OOM killer or a lost machine would) while the stage is
    half-way through the second file of data/prepared: no output exists, the partial folder only under its temporary
    name; the next `dvc repro` runs the stage again, removes it and leaves whole outputs. The kill lands there
    whatever the timing: tests/pause_writes.py stops the stage at that point and the test kills it once it has.
    Which writers survive a kill at each point of a write, and that an in-place one would not: tests/test_io.py."""
    root = tiny_copy(tmp_path / "lprnet")
    prepared, marker = root / "data/prepared", tmp_path / "paused"
    hooks = sitecustomize_dir(tmp_path / "hooks")  # every Python process of the run, the stage's included
    env = {**ENV, **pause_env(prepared, "write:2", marker),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), ENV.get("PYTHONPATH")]))}
    dvc = subprocess.Popen([*DVC, "repro", "data"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_paused(dvc, marker)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already if DVC failed before the pause
            os.killpg(dvc.pid, signal.SIGKILL)
        dvc.wait(timeout=60)
    outputs = stage_outputs(root, "data")
    for out in outputs:
        assert not out.exists(), f"{out} exists after the kill: written in place"
    assert leftovers(prepared), "no temporary folder: the kill did not land while data/prepared was being written"

    assert ran_stages(run([*DVC, "repro", "data"], root).stdout) == {"data"}
    assert json.loads(run([*DVC, "status", "--json", "data"], root).stdout) == {}
    sizes = json.loads((root / "metrics/data.json").read_text())
    assert sizes == {"num_train": 96, "num_calib": 32, "num_test": 32}
    for split in ("train", "calib", "test"):
        assert len(load_prepared(prepared, split)[1]) == sizes[f"num_{split}"]
    for out in outputs:
        assert leftovers(out) == [], "the killed write's temporary files are still there"


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def wait_for_queue(repo: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run([*DVC, "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


def test_two_queued_experiments_run_in_two_workers_and_rerun_exactly_what_reads_their_params(repo, tmp_path):
    """A sweep point and a budget change, queued and run side by side. The sweep point runs up to export-onnx, as the
    README's sweep does (the TVM stages and the benchmark are most of a tiny run's time). prune (for ratio auto) and
    quantize (its int8 floor) read the budget too; with an explicit ratio prune writes the same model, and quantize
    the same int8 model when int8 keeps both floors, so the stages between them and select are not run again."""
    commit(repo, "first results")
    experiments = {"ratio-70": (["-S", "prune.ratio=0.7", "export-onnx"],
                                {"prune", "calibrate", "quantize", "export-onnx"}),
                   "budget-2": (["-S", "budget.max_accuracy_drop=0.02"], {"prune", "quantize", "select", "report"})}
    for name, (args, _) in experiments.items():
        run([*DVC, "exp", "run", "--queue", "-n", name, *args], repo)
    run([*DVC, "queue", "start", "-j", "2"], repo)
    try:
        status = wait_for_queue(repo, timeout_s=600)
    finally:
        run([*DVC, "queue", "stop", "--kill"], repo)
    for name, (_, stages) in experiments.items():
        assert name in status and "Failed" not in status, status
        assert ran_stages(run([*DVC, "queue", "logs", name], repo).stdout) == stages, name

    rows = {row["Experiment"] or row["rev"]: row
            for row in csv.DictReader(io.StringIO(run([*DVC, "exp", "show", "--csv"], repo).stdout))}
    committed, ratio, budget = rows["main"], rows["ratio-70"], rows["budget-2"]
    params_column = next(c for c in committed if c.endswith("prune.json:params"))
    assert float(ratio["prune.ratio"]) == 0.7 and float(committed["prune.ratio"]) == 0.6
    assert float(ratio[params_column]) < float(committed[params_column])  # a higher ratio leaves fewer parameters

    def quantize_metric(key: str) -> float:
        return float(budget[next(c for c in budget if c in (key, f"metrics/quantize.json:{key}"))])
    assert float(budget["budget.max_accuracy_drop"]) == float(budget["max_accuracy_drop"]) == 0.02  # select's metric
    assert quantize_metric("val_accuracy_floor") == pytest.approx(
        min(quantize_metric("baseline_val_accuracy") - 0.02, quantize_metric("fp32_val_accuracy") - 0.01), abs=1e-6)
    plots = json.dumps(json.loads(run([*DVC, "plots", "diff", "--json", *experiments], repo).stdout))
    assert all(name in plots for name in experiments)
    run([sys.executable, "-m", "lprnet", "sweep", "prune.ratio", "--out", str(tmp_path / "sweep")], repo)
    table = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [float(row["prune.ratio"]) for row in table] == [0.6, 0.7]  # one row per ratio, sorted
    assert (tmp_path / "sweep.png").stat().st_size > 0

    # The experiment as a commit: `dvc metrics diff` against the results before it.
    run([*DVC, "exp", "apply", "ratio-70"], repo)
    commit(repo, "prune.ratio 0.7")
    diff = json.loads(run([*DVC, "metrics", "diff", "--json", "HEAD~1"], repo).stdout)
    assert diff["metrics/prune.json"]["params"]["diff"] < 0
    assert "metrics/baseline.json" not in diff or not any(v.get("diff") for v in diff["metrics/baseline.json"].values())
    run(["git", "reset", "-q", "--hard", "HEAD~1"], repo)
    run([*DVC, "checkout", "-q"], repo)


def test_folder_profile_with_published_weights(repo, published_weights, published_images):
    # Up to tvm-import: the stages after it see only TVM modules, whatever the alphabet, and test_repro runs them.
    # Stopping there saves about 100 s of the suite's 15-minute budget.
    run([*DVC, "exp", "run", "-S", "data.source=folder", "-S",
         f"data.folder={published_images}", "-S", f"baseline.weights={published_weights}",
         # The default ratio is the synthetic profile's; 145 fine-tuning plates hold 0.3 (README, Profiles).
         "-S", "prune.ratio=0.3",
         # A small test share keeps the untuned TVM stage quick: 56 plates.
         "-S", "data.finetune_fraction=0.7", "-S", "data.test_fraction=0.1",
         # All int8, whatever it costs: the float fallback scores every layer's sensitivity (a minute here), and
         # tests/test_quantize_fallback.py tests it. Post-training only: the tiny repro above runs QAT.
         "-S", "quantize.float_fallback=false", "-S", "quantize.qat_steps=0", "tvm-import"], repo)
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["num_calib"] + data["num_train"] + data["num_test"] == len(list(published_images.iterdir()))
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    assert baseline["train_steps"] == 0
    assert baseline["accuracy"] > 0.85  # the published weights, on a hash-chosen tenth of the shared images
    # The Chinese plates reach TVM: its fp32 build reads them as ONNX Runtime does (parity is checked per plate).
    onnx, tvm = (json.loads((repo / f"metrics/{name}-fp32.json").read_text()) for name in ("onnx", "tvm-import"))
    assert tvm["num_images"] == data["num_test"] and tvm["accuracy"] == onnx["accuracy"] > 0.85


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
