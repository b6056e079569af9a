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
from pathlib import Path

from lprnet.errors import MissingFileError


@dataclass(frozen=True)
class Artifact:
    label: str  # its row in the report
    path: str  # under models/, what the benchmark stage loads
    metrics: str  # the stage metrics file (without .json) that accuracy and size come from
    precision: str  # "fp32" or "int8": whose hardware peak (runtime/floor.py) its speed is a share of
    source: str  # under models/, the PyTorch fp32 model it computes: its MACs are the artifact's


BASELINE_MODEL, PRUNED_MODEL = "baseline.pt", "pruned.pt"

# Benchmark name -> artifact, in benchmark and report order. The int8 artifacts count the pruned model's MACs, the
# layers kept in float (quantize.float_fallback) included: their share of the int8 peak is that of the whole model.
ARTIFACTS = {
    "torch_fp32_baseline": Artifact("PyTorch fp32 baseline", BASELINE_MODEL, "baseline", "fp32", BASELINE_MODEL),
    "torch_fp32_pruned": Artifact("PyTorch fp32 pruned", PRUNED_MODEL, "prune", "fp32", PRUNED_MODEL),
    "torch_int8": Artifact("PyTorch int8", "quantized.pt", "quantize", "int8", PRUNED_MODEL),
    "ort_fp32": Artifact("ONNX Runtime fp32", "onnx/fp32.onnx", "onnx-fp32", "fp32", PRUNED_MODEL),
    "ort_int8": Artifact("ONNX Runtime int8", "onnx/int8.onnx", "onnx-int8", "int8", PRUNED_MODEL),
    **{f"tvm_{step}_{precision}": Artifact(f"TVM {step} {precision}", f"tvm/{step}/{precision}",
                                           f"tvm-{step}-{precision}", precision, PRUNED_MODEL)
       for step in ("import", "graph", "layout", "tune") for precision in ("fp32", "int8")},
}

BASELINE = "torch_fp32_baseline"
ORT_FP32 = "ort_fp32"
# ONNX Runtime fp32 on the unpruned baseline (export-onnx writes it), the reference the notebook study used: not one
# of ARTIFACTS, which are what the pipeline makes of the baseline, and it has no stage metrics. Timed after them.
REFERENCE = "ort_fp32_baseline"
REFERENCE_PATH = "onnx/baseline.onnx"  # under models/

REFERENCE_LABEL = "ONNX Runtime fp32 baseline"
REFERENCE_PRECISION, REFERENCE_SOURCE = "fp32", BASELINE_MODEL

BENCHMARK = "benchmark"  # metrics/benchmark.json, by its stem
SELECT = "select"  # metrics/select.json: the delivered model

# Each benchmarked artifact's p50 divided by that of: (ratio key -> artifact).
RATIOS = {"ratio_vs_baseline": BASELINE, "ratio_vs_ort_fp32": ORT_FP32, "ratio_vs_ort_fp32_baseline": REFERENCE}
# The per-artifact metrics of benchmark.json. No name ends in `_` + another, and no setting of the run (below) ends in
# `_` + one, so a key splits one way only. `macs`: multiply-accumulates of one batch-1 pass (its source model's);
# `achieved_gmacs`: those per second at the batch-1 p50, in G-MAC/s; `peak_share`: that over its precision's peak.
BENCHMARK_METRICS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_mad", "throughput_ips", *RATIOS, "macs",
                     "achieved_gmacs", "peak_share", "throughput_gmacs", "throughput_share_of_peak",
                     "throughput_ips_batch1_build")
# The hardware floor among the run's settings (runtime/floor.py), in G-MAC/s: `floor_<precision>_gmacs` at the
# benchmark's thread count, `floor_<precision>_gmacs_one_thread` on one.
FLOOR_KEYS = {precision: f"floor_{precision}_gmacs" for precision in ("fp32", "int8")}


def artifact_paths(models: Path) -> dict[str, Path]:
    """Every timed artifact's path under the folder `models`, by benchmark name: ARTIFACTS, then REFERENCE. Raises
    MissingFileError naming the first that does not exist."""
    paths = {**{name: Path(models, artifact.path) for name, artifact in ARTIFACTS.items()},
             REFERENCE: Path(models, REFERENCE_PATH)}
    missing = [path for path in paths.values() if not path.exists()]
    if missing:
        raise MissingFileError(f"{missing[0]}: artifact missing (run `dvc repro`)")
    return paths


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
