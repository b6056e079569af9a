"""The report's tables, speed targets, Pareto front and deltas, from metrics dicts shaped like the stages' files
(benchmark.json flat, as the benchmark stage writes it); no pipeline run. The deltas against a git revision:
tests/test_revision.py."""

from __future__ import annotations

import pytest

from lprnet.csv_io import read_csv
from lprnet.errors import InputError
from lprnet.pipeline import report
from lprnet.pipeline.artifacts import REFERENCE_LABEL, flat_benchmark
from lprnet.pipeline.gate import GateParams
from lprnet.pipeline.revision import comparable
from tests.conftest import params_from_repo


def fake_results(tuned_ms: float, pruned_int8_accuracy: float, int8_peak_share: float = 0.6,
                 throughput_gain: float = 1.0) -> tuple[dict, dict]:
    """(stage metrics, benchmark timings per artifact) for a baseline at 98 %, pruned artifacts at 97.5 % (int8: as
    given), tuned TVM int8 at `int8_peak_share` of its peak, every artifact's throughput `throughput_gain` times its
    batch-1 rate."""
    metrics = {"baseline": {"accuracy": 0.98}, "prune": {"accuracy": 0.975}, "onnx-fp32": {"accuracy": 0.975},
               "onnx-int8": {"accuracy": pruned_int8_accuracy}, "tvm-import-fp32": {"accuracy": 0.975},
               "tvm-tune-fp32": {"accuracy": 0.975}, "tvm-tune-int8": {"accuracy": 0.975}}
    latency = {"torch_fp32_pruned": 5.0, "ort_fp32": 1.2, "ort_int8": 0.5, "tvm_import_fp32": 40.0,
               "tvm_tune_fp32": tuned_ms, "tvm_tune_int8": 0.9, "ort_fp32_baseline": 1.8}
    benchmark = {key: {"latency_ms_p50": ms, "latency_ms_p90": ms, "throughput_ips": throughput_gain * 1e3 / ms,
                       "ratio_vs_baseline": 1.0, "ratio_vs_ort_fp32": ms / latency["ort_fp32"]}
                 for key, ms in latency.items()}
    benchmark["tvm_tune_int8"]["peak_share"] = int8_peak_share
    return metrics, benchmark


def delivered(artifact: str, benchmark: dict, accuracy: float) -> dict:
    """metrics/select.json for `artifact` delivered at test `accuracy`, against the 98 % baseline."""
    ratio = benchmark[artifact]["latency_ms_p50"] / benchmark["ort_fp32_baseline"]["latency_ms_p50"]
    return {"artifact": artifact, "accuracy": accuracy, "baseline_accuracy": 0.98, "accuracy_drop": 0.98 - accuracy,
            "val_accuracy": accuracy, "baseline_val_accuracy": 0.98, "val_accuracy_drop": 0.98 - accuracy,
            "latency_ms_p50": benchmark[artifact]["latency_ms_p50"], "ratio_vs_baseline": 0.1,
            "ratio_vs_ort_fp32_baseline": ratio, "size_bytes": 400_000, "max_accuracy_drop": 0.005}


def targets(tuned_ms: float, artifact: str, accuracy: float, int8_peak_share: float = 0.6,
            throughput_gain: float = 1.0) -> list[dict]:
    metrics, benchmark = fake_results(tuned_ms, accuracy, int8_peak_share, throughput_gain)
    metrics["select"] = delivered(artifact, benchmark, accuracy)
    return report.target_rows(report.rows(metrics, benchmark), metrics, benchmark)


def test_targets_hold_when_the_measurements_reach_them():
    rows = targets(tuned_ms=1.2, artifact="ort_int8", accuracy=0.976, int8_peak_share=0.5, throughput_gain=1.5)
    assert [row["met"] for row in rows] == [True, True, True, True, True, True]
    assert [round(row["value"], 3) for row in rows] == [1.0, 33.333, 3.6, 0.4, 50.0, 1.5]
    assert all("(ONNX Runtime int8)" in rows[i]["target"] for i in (2, 3, 5))


def test_targets_fail_when_the_delivered_model_is_slow_or_loses_accuracy():
    rows = targets(tuned_ms=2.5, artifact="ort_fp32", accuracy=0.969, int8_peak_share=0.3,  # 1.1 points below
                   throughput_gain=1.4)
    assert [row["met"] for row in rows] == [False, False, False, False, False, False]
    assert "(ONNX Runtime fp32)" in rows[2]["target"] and round(rows[2]["value"], 3) == 1.5
    assert round(rows[3]["value"], 3) == 1.1
    assert "| no |" in report.targets_table(rows)


def test_a_missing_artifact_or_selection_leaves_its_target_unmeasured():
    metrics, benchmark = fake_results(1.0, 0.975)
    del benchmark["tvm_tune_fp32"], benchmark["tvm_tune_int8"]["peak_share"]  # a benchmark.json without a floor
    rows = report.target_rows(report.rows(metrics, benchmark), metrics, benchmark)
    assert [row["met"] for row in rows] == [None, None, None, None, None, None]
    assert report.targets_table(rows).count("| - | - |") == 6


def test_the_report_leads_with_the_delivered_model():
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.976)
    metrics["select"] = delivered("ort_int8", benchmark, 0.976)
    text = report.document({**metrics, "benchmark": flat_benchmark({"threads": 2, "runs": 100}, benchmark)}, "none")
    assert text.index("## The delivered model") < text.index("## Every artifact")
    assert "**ONNX Runtime int8**" in text and "`budget.max_accuracy_drop` = 0.5 point(s)" in text
    assert "| test accuracy | 97.6 % | 98.0 % | -0.4 points |" in text
    assert "| 0.50 | - (PyTorch), 1.80 (ONNX Runtime) | 10.0x, 3.6x faster |" in text
    del metrics["select"]
    text = report.document({**metrics, "benchmark": flat_benchmark({"threads": 2, "runs": 100}, benchmark)}, "none")
    assert "No model delivered yet (run `dvc repro select`)." in text


def test_the_pareto_front_keeps_points_no_other_beats_on_both_axes():
    points = {"slow exact": (10.0, 0.98), "fast rough": (1.0, 0.90), "dominated": (5.0, 0.90), "tie": (1.0, 0.90)}
    assert report.pareto_front(points) == {"slow exact", "fast rough", "tie"}


def test_the_deltas_include_the_benchmark_timings():
    metrics, benchmark = fake_results(tuned_ms=2.0, pruned_int8_accuracy=0.97)
    previous = {**metrics, "benchmark": flat_benchmark({"threads": 2}, benchmark)}
    faster = {key: dict(values) for key, values in benchmark.items()}
    faster["tvm_tune_fp32"]["latency_ms_p50"] = 1.5
    current = {**metrics, "benchmark": flat_benchmark({"threads": 2}, faster)}
    table = report.delta_table(comparable(current).rows, comparable(previous).rows)
    assert table.splitlines()[2:] == ["| benchmark/tvm_tune_fp32 | latency_ms_p50 | 2 | 1.5 | -25.0% |"]
    same = report.delta_table(comparable(previous).rows, comparable(previous).rows)
    assert same == "No metric changed since the previous commit."


def test_the_document_reads_the_flat_benchmark_file():
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.971)
    benchmark["ort_fp32"] |= {"latency_ms_p90": 1.9, "throughput_ips": 777.0}
    text = report.document({**metrics, "benchmark": flat_benchmark({"threads": 2, "runs": 100}, benchmark)}, "none")
    assert "after warm-up, 2 threads, 100 interleaved samples per" in text
    assert "(stage `benchmark`). Accuracy" in text  # no CPU in this benchmark.json: none named
    named = report.document({**metrics, "benchmark": flat_benchmark(
        {"cpu": "AMD EPYC, x86_64 family 25 model 1, AVX2 + FMA, no AVX-512", "threads": 2, "runs": 100}, benchmark)},
        "none")
    assert "(stage `benchmark`), on AMD EPYC, x86_64 family 25 model 1, AVX2 + FMA, no AVX-512. Accuracy" in named
    assert "ONNX Runtime fp32 on the unpruned baseline, the reference of the speed targets: 1.80 ms." in text
    assert "| ONNX Runtime fp32 | 97.5 % | 1.20 | 1.90 | 777 | 1.00 | 1.00 | - |" in text
    assert text.endswith("## Changes since the previous commit\n\nnone\n")


def test_the_document_shows_the_floor_and_each_artifacts_macs_rate_and_share():
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.971)
    benchmark["ort_fp32"] |= {"macs": 36_000_000, "achieved_gmacs": 30.0, "peak_share": 0.25}
    benchmark["ort_fp32_baseline"] |= {"macs": 144_000_000, "achieved_gmacs": 80.0, "peak_share": 0.667}
    settings = {"threads": 2, "runs": 100, "floor_fp32_gmacs": 120.0, "floor_int8_gmacs": 480.0,
                "floor_fp32_gmacs_one_thread": 64.0, "floor_int8_gmacs_one_thread": 250.0}
    text = report.document({**metrics, "benchmark": flat_benchmark(settings, benchmark)}, "none")
    assert "**fp32 120 G-MAC/s, int8 480 G-MAC/s** (1.88x one thread's fp32 peak)." in text
    settings["floor_fp32_gmacs_one_thread"] = 100.0  # 1.2x on 2 threads: the second core was busy
    busy = report.document({**metrics, "benchmark": flat_benchmark(settings, benchmark)}, "none")
    assert "(1.20x one thread's fp32 peak, well under 2x: other processes held cores" in busy
    assert "ONNX Runtime fp32 on the unpruned baseline: 80.0 G-MAC/s, 66.7 % of the fp32 peak." in text
    assert "| 36.0 | 30.0 | 25.0 % |" in text.split("| ONNX Runtime fp32 |")[1].splitlines()[0]
    # A benchmark.json from before the floor: the section says so, the columns show "-".
    older = report.document({**metrics, "benchmark": flat_benchmark({"threads": 2, "runs": 100}, benchmark)}, "")
    assert "No hardware floor in `metrics/benchmark.json`" in older


def test_a_missing_or_nested_benchmark_file_is_refused_by_name():
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.971)
    with pytest.raises(FileNotFoundError, match="^benchmark.json: missing"):
        report.document(metrics, "")
    with pytest.raises(ValueError, match="^benchmark.json: not flat"):
        report.document({**metrics, "benchmark": {"threads": 2, **benchmark}}, "")


def test_latency_changes_within_the_gates_noise_are_counted_not_listed():
    previous = {"a": {"latency_ms_p50": 10.0, "latency_ms_mad": 0.5, "accuracy": 0.9},
                "b": {"latency_ms_p50": 10.0, "latency_ms_mad": 0.5}, "c": {"latency_ms_p50": 10.0}}
    current = {"a": {"latency_ms_p50": 11.0, "latency_ms_mad": 0.5, "accuracy": 0.8},  # 1 ms: within 3 sigmas
               "b": {"latency_ms_p50": 5.0, "latency_ms_mad": 0.5},  # faster beyond the noise: listed
               "c": {"latency_ms_p50": 10.4}}  # no spread: within the 5 % floor
    table = report.delta_table(current, previous, GateParams(max_accuracy_drop=0.005, latency_noise_factor=3.0,
                                                             min_latency_slowdown=0.05))
    assert [line.split(" | ")[:2] for line in table.splitlines()[2:4]] == [["| a", "accuracy"],
                                                                            ["| b", "latency_ms_p50"]]
    assert "2 p50 latency change(s) within the timing noise are not shown" in table
    assert report.delta_table(current, previous).count("latency_ms_p50") == 3  # no noise model: every change
    quiet = {"c": {"latency_ms_p50": 10.4}}
    floor_only = params_from_repo("gate", GateParams, min_latency_slowdown=0.05)
    assert (report.delta_table(quiet, {"c": previous["c"]}, floor_only)
            == "No metric changed beyond the timing noise since the previous commit.")


def test_the_stage_names_a_missing_benchmark_file_and_writes_nothing(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "baseline.json").write_text('{"accuracy": 0.9}')
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'metrics' / 'benchmark.json'}: missing"):
        report.write_report(tmp_path / "metrics", tmp_path / "reports", tmp_path / "reports" / "pareto.csv",
                            tmp_path / "reports" / "sizes.csv", params_from_repo("gate", GateParams))
    assert not (tmp_path / "reports").exists()


def test_the_plot_data_adds_the_delivered_model_even_without_a_row_of_its_own(tmp_path):
    """ONNX Runtime fp32 on the baseline has no stage metrics, so no row: the scatter's data adds it as a point (on
    the Pareto front here, which it moves) and the size bars leave it out."""
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.976)
    table = report.rows(metrics, benchmark)
    for row in table:
        row["size_bytes"] = 400_000
    chosen = delivered("ort_fp32_baseline", benchmark, 0.98)
    report.write_plot_data(table, chosen, tmp_path / "pareto.csv", tmp_path / "sizes.csv")
    points = {row["artifact"]: row for row in read_csv(tmp_path / "pareto.csv", report.PARETO_COLUMNS)}
    assert [name for name, row in points.items() if row["delivered"] == "1"] == [REFERENCE_LABEL]
    assert {name for name, row in points.items() if row["pareto"] == "1"} == {REFERENCE_LABEL, "ONNX Runtime int8"}
    assert len(read_csv(tmp_path / "sizes.csv", report.SIZE_COLUMNS)) == len(table) == len(points) - 1


def test_onnx_runtime_on_the_baseline_gets_a_row_after_the_baselines_and_its_place_on_the_pareto_front(tmp_path):
    """With its test accuracy in select.json, the reference of every speed ratio is an artifact like the others: a
    row beside the PyTorch baseline's, which it dominates here (as accurate, faster), so the baseline leaves the
    Pareto front; a bar among the sizes; a value that is not a number is refused naming select.json's key."""
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.976)
    for stage in metrics.values():
        stage["size_bytes"] = 400_000
    benchmark["torch_fp32_baseline"] = {"latency_ms_p50": 8.0, "latency_ms_p90": 8.0, "throughput_ips": 1.0,
                                        "ratio_vs_baseline": 1.0, "ratio_vs_ort_fp32": 8.0 / 1.2}
    metrics["select"] = delivered("ort_int8", benchmark, 0.976) | {"reference_accuracy": 0.98,
                                                                   "reference_size_bytes": 1_200_000}
    table = report.rows(metrics, benchmark)
    assert [row["artifact"] for row in table[:2]] == ["PyTorch fp32 baseline", REFERENCE_LABEL]
    text = report.document({**metrics, "benchmark": flat_benchmark({"threads": 2, "runs": 100}, benchmark)}, "none")
    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines[REFERENCE_LABEL].startswith(f"| {REFERENCE_LABEL} | 98.0 % | 1.80 | 1.80 |")
    assert lines[REFERENCE_LABEL].endswith("| 1.200 | - | - | - | yes |")
    assert lines["PyTorch fp32 baseline"].endswith("|  |")  # as accurate as the reference, and slower
    report.check_rows(table, tmp_path)
    report.write_plot_data(table, metrics["select"], tmp_path / "pareto.csv", tmp_path / "sizes.csv")
    points = {row["artifact"]: row for row in read_csv(tmp_path / "pareto.csv", report.PARETO_COLUMNS)}
    assert points[REFERENCE_LABEL]["pareto"] == "1" and points["PyTorch fp32 baseline"]["pareto"] == "0"
    assert len(points) == len(table)  # the delivered model has its row: no point added
    sizes = {row["artifact"]: row["size_mb"] for row in read_csv(tmp_path / "sizes.csv", report.SIZE_COLUMNS)}
    assert float(sizes[REFERENCE_LABEL]) == 1.2
    metrics["select"]["reference_accuracy"] = float("nan")
    with pytest.raises(InputError, match=r"select\.json: reference_accuracy is nan, not a finite number"):
        report.check_rows(report.rows(metrics, benchmark), tmp_path)


def test_the_pngs_are_drawn_from_the_plot_data_files_alone(tmp_path):
    """`plot` takes the files `dvc plots show` draws, nothing else, so the report's PNGs cannot disagree with them;
    a file in another format is refused by name."""
    (tmp_path / "pareto.csv").write_text("artifact,latency_ms_p50,accuracy,pareto,delivered\n"
                                         "a,0.5,0.9,1,0\nb,2.0,0.95,1,1\nc,3.0,0.9,0,0\n")
    (tmp_path / "sizes.csv").write_text("artifact,size_mb\na,0.4\nb,1.3\n")
    report.plot(tmp_path / "pareto.csv", tmp_path / "sizes.csv", tmp_path / "pareto.png", tmp_path / "sizes.png")
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "sizes.png").stat().st_size
    (tmp_path / "pareto.csv").write_text("artifact,latency_ms_p50,accuracy,pareto\na,0.5,0.9,1\n")
    with pytest.raises(InputError, match="pareto.csv: columns"):
        report.plot(tmp_path / "pareto.csv", tmp_path / "sizes.csv", tmp_path / "a.png", tmp_path / "b.png")


def test_the_throughput_section_sets_each_batch_rate_against_batch_1_and_the_peak():
    metrics, benchmark = fake_results(tuned_ms=1.2, pruned_int8_accuracy=0.976, throughput_gain=1.25)
    for timing in benchmark.values():
        timing.update(throughput_gmacs=12.5, throughput_share_of_peak=0.25)
    benchmark["tvm_tune_int8"]["throughput_ips_batch1_build"] = 1000.0
    table = report.rows(metrics, benchmark)
    section = report.throughput_section(table, {"throughput_batch": 32})
    assert "| artifact | batch 1 (images/s, 1 / p50) | batch 32 (images/s) |" in section
    # 0.9 ms: 1111 images/s at batch 1, 1.25 times that at batch 32; its batch-1 build over the batch: 1000.
    assert "| TVM tune int8 | 1111 | 1389 | 1.25 | 12.5 | 25.0 % | 1000 |" in section
    assert "| ONNX Runtime int8 | 2000 | 2500 | 1.25 | 12.5 | 25.0 % | - |" in section
    del benchmark["tvm_tune_int8"]["throughput_ips_batch1_build"]  # tune.batched_build off: no such column
    section = report.throughput_section(report.rows(metrics, benchmark), {"throughput_batch": 32})
    assert "| TVM tune int8 | 1111 | 1389 | 1.25 | 12.5 | 25.0 % |" in section.splitlines()
    assert "`tune.batched_build` is off" in section
    del benchmark["ort_int8"]["throughput_share_of_peak"]  # a benchmark.json from before
    assert report.throughput_section(report.rows(metrics, benchmark), {"throughput_batch": 32}).startswith("No ")
