"""The report's speed targets and Pareto front, from metrics dicts shaped like the stages' (no pipeline run)."""

from __future__ import annotations

from lprnet.pipeline import report


def fake_results(tuned_ms: float, pruned_int8_accuracy: float) -> tuple[dict, dict]:
    """(stage metrics, benchmark) for a baseline at 98 %, pruned artifacts at 97.5 % (int8: as given)."""
    metrics = {"baseline": {"accuracy": 0.98}, "prune": {"accuracy": 0.975}, "onnx-fp32": {"accuracy": 0.975},
               "onnx-int8": {"accuracy": pruned_int8_accuracy}, "tvm-import-fp32": {"accuracy": 0.975},
               "tvm-tune-fp32": {"accuracy": 0.975}}
    latency = {"torch_fp32_pruned": 5.0, "ort_fp32": 1.2, "ort_int8": 0.5, "tvm_import_fp32": 40.0,
               "tvm_tune_fp32": tuned_ms, "ort_fp32_baseline": 1.8}
    benchmark = {key: {"latency_ms_p50": ms, "latency_ms_p90": ms, "throughput_ips": 1.0,
                       "ratio_vs_baseline": 1.0, "ratio_vs_ort_fp32": ms / latency["ort_fp32"]}
                 for key, ms in latency.items()}
    return metrics, benchmark


def targets(tuned_ms: float, pruned_int8_accuracy: float) -> list[dict]:
    metrics, benchmark = fake_results(tuned_ms, pruned_int8_accuracy)
    return report.target_rows(report.rows(metrics, benchmark), metrics, benchmark)


def test_targets_hold_when_the_measurements_reach_them():
    rows = targets(tuned_ms=1.2, pruned_int8_accuracy=0.971)
    assert [row["met"] for row in rows] == [True, True, True]
    assert [round(row["value"], 3) for row in rows] == [1.0, 33.333, 3.6]
    assert "(ONNX Runtime int8)" in rows[2]["target"]


def test_targets_fail_and_an_artifact_beyond_the_accuracy_band_does_not_count():
    rows = targets(tuned_ms=2.5, pruned_int8_accuracy=0.969)  # int8 1.1 points below the baseline
    assert [row["met"] for row in rows] == [False, False, False]
    assert "(ONNX Runtime fp32)" in rows[2]["target"] and round(rows[2]["value"], 3) == 1.5
    assert "| no |" in report.targets_table(rows)


def test_a_missing_artifact_leaves_its_target_unmeasured():
    metrics, benchmark = fake_results(1.0, 0.975)
    del benchmark["tvm_tune_fp32"]
    rows = report.target_rows(report.rows(metrics, benchmark), metrics, benchmark)
    assert [row["met"] for row in rows] == [None, None, True]
    assert report.targets_table(rows).count("| - | - |") == 2


def test_the_pareto_front_keeps_points_no_other_beats_on_both_axes():
    points = {"slow exact": (10.0, 0.98), "fast rough": (1.0, 0.90), "dominated": (5.0, 0.90), "tie": (1.0, 0.90)}
    assert report.pareto_front(points) == {"slow exact", "fast rough", "tie"}


def test_the_deltas_include_the_benchmark_timings():
    metrics, benchmark = fake_results(tuned_ms=2.0, pruned_int8_accuracy=0.97)
    previous = {**metrics, "benchmark": {"threads": 2, **benchmark}}
    faster = {key: dict(values) for key, values in benchmark.items()}
    faster["tvm_tune_fp32"]["latency_ms_p50"] = 1.5
    current = {**metrics, "benchmark": {"threads": 2, **faster}}
    table = report.delta_table(report.with_benchmark_entries(current), report.with_benchmark_entries(previous))
    assert table.splitlines()[2:] == ["| benchmark: tvm_tune_fp32 | latency_ms_p50 | 2 | 1.5 | -25.0% |"]
    same = report.delta_table(report.with_benchmark_entries(previous), report.with_benchmark_entries(previous))
    assert same == "No metric changed since the previous commit."


def test_latency_changes_within_the_gates_noise_are_counted_not_listed():
    from lprnet.pipeline.gate import GateParams

    previous = {"a": {"latency_ms_p50": 10.0, "latency_ms_mad": 0.5, "accuracy": 0.9},
                "b": {"latency_ms_p50": 10.0, "latency_ms_mad": 0.5}, "c": {"latency_ms_p50": 10.0}}
    current = {"a": {"latency_ms_p50": 11.0, "latency_ms_mad": 0.5, "accuracy": 0.8},  # 1 ms: within 3 sigmas
               "b": {"latency_ms_p50": 5.0, "latency_ms_mad": 0.5},  # faster beyond the noise: listed
               "c": {"latency_ms_p50": 10.4}}  # no spread: within the 5 % floor
    table = report.delta_table(current, previous, GateParams(latency_noise_factor=3.0, min_latency_slowdown=0.05))
    assert [line.split(" | ")[:2] for line in table.splitlines()[2:4]] == [["| a", "accuracy"],
                                                                            ["| b", "latency_ms_p50"]]
    assert "2 p50 latency change(s) within the timing noise are not shown" in table
    assert report.delta_table(current, previous).count("latency_ms_p50") == 3  # no noise model: every change
    quiet = {"c": {"latency_ms_p50": 10.4}}
    assert (report.delta_table(quiet, {"c": previous["c"]}, GateParams())
            == "No metric changed beyond the timing noise since the previous commit.")
