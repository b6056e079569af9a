"""MetaSchedule's JSON database of tuning records, as the tvm-tune stage keeps it between runs.

A database folder holds MetaSchedule's two tables and `tuning.json`, the settings its records were tuned with: a
database is reused only for the same settings, since MetaSchedule looks records up by kernel alone. Also reads the
records back per task (`module_records`) and as a curve of estimated kernel time against trials (`tuning_curve`).
Does not tune (see tune.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from lprnet.compile.tvm.build import parse_target
from lprnet.compile.tvm.workarounds import import_tensor_intrinsics
from lprnet.errors import InputError, MissingFileError
from lprnet.io import write_bytes_atomic

logger = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"  # the names MetaSchedule's JSONDatabase gives its two tables
RECORD_FILE = "database_tuning_record.json"
SETTINGS_FILE = "tuning.json"  # what the records were tuned with; a database is only reused for the same
SETTINGS_FORMAT = 1
FAILED_RUN_S = 1e10  # MetaSchedule's run time for a candidate that failed to build or run


def open_database(folder: str | os.PathLike, create: bool = False) -> ms.database.JSONDatabase:
    """The JSON database in `folder` (its two files; `create` makes an empty one if they are absent)."""
    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        missing = [name for name in (WORKLOAD_FILE, RECORD_FILE) if not (folder / name).is_file()]
        if missing:
            raise MissingFileError(f"{folder}: no MetaSchedule database ({', '.join(missing)} absent); run tune first")
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




def extract_tasks(mod: tvm.IRModule, target: dict) -> list[ms.ExtractedTask]:
    """One task per distinct TIR kernel of `mod` (its weight: how often `main` calls it)."""
    return list(ms.relax_integration.extract_tasks(mod, parse_target(target)))


def untuned_tasks(tasks: Sequence[ms.ExtractedTask], database: ms.Database, target: dict
                  ) -> list[ms.ExtractedTask]:
    """The tasks the database has no valid (built and timed) record for: their kernels stay untuned."""
    parsed = parse_target(target)
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


def check_settings(folder: Path, settings: dict, replace: bool) -> None:
    """Refuse a database tuned with other settings, or with `replace` start a new one in its place: MetaSchedule
    looks records up by kernel alone, whatever CPU or budget they were tuned with, so reusing them would silently keep
    the old tuning."""
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not JSON ({error}); delete the folder to tune again") from None
        changed = sorted(key for key in set(recorded) | set(settings) if recorded.get(key) != settings.get(key))
        if changed:
            described = "; ".join(f"{key}: {recorded.get(key)!r} there, {settings.get(key)!r} now" for key in changed)
            if not replace:
                raise InputError(f"{folder}: the database was tuned with other settings ({described}); delete the "
                                 f"folder to tune again")
            logger.warning("%s: the database was tuned with other settings (%s); starting a new one", folder, described)
            # The settings file goes last: a run killed in between still finds other settings, and replaces again.
            for name in (WORKLOAD_FILE, RECORD_FILE, SETTINGS_FILE):
                (folder / name).unlink(missing_ok=True)
    elif any((folder / name).is_file() for name in (WORKLOAD_FILE, RECORD_FILE)):
        raise InputError(f"{folder}: a MetaSchedule database without {SETTINGS_FILE}; delete the folder to tune again")




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
