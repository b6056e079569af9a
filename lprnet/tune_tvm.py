"""MetaSchedule tuning of a Relax module whose kernels are already TIR (after the default layout passes), and the
build that uses the tuned kernels.

`tune` extracts one task per TIR kernel, tunes the tasks that the database folder holds no valid record for
(evolutionary search, XGBoost cost model, gradient-based task scheduler; every candidate built on this machine and
timed here or on the RPC servers of a TVM tracker, see `RPCTarget`) and appends the records to MetaSchedule's JSON
database in that folder. `apply_database` swaps each kernel for its fastest record, so `compile_tvm.build` then
compiles the tuned schedules; kernels without a record stay as LegalizeOps wrote them. `tuning_curve` reads the
database back as (trials, estimated latency) for a plot. `tuning_module` optionally marks the weights layout-free
first, so that schedules may choose their layout; `apply_database` then folds the packed weights into constants.

Does not run graph or layout passes (the module's operators are tuned as they come), does not quantize (an int8 QDQ
module is tuned like any other: its kernels compute in fp32 between quantize/dequantize), and does not measure the
whole model (bench.py does).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tqdm import tqdm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import default_export
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from lprnet import compile_tvm
from lprnet.io import write_bytes_atomic, write_text_atomic

WORKLOAD_FILE = "database_workload.json"  # the names MetaSchedule's JSONDatabase gives its two tables
RECORD_FILE = "database_tuning_record.json"
SETTINGS_FILE = "tuning.json"  # what the records were tuned with; a database is only reused for the same
SETTINGS_FORMAT = 1

MAX_TRIALS_PER_ITERATION = 64  # MetaSchedule's default batch of candidates per task and round
# Candidate schedules the evolutionary search keeps and mutates in each round, scored by the cost model. MetaSchedule's
# default is 512; the search then takes about 8 s per round here, more than building and timing a batch of 8
# candidates. On the fp32 LPRNet (288 trials, at most 64 per task, 8 per round; a scratch run with 128, the README's
# population-512 budget study) 128 reached the same latency as 512 (2.00 against 1.98 ms) in 3.6 min instead of 6.9;
# rounds that cheap pay for batches of 4 (README, Tuning budget).
DEFAULT_POPULATION = 128
# A candidate kernel builds in about a second; the limit only stops a build that hangs. The limit counts from the
# build function's start, after the worker process has imported TVM.
BUILD_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 30.0
WORKER_USES = 64  # builds per builder worker process before it is replaced (see _PooledBuilder)
# An RPC session uploads one candidate, has the server link it into a shared library and times it: RUN_TIMEOUT_S plus
# room for the upload and the link on a slow device. It is also how long the tracker may take to answer.
RPC_SESSION_TIMEOUT_S = 60
# Each candidate runs for at least 3 x 50 ms (the runner raises `number` until a repeat lasts min_repeat_ms) and
# MetaSchedule keeps the median of the 3 repeats, which damps other load on the machine.
EVALUATOR = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=50, enable_cpu_cache_flush=False)
FAILED_RUN_S = 1e10  # MetaSchedule's run time for a candidate that failed to build or run

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- target and budget


def tuning_target(target: dict, num_cores: int) -> dict:
    """`target` as `compile_tvm.detect_target` fills it, plus "num-cores" (unless given), which MetaSchedule's CPU
    rules require: a kernel is parallelised for that many cores. Only llvm (CPU) targets: the builder here compiles
    kernels with LLVM and the runners time them on a CPU (this machine's, or an RPC server's: then give the device's
    "mcpu", "mtriple" and "num-cores", since the defaults describe this machine)."""
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        raise ValueError(f"target {target!r}: only llvm (CPU) targets can be tuned here")
    if not isinstance(num_cores, int) or isinstance(num_cores, bool) or num_cores < 1:
        raise ValueError(f"num_cores must be a positive integer, got {num_cores!r}")
    filled = compile_tvm.detect_target(target)
    filled.setdefault("num-cores", num_cores)
    return filled


@dataclass(frozen=True)
class RPCTarget:
    """Time candidates on the RPC servers registered with a TVM tracker under `key`, instead of on this machine."""

    host: str  # the tracker's
    port: int
    key: str  # the device key the servers registered with (`python -m tvm.exec.rpc_server --key KEY`)

    def __post_init__(self):
        if not self.host or isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"RPC tracker {self.host!r}:{self.port!r}: expected a host and a port in 1..65535")
        if not self.key or any(char.isspace() or char == ":" for char in self.key):
            # The tracker's protocol separates fields with spaces and ':'.
            raise ValueError(f"RPC tracker {self.address}: device key {self.key!r} must be non-empty, without spaces "
                             f"or ':' (the servers' --key)")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, tracker: str, key: str) -> RPCTarget:
        """From the tracker's "host:port" and the servers' device key."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"RPC tracker {tracker!r}: expected host:port, e.g. 192.168.1.10:9190")
        return cls(host, int(port), key)


@dataclass(frozen=True)
class TrialPlan:
    total: int  # trials for this call: total_trials, or fewer if every task reaches trials_per_task first
    per_task: int
    per_iteration: int  # candidates a task gets each time the scheduler picks it


def plan_trials(num_tasks: int, total_trials: int, trials_per_task: int,
                trials_per_iteration: int = MAX_TRIALS_PER_ITERATION) -> TrialPlan:
    """How `total_trials` is shared among `num_tasks` tasks, none of which gets more than `trials_per_task`.

    The gradient-based scheduler first gives every task one batch of `per_iteration` candidates in turn, then spends
    the rest of the budget, a batch at a time, on the tasks whose best latency improves most. A batch is at most
    `trials_per_iteration` and at most total_trials // num_tasks, so that the first round reaches every task before
    the budget runs out. Each batch costs a round of evolutionary search, whatever its size: about 8 s here with
    MetaSchedule's default population of 512, about 5 s less with 128 (see DEFAULT_POPULATION), on top of about 0.5 s
    per candidate to build and time (timed once on four LPRNet kernels): small batches spend the time searching.
    """
    for name, value in (("total_trials", total_trials), ("trials_per_task", trials_per_task),
                        ("trials_per_iteration", trials_per_iteration)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if total_trials < num_tasks:
        raise ValueError(f"total_trials={total_trials} is less than the {num_tasks} tasks to tune: every task needs "
                         f"at least one trial")
    per_iteration = min(trials_per_task, total_trials // num_tasks, trials_per_iteration)
    return TrialPlan(total=min(total_trials, num_tasks * trials_per_task), per_task=trials_per_task,
                     per_iteration=per_iteration)


def module_share(total_trials: int, num_tasks: int, num_todo: int) -> int:
    """The trials for `num_todo` of a module's `num_tasks` kernels when `total_trials` is the whole module's budget:
    kernels the database already has records for (e.g. the int8 module's pools and slices, which the fp32 module's
    tuning covered) count as tuned, and the rest get their share, so that every kernel gets about the same budget.

    Before, the default int8 module's 14 integer convolutions and 4 other new kernels got the fp32 module's whole
    budget, 192 trials for 18 of its 32 kernels; with VNNI schedules (tensorized during the search, longer to compile)
    an int8 trial costs about twice an fp32 one, so that took 6.8 min, 3 more than before, which the default run's
    25 minutes have no room for."""
    return math.ceil(total_trials * num_todo / num_tasks)


# ------------------------------------------------------------------------------------------------------- database


def open_database(folder: str | os.PathLike, create: bool = False) -> ms.database.JSONDatabase:
    """The JSON database in `folder` (its two files; `create` makes an empty one if they are absent)."""
    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        missing = [name for name in (WORKLOAD_FILE, RECORD_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: no MetaSchedule database ({', '.join(missing)} absent); run tune first")
    for name in (WORKLOAD_FILE, RECORD_FILE):
        _drop_partial_last_line(folder / name)
    import_tensor_intrinsics()  # the database parses every record's trace, and a tensorized one names its intrinsic
    return ms.database.JSONDatabase(str(folder / WORKLOAD_FILE), str(folder / RECORD_FILE), allow_missing=create)


def _drop_partial_last_line(path: Path) -> None:
    """MetaSchedule appends one JSON line per workload and per trial, in place (it cannot write them atomically):
    a run killed mid-append leaves a line without its newline, which the next load would fail on. Drop it: the
    trial is simply not recorded."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        complete = data[:data.rfind(b"\n") + 1]
        logger.warning("%s: dropping a partly written last line (a tuning run was interrupted)", path)
        write_bytes_atomic(path, complete)


def tuning_module(mod: tvm.IRModule, weight_layout_rewrite: bool) -> tvm.IRModule:
    """The module to give `tune`, `apply_database`, `module_records` and `tuning_curve` (the same one to all four:
    the database knows a kernel by its TIR, attributes included).

    With `weight_layout_rewrite`, each kernel's constant arguments (the weights) are marked layout-free, so that a
    schedule may read them in another layout (MetaSchedule's RewriteLayout: e.g. output channels split into
    vector-width blocks, in the order its loops read them), which `apply_database` then packs once, at build time.
    This is what TVM's own static-shape tuning pipeline calls cpu_weight_prepack; there the weights are parameters
    and a separate function packs them, here they are constants and the build folds them."""
    return relax.transform.AttachAttrLayoutFreeBuffers()(mod) if weight_layout_rewrite else mod


def extract_tasks(mod: tvm.IRModule, target: dict) -> list[ms.ExtractedTask]:
    """One task per distinct TIR kernel of `mod` (its weight: how often `main` calls it)."""
    return list(ms.relax_integration.extract_tasks(mod, compile_tvm.parse_target(target)))


def untuned_tasks(tasks: Sequence[ms.ExtractedTask], database: ms.Database, target: dict
                  ) -> list[ms.ExtractedTask]:
    """The tasks the database has no valid (built and timed) record for: their kernels stay untuned."""
    parsed = compile_tvm.parse_target(target)
    return [task for task in tasks
            if database.query_tuning_record(task.dispatched[0], parsed, task.task_name) is None]


def recorded_trials(tasks: Sequence[ms.ExtractedTask], database: ms.Database) -> list[int]:
    """How many trials the database holds for each task, failed ones included."""
    records = database.get_all_tuning_records()
    counts = []
    for task in tasks:
        if not database.has_workload(task.dispatched[0]):
            counts.append(0)
            continue
        workload = database.commit_workload(task.dispatched[0])  # the stored one: committing it again adds nothing
        counts.append(sum(record.workload.same_as(workload) for record in records))
    return counts


def tasks_to_tune(tasks: Sequence[ms.ExtractedTask], database: ms.Database, target: dict) -> list[ms.ExtractedTask]:
    """The tasks the database holds no trial for, or all of them if none has a valid record (the run that recorded
    the trials failed as a whole, e.g. every build timed out). A task whose every trial failed counts as tried, so a
    re-run does not retry it: its kernel cannot be timed here (e.g. `take`, see `tune`) and stays untuned."""
    if len(untuned_tasks(tasks, database, target)) == len(tasks):
        return list(tasks)
    return [task for task, count in zip(tasks, recorded_trials(tasks, database)) if count == 0]


def _check_settings(folder: Path, settings: dict, replace: bool) -> None:
    """Refuse a database tuned with other settings, or with `replace` start a new one in its place: MetaSchedule
    looks records up by kernel alone, whatever CPU or budget they were tuned with, so reusing them would silently keep
    the old tuning."""
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error}); delete the folder to tune again") from None
        changed = sorted(key for key in set(recorded) | set(settings) if recorded.get(key) != settings.get(key))
        if changed:
            described = "; ".join(f"{key}: {recorded.get(key)!r} there, {settings.get(key)!r} now" for key in changed)
            if not replace:
                raise ValueError(f"{folder}: the database was tuned with other settings ({described}); delete the "
                                 f"folder to tune again")
            logger.warning("%s: the database was tuned with other settings (%s); starting a new one", folder, described)
            # The settings file goes last: a run killed in between still finds other settings, and replaces again.
            for name in (WORKLOAD_FILE, RECORD_FILE, SETTINGS_FILE):
                (folder / name).unlink(missing_ok=True)
    elif any((folder / name).is_file() for name in (WORKLOAD_FILE, RECORD_FILE)):
        raise ValueError(f"{folder}: a MetaSchedule database without {SETTINGS_FILE}; delete the folder to tune again")


# --------------------------------------------------------------------------------------------------------- tuning


def build_without_tensor_intrinsics(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    """MetaSchedule's default build function minus its `import tvm.s_tir.tensor_intrin`.

    That import registers every tensor intrinsic TVM has and takes 25-40 s, in each builder worker process (the
    LocalBuilder starts fresh ones for every batch), so with the default 30 s limit every candidate timed out. A
    candidate only needs the intrinsics while it is scheduled (in this process), not when it is compiled.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


@functools.cache
def import_tensor_intrinsics() -> None:
    """Import `tvm.s_tir.tensor_intrin` (MetaSchedule's TuneContext does, for the schedule rules) in seconds.

    Written by hand because the cost is in CPython's inspect, which no library setting reaches: each of the ~250
    TVMScript kernels in that package calls `inspect.stack()`, which looks up the module of every frame on the stack,
    and for the importer's own frames (file name "<frozen importlib._bootstrap>", no file on disk)
    `inspect.getmodule` finds no module and rescans all of `sys.modules`, every time. That took 30 s after importing
    torch, ONNX and DVC (5 s with the names mapped); inside the test session test_tune_rpc's tuning fixture took
    116-159 s with the import as it was, 30 s with the names mapped. Mapping each frozen
    module's file name to it in inspect's cache answers those look-ups at once; the frames still have no source
    lines, as before, so TVM sees the same stacks.
    """
    import inspect
    import sys

    cache = getattr(inspect, "modulesbyfile", None)  # undocumented; without it the import is only slower
    for name, module in list(sys.modules.items()) if isinstance(cache, dict) else ():
        if getattr(getattr(module, "__spec__", None), "origin", None) == "frozen":
            cache.setdefault(f"<frozen {name}>", name)
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics)

    _register_vnni_for_llvm22()


def _register_vnni_for_llvm22() -> None:
    """Re-register TVM's VNNI intrinsic (dot_16x4_vnni, which MetaSchedule's x86 rules tensorize uint8 x int8
    convolutions with) with the operand types LLVM 22 declares for vpdpbusd.512: <64 x i8> for the two byte operands,
    where TVM 0.27 passes <16 x i32> as LLVM 21 and older declared them (llvm/llvm-project#155194). With TVM's own
    definition every tensorized candidate failed LLVM's module verification, so no int8 kernel used VNNI."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import x86
    from tvm.script import tirx as T

    if tvm.target.codegen.llvm_version_major() < 22:
        return

    @T.prim_func(s_tir=True)
    def dot_16x4_vnni_i8_operands(a: T.Buffer((4,), "uint8", offset_factor=1),
                                  b: T.Buffer((16, 4), "int8", offset_factor=1),
                                  c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_u8x64 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                                    dtype="uint8x64")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], dtype="int32x16"),
                a_u8x64, b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc, dot_16x4_vnni_i8_operands,
                          override=True)


def _build_and_export(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """What a builder worker does with one candidate: compile it, write it to a file for the runner, return the path."""
    return default_export(build_without_tensor_intrinsics(mod, target))


@derived_object
class _PooledBuilder(PyBuilder):
    """MetaSchedule's LocalBuilder with its worker processes kept from one batch to the next, advancing the progress
    bar by each batch it builds (the runner times the batch right after).

    LocalBuilder starts a fresh pool for every batch (against a memory leak of long-lived workers), and each worker
    imports TVM first: measured here on four kernels, rounds of 2 candidates took 9.5 s instead of 11 s with the pool
    kept. Here a worker is replaced after WORKER_USES builds instead. The bar is advanced here because the scheduler
    hands results to the measure callbacks only once every task has had its first batch: with 36 tasks it would
    stand still for minutes."""

    def __init__(self, max_workers: int, timeout_sec: float, bar, start: float):
        super().__init__()
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec, maximum_process_uses=WORKER_USES)
        self.timeout_sec = timeout_sec
        self.bar = bar
        self.start = start
        self.timeline: list[tuple[int, float]] = []  # (candidates built so far, seconds since `start`)

    def build(self, build_inputs):
        results = []
        for result in self.pool.map_with_error_catching(lambda args: _build_and_export(*args),
                                                        [(item.mod, item.target) for item in build_inputs]):
            if result.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(result.value, None))
            elif result.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed: {result.value}"))
        self.bar.update(len(build_inputs))
        built = self.timeline[-1][0] if self.timeline else 0
        self.timeline.append((built + len(build_inputs), time.perf_counter() - self.start))
        return results

    def shutdown(self) -> None:
        self.pool.shutdown()


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


def _runner(rpc: RPCTarget | None) -> ms.Runner:
    """MetaSchedule's LocalRunner, or its RPCRunner with one connection per server the tracker has under the key: the
    tracker gives a server to one session at a time, so candidates are timed side by side, never two on one device."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=EVALUATOR)
    config = ms.runner.RPCConfig(rpc.host, rpc.port, rpc.key, session_timeout_sec=RPC_SESSION_TIMEOUT_S)
    try:
        servers = config.count_num_servers()
    except ValueError as error:  # TVM's message spans several lines
        raise ValueError(f"RPC tracker {rpc.address}: no answer within {RPC_SESSION_TIMEOUT_S} s (start it with "
                         f"`python -m tvm.exec.rpc_tracker`)") from error
    if not servers:
        # Else every candidate would wait in the tracker's queue for a server that never comes: TVM's runner sets no
        # limit on that wait (a session's timeout starts once a server takes it), nor when the servers go mid-run.
        raise ValueError(f"RPC tracker {rpc.address}: no server with key {rpc.key!r} (start one on the device with "
                         f"`python -m tvm.exec.rpc_server --tracker {rpc.address} --key {rpc.key}`)")
    return ms.runner.RPCRunner(config, EVALUATOR, max_workers=servers)


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
        raise ValueError(f"target {target!r}: expected an llvm target with 'num-cores' (see tune_tvm.tuning_target)")
    compile_tvm.parse_target(target)  # an unparsable target or an mcpu LLVM does not know fails here, named
    threads = threads or int(target["num-cores"])
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31 - 1:
        raise ValueError(f"seed must be an integer in [0, 2**31 - 1), got {seed!r}")
    if not isinstance(population, int) or isinstance(population, bool) or population < 1:
        raise ValueError(f"population must be a positive integer, got {population!r}")
    tasks = extract_tasks(mod, target)
    if not tasks:
        raise ValueError("the module has no TIR kernels to tune (run the layout passes, with legalize_ops, first)")
    # A budget too small for the whole module fails here, at once.
    plan_trials(len(tasks), total_trials, trials_per_task, trials_per_iteration)
    work_dir = Path(work_dir)
    settings = {"format": SETTINGS_FORMAT, "target": target, "total_trials": total_trials,
                "trials_per_task": trials_per_task, "trials_per_iteration": trials_per_iteration,
                "population": population, "seed": seed, "tvm_version": tvm.__version__}
    _check_settings(work_dir, settings, replace_other_settings)
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
        runner, builder = _runner(rpc), None
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
                builder = _PooledBuilder(threads, BUILD_TIMEOUT_S, bar, start)
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

    total_trials: int  # per precision, shared among its kernels (tasks); at least one per task
    trials_per_task: int  # at most this many for any one task
    trials_per_iteration: int  # candidates per task and search round (see plan_trials)
    population: int = DEFAULT_POPULATION  # the evolutionary search's, per task and round
    seed: int = 0
    weight_layout_rewrite: bool = False  # schedules may choose each weight's layout (tuning_module)
    rpc_tracker: str = ""  # "host:port" of a TVM RPC tracker; "": time candidates on this machine
    rpc_key: str = ""  # the device key of the tracker's servers


# ---------------------------------------------------------------------------------------------------------- apply


def apply_database(mod: tvm.IRModule, target: dict, database_dir: str | os.PathLike) -> tvm.IRModule:
    """`mod` (as `tuning_module` gave it) with every kernel the database has a record for replaced by its fastest
    schedule (marked tirx.is_scheduled), ready for `compile_tvm.build`.

    A schedule that chose a packed layout for a weight reads it through a layout-rewrite block; that block is split
    into a kernel of its own and, the weights being constants, folded: the build holds the packed weights, and no
    call packs them again."""
    database = open_database(database_dir)
    with compile_tvm.parse_target(target), database:
        # The pass reads the target and the database in force when it is created.
        tuned = relax.transform.MetaScheduleApplyDatabase()(mod)
    for transform in (relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant(),
                      relax.transform.DeadCodeElimination()):
        tuned = transform(tuned)
    return tuned


def count_tuned_kernels(mod: tvm.IRModule) -> int:
    return sum(isinstance(func, tvm.tirx.PrimFunc) and bool((func.attrs or {}).get("tirx.is_scheduled", False))
               for func in mod.functions.values())


def module_records(database_dir: str | os.PathLike, mod: tvm.IRModule, target: dict) -> list[tuple[int, float]]:
    """(task index, seconds) of every record of `mod`'s tasks (see `extract_tasks`), in the order the database
    recorded them; a failed trial has FAILED_RUN_S seconds."""
    folder = Path(database_dir)
    open_database(folder)  # the same FileNotFoundError when absent
    tasks = extract_tasks(mod, target)
    workloads = [ms.database.Workload.from_json(json.loads(line))
                 for line in (folder / WORKLOAD_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
    # Workload index -> task index, by structural equality (what the database itself matches on).
    task_of = {}
    for index, workload in enumerate(workloads):
        for task_index, task in enumerate(tasks):
            if tvm_ffi.structural_equal(workload.mod, task.dispatched[0]):
                task_of[index] = task_index
                break
    records = []
    for line in (folder / RECORD_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        workload_index, record = json.loads(line)
        if workload_index in task_of:  # else another module's kernel
            run_secs = sorted(float(s) for s in (record[1] or [FAILED_RUN_S]))
            records.append((task_of[workload_index], run_secs[len(run_secs) // 2]))
    return records


def tuning_curve(database_dir: str | os.PathLike, mod: tvm.IRModule, target: dict) -> list[tuple[int, float]]:
    """(trials, estimated ms) after each trial of `mod`'s tasks, in the order the database recorded them, from the
    first trial after which every timeable task has a timed record. The estimate is the sum over those tasks of
    weight x fastest time so far: kernel time only, without the VM's work between kernels. A task none of whose
    trials ran (e.g. `take`, see `tune`) stays untuned and is left out; waiting for it would leave no curve."""
    weights = [int(task.weight) for task in extract_tasks(mod, target)]
    records = module_records(database_dir, mod, target)
    best = {task: math.inf for task, seconds in records if seconds < FAILED_RUN_S}  # the timeable tasks
    curve = []
    for trials, (task, seconds) in enumerate(records, start=1):
        if task in best and seconds < FAILED_RUN_S:
            best[task] = min(best[task], seconds)
        if best and all(b < math.inf for b in best.values()):
            curve.append((trials, sum(weights[t] * b for t, b in best.items()) * 1e3))
    return curve
