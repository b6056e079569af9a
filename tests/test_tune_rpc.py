"""MetaSchedule measurements through TVM's RPC tracker and server (`tune(..., rpc=...)`): the convolution of
test_tune_tvm.py tuned with its candidates timed by one server registered with a tracker, both started on loopback
by this file; the errors for a tracker without a server for the key, a bad tracker address or key, and the stage's
one-line errors for `tune.rpc_tracker` / `tune.rpc_key`.

The tuning takes about 25 s on 2 cores, like test_tune_tvm.py's; the error tests fail before any tuning.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

tvm = pytest.importorskip("tvm")
pytest.importorskip("cloudpickle", reason="MetaSchedule's builder and runner processes need cloudpickle")
pytest.importorskip("xgboost", reason="MetaSchedule's default cost model needs xgboost")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")

from tvm import rpc  # noqa: E402
from tvm.rpc.server import Server  # noqa: E402
from tvm.rpc.tracker import Tracker  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from lprnet.compile.tvm.database import FAILED_RUN_S, extract_tasks, module_records, untuned_tasks  # noqa: E402
from lprnet.compile.tvm.runner import RPCTarget  # noqa: E402
from lprnet.compile.tvm.tune import apply_database, count_tuned_kernels, tune  # noqa: E402
from tests.test_tune_tvm import INPUT_SHAPE, TARGET, conv_module, run_vm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
KEY = "lprnet-test"
TOTAL_TRIALS, TRIALS_PER_TASK = 3, 1
FILL = "tvm.contrib.random.random_fill_for_measure"  # what the RPC runner calls on the server for each argument


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def counting_fills(path: str):
    """A server_init_callback: the server appends a line to `path` whenever it fills a candidate's argument with
    random data, which MetaSchedule's RPC runner has it do before timing the candidate there."""

    def register() -> None:
        import tvm_ffi

        fill = tvm_ffi.get_global_func(FILL)

        def counted(*args):
            with open(path, "a") as file:
                file.write("fill\n")
            return fill(*args)

        tvm_ffi.register_global_func(FILL, counted, override=True)

    return register


@pytest.fixture(scope="module")
def rpc_server(request, tmp_path_factory) -> tuple[int, Path]:
    """The port of a tracker with one server registered under KEY, both on loopback, and the file the server counts
    its fills in."""
    fills = tmp_path_factory.mktemp("rpc") / "fills.txt"
    port = free_port()
    tracker = Tracker(HOST, port=port, port_end=port + 1, silent=True)
    request.addfinalizer(tracker.terminate)
    port = free_port()
    server = Server(HOST, port=port, port_end=port + 1, tracker_addr=(HOST, tracker.port), key=KEY, silent=True,
                    server_init_callback=counting_fills(str(fills)))
    request.addfinalizer(server.terminate)
    session = rpc.connect_tracker(HOST, tracker.port)
    deadline = time.monotonic() + 30
    while not session.summary()["server_info"]:  # the server registers itself a moment after it starts
        assert time.monotonic() < deadline, "the RPC server did not register with the tracker"
        time.sleep(0.2)
    session.close()
    return tracker.port, fills


@pytest.fixture(scope="module")
def module() -> tvm.IRModule:
    return conv_module()


@pytest.fixture(scope="module")
def tuned_remotely(rpc_server, module, tmp_path_factory):
    """(database folder, TuningRun) of the module tuned through the tracker, with MetaSchedule's LocalRunner refused."""
    port, _ = rpc_server
    folder = tmp_path_factory.mktemp("tune-rpc") / "database"

    def refuse(*args, **kwargs):
        raise AssertionError("a candidate was to be timed on this machine")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ms.runner, "LocalRunner", refuse)
        run = tune(module, TARGET, folder, TOTAL_TRIALS, TRIALS_PER_TASK, seed=0, progress=False,
                            rpc=RPCTarget(HOST, port, KEY))
    return folder, run


def test_every_task_is_timed_on_the_server(tuned_remotely, rpc_server, module):
    folder, run = tuned_remotely
    _, fills = rpc_server
    assert run.tasks == run.tuned_tasks == 3
    assert TOTAL_TRIALS <= run.trials < TOTAL_TRIALS + TRIALS_PER_TASK
    assert untuned_tasks(extract_tasks(module, TARGET), run.database, TARGET) == []
    records = module_records(folder, module, TARGET)
    timed = [seconds for _, seconds in records if seconds < FAILED_RUN_S]
    assert {task for task, _ in records} == {0, 1, 2} and timed and all(0 < s < 1 for s in timed)
    # The server filled the arguments of every timed candidate (one fill per argument), and of no more than were tried.
    arguments = [len(record.args_info) for record in run.database.get_all_tuning_records()]
    timed_arguments = [len(record.args_info) for record in run.database.get_all_tuning_records()
                       if record.run_secs and min(float(s) for s in record.run_secs) < FAILED_RUN_S]
    assert sum(timed_arguments) <= len(fills.read_text().splitlines()) <= sum(arguments)


def test_the_remotely_tuned_build_matches_the_untuned_one(tuned_remotely, module):
    folder, _ = tuned_remotely
    scheduled = apply_database(module, TARGET, folder)
    assert count_tuned_kernels(scheduled) == 3
    images = np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)
    np.testing.assert_allclose(run_vm(scheduled, images), run_vm(module, images), atol=1e-3, rtol=0)


def test_a_key_the_tracker_has_no_server_for_fails_at_once(rpc_server, module, tmp_path):
    port, _ = rpc_server
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"{HOST}:{port}: no server with key 'absent'.*--key absent"):
        tune(module, TARGET, tmp_path / "database", TOTAL_TRIALS, TRIALS_PER_TASK, progress=False,
                      rpc=RPCTarget(HOST, port, "absent"))
    assert time.perf_counter() - start < 30  # not queued at the tracker for a server that never comes


@pytest.mark.parametrize("address, key, match", [
    ("localhost", KEY, "RPC tracker 'localhost': expected host:port"),
    ("localhost:port", KEY, "'localhost:port': expected host:port"),
    (":9190", KEY, "':9190': expected host:port"),
    ("localhost:70000", KEY, "'localhost':70000: expected a host and a port in 1..65535"),
    ("localhost:9190", "", "localhost:9190: device key '' must be non-empty"),
    ("localhost:9190", "a key", "device key 'a key' must be non-empty, without spaces or ':'"),
])
def test_a_bad_tracker_address_or_key_is_named(address, key, match):
    with pytest.raises(ValueError, match=match):
        RPCTarget.parse(address, key)


def test_parse_splits_host_and_port():
    assert RPCTarget.parse("10.0.0.7:9190", "rasp4") == RPCTarget("10.0.0.7", 9190, "rasp4")
    assert RPCTarget("10.0.0.7", 9190, "rasp4").address == "10.0.0.7:9190"


@pytest.mark.parametrize("tracker_address, key, message", [
    ("localhost:9190", "", "tune.rpc_key is empty: with tune.rpc_tracker 'localhost:9190'"),
    ("", "rasp4", "tune.rpc_key is 'rasp4' but tune.rpc_tracker is empty"),
    ("localhost", "rasp4", "RPC tracker 'localhost': expected host:port"),
])
def test_the_stage_refuses_inconsistent_rpc_params_in_one_line(tmp_path, tracker_address, key, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tune"].update(rpc_tracker=tracker_address, rpc_key=key)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    paths = ["source", "fp32", "int8", "pruned", "data", "database", "out", "metrics_fp32", "metrics_int8",
             "curve_fp32", "curve_int8"]  # never read: the params fail first
    command = [sys.executable, str(REPO / "stages/tvm_tune.py"), "--params", str(tmp_path / "params.yaml")]
    command += [arg for name in paths for arg in (f"--{name}", str(tmp_path / name))]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'params.yaml'}: {message}"), result.stderr
    assert not any((tmp_path / name).exists() for name in paths)
