"""Tuned TVM latency against the MetaSchedule budget: which budget reaches a latency target.

One long `tune` run of a layout-passed module, then, for each checkpoint N, the model built from the first
N trials its database recorded, all timed interleaved in one process (bench.interleaved_latency) with ONNX Runtime
on the same model and the untuned TVM build. A prefix of one long run stands for a shorter run with the same batch
size (totals of at least tasks x per-iteration trials): the task scheduler spends the first trials the same way
whatever the total, except that a shorter total caps each task earlier.

Not a DVC stage: the budgets that matter take far longer than the pipeline's default tuning. Run by hand
(`python -m lprnet tune-budget`). The database folder is kept: a second run with the same settings only rebuilds and
re-times the checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lprnet.compile.tvm.artifact import save_artifact
from lprnet.compile.tvm.build import build
from lprnet.compile.tvm.database import RECORD_FILE, WORKLOAD_FILE, module_records
from lprnet.compile.tvm.frontend import load_ir, module_alphabet_name, module_input_shape
from lprnet.compile.tvm.tune import DEFAULT_POPULATION, apply_database, tune, tuning_module, tuning_target
from lprnet.csv_io import write_csv_atomic
from lprnet.errors import InputError
from lprnet.io import atomic_path
from lprnet.runtime.bench import BenchConfig, interleaved_latency
from lprnet.runtime.predictor import load_predictor
from lprnet.runtime.tvm_runtime import TVMPredictor


def truncate_database(source: str | os.PathLike, destination: str | os.PathLike, trials: int) -> None:
    """Copy the database in `source` to `destination` with only its first `trials` records (all its workloads)."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / WORKLOAD_FILE, destination / WORKLOAD_FILE)
    lines = (source / RECORD_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (destination / RECORD_FILE).write_text("".join(lines[:trials]), encoding="utf-8")


def seconds_at(timeline: Sequence[tuple[int, float]], trials: int, earlier: int = 0) -> float | None:
    """Tuning seconds until the batch holding the database's trial `trials` was built, for a run whose `timeline`
    (see TuningRun) started after `earlier` recorded trials: None if that trial is not one of this run's, since the
    time of an earlier, interrupted run is not known."""
    if trials <= earlier:
        return None
    return next((seconds for built, seconds in timeline if earlier + built >= trials), None)


def budget_study(layout_ir: str | os.PathLike, onnx_model: str | os.PathLike, untuned: str | os.PathLike,
                 work_dir: str | os.PathLike, total_trials: int, trials_per_task: int, trials_per_iteration: int,
                 checkpoints: Sequence[int], target: dict, bench: BenchConfig,
                 population: int = DEFAULT_POPULATION, seed: int = 0,
                 weight_layout_rewrite: bool = False) -> pd.DataFrame:
    """Tune `layout_ir` (a tvm-layout-passes module) into `work_dir`, then time the build of each checkpoint's trials.

    One row per checkpoint: trials, tuning minutes to get there (this run's, when it tuned that far), the tuned
    build's p50/p90 ms, ONNX Runtime's (`onnx_model`) and the untuned build's (`untuned`, a TVM artifact folder) p50
    from the same interleaved measurement, and the two ratios. Checkpoints before the end of the first round
    (tasks x per-iteration trials) leave the kernels not reached yet untuned."""
    checkpoints = sorted(set(checkpoints))
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > total_trials:
        raise InputError(f"checkpoints {checkpoints}: expected trial counts in 1..{total_trials} (--trials)")
    mod = tuning_module(load_ir(layout_ir), weight_layout_rewrite)
    target = tuning_target(target, bench.threads)
    run = tune(mod, target, work_dir, total_trials, trials_per_task,
                        trials_per_iteration=trials_per_iteration, population=population, seed=seed,
                        threads=bench.threads)
    recorded = len(module_records(work_dir, mod, target))
    if recorded < checkpoints[-1]:
        raise InputError(f"{work_dir}: {recorded} trials recorded, fewer than checkpoint {checkpoints[-1]}")
    predictors = {"ort_fp32": load_predictor(onnx_model, bench.threads),
                  "tvm_untuned": load_predictor(untuned, bench.threads)}
    with tempfile.TemporaryDirectory(prefix="tune-budget.") as scratch:
        for trials in checkpoints:
            database = Path(scratch) / f"database-{trials}"
            truncate_database(work_dir, database, trials)
            tuned = apply_database(mod, target, database)
            folder = Path(scratch) / f"tuned-{trials}"
            save_artifact(folder, build(tuned, target), tuned, target,
                                      module_input_shape(mod), module_alphabet_name(mod))
            predictors[trials] = TVMPredictor(folder, bench.threads)
        latency = interleaved_latency(predictors, bench)
    reference, untuned_ms = latency["ort_fp32"]["latency_ms_p50"], latency["tvm_untuned"]["latency_ms_p50"]
    rows = []
    for trials in checkpoints:
        seconds = seconds_at(run.timeline, trials, earlier=recorded - run.trials) if run.trials else None
        tuned_ms = latency[trials]["latency_ms_p50"]
        rows.append({"trials": trials, "tuning_minutes": None if seconds is None else round(seconds / 60, 2),
                     "tvm_tuned_ms_p50": tuned_ms, "tvm_tuned_ms_p90": latency[trials]["latency_ms_p90"],
                     "ort_fp32_ms_p50": reference, "tvm_untuned_ms_p50": untuned_ms,
                     "ratio_vs_ort_fp32": tuned_ms / reference, "speedup_vs_untuned": untuned_ms / tuned_ms})
    return pd.DataFrame(rows).round(4)


def plot_budget(table: pd.DataFrame, path: str | os.PathLike, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.plot(table["trials"], table["tvm_tuned_ms_p50"], "o-", label="tuned TVM (p50)")
    axis.axhline(table["ort_fp32_ms_p50"].median(), color="tab:green", ls="--", label="ONNX Runtime fp32")
    axis.axhline(table["tvm_untuned_ms_p50"].median() / 20, color="tab:red", ls=":", label="untuned TVM / 20")
    axis.set_xscale("log", base=2)
    axis.set_xticks(table["trials"], [str(trials) for trials in table["trials"]])
    axis.minorticks_off()
    axis.set_xlabel("MetaSchedule trials")
    axis.set_ylabel(f"batch-1 latency, ms ({threads} threads)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_budget_study(out: str | os.PathLike, **study) -> pd.DataFrame:
    """`budget_study(**study)` written as OUT.csv and OUT.png."""
    table = budget_study(**study)
    out = Path(out)
    write_csv_atomic(out.with_suffix(".csv"), list(table.columns), table.itertuples(index=False, name=None))
    plot_budget(table, out.with_suffix(".png"), study["bench"].threads)
    return table
