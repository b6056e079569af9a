"""The `dvc plots show` page: exactly the intended plots, each once, titled, every template anchor filled, and
`dvc plots diff` drawing two revisions in one chart per plot. Runs dvc on a copy of dvc.yaml, the templates
(.dvc/plots/) and the committed tables, with training curves written by lprnet/pipeline/training_log.py (DVCLive),
so that it does not depend on which stages the committed run trained in; a few seconds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lprnet.csv_io import write_csv_atomic
from lprnet.pipeline.prune_step import SEARCH_COLUMNS
from lprnet.pipeline.training_log import training_log
from tests.dvc_repo import commit, git_dvc_repo

REPO = Path(__file__).resolve().parents[1]

# Every plot of the page, by its id in dvc.yaml's top-level `plots`, and the title it shows. A plot added to
# dvc.yaml (or a stage's `plots:`, which would draw a file a second time) is added here, deliberately.
PLOTS = {
    "training-accuracy": "Validation plate accuracy while training (calib split), per stage",
    "training-loss": "Training loss, mean over the steps since the previous validation, per stage",
    "prune-search": "prune.ratio: validation accuracy of each ratio tried (auto) or set, fine-tuned",
    "quantize-fallback": "int8 float fallback: validation accuracy of each split tried",
    "tuning": "MetaSchedule tuning: estimated kernel time of the best schedules so far",
    "latency": "Batch-1 latency per artifact (dot p50, bar to p90)",
    "throughput": "Throughput per artifact (bench.throughput_batch images per call)",
    "accuracy-vs-latency": "Test plate accuracy vs batch-1 latency",
    "sizes": "Artifact size on disk",
    "select": "select: validation accuracy of each candidate, fastest first",
}
TRAINING_STAGES = ("baseline", "prune", "quantize")


def run(args: list[str], cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def dvc(args: list[str], cwd: Path) -> dict:
    return json.loads(run([sys.executable, "-m", "dvc", *args], cwd))


def fake_training(root: Path, accuracy_gain: float) -> None:
    """Each training stage's DVCLive folder as the stages write it, from a few history rows."""
    for stage in TRAINING_STAGES:
        with training_log(root / "reports" / "training" / stage) as curves:
            log = curves.run()
            for step in range(3):
                log({"step": 10 * step, "epoch": step / 10, "train_loss": 3.0 / (step + 1), "lr": 1e-3,
                     "val_accuracy": 0.5 + accuracy_gain * step, "val_char_accuracy": 0.8})


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """A git + DVC repository with the project's dvc.yaml, templates and committed tables, one committed revision
    (git and DVC isolated from the user's config while the module's tests run)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield plots_copy(git_dvc_repo(tmp_path_factory.mktemp("plots"), monkeypatch))


def plots_copy(root: Path) -> Path:
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / "reports").mkdir()
    for table in REPO.glob("reports/*.csv"):
        shutil.copy(table, root / "reports")
    # The committed run's prune.ratio is explicit, which leaves the search's table empty: give it ratios.
    write_csv_atomic(root / "reports" / "prune_search.csv", SEARCH_COLUMNS,
                     [[0.3, 80e6, 0.1, 0.99, 0.985, "kept"], [0.6, 40e6, 0.05, 0.98, 0.985, "rejected"]])
    fake_training(root, accuracy_gain=0.1)
    commit(root, "plots")
    return root


def title(spec: dict) -> str:
    return spec["title"]["text"] if isinstance(spec["title"], dict) else spec["title"]


def test_the_page_draws_exactly_the_intended_plots_once_each_titled(plots_repo):
    shown = dvc(["plots", "show", "--json"], plots_repo)
    assert "errors" not in shown
    assert set(shown["data"]) == set(PLOTS)
    for name, renders in shown["data"].items():
        assert len(renders) == 1, name  # one chart per plot: no file drawn twice
        spec = renders[0]["content"]
        assert title(spec) == PLOTS[name]
        assert "<DVC_METRIC_" not in json.dumps(spec), f"{name}: a template anchor left unfilled"


def test_a_diff_of_two_revisions_draws_both_in_one_chart_per_plot(plots_repo):
    fake_training(plots_repo, accuracy_gain=0.05)  # the workspace differs from the commit
    diff = dvc(["plots", "diff", "HEAD", "--json"], plots_repo)
    assert set(diff["data"]) == set(PLOTS)
    for name, renders in diff["data"].items():
        assert len(renders) == 1, name
        revisions = {row["rev"] for row in renders[0]["content"]["data"]["values"]}
        assert revisions == {"HEAD", "workspace"}, name
