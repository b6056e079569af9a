"""The tvm-tune stage's work: MetaSchedule tuning of the layout-passed modules, the tuned builds, their checks.

For each precision: tune the module's kernels the persistent database has no records for (lprnet.compile.tvm.tune),
apply the database, build, write the artifact, check it against ONNX Runtime on the same model (as the untuned TVM
steps do, see tvm_step.py) and evaluate it; also the estimated kernel time against trials, for a plot. With
`tune.total_trials` 0 it builds the layout-passed modules as they are (the end-to-end tests use that; the tuning
itself is tested in tests/test_tune_tvm.py). Does not run passes beyond the tuned build's own (passes.PIPELINES).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lprnet.compile.tvm.artifact import save_artifact
from lprnet.compile.tvm.batched import batched_module, replay_records
from lprnet.compile.tvm.budget import plan_trials
from lprnet.compile.tvm.build import build
from lprnet.compile.tvm.database import extract_tasks, module_records, tuning_curve
from lprnet.compile.tvm.frontend import load_ir, module_alphabet_name, module_input_shape
from lprnet.compile.tvm.tune import (
    TuneParams,
    TuningRun,
    apply_database,
    apply_records,
    count_tuned_kernels,
    tune,
    tuning_module,
    tuning_target,
)
from lprnet.csv_io import write_csv_atomic
from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.pipeline.stage import parse_args, read_section
from lprnet.pipeline.tvm_step import PRECISIONS, TVMParams, check_parity
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import predict_logits, texts_from_logits
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.tvm_runtime import TVMPredictor


def tune_and_build(precision: str, mod, target: dict, database: str | os.PathLike, out: Path, params: TuneParams,
                   bench: BenchConfig, batched_source: tuple[str | os.PathLike, TVMParams] | None = None
                   ) -> tuple[TuningRun, object]:
    """Tune `mod` into `database` (unless total_trials is 0) and write its tuned build to `out`; returns the tuning
    run and the tuned module. With `batched_source` (the ONNX model and the `tvm` params) and
    `tune.batched_build`, the artifact also holds the model built at `bench.throughput_batch`, its kernels scheduled
    by the batch-1 records (lprnet.compile.tvm.batched)."""
    if params.total_trials == 0:
        Path(database).mkdir(parents=True, exist_ok=True)
        tuning, tuned = TuningRun(database=None, tasks=0, tuned_tasks=0, trials=0, failed_trials=0, seconds=0.0), mod
    else:
        tuning = tune(mod, target, database, params.total_trials, params.trials_per_task,
                      trials_per_iteration=params.trials_per_iteration, population=params.population,
                      seed=params.seed, threads=bench.threads, rpc=params.rpc, replace_other_settings=True)
        tuned = apply_database(mod, target, database)
    settings = {key: getattr(params, key) for key in ("total_trials", "trials_per_task", "trials_per_iteration",
                                                       "population", "seed", "weight_layout_rewrite")}
    batched = None
    # Without tuning there are no records to replay, and an unscheduled batched build is only slower.
    if batched_source and params.batched_build and params.total_trials and bench.throughput_batch > 1:
        onnx_path, tvm_params = batched_source
        batched_mod = tuning_module(batched_module(onnx_path, bench.throughput_batch, tvm_params.graph_passes,
                                                   tvm_params.layout_passes, tvm_params.layout),
                                    params.weight_layout_rewrite)
        records, scheduled, kernels = replay_records(database, mod, batched_mod, target)
        batched = (build(apply_records(batched_mod, target, records), target), module_input_shape(batched_mod),
                   {"kernels_scheduled": scheduled, "kernels": kernels})
    save_artifact(out, build(tuned, target), tuned, target, module_input_shape(mod), module_alphabet_name(mod),
                  extra={"step": "tvm-tune", "tuning": {**settings, "tasks": tuning.tasks,
                                                        "kernels_tuned": count_tuned_kernels(tuned)}},
                  batched=batched)
    return tuning, tuned


def check_batched(predictor: TVMPredictor, images: np.ndarray, where: str) -> dict:
    """Raise unless the artifact's batched build (which the accuracy pass ran on whole batches) reads every plate
    as its batch-1 build does; returns their largest logit difference ({} without a batched build)."""
    if predictor.batched_input_shape is None:
        return {}
    batch1 = TVMPredictor(predictor.folder, predictor.threads, batched=False)
    ours, theirs = predict_logits(predictor, images), predict_logits(batch1, images)
    changed = sum(a != b for a, b in zip(texts_from_logits(ours, predictor.alphabet),
                                         texts_from_logits(theirs, batch1.alphabet)))
    if changed:
        raise InputError(f"{where}: the batch-{predictor.batched_input_shape[0]} build reads {changed} plates "
                         f"differently from the batch-1 build")
    return {"batched_build_batch": predictor.batched_input_shape[0],
            "batched_max_abs_logit_diff": float(np.abs(ours - theirs).max()),
            "batched_kernels_scheduled": predictor.manifest["batched"]["kernels_scheduled"],
            "batched_kernels": predictor.manifest["batched"]["kernels"]}


def tune_stage(source: str | os.PathLike, onnx_models: dict, pruned: str | os.PathLike, images: np.ndarray, labels,
               database: str | os.PathLike, out: str | os.PathLike, params: TuneParams, tvm_params: TVMParams,
               bench: BenchConfig) -> tuple[dict, dict]:
    """Every precision tuned, built into `out` (all or nothing), checked and evaluated; returns (metrics, curves)
    per precision."""
    # Kernels are parallelised for, and timed with, the thread count the artifacts are benchmarked with (an RPC
    # server times them with its own).
    target = tuning_target(tvm_params.target, bench.threads)
    modules = {p: tuning_module(load_ir(Path(source) / f"{p}.json"), params.weight_layout_rewrite) for p in PRECISIONS}
    for mod in modules.values() if params.total_trials else ():  # a budget too small fails before any tuning
        plan_trials(len(extract_tasks(mod, target)), params.total_trials, params.trials_per_task,
                    params.trials_per_iteration)
    model: torch.nn.Module = load_model(pruned)[0]
    metrics, curves = {}, {}
    with atomic_dir(out) as tmp:
        for precision, mod in modules.items():
            tuning, tuned = tune_and_build(precision, mod, target, database, tmp / precision, params, bench,
                                           (onnx_models[precision], tvm_params))
            predictor = TVMPredictor(tmp / precision, bench.threads)
            parity, texts = check_parity(precision, predictor, OnnxRuntimePredictor(onnx_models[precision],
                                                                                   bench.threads),
                                         images, labels, tvm_params, f"{Path(out) / precision}")
            tuned_run = params.total_trials != 0
            metrics[precision] = {
                **artifact_metrics(predictor, tmp / precision, images, labels, bench, source=model, texts=texts),
                **parity,
                **check_batched(predictor, images, f"{Path(out) / precision}"),
                # tuning_trials: every trial behind this artifact, also from earlier runs; the _run keys: this run's.
                "tuning_tasks": tuning.tasks,
                "tuning_trials": len(module_records(database, mod, target)) if tuned_run else 0,
                "kernels_tuned": count_tuned_kernels(tuned), "tuning_tasks_run": tuning.tuned_tasks,
                "tuning_trials_run": tuning.trials, "tuning_failed_trials_run": tuning.failed_trials,
                "tuning_seconds": round(tuning.seconds, 1),
            }
            curves[precision] = tuning_curve(database, mod, target) if tuned_run else []
    return metrics, curves


def run_tune_stage(description: str) -> None:
    """The body of stages/tvm_tune.py: every section read (and checked) first, then `tune_stage`, then the metrics
    and curves written."""
    args = parse_args(description, reads=["source", "fp32", "int8", "pruned", "data"],
                      writes=["metrics_fp32", "metrics_int8", "curve_fp32", "curve_int8"], folders=["out"],
                      into=["database"])
    params = read_section(args.params, "tune", TuneParams)
    tvm_params = read_section(args.params, "tvm", TVMParams)
    bench = read_section(args.params, "bench", BenchConfig)
    metrics, curves = tune_stage(args.source, {"fp32": args.fp32, "int8": args.int8}, args.pruned,
                                 *load_prepared(args.data, "test"), args.database, args.out, params, tvm_params, bench)
    for precision in PRECISIONS:
        write_json_atomic(getattr(args, f"metrics_{precision}"), metrics[precision])
        write_csv_atomic(getattr(args, f"curve_{precision}"), ["trials", "estimated_kernels_ms"], curves[precision],
                         digits=6)
