"""The pipeline's deployable artifacts, and the key scheme of metrics/benchmark.json, which times them side by side.

`ARTIFACTS` is the one list of what the pipeline deploys: where each artifact lives under models/ (what the benchmark
stage loads) and which stage's metrics file holds its accuracy and size (what the report joins it with).

metrics/benchmark.json is flat, like every metrics file (DESIGN.md, rule 2): one key `<artifact>_<metric>` per
artifact and metric, e.g. `ort_fp32_latency_ms_p50`, beside the run's settings (`threads`, `runs`,
`throughput_batch`). The metric keeps its usual name, units included, as a suffix, and `dvc metrics diff` lists one
readable row per artifact and metric. The separator is `_` rather than `.`, which DVC's own tables use to show
nesting. `benchmark_key` writes the scheme and `split_benchmark` reads it back; nothing else spells it.

Does not load, time or score anything (see lprnet/pipeline/benchmark.py and lprnet/runtime/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    label: str  # its row in the report
    path: str  # under models/, what the benchmark stage loads
    metrics: str  # the stage metrics file (without .json) that accuracy and size come from


# Benchmark name -> artifact, in benchmark and report order.
ARTIFACTS = {
    "torch_fp32_baseline": Artifact("PyTorch fp32 baseline", "baseline.pt", "baseline"),
    "torch_fp32_pruned": Artifact("PyTorch fp32 pruned", "pruned.pt", "prune"),
    "torch_int8": Artifact("PyTorch int8", "quantized.pt", "quantize"),
    "ort_fp32": Artifact("ONNX Runtime fp32", "onnx/fp32.onnx", "onnx-fp32"),
    "ort_int8": Artifact("ONNX Runtime int8", "onnx/int8.onnx", "onnx-int8"),
    **{f"tvm_{step}_{precision}": Artifact(f"TVM {step} {precision}", f"tvm/{step}/{precision}",
                                           f"tvm-{step}-{precision}")
       for step in ("import", "graph", "layout", "tune") for precision in ("fp32", "int8")},
}

BASELINE = "torch_fp32_baseline"
ORT_FP32 = "ort_fp32"
# Not a pipeline artifact: ONNX Runtime fp32 on the unpruned baseline, exported by the benchmark stage itself, the
# reference the notebook study used. Timed after ARTIFACTS.
REFERENCE = "ort_fp32_baseline"

REFERENCE_LABEL = "ONNX Runtime fp32 baseline"

BENCHMARK = "benchmark"  # metrics/benchmark.json, by its stem
SELECT = "select"  # metrics/select.json: the delivered model

# Each benchmarked artifact's p50 divided by that of: (ratio key -> artifact).
RATIOS = {"ratio_vs_baseline": BASELINE, "ratio_vs_ort_fp32": ORT_FP32, "ratio_vs_ort_fp32_baseline": REFERENCE}
# The per-artifact metrics of benchmark.json. No name ends in `_` + another, so a key splits one way only.
BENCHMARK_METRICS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_mad", "throughput_ips", *RATIOS)


def benchmark_key(artifact: str, metric: str) -> str:
    """The flat benchmark.json key of `artifact`'s `metric`."""
    assert metric in BENCHMARK_METRICS, metric
    return f"{artifact}_{metric}"


def flat_benchmark(settings: dict, results: dict[str, dict]) -> dict:
    """benchmark.json's content: the run's `settings`, then every artifact's metrics (artifact -> metric -> value)."""
    return {**settings, **{benchmark_key(artifact, metric): value
                           for artifact, metrics in results.items() for metric, value in metrics.items()}}


def split_benchmark(flat: dict) -> tuple[dict, dict[str, dict]]:
    """(the run's settings, artifact -> its metrics) from benchmark.json's content, artifacts in file order.

    A key that ends in no known metric is a setting of the run (e.g. `threads`)."""
    settings: dict = {}
    results: dict[str, dict] = {}
    for key, value in flat.items():
        metric = next((m for m in BENCHMARK_METRICS if key.endswith(f"_{m}") and len(key) > len(m) + 1), None)
        if metric is None:
            settings[key] = value
        else:
            results.setdefault(key[:-len(metric) - 1], {})[metric] = value
    return settings, results
