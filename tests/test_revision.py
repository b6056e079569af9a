"""lprnet.pipeline.revision: metrics files read in the workspace and at a git revision of a tiny git + DVC repo, the
comparison rows they give, and that the gate and the report's deltas both read the revision through it."""

from __future__ import annotations

import pytest
import yaml

from lprnet.pipeline import gate, report, revision
from lprnet.pipeline.artifacts import flat_benchmark
from lprnet.pipeline.gate import GateParams
from lprnet.pipeline.revision import RevisionError, comparable, metrics_at, read_metrics
from tests.conftest import params_from_repo, repo_params
from tests.dvc_repo import commit, git_dvc_repo, write_json

TIMINGS = {"latency_ms_p50": 2.0, "latency_ms_p90": 2.1, "latency_ms_mad": 0.01}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """Committed: baseline.json (accuracy 0.9) and a flat benchmark.json (ort_fp32 at 2 ms); the workspace unchanged."""
    (tmp_path / "repo").mkdir()
    root = git_dvc_repo(tmp_path / "repo", monkeypatch)
    write_json(root / "metrics" / "baseline.json", {"accuracy": 0.9, "latency_ms_p50": 7.0, "size_bytes": 1000})
    write_json(root / "metrics" / "benchmark.json", flat_benchmark({"threads": 2}, {"ort_fp32": TIMINGS}))
    commit(root, "first results")
    monkeypatch.chdir(root)
    return root


def test_reads_the_files_committed_at_the_revision_not_the_workspace(repo):
    write_json(repo / "metrics" / "baseline.json", {"accuracy": 0.5})
    write_json(repo / "metrics" / "new.json", {"x": 1})
    (repo / "metrics" / "notes.txt").write_text("not metrics")
    assert read_metrics("metrics", "HEAD") == {
        "baseline": {"accuracy": 0.9, "latency_ms_p50": 7.0, "size_bytes": 1000},
        "benchmark": {"threads": 2, "ort_fp32_latency_ms_p50": 2.0, "ort_fp32_latency_ms_p90": 2.1,
                      "ort_fp32_latency_ms_mad": 0.01}}
    assert read_metrics("metrics") == {**read_metrics("metrics", "HEAD"), "baseline": {"accuracy": 0.5},
                                       "new": {"x": 1}}


def test_an_older_revision_and_a_folder_relative_to_the_working_directory(repo, monkeypatch):
    write_json(repo / "metrics" / "baseline.json", {"accuracy": 0.8})
    commit(repo, "second results")
    (repo / "sub").mkdir()
    monkeypatch.chdir(repo / "sub")
    assert read_metrics("../metrics", "HEAD~1")["baseline"]["accuracy"] == 0.9
    assert read_metrics("../metrics", "HEAD")["baseline"]["accuracy"] == 0.8


def test_a_folder_absent_at_the_revision_holds_no_metrics(repo):
    (repo / "later").mkdir()
    write_json(repo / "later" / "a.json", {"x": 1})
    assert read_metrics("later", "HEAD") == {}
    assert read_metrics("no-such-folder") == {}


@pytest.mark.parametrize("rev", ["no-such-rev", "HEAD~5"])
def test_an_unknown_revision_is_named(repo, rev):
    with pytest.raises(RevisionError, match=f"^unknown revision '{rev}'$"):
        read_metrics("metrics", rev)


def test_outside_a_git_repository_the_revision_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with pytest.raises(RevisionError, match="^cannot read metrics at revision 'HEAD': "):
        read_metrics("metrics", "HEAD")


@pytest.mark.parametrize("text, message", [("{", "not valid JSON"), ("[1]", "expected a JSON object, got list")])
def test_a_file_that_is_not_a_json_object_is_named(repo, text, message):
    (repo / "metrics" / "bad.json").write_text(text)
    with pytest.raises(ValueError, match=f"^metrics/bad.json: {message}"):
        read_metrics("metrics")
    commit(repo, "bad file")
    with pytest.raises(ValueError, match=f"^metrics/bad.json at 'HEAD': {message}"):
        read_metrics("metrics", "HEAD")


def test_rows_one_per_stage_file_and_per_benchmarked_artifact_with_the_runs_settings():
    files = {"baseline": {"accuracy": 0.9},
             "benchmark": flat_benchmark({"threads": 2, "runs": 100},
                                         {"ort_fp32": {"latency_ms_p50": 2.0}, "torch_fp32_baseline":
                                          {"latency_ms_p50": 8.0, "ratio_vs_ort_fp32_baseline": 5.0}})}
    assert comparable(files) == revision.Metrics({
        "baseline": {"accuracy": 0.9},
        "benchmark/ort_fp32": {"threads": 2, "runs": 100, "latency_ms_p50": 2.0},
        "benchmark/torch_fp32_baseline": {"threads": 2, "runs": 100, "latency_ms_p50": 8.0,
                                          "ratio_vs_ort_fp32_baseline": 5.0}})


def test_a_nested_file_has_no_rows_and_is_named():
    """benchmark.json as written before its keys were flat."""
    files = {"baseline": {"accuracy": 0.9}, "benchmark": {"threads": 2, "ort_fp32": {"latency_ms_p50": 2.0}}}
    assert comparable(files) == revision.Metrics({"baseline": {"accuracy": 0.9}}, ("benchmark",))


# ----------------------------------------------------------------------------- one reader for the gate and report


def write_report(repo):
    report.write_report(repo / "metrics", repo / "reports", repo / "reports" / "pareto.csv",
                        repo / "reports" / "sizes.csv", params_from_repo("gate", GateParams))
    return (repo / "reports" / "report.md").read_text()


def test_the_gate_and_the_reports_deltas_read_the_revision_through_one_reader(repo, monkeypatch, capsys):
    (repo / "params.yaml").write_text(yaml.safe_dump({"gate": repo_params("gate")}))
    write_json(repo / "metrics" / "baseline.json", {"accuracy": 0.8, "latency_ms_p50": 7.0, "size_bytes": 1000})
    write_json(repo / "metrics" / "benchmark.json",
               flat_benchmark({"threads": 2, "runs": 100},
                              {"torch_fp32_baseline": {**TIMINGS, "throughput_ips": 1.0, "ratio_vs_baseline": 1.0,
                                                       "ratio_vs_ort_fp32": 2.0},
                               "ort_fp32": {**TIMINGS, "latency_ms_p50": 4.0}}))
    reads = []
    real = revision.read_metrics
    monkeypatch.setattr(revision, "read_metrics", lambda folder, rev=None: reads.append(rev) or real(folder, rev))

    assert gate.main(["--against", "HEAD"]) == 1
    table = capsys.readouterr().out
    assert "| benchmark/ort_fp32 |  | 2.00 -> 4.00 (x2.00) |  | LATENCY |" in table
    assert "| baseline | 0.9000 -> 0.8000 (-0.1000) |" in table
    assert "HEAD" in reads
    reads.clear()

    changes = write_report(repo).split("## Changes since the previous commit")[1]
    assert "| benchmark/ort_fp32 | latency_ms_p50 | 2 | 4 | +100.0% |" in changes
    assert "| baseline | accuracy | 0.9 | 0.8 | -11.1% |" in changes
    assert "HEAD" in reads


def test_the_reports_deltas_against_a_nested_benchmark_say_not_comparable(repo):
    nested = {"threads": 2, "runs": 100, "ort_fp32": TIMINGS}
    write_json(repo / "metrics" / "benchmark.json", nested)
    commit(repo, "benchmark.json as written before flat metrics")
    write_json(repo / "metrics" / "benchmark.json",
               flat_benchmark({"threads": 2, "runs": 100}, {"ort_fp32": {**TIMINGS, "latency_ms_p50": 4.0}}))
    changes = write_report(repo).split("## Changes since the previous commit")[1]
    assert ("`benchmark.json` in the previous commit is not flat (the format before flat metrics): its values are "
            "not comparable and not listed.") in changes
    assert "benchmark/ort_fp32" not in changes


def test_without_a_commit_the_reports_deltas_say_so(tmp_path, monkeypatch):
    root = git_dvc_repo(tmp_path, monkeypatch)
    write_json(root / "metrics" / "benchmark.json", flat_benchmark({"threads": 2, "runs": 100}, {"ort_fp32": TIMINGS}))
    monkeypatch.chdir(root)
    changes = write_report(root).split("## Changes since the previous commit")[1]
    assert changes.strip() == "No committed metrics to compare with (unknown revision 'HEAD')."


def test_metrics_at_is_comparable_of_read_metrics(repo):
    assert metrics_at("metrics", "HEAD") == comparable(read_metrics("metrics", "HEAD"))


def test_a_folder_outside_the_repository_is_named(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(ValueError, match=f"^{outside}: outside the git repository "):
        read_metrics(outside, "HEAD")
