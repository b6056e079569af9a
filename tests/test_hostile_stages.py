"""Hostile paths and inputs given to the stage scripts (run in this process): each stops with exit status 1 and one
line naming the path or key, before it writes anything, and leaves its inputs as they were.

- Every stage in dvc.yaml, every output pointed at one of its inputs or at the params file (the data stage once
  replaced the user's images with its splits): refused by `lprnet.pipeline.stage.parse_args`.
- Inputs named in params.yaml (data.folder, baseline.weights) overlapping an output; an output that is a folder
  where a file goes (`--metrics` once let the data stage write its folder first).
- Bad inputs found only after an output was written: bench params in baseline, a non-int8 `--quantized` in
  export-onnx, a report metrics file without `accuracy`, a TVM target with a garbage `mtriple`.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_stage_params import inputs, run_stage_in_process, small_params, stage_argv  # noqa: F401 (a fixture)

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_paths(stage: str) -> tuple[str, dict[str, str], set[str]]:
    """(script, option -> path in the dvc.yaml command, the options that are outputs)."""
    spec = DVC[stage]
    words = shlex.split(spec["cmd"])
    script, options = words[1], dict(zip(words[2::2], words[3::2]))
    outputs = {next(iter(out)) if isinstance(out, dict) else out
               for kind in ("outs", "metrics", "plots") for out in spec.get(kind, [])}
    deps = spec.get("deps", [])

    def holds(folder: str, paths) -> bool:
        return any(path == folder or path.startswith(folder + "/") for path in paths)

    # An output, inside one, or a folder of outputs from which the stage reads nothing (report's --out).
    written = {option for option, path in options.items()
               if any(holds(out, [path]) for out in outputs) or (holds(path, outputs) and not holds(path, deps))}
    return script, options, written


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def run_script(script: str, argv: list[str], monkeypatch) -> int:
    stem = Path(script).stem
    return run_stage_in_process(stem, [script, *argv], monkeypatch)


def assert_one_line(stderr: str, *named: str) -> None:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for text in named:
        assert text in stderr, (text, stderr)


def overlap_cases() -> list[tuple[str, str, str]]:
    cases = []
    for stage in DVC:
        _, options, written = stage_paths(stage)
        read = [option for option in options if option not in written]
        for output in sorted(written):
            cases += [(stage, output, target) for target in ([read[0]] if read else []) + ["--params"]]
    return cases


@pytest.mark.parametrize(("stage", "output", "target"), overlap_cases(), ids=lambda v: v)
def test_an_output_on_an_input_is_refused_before_any_work(tmp_path, monkeypatch, capsys, stage, output, target):
    script, options, _ = stage_paths(stage)
    root = tmp_path / "repo"
    root.mkdir()
    paths = {option: root / path for option, path in options.items()}
    for option, path in paths.items():  # every input exists, with content
        if option not in stage_paths(stage)[2]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"input {option}\n", encoding="utf-8")
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    paths["--params"] = root / "params.yaml"
    paths[output] = paths[target]
    before = snapshot(root)
    code = run_script(str(REPO / script), [f"{option}={path}" for option, path in paths.items()], monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, output, str(paths[target].resolve()))
    assert snapshot(root) == before


def data_argv(params: Path, out: Path, metrics: Path) -> list[str]:
    return ["--params", str(params), f"--out={out}", f"--metrics={metrics}"]


@pytest.mark.parametrize("where", ["the folder", "its parent", "inside it"])
def test_the_data_stage_never_writes_over_the_images_it_reads(tmp_path, inputs, monkeypatch, capsys,  # noqa: F811
                                                             where):
    plates = tmp_path / "user" / "plates"
    plates.mkdir(parents=True)
    for image in (inputs / "plates").iterdir():
        (plates / image.name).write_bytes(image.read_bytes())
    params = small_params(inputs)
    params["data"].update(source="folder", folder=str(plates))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out = {"the folder": plates, "its parent": plates.parent, "inside it": plates / "prepared"}[where]
    before = snapshot(tmp_path / "user")
    code = run_script(str(REPO / "stages/data.py"), data_argv(tmp_path / "params.yaml", out, tmp_path / "d.json"),
                      monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, "--out", "data.folder")
    assert snapshot(tmp_path / "user") == before and not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("case", ["metrics is a folder", "metrics is the out folder", "metrics inside out",
                                  "a parent is a file"])
def test_outputs_that_clash_with_each_other_or_the_disk_are_refused(tmp_path, inputs, monkeypatch, capsys,  # noqa: F811
                                                                    case):
    params = small_params(inputs)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    out, metrics = {
        "metrics is a folder": (tmp_path / "prepared", tmp_path / "folder"),
        "metrics is the out folder": (tmp_path / "prepared", tmp_path / "prepared"),
        "metrics inside out": (tmp_path / "prepared", tmp_path / "prepared" / "data.json"),
        "a parent is a file": (tmp_path / "prepared", tmp_path / "file" / "data.json"),
    }[case]
    before = snapshot(tmp_path)
    code = run_script(str(REPO / "stages/data.py"), data_argv(tmp_path / "params.yaml", out, metrics), monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, "--")
    assert snapshot(tmp_path) == before


def test_baseline_weights_are_never_the_model_it_writes(tmp_path, inputs, monkeypatch, capsys):  # noqa: F811
    weights = tmp_path / "weights.pt"
    weights.write_bytes((inputs / "baseline.pt").read_bytes())
    params = small_params(inputs)
    params["baseline"]["weights"] = str(weights)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    argv = stage_argv("baseline", inputs, tmp_path / "params.yaml", tmp_path / "out")
    argv = [f"--model={weights}" if arg.startswith("--model=") else arg for arg in argv]
    before = snapshot(tmp_path)
    code = run_stage_in_process("baseline", argv, monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, "--model", "baseline.weights")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("key", "value"), [("runs", 0), ("threads", -3), ("threads", 100000),
                                            ("throughput_seconds", float("nan")), ("eval_batch", "64")])
@pytest.mark.parametrize("stage", ["baseline", "prune"])
def test_bad_bench_params_stop_a_stage_before_its_model_is_written(tmp_path, inputs, monkeypatch, capsys,  # noqa: F811
                                                                   stage, key, value):
    params = small_params(inputs)
    params["bench"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    code = run_stage_in_process(stage, stage_argv(stage, inputs, tmp_path / "params.yaml", tmp_path / "out"),
                                monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, f"bench.{key}")
    assert not (tmp_path / "out").exists()


def test_export_onnx_refuses_a_float_model_as_int8_before_writing(tmp_path, inputs, monkeypatch, capsys):  # noqa: F811
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    (calibration / "torch.pt").write_bytes((inputs / "calibration/torch.pt").read_bytes())
    (calibration / "calibration.json").write_text(json.dumps({"method": "minmax", "onnx_method": "torch",
                                                              "num_images": 4}), encoding="utf-8")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(inputs) | {
        "export_onnx": yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["export_onnx"]}),
        encoding="utf-8")
    out = tmp_path / "out"
    argv = ["stages/export_onnx.py", "--params", str(tmp_path / "params.yaml"), f"--pruned={inputs / 'pruned.pt'}",
            f"--quantized={inputs / 'pruned.pt'}", f"--calibration={calibration}", f"--data={inputs / 'data'}",
            f"--baseline={inputs / 'pruned.pt'}", f"--fp32={out / 'onnx/fp32.onnx'}",
            f"--int8={out / 'onnx/int8.onnx'}", f"--reference={out / 'onnx/baseline.onnx'}",
            f"--metrics_fp32={out / 'fp32.json'}", f"--metrics_int8={out / 'int8.json'}"]
    code = run_stage_in_process("export_onnx", argv, monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, str(inputs / "pruned.pt"), "not an int8 LPRNet artifact")
    assert not out.exists()


def run_report(tmp_path: Path, monkeypatch) -> int:
    """The report stage on `tmp_path`/metrics, writing into `tmp_path`/reports, with the repository's params."""
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    out = tmp_path / "reports"
    return run_stage_in_process("report", [
        "stages/report.py", "--params", str(tmp_path / "params.yaml"), f"--metrics={tmp_path / 'metrics'}",
        f"--out={out}", f"--pareto_csv={out / 'pareto.csv'}", f"--sizes_csv={out / 'sizes.csv'}"], monkeypatch)


def test_the_report_names_a_metrics_file_without_accuracy_and_writes_nothing(tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "baseline.json").write_text(json.dumps({"size_bytes": 1000}), encoding="utf-8")
    (metrics / "benchmark.json").write_text(json.dumps({
        "threads": 2, "runs": 10, "torch_fp32_baseline_latency_ms_p50": 5.0, "torch_fp32_baseline_latency_ms_p90": 6.0,
        "torch_fp32_baseline_latency_ms_mad": 0.1, "torch_fp32_baseline_throughput_ips": 100.0}), encoding="utf-8")
    out = tmp_path / "reports"
    assert run_report(tmp_path, monkeypatch) == 1
    assert_one_line(capsys.readouterr().err, str(metrics / "baseline.json"), "accuracy")
    assert not out.exists()


def test_a_tvm_target_with_a_garbage_mtriple_stops_the_tvm_stage(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tvm")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tvm"]["target"] = {"kind": "llvm", "mtriple": "garbage-unknown-none"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    script, options, _ = stage_paths("tvm-import")
    out = tmp_path / "out"
    argv = ["--params", str(tmp_path / "params.yaml"), *(f"{option}={out / path}" for option, path in options.items())]
    code = run_script(str(REPO / script), argv, monkeypatch)
    assert code == 1
    assert_one_line(capsys.readouterr().err, "tvm.target", "garbage")
    assert not out.exists()


def test_a_metrics_file_that_is_not_utf8_is_one_line_for_the_report_and_the_gate(tmp_path, monkeypatch, capsys):
    from lprnet.__main__ import main as cli

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "baseline.json").write_bytes(b'{"accuracy": "\xff"}')
    assert run_report(tmp_path, monkeypatch) == 1
    assert_one_line(capsys.readouterr().err, str(metrics / "baseline.json"), "not UTF-8")
    assert not (tmp_path / "reports").exists()
    assert cli(["gate", "--against", "HEAD", "--params", str(tmp_path / "params.yaml"), "--metrics", str(metrics)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line(captured.err, str(metrics / "baseline.json"), "not UTF-8")


def test_an_output_that_links_to_the_images_replaces_the_link_not_the_images(tmp_path, inputs,  # noqa: F811
                                                                              monkeypatch):
    """A link is renamed over, never followed (DVC may link outputs into its cache): the images stay."""
    plates = tmp_path / "plates"
    plates.mkdir()
    for image in (inputs / "plates").iterdir():
        (plates / image.name).write_bytes(image.read_bytes())
    (tmp_path / "prepared").symlink_to(plates, target_is_directory=True)
    params = small_params(inputs)
    params["data"].update(source="folder", folder=str(plates), alphabet="latin")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    before = snapshot(plates)
    monkeypatch.setattr(sys, "argv", ["stages/data.py", *data_argv(tmp_path / "params.yaml", tmp_path / "prepared",
                                                                   tmp_path / "d.json")])
    runpy.run_path(str(REPO / "stages/data.py"), run_name="__main__")  # succeeds: no SystemExit
    assert snapshot(plates) == before
    assert not (tmp_path / "prepared").is_symlink() and (tmp_path / "prepared" / "test.npz").is_file()
