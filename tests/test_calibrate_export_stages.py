"""The calibrate and export-onnx stages: their params (every key from params.yaml, every check naming its key), the
calibrate stage script's one-line errors, and both steps end to end on a random model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from lprnet.compile.onnx_int8 import ONNX_METHODS, TORCH_RANGES
from lprnet.errors import InputError
from lprnet.model.checkpoint import save_model
from lprnet.model.data import save_split
from lprnet.optimize.calibrate import METHODS
from lprnet.optimize.quantize import quantize, save_quantized
from lprnet.pipeline.calibrate_step import CalibrateParams, calibrate_stage
from lprnet.pipeline.export_onnx_step import ExportParams, export_onnx_stage
from lprnet.pipeline.params import read_section
from lprnet.runtime.bench import BenchConfig
from tests.conftest import REPO, params_from_repo, repo_params

SECTIONS = {"calibrate": CalibrateParams, "export_onnx": ExportParams}


def write_params(tmp_path: Path, section: str, **overrides) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params[section].update(overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("calibrate", "method", "kl", "calibrate.method: unknown calibration method 'kl'; choose one of: entropy, "
                                  "histogram, minmax, percentile"),
    ("calibrate", "method", TORCH_RANGES, "calibrate.method: unknown calibration method 'torch'"),
    ("calibrate", "onnx_method", "kl", "calibrate.onnx_method: unknown calibration method 'kl'; choose one of: "
                                       "torch, entropy, histogram, minmax, percentile"),
    ("calibrate", "num_images", -1, "calibrate.num_images must be >= 0"),
    ("export_onnx", "fp32_tolerance", 0, "export_onnx.fp32_tolerance must be positive"),
    ("export_onnx", "int8_min_agreement", 1.5, r"export_onnx.int8_min_agreement must be in \[0, 1\]"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path, section, key, value, message):
    with pytest.raises(InputError, match=message):
        read_section(write_params(tmp_path, section, **{key: value}), section, SECTIONS[section])


def test_both_method_keys_take_the_registrys_names():
    for name in METHODS:
        assert params_from_repo("calibrate", CalibrateParams, method=name, onnx_method=name).onnx_method == name
    assert set(ONNX_METHODS) == {TORCH_RANGES, *METHODS}
    assert params_from_repo("calibrate", CalibrateParams, onnx_method=TORCH_RANGES).onnx_method == TORCH_RANGES


@pytest.fixture
def stage_inputs(tmp_path, random_model, latin, images_and_labels):
    data = tmp_path / "data"
    data.mkdir()
    images, labels = images_and_labels
    for split in ("calib", "test"):
        save_split(data / f"{split}.npz", images, labels)
    (data / "alphabet.json").write_text(json.dumps({"alphabet": latin.name}))
    save_model(tmp_path / "pruned.pt", random_model, latin)
    return tmp_path / "pruned.pt", data


def run_calibrate_script(tmp_path, pruned, data, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages/calibrate.py"),
                           "--params", str(write_params(tmp_path, "calibrate", **overrides)), "--pruned", str(pruned),
                           "--data", str(data), "--out", str(tmp_path / "calibration"),
                           "--metrics", str(tmp_path / "calibrate.json")], capture_output=True, text=True)


def test_the_calibrate_script_refuses_a_bad_method_in_one_line_without_output(tmp_path, stage_inputs):
    result = run_calibrate_script(tmp_path, *stage_inputs, onnx_method="percentil")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'params.yaml'}: calibrate.onnx_method: unknown calibration method 'percentil'; choose "
        f"one of: {', '.join(ONNX_METHODS)}"]
    assert not (tmp_path / "calibration").exists() and not (tmp_path / "calibrate.json").exists()


def test_the_calibrate_script_writes_both_runtimes_statistics(tmp_path, stage_inputs):
    result = run_calibrate_script(tmp_path, *stage_inputs, onnx_method="histogram", num_images=20)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "calibration").iterdir()) == ["calibration.json", "onnx_ranges.json",
                                                                           "torch.pt"]
    summary = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    assert summary == {"method": repo_params("calibrate")["method"], "onnx_method": "histogram", "num_images": 20}
    metrics = json.loads((tmp_path / "calibrate.json").read_text())
    assert metrics["num_images"] == 20 and metrics["num_observed_tensors"] > 10


def test_the_steps_calibrate_quantize_and_export_with_onnx_runtime_ranges(tmp_path, stage_inputs, random_model,
                                                                         latin):
    # The default, onnx_method torch, runs in the end-to-end tests (tests/test_pipeline.py).
    from lprnet.optimize.calibrate import load_calibration

    pruned, data, onnx_method = *stage_inputs, "minmax"
    metrics = calibrate_stage(pruned, data, tmp_path / "calibration",
                              params_from_repo("calibrate", CalibrateParams, onnx_method=onnx_method))
    assert metrics["num_images"] == 24
    assert (tmp_path / "calibration" / "onnx_ranges.json").exists() == (onnx_method != TORCH_RANGES)
    calibration = load_calibration(tmp_path / "calibration" / "torch.pt")
    save_quantized(tmp_path / "quantized.pt", random_model.config, latin, quantize(random_model, calibration),
                   calibration)
    bench = BenchConfig(**{**repo_params("bench"), "warmup": 1, "runs": 2, "throughput_runs": 1,
                           "throughput_seconds": 0.1})
    params = params_from_repo("export_onnx", ExportParams, int8_min_agreement=0.5)
    # The random model is the baseline too: the reference the stage exports from it is the fp32 model's graph.
    fp32, int8 = export_onnx_stage(pruned, tmp_path / "quantized.pt", tmp_path / "calibration", data, pruned,
                                   tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "baseline.onnx", params,
                                   bench)
    assert (tmp_path / "baseline.onnx").read_bytes() == (tmp_path / "fp32.onnx").read_bytes()
    common = {"accuracy", "char_accuracy", "latency_ms_p50", "size_bytes"}
    assert common | {"max_abs_logit_diff", "torch_fp32_rounding"} <= set(fp32)
    assert common | {"agreement_with_torch_int8"} <= set(int8)
    assert fp32["max_abs_logit_diff"] <= repo_params("export_onnx")["fp32_tolerance"]
    assert int8["agreement_with_torch_int8"] >= 0.5
    # The first pool's selection is folded into the 1x1 convolution after it in the fp32 graphs, not in the int8
    # graph, which is built from the export before the fold.
    assert fp32["channel_selections_folded"] == 1

    def slices(path):
        return [node.op_type for node in onnx.load(path).graph.node].count("Slice")
    assert slices(tmp_path / "int8.onnx") == slices(tmp_path / "fp32.onnx") + 1


def test_the_export_step_refuses_a_folder_that_is_not_the_calibrate_stages(tmp_path, stage_inputs):
    pruned, data = stage_inputs
    (tmp_path / "calibration").mkdir()
    params = params_from_repo("export_onnx", ExportParams)
    bench = BenchConfig(**repo_params("bench"))
    with pytest.raises(InputError, match="calibration.json: no such file"):
        export_onnx_stage(pruned, tmp_path / "q.pt", tmp_path / "calibration", data, pruned, tmp_path / "fp32.onnx",
                          tmp_path / "int8.onnx", tmp_path / "baseline.onnx", params, bench)
    assert not (tmp_path / "fp32.onnx").exists() and not (tmp_path / "baseline.onnx").exists()
