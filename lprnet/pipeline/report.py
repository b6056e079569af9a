"""The regenerated report: reports/report.md, its plots and the DVC plot data, from the metrics files.

Tables from metrics dicts (stage metrics files by stem, with benchmark.json's flat content under "benchmark"), the
comparison with the notebook study, the speed targets, and the changes since a git revision (by default HEAD, the
previous commit while the new results are not yet committed): metrics there are read by revision.py, as the
regression gate reads them, and a p50 latency change within the gate's timing noise is counted, not listed.
`write_report` is the `report` stage's work; it leads with the model the select stage delivered (metrics/select.json).
Does not measure anything (see the stages) and does not decide what the pipeline delivers (see select_step.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lprnet.csv_io import write_csv_atomic
from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_path, write_text_atomic
from lprnet.pipeline.artifacts import (
    ARTIFACTS,
    BASELINE,
    BENCHMARK,
    REFERENCE,
    REFERENCE_LABEL,
    SELECT,
    benchmark_key,
    split_benchmark,
)
from lprnet.pipeline.gate import GateParams, latency_allowance_ms
from lprnet.pipeline.revision import Metrics, RevisionError, comparable, metrics_at, read_metrics

# Figures the notebook study reported (not measured here): the rows our results are compared with.
STUDY = {
    "baseline": {"accuracy": 0.899, "latency_ms": 203.9, "onnx_mb": 1.707},
    "pruned": {"accuracy": 0.899, "latency_ms": 203.9, "onnx_mb": 1.707},
    "int8": {"accuracy": 0.723, "latency_ms": None, "onnx_mb": None},
}


def benchmark_results(metrics: dict[str, dict], where: str | os.PathLike = f"{BENCHMARK}.json"
                      ) -> tuple[dict, dict[str, dict]]:
    """(the benchmark run's settings, artifact -> its timings) from `metrics["benchmark"]`, the file `where`."""
    if BENCHMARK not in metrics:
        raise MissingFileError(f"{where}: missing (run `dvc repro benchmark`)")
    if comparable({BENCHMARK: metrics[BENCHMARK]}).not_flat:
        raise InputError(f"{where}: not flat, written before its keys were (run `dvc repro benchmark`)")
    return split_benchmark(metrics[BENCHMARK])


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


def rows(metrics: dict[str, dict], timings: dict[str, dict]) -> list[dict]:
    """One row per artifact present in both the stage metrics and the benchmark's `timings` (artifact -> its
    metrics, see `benchmark_results`)."""
    table = []
    for key, artifact in ARTIFACTS.items():
        if artifact.metrics in metrics and key in timings:
            stage = metrics[artifact.metrics]
            table.append({"artifact": artifact.label, "key": key, "accuracy": stage.get("accuracy"),
                          "size_bytes": stage.get("size_bytes"), **timings[key]})
    return table


def check_rows(table: list[dict], metrics_dir: Path) -> None:
    """Fail naming the file and key unless every row has the numbers the plots and tables compute with."""
    for row in table:
        for name in ("accuracy", "size_bytes", "latency_ms_p50"):
            value = row.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                stem = BENCHMARK if name.startswith("latency") else ARTIFACTS[row["key"]].metrics
                shown = benchmark_key(row["key"], name) if stem == BENCHMARK else name
                raise InputError(f"{metrics_dir / stem}.json: {shown} is {value!r}, not a finite number")


def study_table(metrics: dict[str, dict], timings: dict[str, dict]) -> str:
    onnx_size = metrics.get("onnx-fp32", {}).get("size_bytes")
    int8_onnx_size = metrics.get("onnx-int8", {}).get("size_bytes")
    ours = {
        "baseline": (metrics.get("baseline", {}).get("accuracy"), timings.get("torch_fp32_baseline", {}),
                     None, metrics.get("baseline", {}).get("size_bytes")),
        "pruned": (metrics.get("prune", {}).get("accuracy"), timings.get("torch_fp32_pruned", {}), onnx_size,
                   metrics.get("prune", {}).get("size_bytes")),
        "int8": (metrics.get("quantize", {}).get("accuracy"), timings.get("torch_int8", {}), int8_onnx_size,
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


# The targets, measured by the benchmark stage and checked on the model the select stage delivered.
MAX_TUNED_VS_ORT = 1.0  # tuned TVM fp32 p50 / ONNX Runtime fp32 p50, same model
MIN_TUNED_SPEEDUP = 20.0  # untuned tvm-import fp32 p50 / tuned TVM fp32 p50
MIN_DELIVERED_SPEEDUP = 3.0  # ONNX Runtime fp32 on the baseline / the delivered model, batch-1 p50
MAX_DELIVERED_TEST_DROP = 0.005  # baseline test accuracy - the delivered model's


def target_rows(table: list[dict], metrics: dict[str, dict], timings: dict[str, dict]) -> list[dict]:
    """The targets, each with its measured value and whether it holds (None where an input is missing)."""
    by_key = {row["key"]: row for row in table}
    tuned, untuned = by_key.get("tvm_tune_fp32"), by_key.get("tvm_import_fp32")
    delivered = metrics.get(SELECT, {})
    label = f" ({artifact_label(delivered['artifact'])})" if "artifact" in delivered else ""
    targets = [
        ("tuned TVM fp32 / ONNX Runtime fp32, same model", f"<= {MAX_TUNED_VS_ORT:g}",
         tuned["ratio_vs_ort_fp32"] if tuned else None, lambda value: value <= MAX_TUNED_VS_ORT),
        ("untuned TVM (import) fp32 / tuned TVM fp32", f">= {MIN_TUNED_SPEEDUP:g}",
         untuned["latency_ms_p50"] / tuned["latency_ms_p50"] if tuned and untuned else None,
         lambda value: value >= MIN_TUNED_SPEEDUP),
        (f"ONNX Runtime fp32 baseline / the delivered model{label}", f">= {MIN_DELIVERED_SPEEDUP:g}",
         1 / delivered["ratio_vs_ort_fp32_baseline"] if "ratio_vs_ort_fp32_baseline" in delivered else None,
         lambda value: value >= MIN_DELIVERED_SPEEDUP),
        (f"test accuracy the delivered model loses against the baseline, points{label}",
         f"<= {100 * MAX_DELIVERED_TEST_DROP:g}",
         100 * delivered["accuracy_drop"] if "accuracy_drop" in delivered else None,
         lambda value: value <= 100 * MAX_DELIVERED_TEST_DROP + 1e-9),
    ]
    return [{"target": what, "goal": goal, "value": value, "met": None if value is None else bool(holds(value))}
            for what, goal, value, holds in targets]


def artifact_label(name: str) -> str:
    return ARTIFACTS[name].label if name in ARTIFACTS else REFERENCE_LABEL if name == REFERENCE else name


def delivered_section(metrics: dict[str, dict], timings: dict[str, dict]) -> str:
    """The report's first section: the model `select` delivered, why, and how it compares with the baseline."""
    if SELECT not in metrics:
        return "No model delivered yet (run `dvc repro select`)."
    chosen = metrics[SELECT]
    baseline_ms = timings.get(BASELINE, {}).get("latency_ms_p50")
    reference_ms = timings.get(REFERENCE, {}).get("latency_ms_p50")
    lines = [
        f"`models/deploy` (DVC artifact `lprnet`): **{artifact_label(chosen['artifact'])}**, the fastest artifact of "
        "the benchmark whose validation accuracy (calib split) is within the budget, `budget.max_accuracy_drop` = "
        f"{100 * chosen['max_accuracy_drop']:g} point(s) of the baseline's. Its test accuracy is measured after the "
        "choice.", "",
        "| | delivered | baseline | change |", "|---|---|---|---|",
        f"| test accuracy | {_pct(chosen['accuracy'])} | {_pct(chosen['baseline_accuracy'])} | "
        f"{100 * (chosen['accuracy'] - chosen['baseline_accuracy']):+.1f} points |",
        f"| validation accuracy | {_pct(chosen['val_accuracy'])} | {_pct(chosen['baseline_val_accuracy'])} | "
        f"{100 * (chosen['val_accuracy'] - chosen['baseline_val_accuracy']):+.1f} points |",
        f"| batch-1 p50 (ms) | {_ms(chosen['latency_ms_p50'])} | {_ms(baseline_ms)} (PyTorch), {_ms(reference_ms)} "
        f"(ONNX Runtime) | {1 / chosen['ratio_vs_baseline']:.1f}x, {1 / chosen['ratio_vs_ort_fp32_baseline']:.1f}x "
        "faster |",
        f"| size (MB) | {_mb(chosen['size_bytes'])} | {_mb(metrics.get('baseline', {}).get('size_bytes'))} | |", "",
        "Each candidate the selection scored, fastest first, and its verdict: `reports/select.csv`."]
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | goal | measured | met |", "|---|---|---|---|"]
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        met = {None: "-", True: "yes", False: "no"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {value} | {met} |")
    return "\n".join(lines)


def delta_table(current: dict[str, dict], previous: dict[str, dict], noise: GateParams | None = None,
                keys=("accuracy", "latency_ms_p50", "size_bytes")) -> str:
    """The `keys` that differ between two sets of comparison rows (`revision.Metrics.rows`), one table row each.
    With `noise`, a p50 latency change within the regression gate's timing noise (either direction) is left out and
    counted under the table: a re-run moves every timing a little."""
    lines = ["| metrics | key | previous | now | change |", "|---|---|---|---|---|"]
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


def changes(current: Metrics, previous: Metrics, noise: GateParams) -> str:
    """The report's section of changes: `delta_table`, and a note on each file that is not flat on either side
    (benchmark.json as written before its keys were flat), whose rows are not comparable and not listed."""
    text = delta_table(current.rows, previous.rows, noise)
    for side, stems in (("previous commit", previous.not_flat), ("workspace", current.not_flat)):
        for stem in stems:
            text += (f"\n\n`{stem}.json` in the {side} is not flat (the format before flat metrics): its values are "
                     "not comparable and not listed.")
    return text


def document(metrics: dict[str, dict], changes_section: str) -> str:
    """reports/report.md from the workspace's metrics files and the section of changes."""
    settings, timings = benchmark_results(metrics)
    table = rows(metrics, timings)
    reference = timings.get(REFERENCE, {}).get("latency_ms_p50")
    return f"""# LPRNet optimisation report

Regenerated by `dvc repro report` from `metrics/*.json`; do not edit by hand. Latency: batch 1, in-memory input
(no image decoding), after warm-up, {settings['threads']} threads, {settings['runs']} interleaved samples per
artifact, all artifacts in one process (stage `benchmark`). Accuracy: exact plate match on the test split.

## The delivered model

{delivered_section(metrics, timings)}

## Against the notebook study

The study's figures are as it reported them (its latency timed image decoding and Python decoding too).

{study_table(metrics, timings)}

## Every artifact, side by side

Ratios are of p50 latency: to the PyTorch fp32 baseline and to ONNX Runtime fp32 on the same (pruned) model.
ONNX Runtime fp32 on the unpruned baseline: {_ms(reference)} ms.

{artifact_table(table)}

## Targets

Batch 1, from this benchmark; the delivered model's test accuracy from the select stage.

{targets_table(target_rows(table, metrics, timings))}

![accuracy vs latency](pareto.png)

![sizes](sizes.png)

## Changes since the previous commit

{changes_section}
"""


def write_report(metrics_dir: str | os.PathLike, out: str | os.PathLike, pareto_csv: str | os.PathLike,
                 sizes_csv: str | os.PathLike, noise: GateParams, against: str = "HEAD") -> None:
    """The `report` stage: `out`/report.md, `out`/pareto.png and `out`/sizes.png, and the plots' data as
    `pareto_csv` and `sizes_csv`, from the metrics files in `metrics_dir`, with the changes since `against`.
    Without a readable `against` (no git repository, no commit yet) the section of changes says so."""
    files = read_metrics(metrics_dir)
    table = rows(files, benchmark_results(files, Path(metrics_dir) / f"{BENCHMARK}.json")[1])
    check_rows(table, Path(metrics_dir))
    try:
        previous = metrics_at(metrics_dir, against)
    except RevisionError as error:
        changes_section = f"No committed metrics to compare with ({error})."
    else:
        changes_section = (changes(comparable(files), previous, noise)
                           if previous.rows or previous.not_flat else "No committed metrics to compare with.")
    text = document(files, changes_section)  # every metric read and checked before anything is written
    out = Path(out)
    with atomic_path(out / "pareto.png") as pareto_png, atomic_path(out / "sizes.png") as sizes_png:
        plot(table, pareto_png, sizes_png, files.get(SELECT))
    front = pareto_front({row["artifact"]: (row["latency_ms_p50"], row["accuracy"]) for row in table})
    write_csv_atomic(pareto_csv, ["artifact", "latency_ms_p50", "accuracy", "pareto"],
                     [[row["artifact"], row["latency_ms_p50"], row["accuracy"], int(row["artifact"] in front)]
                      for row in table], digits=4)
    write_csv_atomic(sizes_csv, ["artifact", "size_mb"], [[row["artifact"], row["size_bytes"] / 1e6] for row in table],
                     digits=4)
    write_text_atomic(out / "report.md", text)


def plot(table: list[dict], path_pareto, path_sizes, delivered: dict | None = None) -> None:
    """The accuracy-latency scatter (Pareto front in red, the delivered model starred) and the sizes' bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = artifact_label(delivered["artifact"]) if delivered else None
    points = list(table)
    if delivered and all(row["artifact"] != label for row in table):  # ONNX Runtime on the baseline has no row
        points.append({"artifact": label, "latency_ms_p50": delivered["latency_ms_p50"],
                       "accuracy": delivered["accuracy"]})
    front = pareto_front({row["artifact"]: (row["latency_ms_p50"], row["accuracy"]) for row in points})
    figure, axes = plt.subplots(figsize=(8, 5))
    for row in points:
        on_front = row["artifact"] in front
        axes.scatter(row["latency_ms_p50"], 100 * row["accuracy"], color="tab:red" if on_front else "tab:blue",
                     zorder=3)
        axes.annotate(row["artifact"], (row["latency_ms_p50"], 100 * row["accuracy"]), fontsize=7,
                      xytext=(4, 2), textcoords="offset points")
    front_rows = sorted((r for r in points if r["artifact"] in front), key=lambda r: r["latency_ms_p50"])
    axes.plot([r["latency_ms_p50"] for r in front_rows], [100 * r["accuracy"] for r in front_rows],
              color="tab:red", label="Pareto front")
    if delivered:
        axes.scatter(delivered["latency_ms_p50"], 100 * delivered["accuracy"], marker="*", s=260, color="tab:green",
                     zorder=4, label=f"delivered: {label}")
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
