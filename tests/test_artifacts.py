"""The artifact registry and benchmark.json's flat key scheme (lprnet.pipeline.artifacts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lprnet.pipeline.artifacts import (
    ARTIFACTS,
    BENCHMARK_METRICS,
    RATIOS,
    REFERENCE,
    benchmark_key,
    flat_benchmark,
    split_benchmark,
)
from tests.conftest import REPO


def every_metric(scale: float) -> dict:
    return {metric: scale * (index + 1) for index, metric in enumerate(BENCHMARK_METRICS)}


def test_keys_are_artifact_underscore_metric_one_level_deep():
    flat = flat_benchmark({"threads": 2, "runs": 100},
                          {"ort_fp32": {"latency_ms_p50": 1.5}, REFERENCE: {"ratio_vs_ort_fp32_baseline": 1.0}})
    assert flat == {"threads": 2, "runs": 100, "ort_fp32_latency_ms_p50": 1.5,
                    "ort_fp32_baseline_ratio_vs_ort_fp32_baseline": 1.0}
    assert benchmark_key("tvm_tune_int8", "throughput_ips") == "tvm_tune_int8_throughput_ips"


def test_split_reads_back_what_flat_wrote_for_every_artifact_and_metric():
    """Artifact names hold underscores and end like metrics do (`..._baseline`, `..._fp32`): the split must still find
    each artifact and metric, in the file's order."""
    results = {name: every_metric(scale) for scale, name in enumerate([*ARTIFACTS, REFERENCE], start=1)}
    settings = {"threads": 2, "runs": 100, "throughput_batch": 32}
    flat = flat_benchmark(settings, results)
    assert not any(isinstance(value, dict) for value in flat.values())
    assert len(flat) == len(settings) + len(results) * len(BENCHMARK_METRICS)
    back_settings, back_results = split_benchmark(flat)
    assert back_settings == settings and back_results == results
    assert list(back_results) == list(results)


def test_every_key_splits_one_way_only():
    """A metric whose name ended in `_` + another's would make `<artifact>_<metric>` ambiguous."""
    assert not [(a, b) for a in BENCHMARK_METRICS for b in BENCHMARK_METRICS if a != b and a.endswith(f"_{b}")]


def test_a_key_ending_in_no_metric_is_a_setting():
    assert split_benchmark({"threads": 2, "ort_fp32_latency_ms_p50": 1.0, "note": "x"}) == (
        {"threads": 2, "note": "x"}, {"ort_fp32": {"latency_ms_p50": 1.0}})


def test_an_unknown_metric_is_a_bug():
    with pytest.raises(AssertionError):
        benchmark_key("ort_fp32", "latency_p50")


def test_the_ratios_refer_to_benchmarked_artifacts():
    assert set(RATIOS.values()) <= {*ARTIFACTS, REFERENCE}


def test_every_artifact_has_a_stage_metrics_file_in_dvc_yaml():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {Path(next(iter(m)) if isinstance(m, dict) else m).stem
                for spec in stages.values() for m in spec.get("metrics", [])}
    assert {artifact.metrics for artifact in ARTIFACTS.values()} <= declared
