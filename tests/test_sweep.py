"""The sweep table and plot from DVC experiment rows (lprnet.pipeline.sweep); the CLI's errors: one line outside a
DVC repository, a traceback for a bug."""

from __future__ import annotations

import pytest

from lprnet.__main__ import main
from lprnet.pipeline.sweep import plot_sweep, sweep_table


def row(name, rev, ratio, accuracy, state="Success", **extra):
    metrics = {}
    for precision, scale in (("fp32", 1.0), ("int8", 0.5)):
        path = f"metrics/onnx-{precision}.json"
        metrics |= {f"{path}:accuracy": accuracy * (1 - 0.01 * (precision == "int8")),
                    f"{path}:latency_ms_p50": 2.0 * scale * (1 - ratio),
                    f"{path}:size_bytes": 8e5 * scale * (1 - ratio),
                    f"{path}:macs": 7e7 * (1 - ratio)}
    return {"Experiment": name, "rev": rev, "typ": "branch_commit", "State": state, "prune.ratio": ratio,
            **metrics, **extra}


def test_one_row_per_value_sorted_without_failed_or_unfinished_runs():
    rows = [row(None, "workspace", 0.3, 0.95, state=None), row(None, "main", 0.3, 0.95, state=None),
            row("r50", "a1", 0.5, 0.90), row("r10", "b2", 0.1, 0.97), row("bad", "c3", 0.7, 0.1, state="Failed"),
            row("later", "d4", 0.2, 0.0, state="Queued"), row("again", "e5", 0.5, 0.5)]
    table = sweep_table(rows, "prune.ratio")
    assert list(table["prune.ratio"]) == [0.1, 0.3, 0.5]
    assert list(table["experiment"]) == ["r10", "main", "r50"]  # the first row DVC lists for 0.5
    assert list(table["fp32_accuracy"]) == [0.97, 0.95, 0.90]
    assert table["int8_size_bytes"].iloc[0] == pytest.approx(4e5 * 0.9)


def test_a_param_no_run_has_is_named():
    with pytest.raises(ValueError, match="no commit or experiment has the param 'prune.criterion'"):
        sweep_table([row("r50", "a1", 0.5, 0.9)], "prune.criterion")


def test_runs_without_the_export_metrics_are_refused():
    rows = [{"Experiment": "x", "rev": "a", "State": "Success", "prune.ratio": 0.5}]
    with pytest.raises(ValueError, match="no finished experiment has both 'prune.ratio' and the export-onnx"):
        sweep_table(rows, "prune.ratio")


def test_the_plot_is_a_png(tmp_path):
    table = sweep_table([row("a", "1", 0.1, 0.9), row("b", "2", 0.5, 0.8)], "prune.ratio")
    plot_sweep(table, "prune.ratio", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]  # no temporary file left


def test_the_cli_outside_a_dvc_repository_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "prune.ratio"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "cannot list DVC experiments" in error and "\n" not in error
    assert not (tmp_path / "reports").exists()


def test_the_cli_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch):
    """Only lprnet.errors.InputError is bad input, reported in one line; any other error is a bug and propagates."""
    from lprnet.pipeline import sweep

    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(sweep, "write_sweep", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["sweep", "prune.ratio"])
