"""MetaSchedule tuning of a Relax module whose kernels are already TIR (after the layout passes), and the build that
uses the tuned kernels.

`tune` extracts one task per TIR kernel, tunes the tasks that the database folder holds no valid record for
(evolutionary search, XGBoost cost model, gradient-based task scheduler; every candidate built on this machine and
timed here or on the RPC servers of a TVM tracker, see runner.py) and appends the records to the database
(database.py). `apply_database` swaps each kernel for its fastest record, so `build.build` then compiles the tuned
schedules; kernels without a record stay as LegalizeOps wrote them. `tuning_module` optionally marks the weights
layout-free first, so that schedules may choose their layout; `apply_database` then folds the packed weights into
constants.

Does not run graph or layout passes (the module's operators are tuned as they come; the int8 module's integer
convolutions are what int8.py wrote, tensorized with VNNI by MetaSchedule's x86 rules), and does not measure the
whole model (lprnet.runtime.bench does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm
from tqdm import tqdm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from lprnet.compile.tvm.budget import MAX_TRIALS_PER_ITERATION, module_share, plan_trials
from lprnet.compile.tvm.build import detect_target, parse_target
from lprnet.compile.tvm.database import (
    SETTINGS_FILE,
    SETTINGS_FORMAT,
    check_settings,
    extract_tasks,
    open_database,
    tasks_to_tune,
    untuned_tasks,
)
from lprnet.compile.tvm.passes import PIPELINES, apply_passes
from lprnet.compile.tvm.runner import RPCTarget, make_runner
from lprnet.compile.tvm.workarounds import BUILD_TIMEOUT_S, PooledBuilder, import_tensor_intrinsics
from lprnet.errors import InputError
from lprnet.io import write_text_atomic

logger = logging.getLogger(__name__)

# Candidate schedules the evolutionary search keeps and mutates in each round, scored by the cost model. MetaSchedule's
# default is 512, whose search round costs more here than building and timing a small batch of candidates; 128
# reached the same tuned latency on LPRNet in about half the time (docs/tuning.md), which is what pays for small
# batches. The pipeline's value is params.yaml's tune.population; this is the library default.
DEFAULT_POPULATION = 128


def tuning_target(target: dict, num_cores: int) -> dict:
    """`target` as `detect_target` fills it, plus "num-cores" (unless given), which MetaSchedule's CPU
    rules require: a kernel is parallelised for that many cores. Only llvm (CPU) targets: the builder here compiles
    kernels with LLVM and the runners time them on a CPU (this machine's, or an RPC server's: then give the device's
    "mcpu", "mtriple" and "num-cores", since the defaults describe this machine)."""
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        raise InputError(f"target {target!r}: only llvm (CPU) targets can be tuned here")
    if not isinstance(num_cores, int) or isinstance(num_cores, bool) or num_cores < 1:
        raise InputError(f"num_cores must be a positive integer, got {num_cores!r}")
    filled = detect_target(target)
    filled.setdefault("num-cores", num_cores)
    return filled




def tuning_module(mod: tvm.IRModule, weight_layout_rewrite: bool) -> tvm.IRModule:
    """The module to give `tune`, `apply_database`, `module_records` and `tuning_curve` (the same one to all four:
    the database knows a kernel by its TIR, attributes included).

    With `weight_layout_rewrite`, each kernel's constant arguments (the weights) are marked layout-free, so that a
    schedule may read them in another layout (MetaSchedule's RewriteLayout: e.g. output channels split into
    vector-width blocks, in the order its loops read them), which `apply_database` then packs once, at build time.
    This is what TVM's own static-shape tuning pipeline calls cpu_weight_prepack; there the weights are parameters
    and a separate function packs them, here they are constants and the build folds them."""
    return relax.transform.AttachAttrLayoutFreeBuffers()(mod) if weight_layout_rewrite else mod




@derived_object
class _TrialResults(PyMeasureCallback):
    """Shows the estimated kernel time (sum over tasks of weight x fastest time) and the failures on the progress
    bar as results come in; keeps the first failure's message."""

    def __init__(self, bar, task_names: list[str], task_weights: list[float]):
        self.bar = bar
        self.task_names = task_names
        self.task_weights = task_weights
        self.best_s: dict[int, float] = {}
        self.failures = 0
        self.first_failure: str | None = None

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for built, ran in zip(builder_results, runner_results):
            error = built.error_msg or ran.error_msg
            if error:
                self.failures += 1
                self.first_failure = self.first_failure or f"{self.task_names[task_id]}: {error.strip()[:2000]}"
                continue
            seconds = sorted(float(s) for s in ran.run_secs)[len(ran.run_secs) // 2]
            self.best_s[task_id] = min(seconds, self.best_s.get(task_id, math.inf))
        estimate_ms = sum(self.task_weights[i] * s for i, s in self.best_s.items()) * 1e3
        # refresh=False: shown with the next count, not as one more line per task in a log file.
        self.bar.set_postfix(tasks_timed=f"{len(self.best_s)}/{len(self.task_names)}", kernels_ms=f"{estimate_ms:.2f}",
                             failed=self.failures, refresh=False)




@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextmanager
def _log_folder(log_dir: str | os.PathLike | None) -> Iterator[str]:
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        yield str(log_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="lprnet-tune-logs-") as folder:
            yield folder


@dataclass(frozen=True)
class TuningRun:
    database: ms.Database
    tasks: int  # tasks in the module
    tuned_tasks: int  # tasks tuned by this call (0: the database already had a record for every task)
    trials: int  # candidates built and timed by this call, failures included
    failed_trials: int
    seconds: float
    # (trials, seconds since the call started) after each batch built; the last batch's trials are timed after it.
    timeline: tuple[tuple[int, float], ...] = ()


def tune(mod: tvm.IRModule, target: dict, work_dir: str | os.PathLike, total_trials: int, trials_per_task: int, *,
         trials_per_iteration: int = MAX_TRIALS_PER_ITERATION, population: int = DEFAULT_POPULATION, seed: int = 0,
         threads: int | None = None, log_dir: str | os.PathLike | None = None,
         progress: bool = True, rpc: RPCTarget | None = None, replace_other_settings: bool = False) -> TuningRun:
    """Tune the kernels of `mod` that the database in `work_dir` has no trial for (see `tasks_to_tune`), appending
    to that database; kernels none of whose trials worked stay untuned, with a warning. `total_trials` is the budget
    of the whole module: the kernels left to tune get their share of it (see `module_share`).

    `target` is a tuning target (see `tuning_target`); `threads` (default: its num-cores) is how many threads each
    candidate runs with, and how many processes build candidates. `population` is the evolutionary search's population
    (see DEFAULT_POPULATION). `seed` seeds the search, the task scheduler and the cost model; the outcome still varies
    with the timings. MetaSchedule's logs (every candidate's TIR and trace) go
    to `log_dir`, by default a temporary folder removed afterwards; the console shows a progress bar.

    With `rpc`, the candidates are timed on the servers a TVM tracker has under a device key (as many at once as it has
    servers; one with no server fails at once) instead of on this machine. They are still built here, compiled for
    `target`; each server links the candidate it is sent into a shared library (with its C++ compiler) and times it
    with its own thread count (its TVM_NUM_THREADS, else TVM's default), not `threads`. For an embedded device,
    `target` is an llvm target with the device's "mtriple", "mcpu" and "num-cores", and the device runs TVM's server:
    `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`.

    A database tuned with other settings (target, budget, search, seed or TVM version) is refused, or with
    `replace_other_settings` replaced by a new one, as the tvm-tune stage does: there DVC's cache keeps the old one.
    """
    start = time.perf_counter()
    if not isinstance(target, dict) or target.get("kind") != "llvm" or "num-cores" not in target:
        raise InputError(f"target {target!r}: expected an llvm target with 'num-cores' (see tune.tuning_target)")
    parse_target(target)  # an unparsable target or an mcpu LLVM does not know fails here, named
    threads = threads or int(target["num-cores"])
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31 - 1:
        raise InputError(f"seed must be an integer in [0, 2**31 - 1), got {seed!r}")
    if not isinstance(population, int) or isinstance(population, bool) or population < 1:
        raise InputError(f"population must be a positive integer, got {population!r}")
    tasks = extract_tasks(mod, target)
    if not tasks:
        raise InputError("the module has no TIR kernels to tune (run the layout passes, with legalize_ops, first)")
    # A budget too small for the whole module fails here, at once.
    plan_trials(len(tasks), total_trials, trials_per_task, trials_per_iteration)
    work_dir = Path(work_dir)
    settings = {"format": SETTINGS_FORMAT, "target": target, "total_trials": total_trials,
                "trials_per_task": trials_per_task, "trials_per_iteration": trials_per_iteration,
                "population": population, "seed": seed, "tvm_version": tvm.__version__}
    check_settings(work_dir, settings, replace_other_settings)
    database = open_database(work_dir, create=True)
    write_text_atomic(work_dir / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    todo = tasks_to_tune(tasks, database, target)
    if not todo:
        if progress:
            tqdm.write(f"tune: {work_dir} has records for all {len(tasks)} tasks; nothing to tune")
        return TuningRun(database, len(tasks), 0, 0, 0, time.perf_counter() - start)

    plan = plan_trials(len(todo), module_share(total_trials, len(tasks), len(todo)), trials_per_task,
                       trials_per_iteration)
    records_before = len(database)
    # MetaSchedule's console handler takes the level its logger has when the loggers are made: keep the console to
    # warnings (the progress bar shows the rest) and the details in the log files.
    meta_schedule_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    meta_schedule_logger.setLevel(logging.WARNING)
    # MetaSchedule's logging config re-lists this logger's handlers by name: an earlier run's file handler points
    # into its removed log folder, and a handler without a name (seen under pytest) fails the config.
    for handler in list(meta_schedule_logger.handlers):
        meta_schedule_logger.removeHandler(handler)
        handler.close()
    with _log_folder(log_dir) as logs, _environment("TVM_NUM_THREADS", str(threads)):
        # The LocalRunner's worker process inherits TVM_NUM_THREADS (set above): without it TVM runs each candidate on
        # half the CPUs, not on the `threads` the model will run with.
        runner, builder = make_runner(rpc), None
        try:
            if progress:
                remote = f"; timed on the RPC servers {rpc.key!r} of {rpc.address}" if rpc else ""
                tqdm.write(f"tune: {len(todo)} of {len(tasks)} tasks, {plan.total} trials ({plan.per_iteration} per "
                           f"task and round, at most {plan.per_task} per task{remote}); preparing the search spaces")
            import_tensor_intrinsics()
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                todo, logs, strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
                num_threads=threads, seed=seed)
            with tqdm(total=plan.total, desc="tune", unit="trial", disable=not progress, mininterval=2) as bar:
                builder = PooledBuilder(threads, BUILD_TIMEOUT_S, bar, start)
                tracker = _TrialResults(bar, [task.task_name for task in todo], [float(w) for w in weights])
                cost_model = ms.cost_model.XGBModel(
                    config=ms.cost_model.xgb_model.XGBConfig(seed=seed, nthread=threads), num_tuning_cores=threads)
                ms.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=logs, max_trials_global=plan.total,
                    max_trials_per_task=plan.per_task, num_trials_per_iter=plan.per_iteration, builder=builder,
                    runner=runner, database=database, cost_model=cost_model,
                    measure_callbacks=[*ms.MeasureCallback.create("default"), tracker],
                    task_scheduler=ms.task_scheduler.GradientBased(seed=seed))
        finally:
            runner.pool.shutdown()
            if builder is not None:
                builder.shutdown()

    trials = len(database) - records_before
    still_untuned = untuned_tasks(todo, database, target)
    if len(untuned_tasks(tasks, database, target)) == len(tasks):  # not one kernel of the module could be timed
        raise RuntimeError(f"tune: all {trials} trials failed; the first failure: {tracker.first_failure}")
    if tracker.failures:
        logger.warning("tune: %d of %d trials failed to build or run; the first: %s", tracker.failures, trials,
                       tracker.first_failure)
    if still_untuned:
        logger.warning("tune: no working candidate for %s; these kernels stay untuned",
                       ", ".join(task.task_name for task in still_untuned))
    return TuningRun(database, len(tasks), len(todo), trials, tracker.failures, time.perf_counter() - start,
                     tuple(builder.timeline))


@dataclass(frozen=True)
class TuneParams:
    """params.yaml's `tune` section: the tvm-tune stage's settings, and `tune-budget`'s defaults."""

    total_trials: int  # per precision, shared among its kernels (tasks); 0: no tuning (builds the module as it is)
    trials_per_task: int  # at most this many for any one task
    trials_per_iteration: int  # candidates per task and search round (see budget.plan_trials)
    population: int  # the evolutionary search's, per task and round
    seed: int
    weight_layout_rewrite: bool  # schedules may choose each weight's layout (tuning_module)
    batched_build: bool  # also build at bench.throughput_batch, from the batch-1 records (batched.py)
    rpc_tracker: str  # "host:port" of a TVM RPC tracker; "": time candidates on this machine
    rpc_key: str  # the device key of the tracker's servers

    def __post_init__(self):
        if isinstance(self.total_trials, bool) or not isinstance(self.total_trials, int) or self.total_trials < 0:
            raise InputError(f"tune.total_trials must be 0 (no tuning) or a positive integer, got "
                             f"{self.total_trials!r}")
        for key in ("trials_per_task", "trials_per_iteration", "population"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"tune.{key} must be a positive integer, got {value!r}")
        for key in ("weight_layout_rewrite", "batched_build"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"tune.{key} must be true or false, got {getattr(self, key)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**31 - 1:
            raise InputError(f"tune.seed must be an integer in [0, 2**31 - 1), got {self.seed!r}")
        if self.rpc_key and not self.rpc_tracker:
            raise InputError(f"tune.rpc_key is {self.rpc_key!r} but tune.rpc_tracker is empty: set both to time "
                             f"candidates on RPC servers, or neither")
        if self.rpc_tracker and not self.rpc_key:
            raise InputError(f"tune.rpc_key is empty: with tune.rpc_tracker {self.rpc_tracker!r} it must name the "
                             f"device key the RPC servers registered with")
        self.rpc  # noqa: B018  (a malformed tracker address fails here, named)

    @property
    def rpc(self) -> RPCTarget | None:
        """Where candidates are timed: None for this machine."""
        return RPCTarget.parse(self.rpc_tracker, self.rpc_key) if self.rpc_tracker else None


# ---------------------------------------------------------------------------------------------------------- apply


def apply_database(mod: tvm.IRModule, target: dict, database_dir: str | os.PathLike) -> tvm.IRModule:
    """`mod` (as `tuning_module` gave it) with every kernel the database has a record for replaced by its fastest
    schedule (marked tirx.is_scheduled), ready for `build.build`.

    A schedule that chose a packed layout for a weight reads it through a layout-rewrite block; that block is split
    into a kernel of its own and, the weights being constants, folded: the build holds the packed weights, and no
    call packs them again."""
    return apply_records(mod, target, open_database(database_dir))


def apply_records(mod: tvm.IRModule, target: dict, database: ms.Database) -> tvm.IRModule:
    """`apply_database` with a database object (e.g. batched.replay_records' in-memory one)."""
    with parse_target(target), database:
        # The pass reads the target and the database in force when it is created.
        tuned = relax.transform.MetaScheduleApplyDatabase()(mod)
    return apply_passes(tuned, PIPELINES["tuned"])


def count_tuned_kernels(mod: tvm.IRModule) -> int:
    return sum(isinstance(func, tvm.tirx.PrimFunc) and bool((func.attrs or {}).get("tirx.is_scheduled", False))
               for func in mod.functions.values())


