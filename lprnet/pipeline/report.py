"""The regenerated report: reports/report.md, its plots and the DVC plot data, from the metrics files.

The plots' data is written first, as reports/pareto.csv and reports/sizes.csv (`write_plot_data`), and the report's
PNGs are drawn from those files read back (`plot`), the files `dvc plots show` draws too (dvc.yaml's top-level
`plots`): the two cannot disagree.

Tables from metrics dicts (stage metrics files by stem, with benchmark.json's flat content under "benchmark"), the
comparison with the notebook study, each artifact against the hardware floor the benchmark measured, the speed
targets, and the changes since a git revision (by default HEAD, the
previous commit while the new results are not yet committed): metrics there are read by revision.py, as the
regression gate reads them, and a p50 latency change within the gate's timing noise is counted, not listed.
`write_report` is the `report` stage's work; it leads with the model the select stage delivered (metrics/select.json).
Does not measure anything (see the stages) and does not decide what the pipeline delivers (see select_step.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lprnet.csv_io import read_csv, write_csv_atomic
from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_path, write_text_atomic
from lprnet.pipeline.artifacts import (
    ARTIFACTS,
    BASELINE,
    BENCHMARK,
    FLOOR_KEYS,
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


# select.json's keys of ONNX Runtime fp32 on the baseline (artifacts.REFERENCE), which has no stage metrics of its own.
REFERENCE_KEYS = {"accuracy": "reference_accuracy", "size_bytes": "reference_size_bytes"}


def rows(metrics: dict[str, dict], timings: dict[str, dict]) -> list[dict]:
    """One row per artifact present in both the stage metrics and the benchmark's `timings` (artifact -> its
    metrics, see `benchmark_results`), and after the baseline's the reference's, ONNX Runtime fp32 on the baseline,
    when select.json has its test accuracy: every speed ratio is taken against it, and it belongs on the Pareto
    front it may dominate."""
    table = []
    for key, artifact in ARTIFACTS.items():
        if artifact.metrics in metrics and key in timings:
            stage = metrics[artifact.metrics]
            table.append({"artifact": artifact.label, "key": key, "accuracy": stage.get("accuracy"),
                          "size_bytes": stage.get("size_bytes"), **timings[key]})
        if key == BASELINE and REFERENCE in timings and REFERENCE_KEYS["accuracy"] in metrics.get(SELECT, {}):
            table.append({"artifact": REFERENCE_LABEL, "key": REFERENCE,
                          **{name: metrics[SELECT].get(stored) for name, stored in REFERENCE_KEYS.items()},
                          **timings[REFERENCE]})
    return table


def check_rows(table: list[dict], metrics_dir: Path) -> None:
    """Fail naming the file and key unless every row has the numbers the plots and tables compute with."""
    for row in table:
        for name in ("accuracy", "size_bytes", "latency_ms_p50"):
            value = row.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                if name.startswith("latency"):
                    stem, shown = BENCHMARK, benchmark_key(row["key"], name)
                elif row["key"] == REFERENCE:
                    stem, shown = SELECT, REFERENCE_KEYS[name]
                else:
                    stem, shown = ARTIFACTS[row["key"]].metrics, name
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


def _number(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def artifact_table(table: list[dict]) -> str:
    front = pareto_front({row["artifact"]: (row["latency_ms_p50"], row["accuracy"]) for row in table})
    lines = ["| artifact | accuracy | p50 (ms) | p90 (ms) | images/s | vs baseline | vs ORT fp32 | size (MB) "
             "| M MACs | G-MAC/s | of its peak | Pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['artifact']} | {_pct(row['accuracy'])} | {_ms(row['latency_ms_p50'])} | "
                     f"{_ms(row['latency_ms_p90'])} | {row['throughput_ips']:.0f} | {row['ratio_vs_baseline']:.2f} | "
                     f"{row['ratio_vs_ort_fp32']:.2f} | {_mb(row['size_bytes'])} | "
                     f"{_number(row.get('macs'), '.1f', 1e-6)} | {_number(row.get('achieved_gmacs'), '.1f')} | "
                     f"{_pct(row.get('peak_share'))} | {'yes' if row['artifact'] in front else ''} |")
    return "\n".join(lines)


def floor_section(settings: dict, timings: dict[str, dict]) -> str:
    """The hardware floor the benchmark measured, or why there is none (a benchmark.json written before it)."""
    peaks = {precision: settings.get(key) for precision, key in FLOOR_KEYS.items()}
    if any(value is None for value in peaks.values()):
        return "No hardware floor in `metrics/benchmark.json` (written before the benchmark measured one)."
    one_thread = settings.get(f"{FLOOR_KEYS['fp32']}_one_thread")
    threads = settings["threads"]
    scaling = f"{peaks['fp32'] / one_thread:.2f}x one thread's fp32 peak" if one_thread else "one thread not measured"
    if one_thread and peaks["fp32"] / one_thread < MIN_FLOOR_SCALING * threads:
        scaling += (f", well under {threads}x: other processes held cores while the floor ran, or the logical CPUs "
                    "share physical cores")
    reference = timings.get(REFERENCE, {})
    return (f"This CPU's peaks, measured by the benchmark stage at {threads} threads "
            "(`lprnet/runtime/floor.py`: register-only FMA and int8 multiply-add loops, `vpdpbusd` where the CPU has "
            "VNNI, the best of many 1 ms runs): "
            f"**fp32 {peaks['fp32']:.0f} G-MAC/s, int8 {peaks['int8']:.0f} G-MAC/s** ({scaling}). "
            "Each artifact's MACs are those of the PyTorch model it was made from "
            "(int8 artifacts: the pruned model's, the layers kept in float included), its G-MAC/s those MACs at its "
            "batch-1 p50, and its share is of its precision's peak. ONNX Runtime fp32 on the unpruned baseline: "
            f"{_number(reference.get('achieved_gmacs'), '.1f')} G-MAC/s, {_pct(reference.get('peak_share'))} of the "
            "fp32 peak. Which kernels of the delivered model take the time: `docs/speed.md`.")


def throughput_section(table: list[dict], settings: dict) -> str:
    """Each artifact's throughput at the benchmark's batch against its batch-1 rate (1 / p50) and its precision's
    peak; for a TVM artifact with a batched build, also its batch-1 build run over the same batch."""
    batch = settings.get("throughput_batch")
    if batch is None or any("throughput_share_of_peak" not in row for row in table):
        return "No throughput against the floor in `metrics/benchmark.json` (written before the benchmark measured it)."
    batched = any("throughput_ips_batch1_build" in row for row in table)
    lines = [f"| artifact | batch 1 (images/s, 1 / p50) | batch {batch} (images/s) | ratio | G-MAC/s | of its peak |"
             + (" batch-1 build over the batch (images/s) |" if batched else ""),
             "|---|---|---|---|---|---|" + ("---|" if batched else "")]
    for row in table:
        single = 1e3 / row["latency_ms_p50"]
        lines.append(f"| {row['artifact']} | {single:.0f} | {row['throughput_ips']:.0f} | "
                     f"{row['throughput_ips'] / single:.2f} | {row['throughput_gmacs']:.1f} | "
                     f"{_pct(row['throughput_share_of_peak'])} |"
                     + (f" {_number(row.get('throughput_ips_batch1_build'), '.0f')} |" if batched else ""))
    how = ("A tuned TVM artifact runs it on its batched build (`tune.batched_build`: the model built at batch "
           f"{batch}, each kernel scheduled by its batch-1 record, `lprnet/compile/tvm/batched.py`); the last column "
           "is its batch-1 build over the same images, measured in turns with it. The other TVM artifacts run the "
           "batch through their batch-1 build." if batched else
           "The TVM artifacts run the batch through their batch-1 build (`tune.batched_build` is off).")
    return (f"Images per second at batch {batch} (`bench.throughput_batch`; the median of its calls, timed in turns "
            "with the other artifacts'), against each artifact's batch-1 rate and, as G-MAC/s, against its "
            f"precision's peak. PyTorch and ONNX Runtime take the batch as it is. {how}\n\n" + "\n".join(lines))


# The targets, measured by the benchmark stage and checked on the model the select stage delivered.
MAX_TUNED_VS_ORT = 1.0  # tuned TVM fp32 p50 / ONNX Runtime fp32 p50, same model
MIN_TUNED_SPEEDUP = 20.0  # untuned tvm-import fp32 p50 / tuned TVM fp32 p50
MIN_DELIVERED_SPEEDUP = 3.0  # ONNX Runtime fp32 on the baseline / the delivered model, batch-1 p50
MAX_DELIVERED_TEST_DROP = 0.005  # baseline test accuracy - the delivered model's
MIN_TUNED_INT8_PEAK_SHARE = 0.5  # tuned TVM int8's MACs per second / the measured int8 peak
MIN_DELIVERED_THROUGHPUT_GAIN = 1.5  # the delivered model's images/s at the throughput batch / at batch 1
# A floor at N threads under this share of N x its one-thread peak did not get N cores: the report says so.
MIN_FLOOR_SCALING = 0.8


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
        ("tuned TVM int8, share of the measured int8 peak, %", f">= {100 * MIN_TUNED_INT8_PEAK_SHARE:g}",
         100 * by_key["tvm_tune_int8"]["peak_share"] if "peak_share" in by_key.get("tvm_tune_int8", {}) else None,
         lambda value: value >= 100 * MIN_TUNED_INT8_PEAK_SHARE),
        (f"the delivered model's images/s at the throughput batch / at batch 1{label}",
         f">= {MIN_DELIVERED_THROUGHPUT_GAIN:g}",
         timings[delivered["artifact"]]["throughput_ips"] * timings[delivered["artifact"]]["latency_ms_p50"] / 1e3
         if delivered.get("artifact") in timings else None,
         lambda value: value >= MIN_DELIVERED_THROUGHPUT_GAIN),
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
        f"`models/deploy` (DVC artifact `lprnet`): **{artifact_label(chosen['artifact'])}**, of the benchmark's "
        "artifacts whose validation accuracy (calib split) is within the budget, `budget.max_accuracy_drop` = "
        f"{100 * chosen['max_accuracy_drop']:g} point(s) of the baseline's, the most accurate on validation of those "
        f"as fast as the fastest (batch-1 p50 at most {100 * chosen.get('latency_tie', 0):g} % above it, "
        "`budget.latency_tie`). Its test accuracy is measured after the choice.", "",
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


def measured_on(settings: dict) -> str:
    """", on CPU" for the report's first paragraph: latencies from CPUs of other families are not comparable."""
    return f", on {settings['cpu']}" if settings.get("cpu") else ""


def document(metrics: dict[str, dict], changes_section: str) -> str:
    """reports/report.md from the workspace's metrics files and the section of changes."""
    settings, timings = benchmark_results(metrics)
    table = rows(metrics, timings)
    reference = timings.get(REFERENCE, {}).get("latency_ms_p50")
    return f"""# LPRNet optimisation report

Regenerated by `dvc repro report` from `metrics/*.json`; do not edit by hand. Latency: batch 1, in-memory input
(no image decoding), after warm-up, {settings['threads']} threads, {settings['runs']} interleaved samples per
artifact, all artifacts in one process (stage `benchmark`){measured_on(settings)}. Accuracy: exact plate match on the
test split.

## The delivered model

{delivered_section(metrics, timings)}

## Against the notebook study

The study's figures are as it reported them (its latency timed image decoding and Python decoding too).

{study_table(metrics, timings)}

## Every artifact, side by side

Ratios are of p50 latency: to the PyTorch fp32 baseline and to ONNX Runtime fp32 on the pruned model.
ONNX Runtime fp32 on the unpruned baseline, the reference of the speed targets: {_ms(reference)} ms.

{artifact_table(table)}

## Against the hardware floor

{floor_section(settings, timings)}

### Throughput

{throughput_section(table, settings)}

## Targets

From this benchmark, batch 1 unless said; the delivered model's test accuracy from the select stage.

{targets_table(target_rows(table, metrics, timings))}

![accuracy vs latency](pareto.png)

![sizes](sizes.png)

## Changes since the previous commit

{changes_section}
"""


# reports/pareto.csv: every row of `rows` (ONNX Runtime on the baseline included), and the delivered model if it is
# not one (a select.json written before the reference's keys); `pareto` and `delivered` are 1 or 0.
# reports/sizes.csv: every row of `rows`.
PARETO_COLUMNS = ("artifact", "latency_ms_p50", "accuracy", "pareto", "delivered")
SIZE_COLUMNS = ("artifact", "size_mb")
PLOT_DIGITS = 4  # decimals of the plot data: readable files, small diffs
LABEL_STEP_POINTS = 10  # the PNG scatter's labels of equally accurate points, stacked this far apart


def pareto_rows(table: list[dict], delivered: dict | None) -> list[dict]:
    """The rows of reports/pareto.csv (PARETO_COLUMNS) from `rows`' table and metrics/select.json (`delivered`)."""
    label = artifact_label(delivered["artifact"]) if delivered else None
    points = [{"artifact": row["artifact"], "latency_ms_p50": row["latency_ms_p50"], "accuracy": row["accuracy"]}
              for row in table]
    if delivered and all(point["artifact"] != label for point in points):
        points.append({"artifact": label, "latency_ms_p50": delivered["latency_ms_p50"],
                       "accuracy": delivered["accuracy"]})
    front = pareto_front({point["artifact"]: (point["latency_ms_p50"], point["accuracy"]) for point in points})
    return [{**point, "pareto": int(point["artifact"] in front), "delivered": int(point["artifact"] == label)}
            for point in points]


def write_plot_data(table: list[dict], delivered: dict | None, pareto_csv: str | os.PathLike,
                    sizes_csv: str | os.PathLike) -> None:
    """reports/pareto.csv and reports/sizes.csv: what the report's PNGs and `dvc plots show` both draw."""
    write_csv_atomic(pareto_csv, PARETO_COLUMNS, pareto_rows(table, delivered), digits=PLOT_DIGITS)
    write_csv_atomic(sizes_csv, SIZE_COLUMNS, [[row["artifact"], row["size_bytes"] / 1e6] for row in table],
                     digits=PLOT_DIGITS)


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
    write_plot_data(table, files.get(SELECT), pareto_csv, sizes_csv)
    with atomic_path(out / "pareto.png") as pareto_png, atomic_path(out / "sizes.png") as sizes_png:
        plot(pareto_csv, sizes_csv, pareto_png, sizes_png)
    write_text_atomic(out / "report.md", text)


def plot(pareto_csv: str | os.PathLike, sizes_csv: str | os.PathLike, path_pareto, path_sizes) -> None:
    """The report's PNGs from the plot data files (`write_plot_data`): the accuracy-latency scatter (Pareto front in
    red, the delivered model starred) and the sizes' bars, titled and labelled as dvc.yaml's plots of the same
    files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = [{"artifact": row["artifact"], "latency_ms_p50": float(row["latency_ms_p50"]),
               "accuracy": float(row["accuracy"]), "pareto": row["pareto"] == "1", "delivered": row["delivered"] == "1"}
              for row in read_csv(pareto_csv, PARETO_COLUMNS)]
    figure, axes = plt.subplots(figsize=(8, 5))
    # Labels of points with the same accuracy (every fp32 artifact of one model scores the same) are stacked upwards
    # in latency order, each joined to its point, as in dvc.yaml's plot of the same file.
    same_accuracy_before: dict[float, int] = {}
    for point in sorted(points, key=lambda point: point["latency_ms_p50"]):
        axes.scatter(point["latency_ms_p50"], 100 * point["accuracy"],
                     color="tab:red" if point["pareto"] else "tab:blue", zorder=3)
        level = same_accuracy_before.get(point["accuracy"], 0)
        same_accuracy_before[point["accuracy"]] = level + 1
        axes.annotate(point["artifact"], (point["latency_ms_p50"], 100 * point["accuracy"]), fontsize=7,
                      xytext=(4, 2 + LABEL_STEP_POINTS * level), textcoords="offset points",
                      arrowprops={"arrowstyle": "-", "linewidth": 0.4, "alpha": 0.5} if level else None)
    front = sorted((point for point in points if point["pareto"]), key=lambda point: point["latency_ms_p50"])
    # A staircase, as in dvc.yaml's plot: the best accuracy to be had within each latency.
    axes.plot([point["latency_ms_p50"] for point in front], [100 * point["accuracy"] for point in front],
              color="tab:red", drawstyle="steps-post", label="Pareto front")
    for point in points:
        if point["delivered"]:
            axes.scatter(point["latency_ms_p50"], 100 * point["accuracy"], marker="*", s=260, color="tab:green",
                         zorder=4, label=f"delivered: {point['artifact']}")
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    # Within a decade matplotlib labels every minor tick in scientific notation, and they overlap: 2x and 5x only.
    axes.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x:g}" if x > 0 and round(x / 10 ** math.floor(math.log10(x))) in (2, 5) else ""))
    axes.margins(y=0.35)  # headroom for the labels stacked above the top row, which would cross the title
    axes.set_title("Test plate accuracy vs batch-1 latency")
    axes.set_xlabel("batch-1 latency p50 (ms, log scale)")
    axes.set_ylabel("plate accuracy, test split (%)")
    axes.legend()
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path_pareto, dpi=120, format="png")
    plt.close(figure)

    sizes = read_csv(sizes_csv, SIZE_COLUMNS)
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.barh([row["artifact"] for row in sizes], [float(row["size_mb"]) for row in sizes])
    axes.set_title("Artifact size on disk")
    axes.set_xlabel("size (MB)")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path_sizes, dpi=120, format="png")
    plt.close(figure)
