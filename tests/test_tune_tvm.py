"""MetaSchedule tuning (lprnet.tune_tvm) on one small convolution: the database, the tuned build against the untuned
one and its packed weight (tune.weight_layout_rewrite), reuse of a complete database, a database tuned with other
settings (refused, or replaced as the stage does), the trial plan, and the errors for a bad target, budget or database.

The module is tuned once per test module with 6 trials (about 25 s on 2 cores, most of it MetaSchedule searching the
convolution's schedules), and once more with 3 to replace a database; the error tests fail before any tuning.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytest.importorskip("cloudpickle", reason="MetaSchedule's builder and runner processes need cloudpickle")
pytest.importorskip("xgboost", reason="MetaSchedule's default cost model needs xgboost")

from tvm import relax  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from lprnet.compile.tvm.batched import replay_records  # noqa: E402
from lprnet.compile.tvm.budget import MAX_TRIALS_PER_ITERATION, TrialPlan, module_share, plan_trials  # noqa: E402
from lprnet.compile.tvm.build import build, parse_target  # noqa: E402
from lprnet.compile.tvm.database import (  # noqa: E402
    FAILED_RUN_S,
    RECORD_FILE,
    SETTINGS_FILE,
    WORKLOAD_FILE,
    extract_tasks,
    module_records,
    open_database,
    recorded_trials,
    tasks_to_tune,
    tuning_curve,
    untuned_tasks,
)
from lprnet.compile.tvm.passes import PIPELINES, apply_passes  # noqa: E402
from lprnet.compile.tvm.tune import (  # noqa: E402
    DEFAULT_POPULATION,
    apply_database,
    apply_records,
    count_tuned_kernels,
    tune,
    tuning_module,
    tuning_target,
)
from lprnet.compile.tvm.workarounds import import_tensor_intrinsics  # noqa: E402
from tests.conftest import main_constants  # noqa: E402

INPUT_SHAPE = (1, 8, 12, 16)  # NCHW, so the layout passes add NCHW <-> NHWC transposes: 3 tasks
TOTAL_TRIALS, TRIALS_PER_TASK = 6, 2
POPULATION = 32  # not DEFAULT_POPULATION, so that a test can tell it reached the search
TARGET = tuning_target({"kind": "llvm"}, num_cores=2)


def conv_module(batch: int = 1) -> tvm.IRModule:
    """conv2d (16 filters, 3x3, padding 1) + relu after the default layout passes: fused NHWC kernels."""
    weight = np.random.default_rng(0).standard_normal((16, INPUT_SHAPE[1], 3, 3)).astype(np.float32)
    builder = relax.BlockBuilder()
    images = relax.Var("x", relax.TensorType((batch, *INPUT_SHAPE[1:]), "float32"))
    with builder.function("main", [images]):
        with builder.dataflow():
            output = builder.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(images, relax.const(weight), padding=1)))
        builder.emit_func_output(output)
    return apply_passes(builder.get(), PIPELINES["layout"],
                                    layout="NHWC")


@pytest.fixture(scope="module")
def module() -> tvm.IRModule:
    """With the weight marked layout-free (tune.weight_layout_rewrite), so that these tests cover the rewrite too;
    test_tune_rpc.py tunes the module without it."""
    return tuning_module(conv_module(), weight_layout_rewrite=True)


@pytest.fixture(scope="module")
def searches() -> list[dict]:
    """The arguments of every EvolutionarySearch the tuning below made."""
    return []


@pytest.fixture(scope="module")
def tuned(module, tmp_path_factory, searches):
    """(database folder, TuningRun) of the one real tuning in this file."""
    folder = tmp_path_factory.mktemp("tune") / "database"
    evolutionary_search = ms.search_strategy.EvolutionarySearch

    def recorded_search(**kwargs):
        searches.append(kwargs)
        return evolutionary_search(**kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ms.search_strategy, "EvolutionarySearch", recorded_search)
        run = tune(module, TARGET, folder, TOTAL_TRIALS, TRIALS_PER_TASK, population=POPULATION, seed=0,
                            progress=False)
    return folder, run


def run_vm(mod: tvm.IRModule, images: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(build(mod, TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(images)).numpy()


def test_tuning_writes_the_database_and_gives_every_task_trials(tuned, module):
    folder, run = tuned
    for name in (WORKLOAD_FILE, RECORD_FILE, SETTINGS_FILE):
        assert (folder / name).stat().st_size > 0
    assert run.tasks == run.tuned_tasks == 3
    assert TOTAL_TRIALS <= run.trials < TOTAL_TRIALS + TRIALS_PER_TASK  # a last batch may overshoot the budget
    assert len(run.database) == run.trials
    built = [trials for trials, _ in run.timeline]
    seconds = [s for _, s in run.timeline]
    assert built == sorted(built) and built[-1] == run.trials
    assert seconds == sorted(seconds) and seconds[-1] < run.seconds
    assert untuned_tasks(extract_tasks(module, TARGET), run.database, TARGET) == []
    records = module_records(folder, module, TARGET)
    assert len(records) == run.trials and {task for task, _ in records} == {0, 1, 2}
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    assert settings["target"] == TARGET and settings["total_trials"] == TOTAL_TRIALS and settings["seed"] == 0


def test_the_tuned_build_matches_the_untuned_one(tuned, module):
    folder, _ = tuned
    scheduled = apply_database(module, TARGET, folder)
    assert count_tuned_kernels(module) == 0
    assert count_tuned_kernels(scheduled) == 3
    images = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    np.testing.assert_allclose(run_vm(scheduled, images), run_vm(module, images), atol=1e-3, rtol=0)


def tile_decisions(trace) -> list[list[int]]:
    return [[int(factor) for factor in decision] for instruction, decision in trace.decisions.items()
            if instruction.kind.name == "SamplePerfectTile"]


def test_a_batched_build_replays_every_batch_1_schedule_and_computes_each_image_alike(tuned, module):
    folder, _ = tuned
    batched = tuning_module(conv_module(batch=4), weight_layout_rewrite=True)
    records, scheduled, kernels = replay_records(folder, module, batched, TARGET)
    assert (scheduled, kernels) == (3, 3)
    replayed = apply_records(batched, TARGET, records)
    assert count_tuned_kernels(replayed) == 3
    # The convolution's tilings are batch 1's best record's, but for the batch loop's outermost tile, which took 4.
    [tilings] = [tile_decisions(record.trace) for record in records.get_all_tuning_records()
                 if tile_decisions(record.trace)]
    database = open_database(folder)
    [conv] = [task for task in extract_tasks(module, TARGET) if "conv" in task.task_name]
    best = database.query_tuning_record(conv.dispatched[0], parse_target(TARGET), conv.task_name)
    changed = [(ours, theirs) for ours, theirs in zip(tilings, tile_decisions(best.trace)) if ours != theirs]
    assert len(tilings) == len(tile_decisions(best.trace)) and len(changed) == 1
    [(ours, theirs)] = changed
    assert ours == [4 * theirs[0], *theirs[1:]] and theirs[0] == 1 and math.prod(theirs) == 1
    images = np.random.default_rng(2).standard_normal((4, *INPUT_SHAPE[1:])).astype(np.float32)
    one = apply_database(module, TARGET, folder)
    per_image = np.concatenate([run_vm(one, images[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(run_vm(replayed, images), per_image, atol=1e-4, rtol=0)


def test_a_batched_kernel_without_a_batch_1_record_keeps_its_default_schedule(tuned):
    """Without weight_layout_rewrite every kernel is marked otherwise than the tuned ones, so the database has no
    record for any of them."""
    folder, _ = tuned
    batched = tuning_module(conv_module(batch=4), weight_layout_rewrite=False)
    records, scheduled, kernels = replay_records(folder, tuning_module(conv_module(), weight_layout_rewrite=False),
                                                 batched, TARGET)
    assert (scheduled, kernels) == (0, 3)
    assert count_tuned_kernels(apply_records(batched, TARGET, records)) == 0


def test_the_tuned_build_holds_the_weight_in_the_layout_its_schedule_chose(tuned, module):
    folder, _ = tuned
    (weight,) = main_constants(module)
    assert weight.shape == (3, 3, INPUT_SHAPE[1], 16)  # HWIO, as ConvertLayout left it
    scheduled = apply_database(module, TARGET, folder)
    (packed,) = main_constants(scheduled)
    # Which layout depends on the measured draw (4 x 3 x 3 x 2 x 16 in one tuning, 16 x 3 x 3 x 8 in another), so
    # assert what holds for any: the same values, held in the shape a kernel reads, and no kernel that packs per call.
    np.testing.assert_array_equal(np.sort(packed, axis=None), np.sort(weight, axis=None))
    kernels = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 3
    read_shapes = {tuple(int(dim) for dim in param.shape) for f in kernels for param in f.params}
    assert packed.shape in read_shapes
    # MetaScheduleApplyDatabase alone leaves the packing inside the convolution's kernel, run on every call.
    assert "layout_rewrite_preproc" not in scheduled.script()
    # With the setting off, no weight is marked layout-free: schedules read the weights as they are.
    plain = tuning_module(conv_module(), weight_layout_rewrite=False)
    assert all(not (f.attrs or {}).get("layout_free_buffers") for f in plain.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc))


def test_a_database_with_every_task_is_reused_without_tuning(tuned, module, monkeypatch):
    folder, first = tuned
    records = (folder / RECORD_FILE).read_text()

    def refuse(**kwargs):
        raise AssertionError("tuned again")

    monkeypatch.setattr(ms, "tune_tasks", refuse)
    start = time.perf_counter()
    again = tune(module, TARGET, folder, TOTAL_TRIALS, TRIALS_PER_TASK, population=POPULATION, seed=0,
                          progress=False)
    assert time.perf_counter() - start < 10
    assert (again.tasks, again.tuned_tasks, again.trials) == (3, 0, 0)
    assert (folder / RECORD_FILE).read_text() == records


def test_a_database_tuned_with_other_settings_is_refused_or_replaced(tuned, module, tmp_path):
    folder, first = tuned
    copy = tmp_path / "database"
    shutil.copytree(folder, copy)
    records = (copy / RECORD_FILE).read_text()
    with pytest.raises(ValueError, match=f"tuned with other settings \\(total_trials: {TOTAL_TRIALS} there, 3 now\\)"):
        tune(module, TARGET, copy, 3, TRIALS_PER_TASK, population=POPULATION, seed=0, progress=False)
    assert (copy / RECORD_FILE).read_text() == records
    # As the tvm-tune stage calls it (dvc exp run -S tune.total_trials=...): the old records go, the new budget tunes.
    again = tune(module, TARGET, copy, 3, TRIALS_PER_TASK, population=POPULATION, seed=0, progress=False,
                          replace_other_settings=True)
    assert again.tuned_tasks == 3 and len(open_database(copy)) == again.trials < first.trials
    assert json.loads((copy / SETTINGS_FILE).read_text())["total_trials"] == 3


def test_an_unreadable_settings_file_is_named(tuned, module, tmp_path):
    folder, _ = tuned
    copy = tmp_path / "database"
    shutil.copytree(folder, copy)
    (copy / SETTINGS_FILE).write_text("{total_trials: 6")  # edited by hand
    with pytest.raises(ValueError, match=f"^{copy / SETTINGS_FILE}: not JSON"):
        tune(module, TARGET, copy, TOTAL_TRIALS, TRIALS_PER_TASK, population=POPULATION, seed=0,
                      progress=False, replace_other_settings=True)


def copy_with_failures(folder, copy, failed) -> tvm.s_tir.meta_schedule.Database:
    """A copy of the database in `folder` whose records of the workloads `failed(index)` picks are failures."""
    copy.mkdir()
    shutil.copy(folder / WORKLOAD_FILE, copy / WORKLOAD_FILE)
    lines = []
    for line in (folder / RECORD_FILE).read_text().splitlines():
        workload_index, record = json.loads(line)
        if failed(workload_index):
            record[1] = [FAILED_RUN_S]  # run_secs, as MetaSchedule records a failed trial
        lines.append(json.dumps([workload_index, record]))
    (copy / RECORD_FILE).write_text("\n".join(lines) + "\n")
    return open_database(copy)


def test_a_kernel_whose_trials_all_failed_is_not_tuned_again(tuned, module, tmp_path):
    folder, _ = tuned
    tasks = extract_tasks(module, TARGET)
    one_failed = copy_with_failures(folder, tmp_path / "one", lambda index: index == 0)
    assert len(untuned_tasks(tasks, one_failed, TARGET)) == 1  # it stays untuned ...
    assert tasks_to_tune(tasks, one_failed, TARGET) == []  # ... and a re-run does not retry it
    assert sum(recorded_trials(tasks, one_failed)) == len(one_failed)
    # Every trial failed: that run failed as a whole, so a re-run tunes every task again.
    all_failed = copy_with_failures(folder, tmp_path / "all", lambda index: True)
    assert len(tasks_to_tune(tasks, all_failed, TARGET)) == len(tasks)


def test_a_record_cut_short_by_a_kill_is_dropped_and_the_rest_kept(tuned, module, tmp_path):
    folder, _ = tuned
    copy = tmp_path / "database"
    shutil.copytree(folder, copy)
    records = (copy / RECORD_FILE).read_text()
    complete = len(records.splitlines())
    with open(copy / RECORD_FILE, "a") as file:  # what MetaSchedule leaves when killed mid-append
        file.write(records.splitlines()[0][:40])
    database = open_database(copy)
    assert len(database) == complete
    assert (copy / RECORD_FILE).read_text() == records
    assert untuned_tasks(extract_tasks(module, TARGET), database, TARGET) == []


def test_the_curve_starts_once_every_task_is_timed_and_never_rises(tuned, module):
    folder, run = tuned
    curve = tuning_curve(folder, module, TARGET)
    assert curve and curve[-1][0] == run.trials and curve[0][0] >= 3
    estimates = [ms for _, ms in curve]
    assert all(0 < later <= earlier for earlier, later in zip(estimates, estimates[1:]))


def test_the_curve_leaves_out_a_kernel_that_was_never_timed(tuned, module, tmp_path):
    folder, _ = tuned
    full = tuning_curve(folder, module, TARGET)
    copy_with_failures(folder, tmp_path / "one", lambda index: index == 0)
    curve = tuning_curve(tmp_path / "one", module, TARGET)
    assert curve and curve[-1][0] == full[-1][0]  # a curve to the last trial, without the untimeable kernel
    assert all(0 < ms < full_ms for (_, ms), (_, full_ms) in zip(curve[::-1], full[::-1]))


def test_the_search_evolves_the_population_it_was_given(tuned, searches):
    assert searches == [{"population_size": POPULATION}]
    folder, _ = tuned
    assert json.loads((folder / SETTINGS_FILE).read_text())["population"] == POPULATION


def test_a_database_tuned_with_other_settings_is_refused(tuned, module):
    folder, _ = tuned
    with pytest.raises(ValueError, match="seed: 0 there, 1 now"):
        tune(module, TARGET, folder, TOTAL_TRIALS, TRIALS_PER_TASK, population=POPULATION, seed=1,
                      progress=False)
    with pytest.raises(ValueError, match=f"population: {POPULATION} there, {DEFAULT_POPULATION} now"):
        tune(module, TARGET, folder, TOTAL_TRIALS, TRIALS_PER_TASK, seed=0, progress=False)


@pytest.mark.parametrize("total, per_task, match", [
    (0, 2, "total_trials must be a positive integer, got 0"),
    (6, 0, "trials_per_task must be a positive integer, got 0"),
    (6, 2.5, "trials_per_task must be a positive integer"),
    (2, 2, "total_trials=2 is less than the 3 tasks"),
])
def test_a_bad_budget_is_refused_before_tuning(module, tmp_path, total, per_task, match):
    with pytest.raises(ValueError, match=match):
        tune(module, TARGET, tmp_path / "database", total, per_task, progress=False)
    assert not (tmp_path / "database").exists()


@pytest.mark.parametrize("population", [0, 1.5, True])
def test_a_bad_population_is_refused_before_tuning(module, tmp_path, population):
    with pytest.raises(ValueError, match=f"population must be a positive integer, got {population!r}"):
        tune(module, TARGET, tmp_path / "database", TOTAL_TRIALS, TRIALS_PER_TASK, population=population,
                      progress=False)
    assert not (tmp_path / "database").exists()


@pytest.mark.parametrize("target, match", [
    ({"kind": "llvm", "mcpu": "no-such-cpu", "num-cores": 2}, "no-such-cpu"),
    ({"kind": "llvm"}, "num-cores"),
    ({"kind": "c", "num-cores": 2}, "'kind': 'c'.*expected an llvm target"),
])
def test_a_bad_target_is_refused_before_tuning(module, tmp_path, target, match):
    with pytest.raises(ValueError, match=match):
        tune(module, target, tmp_path / "database", TOTAL_TRIALS, TRIALS_PER_TASK, progress=False)


@pytest.mark.parametrize("target, num_cores, match", [
    ({"kind": "cuda"}, 2, "only llvm"),
    ({"kind": "llvm", "mcpu": "no-such-cpu"}, 2, "no-such-cpu"),
    ({"kind": "llvm"}, 0, "num_cores"),
])
def test_tuning_target_names_what_is_wrong(target, num_cores, match):
    with pytest.raises(ValueError, match=match):
        tuning_target(target, num_cores)


def test_tuning_target_fills_in_the_cpu_and_cores():
    filled = tuning_target({"kind": "llvm"}, 3)
    assert filled["mcpu"] == str(tvm.target.codegen.llvm_get_system_cpu()) and filled["num-cores"] == 3
    assert tuning_target({"kind": "llvm", "num-cores": 1}, 3)["num-cores"] == 1


@pytest.mark.parametrize("tasks, total, per_task, expected", [
    (29, 64, 32, TrialPlan(total=64, per_task=32, per_iteration=2)),  # every task reached in round one
    (29, 256, 32, TrialPlan(total=256, per_task=32, per_iteration=8)),
    (29, 5000, 32, TrialPlan(total=928, per_task=32, per_iteration=32)),  # capped by trials_per_task
    (1, 1000, 500, TrialPlan(total=500, per_task=500, per_iteration=MAX_TRIALS_PER_ITERATION)),
])
def test_the_trial_plan_shares_the_budget(tasks, total, per_task, expected):
    assert plan_trials(tasks, total, per_task) == expected


@pytest.mark.parametrize("total, tasks, todo, expected", [(192, 32, 32, 192), (192, 32, 18, 108), (6, 3, 1, 2)])
def test_kernels_the_database_covers_count_as_their_share_of_the_budget(total, tasks, todo, expected):
    assert module_share(total, tasks, todo) == expected


def test_the_trial_plan_keeps_batches_to_trials_per_iteration():
    assert plan_trials(36, 1152, 64, 8) == TrialPlan(total=1152, per_task=64, per_iteration=8)
    assert plan_trials(36, 72, 64, 8).per_iteration == 2  # still reaches every task in round one
    with pytest.raises(ValueError, match="trials_per_iteration must be a positive integer, got 0"):
        plan_trials(36, 72, 64, 0)


def test_a_database_prefix_tunes_only_the_kernels_its_trials_reached(tuned, module, tmp_path):
    from lprnet.pipeline.tune_budget import truncate_database

    folder, run = tuned
    truncate_database(folder, tmp_path / "first-batch", TRIALS_PER_TASK)  # the first task's batch
    assert count_tuned_kernels(apply_database(module, TARGET, tmp_path / "first-batch")) == 1
    truncate_database(folder, tmp_path / "all", run.trials)
    assert (tmp_path / "all" / RECORD_FILE).read_bytes() == (folder / RECORD_FILE).read_bytes()
    assert count_tuned_kernels(apply_database(module, TARGET, tmp_path / "all")) == 3


def test_seconds_at_is_when_the_batch_holding_the_trial_was_built():
    from lprnet.pipeline.tune_budget import seconds_at

    timeline = [(8, 10.0), (16, 19.5), (24, 30.0)]
    assert [seconds_at(timeline, n) for n in (1, 8, 9, 24, 25)] == [10.0, 10.0, 19.5, 30.0, None]
    # A run resumed after 8 recorded trials: its first batch holds trials 9..16; trials 1..8 are not its own.
    assert [seconds_at(timeline, n, earlier=8) for n in (8, 9, 16, 17, 32, 33)] == [None, 10.0, 10.0, 19.5, 30.0, None]


def test_applying_a_missing_database_names_the_folder(module, tmp_path):
    with pytest.raises(FileNotFoundError, match="no MetaSchedule database"):
        apply_database(module, TARGET, tmp_path / "absent")


def test_importing_the_tensor_intrinsics_maps_the_importers_frames_without_inventing_source():
    import inspect
    import sys

    import_tensor_intrinsics()
    assert tvm.s_tir.TensorIntrin.get("dot_16x4_vnni") is not None  # the x86 int8 intrinsics the rules may use
    # The importer's frames resolve from inspect's cache (no rescan of sys.modules), still without source lines.
    frame_code = compile("pass", "<frozen importlib._bootstrap>", "exec")
    assert inspect.getmodule(frame_code, frame_code.co_filename) is sys.modules["importlib._bootstrap"]
    with pytest.raises(OSError):
        inspect.findsource(frame_code)


@pytest.mark.skipif(not tvm.target.codegen.target_has_features("avx512vnni", parse_target(TARGET)),
                    reason="this CPU has no AVX-512 VNNI")
def test_an_int8_convolution_is_tuned_with_vnni_and_sums_exactly(tmp_path):
    """The convolution qdq_conv_to_integer writes (uint8 x int8, int32 sums), as the layout passes legalize it: every
    tuned schedule uses vpdpbusd (TVM 0.27's own intrinsic failed LLVM 22's verifier on every candidate)."""
    rng = np.random.default_rng(2)
    weight = rng.integers(-128, 128, (24, 8, 3, 3)).astype(np.int8)
    builder = relax.BlockBuilder()
    images = relax.Var("x", relax.TensorType(INPUT_SHAPE, "uint8"))
    with builder.function("main", [images]):
        with builder.dataflow():
            sums = relax.op.nn.conv2d(images, relax.const(weight), padding=1, out_dtype="int32")
            output = builder.emit_output(relax.op.permute_dims(sums, [0, 2, 3, 1]))
        builder.emit_func_output(output)
    module = apply_passes(builder.get(), PIPELINES["layout"],
                                      layout="NHWC")
    run = tune(module, TARGET, tmp_path / "database", 4, 4, progress=False)
    assert run.failed_trials == 0
    scheduled = apply_database(module, TARGET, tmp_path / "database")
    assert "llvm.x86.avx512.vpdpbusd.512" in scheduled.script()
    # A new process (a later stage, `dvc repro -f tvm-tune`) reads the database back: that needs the intrinsic too.
    read_back = subprocess.run([sys.executable, "-c", "import sys; from lprnet.compile.tvm.database import "
                                "open_database; print(len(open_database(sys.argv[1])))", str(tmp_path / "database")],
                               capture_output=True, text=True, timeout=300)
    assert read_back.returncode == 0 and read_back.stdout.split()[-1] == str(run.trials), read_back.stderr[-2000:]
    data = rng.integers(0, 256, INPUT_SHAPE).astype(np.uint8)
    padded = np.pad(data.astype(np.int64), [(0, 0), (0, 0), (1, 1), (1, 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    expected = np.einsum("nchwij,ocij->nhwo", windows, weight.astype(np.int64))
    np.testing.assert_array_equal(run_vm(scheduled, data), expected)
