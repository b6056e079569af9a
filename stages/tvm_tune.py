"""DVC stage `tvm-tune`: MetaSchedule tuning of the fp32 and int8 modules from tvm-layout-passes with the budget in
`tune`; the tuned builds are checked against ONNX Runtime and evaluated like the other TVM stages.

The database is its own folder (`--database`), kept between runs (persist in dvc.yaml): kernels it has records for
are not tuned again, so after an upstream change that keeps the kernels' shapes (new weights, a new calibration) the
stage only applies the records and builds. A database tuned with another budget, seed or target is replaced by a new
one (e.g. `dvc exp run -S tune.total_trials=576`; DVC's cache keeps the old one). Also writes, per precision, the
estimated kernel time against trials (a DVC plot). With `tune.rpc_tracker`, candidates are timed on the RPC servers
of that TVM tracker (`tune.rpc_key`); the tuned builds are still checked and evaluated on this machine.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lprnet.compile.tvm.artifact import save_artifact
from lprnet.compile.tvm.budget import plan_trials
from lprnet.compile.tvm.build import build
from lprnet.compile.tvm.database import extract_tasks, module_records, tuning_curve
from lprnet.compile.tvm.frontend import load_ir, module_alphabet_name, module_input_shape
from lprnet.compile.tvm.runner import RPCTarget
from lprnet.compile.tvm.tune import (
    TuneParams,
    TuningRun,
    apply_database,
    count_tuned_kernels,
    tune,
    tuning_module,
    tuning_target,
)
from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic, write_text_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.pipeline.tvm_step import PRECISIONS, TVMParams, check_parity
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.tvm_runtime import TVMPredictor


def rpc_target(params: TuneParams) -> RPCTarget | None:
    """Where candidates are timed: None for this machine. A key without a tracker is refused rather than ignored."""
    if not params.rpc_tracker:
        if params.rpc_key:
            raise InputError(f"tune.rpc_key is {params.rpc_key!r} but tune.rpc_tracker is empty: set both to time "
                             f"candidates on RPC servers, or neither")
        return None
    if not params.rpc_key:
        raise InputError(f"tune.rpc_key is empty: with tune.rpc_tracker {params.rpc_tracker!r} it must name the device "
                         f"key the RPC servers registered with")
    return RPCTarget.parse(params.rpc_tracker, params.rpc_key)


def curve_csv(curve: list[tuple[int, float]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["trials", "estimated_kernels_ms"])
    writer.writerows((trials, round(ms, 6)) for trials, ms in curve)
    return text.getvalue()


def main() -> None:
    args = parse_args(__doc__, ["source", "fp32", "int8", "pruned", "data", "database", "out", "metrics_fp32",
                                "metrics_int8", "curve_fp32", "curve_int8"])
    params = read_section(args.params, "tune", TuneParams)
    rpc = rpc_target(params)
    tvm_params = read_section(args.params, "tvm", TVMParams)
    bench = read_section(args.params, "bench", BenchConfig)
    # Kernels are parallelised for, and timed with, the thread count the artifacts are benchmarked with (an RPC
    # server times them with its own).
    target = tuning_target(tvm_params.target, bench.threads)
    modules = {p: tuning_module(load_ir(Path(args.source) / f"{p}.json"),
                                         params.weight_layout_rewrite) for p in PRECISIONS}
    # total_trials 0 skips MetaSchedule and builds the layout-passed module as it is: the end-to-end tests use it
    # to run this stage's artifact, parity and metrics quickly; the tuning itself is tested in test_tune_tvm.py.
    tuning_enabled = params.total_trials != 0
    for mod in modules.values() if tuning_enabled else ():  # a budget too small fails before any tuning
        plan_trials(len(extract_tasks(mod, target)), params.total_trials, params.trials_per_task,
                             params.trials_per_iteration)
    onnx_models = {"fp32": args.fp32, "int8": args.int8}
    source = load_model(args.pruned)[0]
    images, labels = load_prepared(args.data, "test")
    metrics, curves = {}, {}
    with atomic_dir(args.out) as tmp:
        for precision, mod in modules.items():
            if not tuning_enabled:
                Path(args.database).mkdir(parents=True, exist_ok=True)
                tuning, tuned = TuningRun(database=None, tasks=0, tuned_tasks=0, trials=0, failed_trials=0,
                                                   seconds=0.0), mod
            else:
                tuning = tune(mod, target, args.database, params.total_trials, params.trials_per_task,
                                       trials_per_iteration=params.trials_per_iteration,
                                       population=params.population, seed=params.seed,
                                       threads=bench.threads, rpc=rpc, replace_other_settings=True)
                tuned = apply_database(mod, target, args.database)
            save_artifact(tmp / precision, build(tuned, target), tuned, target,
                                      module_input_shape(mod), module_alphabet_name(mod),
                                      extra={"step": "tvm-tune", "tuning": {
                                          "total_trials": params.total_trials,
                                          "trials_per_task": params.trials_per_task,
                                          "trials_per_iteration": params.trials_per_iteration,
                                          "population": params.population, "seed": params.seed,
                                          "weight_layout_rewrite": params.weight_layout_rewrite,
                                          "tasks": tuning.tasks, "kernels_tuned": count_tuned_kernels(tuned)}})
            predictor = TVMPredictor(tmp / precision, bench.threads)
            reference = OnnxRuntimePredictor(onnx_models[precision], bench.threads)
            parity, texts = check_parity(precision, predictor, reference, images, labels, tvm_params,
                                         f"{Path(args.out) / precision}")
            metrics[precision] = {
                **artifact_metrics(predictor, tmp / precision, images, labels, bench, source=source, texts=texts),
                **parity,
                # tuning_trials: every trial behind this artifact, also from earlier runs; the _run keys: this run's.
                "tuning_tasks": tuning.tasks,
                "tuning_trials": len(module_records(args.database, mod, target)) if tuning_enabled else 0,
                "kernels_tuned": count_tuned_kernels(tuned), "tuning_tasks_run": tuning.tuned_tasks,
                "tuning_trials_run": tuning.trials, "tuning_failed_trials_run": tuning.failed_trials,
                "tuning_seconds": round(tuning.seconds, 1),
            }
            curves[precision] = tuning_curve(args.database, mod, target) if tuning_enabled else []
    write_json_atomic(args.metrics_fp32, metrics["fp32"])
    write_json_atomic(args.metrics_int8, metrics["int8"])
    write_text_atomic(args.curve_fp32, curve_csv(curves["fp32"]))
    write_text_atomic(args.curve_int8, curve_csv(curves["int8"]))


if __name__ == "__main__":
    run(main)
