"""The `tvm` and `tune` params sections: every default comes from params.yaml, and every bad value is refused by its
dataclass with an error naming the key (the stages read these before any work)."""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")

from lprnet.compile.tvm.passes import PIPELINES  # noqa: E402
from lprnet.compile.tvm.tune import TuneParams  # noqa: E402
from lprnet.errors import InputError  # noqa: E402
from lprnet.pipeline.tvm_step import TVMParams  # noqa: E402
from tests.conftest import params_from_repo  # noqa: E402


def test_pass_lists_are_named_pipelines_or_lists_of_passes():
    params = params_from_repo("tvm", TVMParams)
    assert params.graph_passes == list(PIPELINES["graph"]) and params.layout_passes == list(PIPELINES["layout"])
    assert params_from_repo("tvm", TVMParams, layout_passes=["convert_layout"]).layout_passes == ["convert_layout"]


@pytest.mark.parametrize("overrides, match", [
    ({"graph_passes": "grpah"}, "tvm.graph_passes: unknown pipeline 'grpah'; valid: graph, layout, tuned"),
    ({"layout_passes": ["fuse_ops", "fuse_tri"]}, "tvm.layout_passes: unknown pass 'fuse_tri'; valid: "),
    ({"graph_passes": 3}, "tvm.graph_passes: expected a pipeline name or a list of pass names, got 3"),
    ({"layout": "NHWCC"}, "tvm.layout: 'NHWCC' is not a permutation of NCHW"),
    ({"target": {"kind": "llvm", "mcpu": "no-such-cpu"}}, "tvm.target: .*LLVM does not know mcpu 'no-such-cpu'"),
    ({"fp32_tolerance": 0.0}, "tvm.fp32_tolerance must be positive"),
    ({"int8_max_accuracy_drop": 1.5}, r"tvm.int8_max_accuracy_drop must be in \[0, 1\]"),
])
def test_bad_tvm_params_are_named(overrides, match):
    with pytest.raises(InputError, match=match):
        params_from_repo("tvm", TVMParams, **overrides)


@pytest.mark.parametrize("overrides, match", [
    ({"total_trials": -1}, "tune.total_trials must be 0 .no tuning. or a positive integer, got -1"),
    ({"trials_per_task": 0}, "tune.trials_per_task must be a positive integer, got 0"),
    ({"trials_per_iteration": 0}, "tune.trials_per_iteration must be a positive integer"),
    ({"population": 0}, "tune.population must be a positive integer"),
    ({"seed": -2}, r"tune.seed must be an integer in \[0, 2\*\*31 - 1\)"),
    ({"rpc_key": "rasp4"}, "tune.rpc_key is 'rasp4' but tune.rpc_tracker is empty"),
    ({"rpc_tracker": "localhost:9190"}, "tune.rpc_key is empty"),
    ({"rpc_tracker": "localhost", "rpc_key": "rasp4"}, "RPC tracker 'localhost': expected host:port"),
    ({"batched_build": "yes"}, "tune.batched_build must be true or false, got 'yes'"),
    ({"weight_layout_rewrite": 1}, "tune.weight_layout_rewrite must be true or false, got 1"),
])
def test_bad_tune_params_are_named(overrides, match):
    with pytest.raises(InputError, match=match):
        params_from_repo("tune", TuneParams, **overrides)


def test_an_rpc_tracker_with_its_key_gives_the_rpc_target():
    params = params_from_repo("tune", TuneParams, rpc_tracker="10.0.0.7:9190", rpc_key="rasp4")
    assert (params.rpc.host, params.rpc.port, params.rpc.key) == ("10.0.0.7", 9190, "rasp4")
    assert params_from_repo("tune", TuneParams).rpc is None
