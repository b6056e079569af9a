"""The `benchmark` stage's work: every artifact of the pipeline timed side by side in one process.

Batch-1 latency is measured interleaved in turns (see runtime/bench.py's `interleaved_latency`: after warm-up, the
same thread count for every runtime), then throughput at `bench.throughput_batch`. Each artifact's p50 is divided by
the PyTorch fp32 baseline's, ONNX Runtime fp32's on the same (pruned) model and ONNX Runtime fp32's on the unpruned
baseline, which is exported here, as the reference the notebook study used (artifacts.RATIOS). The results are
written as flat metrics (artifacts.py has the key scheme) and as a CSV for `dvc plots`.

Does not re-measure accuracy: the report joins each artifact with its own stage's metrics.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lprnet.compile.onnx_export import export_onnx
from lprnet.errors import MissingFileError
from lprnet.model.checkpoint import load_model
from lprnet.pipeline.artifacts import ARTIFACTS, BASELINE, RATIOS, REFERENCE, flat_benchmark
from lprnet.runtime.bench import BenchConfig, interleaved_latency, throughput
from lprnet.runtime.predictor import load_predictor

# reports/benchmark.csv, one line per artifact.
CSV_COLUMNS = ("artifact", "latency_ms_p50", "latency_ms_p90", "throughput_ips", "ratio_vs_ort_fp32")


def export_reference(models: Path, folder: Path) -> Path:
    """The REFERENCE artifact, ONNX Runtime fp32's model of the unpruned baseline, exported into `folder` from
    `models`' baseline (the export is deterministic: the same bytes every time); returns its path."""
    path = folder / "baseline.onnx"
    export_onnx(*load_model(models / ARTIFACTS[BASELINE].path), path)
    return path


def benchmark_artifacts(models: Path, bench: BenchConfig) -> dict[str, dict]:
    """Artifact name -> its latency summary, throughput and ratios, for every artifact under `models` (ARTIFACTS, in
    order) and then the reference (REFERENCE). Raises MissingFileError naming the first absent artifact."""
    missing = [models / artifact.path for artifact in ARTIFACTS.values() if not (models / artifact.path).exists()]
    if missing:
        raise MissingFileError(f"{missing[0]}: artifact missing (run `dvc repro`)")
    with tempfile.TemporaryDirectory(prefix="benchmark.") as work:
        reference_onnx = export_reference(models, Path(work))
        predictors = {name: load_predictor(models / artifact.path, bench.threads)
                      for name, artifact in ARTIFACTS.items()}
        predictors[REFERENCE] = load_predictor(reference_onnx, bench.threads)
        results = interleaved_latency(predictors, bench)
        for name, predictor in predictors.items():
            results[name]["throughput_ips"] = throughput(predictor, bench)
    for result in results.values():
        for ratio, other in RATIOS.items():
            result[ratio] = result["latency_ms_p50"] / results[other]["latency_ms_p50"]
    return results


def benchmark_metrics(results: dict[str, dict], bench: BenchConfig) -> dict:
    """metrics/benchmark.json: the run's settings, then `results` as flat keys."""
    return flat_benchmark({"threads": bench.threads, "runs": bench.runs, "throughput_batch": bench.throughput_batch},
                          results)


def benchmark_csv_rows(results: dict[str, dict]) -> list[list]:
    """reports/benchmark.csv's rows (CSV_COLUMNS), one per artifact."""
    return [[name, *(result[column] for column in CSV_COLUMNS[1:])] for name, result in results.items()]
