"""The `benchmark` stage's work: every artifact of the pipeline timed side by side in one process.

Batch-1 latency is measured interleaved in turns (see runtime/bench.py's `interleaved_latency`: after warm-up, the
same thread count for every runtime), then throughput at `bench.throughput_batch`, in turns too
(`interleaved_throughput`). Each artifact's p50 is divided by
the PyTorch fp32 baseline's, ONNX Runtime fp32's on the same (pruned) model and ONNX Runtime fp32's on the unpruned
baseline (export-onnx's), the reference the notebook study used (artifacts.RATIOS). The results are
written as flat metrics (artifacts.py has the key scheme) and as a CSV for `dvc plots`.

Against the hardware floor: this CPU's fp32 FMA and int8 multiply-add peaks at `bench.threads` (runtime/floor.py)
are measured before the artifacts and again after them (the best of both is kept: load elsewhere on the machine
only lowers a peak), and each artifact's row gets its MACs (those of the PyTorch model it was made from, counted
by runtime/metrics.py's `count_macs`, as the stages' `macs`), the G-MAC/s it achieves at its batch-1 p50, and
that as a share of its precision's peak; the same for its throughput. A tuned TVM artifact with a batched build
(tune.batched_build) has its throughput measured on that build, and that of its batch-1 build run over the same
batch in the same turns (`throughput_ips_batch1_build`).

Does not re-measure accuracy: the report joins each artifact with its own stage's metrics.
"""

from __future__ import annotations

from pathlib import Path

from lprnet.model.checkpoint import load_model
from lprnet.pipeline.artifacts import (
    ARTIFACTS,
    FLOOR_KEYS,
    RATIOS,
    REFERENCE,
    REFERENCE_PRECISION,
    REFERENCE_SOURCE,
    artifact_paths,
    flat_benchmark,
)
from lprnet.runtime.bench import BenchConfig, interleaved_latency, interleaved_throughput
from lprnet.runtime.floor import Floor, cpu_description, measure_floor
from lprnet.runtime.metrics import count_macs
from lprnet.runtime.predictor import load_predictor
from lprnet.runtime.tvm_runtime import TVMPredictor

BATCH1_BUILD = "batch-1 build"  # the key of an artifact's batch-1 build among the throughput turns

# reports/benchmark.csv, one line per artifact.
CSV_COLUMNS = ("artifact", "latency_ms_p50", "latency_ms_p90", "throughput_ips", "ratio_vs_ort_fp32", "macs",
               "achieved_gmacs", "peak_share")


def benchmark_artifacts(models: Path, bench: BenchConfig) -> tuple[dict[str, dict], Floor]:
    """(artifact name -> its latency summary, throughput, ratios, MACs and share of the floor, for every artifact
    under `models` (ARTIFACTS, in order) and then the reference (REFERENCE); this CPU's floor at `bench.threads`).
    Raises MissingFileError naming the first absent artifact."""
    paths = artifact_paths(models)
    floor_before = measure_floor(bench.threads)  # first: a compiler missing fails the stage before minutes of timing
    sources = {source: count_macs(load_model(models / source)[0])
               for source in {artifact.source for artifact in ARTIFACTS.values()} | {REFERENCE_SOURCE}}
    predictors = {name: load_predictor(path, bench.threads) for name, path in paths.items()}
    results = interleaved_latency(predictors, bench)
    # A TVM artifact with a batched build also runs the batch on its batch-1 build, in the same turns.
    batch1_builds = {name: TVMPredictor(paths[name], bench.threads, batched=False) for name, predictor in
                     predictors.items() if getattr(predictor, "batched_input_shape", None)}
    rates = interleaved_throughput({**predictors, **{f"{name} {BATCH1_BUILD}": predictor
                                                     for name, predictor in batch1_builds.items()}}, bench)
    for name in predictors:
        results[name]["throughput_ips"] = rates[name]
        if name in batch1_builds:
            results[name]["throughput_ips_batch1_build"] = rates[f"{name} {BATCH1_BUILD}"]
    del predictors, batch1_builds  # their runtimes' thread pools stop spinning before the floor runs again
    floor = best_floor(floor_before, measure_floor(bench.threads))
    kinds = {name: (artifact.precision, artifact.source) for name, artifact in ARTIFACTS.items()}
    kinds[REFERENCE] = (REFERENCE_PRECISION, REFERENCE_SOURCE)
    for name, result in results.items():
        for ratio, other in RATIOS.items():
            result[ratio] = result["latency_ms_p50"] / results[other]["latency_ms_p50"]
        precision, source = kinds[name]
        result.update(against_floor(sources[source], result["latency_ms_p50"], floor.peak(precision)))
        throughput_gmacs = sources[source] * result["throughput_ips"] / 1e9
        result.update(throughput_gmacs=throughput_gmacs, throughput_share_of_peak=throughput_gmacs / floor.peak(
            precision))
    return results, floor


def against_floor(macs: int, latency_ms: float, peak_gmacs: float) -> dict:
    """An artifact's `macs`, the G-MAC/s it achieves at `latency_ms` per pass, and their share of `peak_gmacs`."""
    achieved = macs / (latency_ms * 1e-3) / 1e9
    return {"macs": macs, "achieved_gmacs": achieved, "peak_share": achieved / peak_gmacs}


def best_floor(*floors: Floor) -> Floor:
    """Each peak's best over several measurements of the floor (at the same thread count)."""
    assert len({floor.threads for floor in floors}) == 1
    best = {field: max(getattr(floor, field) for floor in floors)
            for field in ("fp32_gmacs", "int8_gmacs", "fp32_gmacs_one_thread", "int8_gmacs_one_thread")}
    return Floor(floors[0].threads, **best, fp32_macs_per_instruction=floors[0].fp32_macs_per_instruction,
                 int8_macs_per_instruction=floors[0].int8_macs_per_instruction)


def benchmark_metrics(results: dict[str, dict], floor: Floor, bench: BenchConfig) -> dict:
    """metrics/benchmark.json: the run's settings and the floor, then `results` as flat keys."""
    settings = {"cpu": cpu_description(), "threads": bench.threads, "runs": bench.runs,
                "throughput_batch": bench.throughput_batch}
    for precision, key in FLOOR_KEYS.items():
        settings[key] = floor.peak(precision)
        settings[f"{key}_one_thread"] = getattr(floor, f"{precision}_gmacs_one_thread")
    return flat_benchmark(settings, results)


def benchmark_csv_rows(results: dict[str, dict]) -> list[list]:
    """reports/benchmark.csv's rows (CSV_COLUMNS), one per artifact."""
    return [[name, *(result[column] for column in CSV_COLUMNS[1:])] for name, result in results.items()]
