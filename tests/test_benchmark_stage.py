"""The benchmark stage's work (lprnet.pipeline.benchmark) with fake predictors on a fake clock and a fake hardware
floor: which artifacts it times, the ratios, each artifact's MACs and share of its precision's peak, and the flat
metrics and CSV rows it gives the stage to write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lprnet.pipeline import benchmark
from lprnet.pipeline.artifacts import ARTIFACTS, REFERENCE, REFERENCE_PATH, split_benchmark
from lprnet.pipeline.revision import comparable
from lprnet.runtime import bench
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.floor import Floor, cpu_description
from tests.conftest import params_from_repo

# Seconds per call of each fake artifact, whatever the batch.
SECONDS = {**{name: 0.001 * (index + 1) for index, name in enumerate(ARTIFACTS)}, REFERENCE: 0.0015}
# MACs of the fake source models, and the fake floor's two measurements (G-MAC/s): the best of each peak counts.
MACS = {"baseline.pt": 140_000_000, "pruned.pt": 35_000_000}
FLOORS = [(100.0, 300.0), (80.0, 400.0)]
BATCHED, BATCH1_BUILD_SLOWER = "tvm_tune_int8", 3  # the artifact with a batched build (tune.batched_build)


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A models folder holding an (empty) file per artifact, and fake loaders: each predictor advances a fake clock
    by its artifact's SECONDS per call."""
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)

    def predictor(seconds):
        def call(images):
            now[0] += seconds
            return np.zeros((len(images), 4, 18), np.float32)
        return call

    names = {str(tmp_path / artifact.path): name for name, artifact in ARTIFACTS.items()}
    names[str(tmp_path / REFERENCE_PATH)] = REFERENCE
    floors = iter(FLOORS)
    monkeypatch.setattr(benchmark, "measure_floor",
                        lambda threads: Floor(threads, *(peaks := next(floors)), *peaks, 16, 64))
    monkeypatch.setattr(benchmark, "load_model", lambda path: (path.name, None))
    monkeypatch.setattr(benchmark, "count_macs", lambda model: MACS[model])
    def load(path, threads):
        call = predictor(SECONDS[names[str(path)]])
        if names[str(path)] == BATCHED:
            call.batched_input_shape = (4, 3, 24, 94)
        return call

    monkeypatch.setattr(benchmark, "load_predictor", load)
    # The batched artifact's batch-1 build, run over the batch: BATCH1_BUILD_SLOWER times as long per call.
    monkeypatch.setattr(benchmark, "TVMPredictor", lambda path, threads, batched: predictor(
        BATCH1_BUILD_SLOWER * SECONDS[names[str(path)]]))
    for path in names:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
    return tmp_path


def config() -> BenchConfig:
    return params_from_repo("bench", BenchConfig, warmup=1, runs=10, throughput_runs=2, throughput_batch=4)


def test_every_artifact_then_the_reference_with_latency_throughput_and_ratios(models):
    results, _ = benchmark.benchmark_artifacts(models, config())
    assert list(results) == [*ARTIFACTS, REFERENCE]
    ort = results["ort_fp32"]
    assert ort["latency_ms_p50"] == pytest.approx(1e3 * SECONDS["ort_fp32"])
    assert ort["throughput_ips"] == pytest.approx(4 / SECONDS["ort_fp32"])
    assert ort["ratio_vs_ort_fp32"] == pytest.approx(1.0)
    assert ort["ratio_vs_baseline"] == pytest.approx(SECONDS["ort_fp32"] / SECONDS["torch_fp32_baseline"])
    assert results["tvm_tune_int8"]["ratio_vs_ort_fp32_baseline"] == pytest.approx(SECONDS["tvm_tune_int8"] / 0.0015)


def test_each_artifact_has_its_source_models_macs_and_its_share_of_its_precisions_best_peak(models):
    results, floor = benchmark.benchmark_artifacts(models, config())
    assert (floor.fp32_gmacs, floor.int8_gmacs) == (100.0, 400.0)  # the best of the two measurements
    for name, peak, macs in (("ort_fp32", 100.0, MACS["pruned.pt"]), ("tvm_tune_int8", 400.0, MACS["pruned.pt"]),
                             ("torch_int8", 400.0, MACS["pruned.pt"]),
                             ("torch_fp32_baseline", 100.0, MACS["baseline.pt"]),
                             (REFERENCE, 100.0, MACS["baseline.pt"])):
        achieved = macs / SECONDS[name] / 1e9
        assert results[name]["macs"] == macs
        assert results[name]["achieved_gmacs"] == pytest.approx(achieved)
        assert results[name]["peak_share"] == pytest.approx(achieved / peak), name


def test_the_metrics_are_flat_and_read_back_as_one_row_per_artifact(models):
    results, floor = benchmark.benchmark_artifacts(models, config())
    metrics = benchmark.benchmark_metrics(results, floor, config())
    assert metrics["cpu"] == cpu_description()  # the one string: latencies from other CPUs are not comparable
    assert all(isinstance(value, (int, float)) for key, value in metrics.items() if key != "cpu")
    assert metrics["threads"] == config().threads and metrics["runs"] == 10 and metrics["throughput_batch"] == 4
    assert metrics["ort_fp32_latency_ms_p50"] == results["ort_fp32"]["latency_ms_p50"]
    assert metrics["floor_fp32_gmacs"] == 100.0 and metrics["floor_int8_gmacs_one_thread"] == 400.0
    settings, read_back = split_benchmark(metrics)
    assert read_back == results
    assert settings["floor_int8_gmacs"] == 400.0 and settings["threads"] == config().threads
    rows = comparable({"benchmark": metrics}).rows
    assert rows["benchmark/ort_fp32"]["latency_ms_p50"] == results["ort_fp32"]["latency_ms_p50"]
    assert rows["benchmark/ort_fp32"]["threads"] == config().threads
    [row] = [r for r in benchmark.benchmark_csv_rows(results) if r[0] == "ort_fp32"]
    assert row == ["ort_fp32", *(results["ort_fp32"][c] for c in benchmark.CSV_COLUMNS[1:])]


def test_a_missing_artifact_is_named_before_anything_is_loaded(models):
    (models / ARTIFACTS["torch_int8"].path).unlink()
    with pytest.raises(FileNotFoundError, match=f"^{models / 'quantized.pt'}: artifact missing"):
        benchmark.benchmark_artifacts(models, config())


def test_throughput_is_set_against_the_peak_and_a_batched_build_against_its_batch_1_build(models):
    results, floor = benchmark.benchmark_artifacts(models, config())
    ort = results["ort_fp32"]
    assert ort["throughput_gmacs"] == pytest.approx(MACS["pruned.pt"] * ort["throughput_ips"] / 1e9)
    assert ort["throughput_share_of_peak"] == pytest.approx(ort["throughput_gmacs"] / floor.fp32_gmacs)
    assert "throughput_ips_batch1_build" not in ort
    batched = results[BATCHED]
    assert batched["throughput_ips"] == pytest.approx(4 / SECONDS[BATCHED])
    assert batched["throughput_ips_batch1_build"] == pytest.approx(4 / (BATCH1_BUILD_SLOWER * SECONDS[BATCHED]))
    assert batched["throughput_share_of_peak"] == pytest.approx(batched["throughput_gmacs"] / floor.int8_gmacs)
