"""The regenerated report: tables and plots from the metrics files, compared with the notebook study.

Pure functions from metrics dicts to Markdown and figures; no measuring (see the stages) and no file layout beyond
`ARTIFACTS`, the list of deployable artifacts the benchmark stage also reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lprnet.pipeline.gate import GateParams, latency_allowance_ms

# Figures the notebook study reported (not measured here): the rows our results are compared with.
STUDY = {
    "baseline": {"accuracy": 0.899, "latency_ms": 203.9, "onnx_mb": 1.707},
    "pruned": {"accuracy": 0.899, "latency_ms": 203.9, "onnx_mb": 1.707},
    "int8": {"accuracy": 0.723, "latency_ms": None, "onnx_mb": None},
}



@dataclass(frozen=True)
class Artifact:
    label: str  # its row in the report
    path: str  # under models/, what the benchmark stage loads
    metrics: str  # the stage metrics file (without .json) that accuracy and size come from


# Benchmark key -> artifact, in benchmark and report order: the one list of what the pipeline deploys.
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


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (latency, accuracy) no other point beats on both (lower latency, higher accuracy)."""
    return {name for name, (latency, accuracy) in points.items()
            if not any(other_latency <= latency and other_accuracy >= accuracy
                       and (other_latency, other_accuracy) != (latency, accuracy)
                       for other_latency, other_accuracy in points.values())}


def rows(metrics: dict[str, dict], benchmark: dict) -> list[dict]:
    """One row per artifact present in both the stage metrics and the benchmark."""
    table = []
    for key, artifact in ARTIFACTS.items():
        if artifact.metrics in metrics and key in benchmark:
            stage = metrics[artifact.metrics]
            table.append({"artifact": artifact.label, "key": key, "accuracy": stage.get("accuracy"),
                          "size_bytes": stage.get("size_bytes"), **benchmark[key]})
    return table


def study_table(metrics: dict[str, dict], benchmark: dict) -> str:
    onnx_size = metrics.get("onnx-fp32", {}).get("size_bytes")
    int8_onnx_size = metrics.get("onnx-int8", {}).get("size_bytes")
    ours = {
        "baseline": (metrics.get("baseline", {}).get("accuracy"), benchmark.get("torch_fp32_baseline", {}),
                     None, metrics.get("baseline", {}).get("size_bytes")),
        "pruned": (metrics.get("prune", {}).get("accuracy"), benchmark.get("torch_fp32_pruned", {}), onnx_size,
                   metrics.get("prune", {}).get("size_bytes")),
        "int8": (metrics.get("quantize", {}).get("accuracy"), benchmark.get("torch_int8", {}), int8_onnx_size,
                 metrics.get("quantize", {}).get("size_bytes")),
    }
    lines = ["| model | study accuracy | ours | study latency (ms) | ours p50 (ms, batch 1, no I/O) | study ONNX (MB) "
             "| ours ONNX (MB) | ours PyTorch file (MB) |", "|---|---|---|---|---|---|---|---|"]
    for name, study in STUDY.items():
        accuracy, speed, onnx_bytes, torch_bytes = ours[name]
        lines.append(f"| {name} | {_pct(study['accuracy'])} | {_pct(accuracy)} | {_ms(study['latency_ms'])} | "
                     f"{_ms(speed.get('latency_ms_p50'))} | {'-' if study['onnx_mb'] is None else study['onnx_mb']} "
                     f"| {_mb(onnx_bytes)} | {_mb(torch_bytes)} |")
    return "\n".join(lines)


def artifact_table(table: list[dict]) -> str:
    front = pareto_front({row["artifact"]: (row["latency_ms_p50"], row["accuracy"]) for row in table})
    lines = ["| artifact | accuracy | p50 (ms) | p90 (ms) | images/s | vs baseline | vs ORT fp32 | size (MB) "
             "| Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['artifact']} | {_pct(row['accuracy'])} | {_ms(row['latency_ms_p50'])} | "
                     f"{_ms(row['latency_ms_p90'])} | {row['throughput_ips']:.0f} | {row['ratio_vs_baseline']:.2f} | "
                     f"{row['ratio_vs_ort_fp32']:.2f} | {_mb(row['size_bytes'])} | "
                     f"{'yes' if row['artifact'] in front else ''} |")
    return "\n".join(lines)


# The speed issue's targets, measured by the benchmark stage: (what, target, at most or at least).
MAX_TUNED_VS_ORT = 1.0  # tuned TVM fp32 p50 / ONNX Runtime fp32 p50, same model
MIN_TUNED_SPEEDUP = 20.0  # untuned tvm-import fp32 p50 / tuned TVM fp32 p50
MIN_FAST_SPEEDUP = 3.0  # ONNX Runtime fp32 on the baseline / the fastest artifact within ACCURACY_BAND of the baseline
ACCURACY_BAND = 0.01


def target_rows(table: list[dict], metrics: dict[str, dict], benchmark: dict) -> list[dict]:
    """The speed targets, each with its measured value and whether it holds (None where an input is missing)."""
    by_key = {row["key"]: row for row in table}
    tuned, untuned = by_key.get("tvm_tune_fp32"), by_key.get("tvm_import_fp32")
    reference = benchmark.get("ort_fp32_baseline", {}).get("latency_ms_p50")
    baseline_accuracy = metrics.get("baseline", {}).get("accuracy")
    candidates = [(row["latency_ms_p50"], row["artifact"]) for row in table
                  if None not in (row["accuracy"], baseline_accuracy)
                  and row["accuracy"] >= baseline_accuracy - ACCURACY_BAND - 1e-9]
    if reference is not None and baseline_accuracy is not None:
        candidates.append((reference, "ONNX Runtime fp32 baseline"))  # the baseline model itself qualifies
    fastest = min(candidates) if candidates else None
    targets = [
        ("tuned TVM fp32 / ONNX Runtime fp32, same model", f"<= {MAX_TUNED_VS_ORT:g}",
         tuned["ratio_vs_ort_fp32"] if tuned else None, lambda value: value <= MAX_TUNED_VS_ORT),
        ("untuned TVM (import) fp32 / tuned TVM fp32", f">= {MIN_TUNED_SPEEDUP:g}",
         untuned["latency_ms_p50"] / tuned["latency_ms_p50"] if tuned and untuned else None,
         lambda value: value >= MIN_TUNED_SPEEDUP),
        (f"ONNX Runtime fp32 baseline / fastest within {100 * ACCURACY_BAND:g} point of the baseline"
         + (f" ({fastest[1]})" if fastest else ""), f">= {MIN_FAST_SPEEDUP:g}",
         reference / fastest[0] if fastest and reference else None, lambda value: value >= MIN_FAST_SPEEDUP),
    ]
    return [{"target": what, "goal": goal, "value": value, "met": None if value is None else bool(holds(value))}
            for what, goal, value, holds in targets]


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        met = {None: "-", True: "yes", False: "no"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {value} | {met} |")
    return "\n".join(lines)


def with_benchmark_entries(metrics: dict[str, dict]) -> dict[str, dict]:
    """`metrics` (metrics file name -> its dict) with benchmark.json's per-artifact results as entries of their own
    ("benchmark: ort_fp32"), so that `delta_table` compares the benchmark's timings too."""
    flat = {name: values for name, values in metrics.items() if name != "benchmark"}
    for key, values in metrics.get("benchmark", {}).items():
        if isinstance(values, dict):  # else a setting of the run, e.g. its thread count
            flat[f"benchmark: {key}"] = values
    return flat


def delta_table(current: dict[str, dict], previous: dict[str, dict], noise: GateParams | None = None,
                keys=("accuracy", "latency_ms_p50", "size_bytes")) -> str:
    """The `keys` that differ between two sets of metrics (see `with_benchmark_entries`), one row each. With `noise`,
    a p50 latency change within the regression gate's timing noise (either direction) is left out and counted
    under the table: a re-run moves every timing a little."""
    lines = ["| metrics file | key | previous | now | change |", "|---|---|---|---|---|"]
    within_noise = 0
    for name in sorted(current):
        for key in keys:
            now, before = current[name].get(key), previous.get(name, {}).get(key)
            if isinstance(now, (int, float)) and isinstance(before, (int, float)) and now != before:
                if (noise is not None and key == "latency_ms_p50" and before > 0
                        and abs(now - before) <= latency_allowance_ms(previous[name], current[name], noise)[1]):
                    within_noise += 1
                    continue
                change = (now - before) / before if before else math.inf
                lines.append(f"| {name} | {key} | {before:.4g} | {now:.4g} | {change:+.1%} |")
    if len(lines) == 2:
        return ("No metric changed beyond the timing noise since the previous commit." if within_noise
                else "No metric changed since the previous commit.")
    table = "\n".join(lines)
    if within_noise:
        table += (f"\n\n{within_noise} p50 latency change(s) within the timing noise are not shown "
                  f"(the regression gate's rule: at most {noise.latency_noise_factor:g} combined noise sigmas or "
                  f"{noise.min_latency_slowdown:.0%} of the previous p50).")
    return table


def plot(table: list[dict], path_pareto, path_sizes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front({row["artifact"]: (row["latency_ms_p50"], row["accuracy"]) for row in table})
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in table:
        on_front = row["artifact"] in front
        axes.scatter(row["latency_ms_p50"], 100 * row["accuracy"], color="tab:red" if on_front else "tab:blue",
                     zorder=3)
        axes.annotate(row["artifact"], (row["latency_ms_p50"], 100 * row["accuracy"]), fontsize=7,
                      xytext=(4, 2), textcoords="offset points")
    front_rows = sorted((r for r in table if r["artifact"] in front), key=lambda r: r["latency_ms_p50"])
    axes.plot([r["latency_ms_p50"] for r in front_rows], [100 * r["accuracy"] for r in front_rows],
              color="tab:red", label="Pareto front")
    axes.set_xscale("log")
    axes.set_xlabel("batch-1 latency p50, ms (log)")
    axes.set_ylabel("plate accuracy, %")
    axes.legend()
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path_pareto, dpi=120, format="png")
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 4))
    axes.barh([r["artifact"] for r in table], [r["size_bytes"] / 1e6 for r in table])
    axes.set_xlabel("artifact size, MB")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path_sizes, dpi=120, format="png")
    plt.close(figure)
