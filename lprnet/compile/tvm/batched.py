"""Batched TVM builds from batch-1 tuning: each kernel of a batch-N module gets its batch-1 counterpart's best
schedule, replayed with the batch loop's extent.

The builds have static shapes and MetaSchedule knows a kernel by its TIR, so at batch N every kernel is a new task.
Tuning those afresh costs what tuning batch 1 cost again (about 2 s per trial here, more at batch 32); replaying
batch 1's records costs a build. A record's trace samples a tiling for every loop, the batch loop's all ones. TVM,
replaying a tiling that no longer multiplies to its loop's extent, keeps the inner factors that still divide it and
gives the outermost the rest (SamplePerfectTile in s_tir's sampling.cc): on the batch-N kernel the batch loop's
outermost tile takes N, so the batch joins the outer loops the schedule fuses and runs in parallel, and each image's
inner loops are the tuned ones. A trace that does not replay (the per-sample reductions: their batch-1 schedules name
blocks the batch-N kernel lacks) leaves its kernel with TVM's default schedule. Does not tune (see tune.py) or write
artifacts (see artifact.py).
"""

from __future__ import annotations

import os

import tvm
from tvm.s_tir import Schedule, ScheduleError
from tvm.s_tir import meta_schedule as ms

from lprnet.compile.tvm.build import parse_target
from lprnet.compile.tvm.database import extract_tasks, open_database
from lprnet.compile.tvm.frontend import import_onnx
from lprnet.compile.tvm.passes import apply_passes


def batched_module(onnx_path: str | os.PathLike, batch: int, graph_passes, layout_passes, layout: str
                   ) -> tvm.IRModule:
    """The ONNX model imported at `batch` and through the passes the tvm-graph-passes and tvm-layout-passes stages
    ran at batch 1 (the `tvm` params), so that its kernels are batch 1's with a longer batch loop."""
    mod = apply_passes(import_onnx(onnx_path, batch=batch), graph_passes)
    return apply_passes(mod, layout_passes, layout=layout) if layout_passes else mod


def replay_records(database_dir: str | os.PathLike, module: tvm.IRModule, batched: tvm.IRModule, target: dict
                   ) -> tuple[ms.Database, int, int]:
    """(a database of `batched`'s kernels scheduled by the best records of `module`'s kernels of the same name in the
    database at `database_dir`, how many kernels it schedules, how many `batched` has). `module` and `batched` are
    the batch-1 and batch-N modules as `tune.tuning_module` gives them."""
    database = open_database(database_dir)
    parsed = parse_target(target)
    source_tasks = {task.task_name: task for task in extract_tasks(module, target)}
    batched_tasks = extract_tasks(batched, target)
    replayed = ms.database.MemoryDatabase()
    scheduled = 0
    for task in batched_tasks:
        source = source_tasks.get(task.task_name)
        record = source and database.query_tuning_record(source.dispatched[0], parsed, task.task_name)
        if record is None:
            continue
        schedule = Schedule(task.dispatched[0])
        try:
            record.trace.apply_to_schedule(schedule, remove_postproc=False)
        except (ScheduleError, tvm.error.InternalError):  # a block or loop the batch-N kernel lacks
            continue
        workload = replayed.commit_workload(task.dispatched[0])
        replayed.commit_tuning_record(ms.database.TuningRecord(schedule.trace, workload, record.run_secs, parsed))
        scheduled += 1
    return replayed, scheduled, len(batched_tasks)
