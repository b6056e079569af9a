"""The deploy folder (lprnet/runtime/deploy.py) with real ONNX and TVM artifacts of a random model: it predicts as its
artifact does, through `load_predictor`, through `python -m lprnet predict` and through the README's program, the
last two in a process where importing torch, onnx or dvc fails; a damaged manifest is refused by name. The choice of
what goes in it: tests/test_select.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lprnet.compile.onnx_export import export_onnx
from lprnet.errors import InputError
from lprnet.io import write_json_atomic
from lprnet.model.synth import render_split
from lprnet.pipeline.select_step import copy_artifact, deploy_manifest
from lprnet.runtime.deploy import DEPLOY_FILE
from lprnet.runtime.evaluate import predict_logits
from lprnet.runtime.predictor import load_predictor
from tests.conftest import REPO, make_random_model

BLOCKED = ("torch", "onnx", "dvc")
# Runs a module (-m NAME) or a file with importing any of BLOCKED failing, as in an environment without them.
BLOCKER = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is blocked: the deployed model must run without it")
sys.meta_path.insert(0, Block())
target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def run_blocked(*args: str) -> str:
    result = subprocess.run([sys.executable, "-c", BLOCKER, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def plates(tmp_path_factory, latin) -> tuple[np.ndarray, list[Path]]:
    """Six synthetic plates, in memory (BGR) and as PNG files."""
    images, labels = render_split(seed=5, split="test", count=6, symbols=latin.symbols)
    folder = tmp_path_factory.mktemp("plates")
    paths = [folder / f"{label}_{i}.png" for i, label in enumerate(labels)]
    for image, path in zip(images, paths):
        Image.fromarray(image[:, :, ::-1]).save(path)
    return images, paths


@pytest.fixture(scope="module")
def latin():
    from lprnet.model.alphabet import get_alphabet

    return get_alphabet("latin")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, latin) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(make_random_model(latin), latin, path)
    return path


def deploy(source: Path, folder: Path) -> Path:
    """A deploy folder of `source`, as the select stage writes it (without its evidence)."""
    folder.mkdir()
    predictor = load_predictor(copy_artifact(source, folder, load_predictor(source).name), threads=2)
    write_json_atomic(folder / DEPLOY_FILE, deploy_manifest(predictor, 2, {}))
    return folder


def readme_program(tmp_path: Path) -> Path:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- deploy snippet: [^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no deploy snippet"
    path = tmp_path / "read_plates.py"
    path.write_text(match.group(1), encoding="utf-8")
    return path


def plates_read(output: str) -> list[str]:
    return [line.split()[-1] if len(line.split()) > 1 else "" for line in output.splitlines()]


def check_deployed(source: Path, folder: Path, plates, tmp_path: Path) -> None:
    images, paths = plates
    expected = predict_logits(load_predictor(source, threads=2), images)
    assert np.array_equal(predict_logits(load_predictor(folder, threads=2), images), expected)
    cli = run_blocked("-m", "lprnet", "predict", str(folder), *map(str, paths))
    direct = subprocess.run([sys.executable, "-m", "lprnet", "predict", str(source), *map(str, paths)],
                            capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert cli == direct and len(cli.splitlines()) == len(paths)
    program = run_blocked(str(readme_program(tmp_path)), str(folder), *map(str, paths))
    assert plates_read(program) == [line.split("\t")[1] for line in direct.splitlines()]


def test_an_onnx_deploy_folder_runs_with_onnx_runtime_alone(onnx_model, plates, tmp_path):
    folder = deploy(onnx_model, tmp_path / "deploy")
    manifest = json.loads((folder / DEPLOY_FILE).read_text())
    assert manifest["runtime"] == "onnxruntime" and (folder / "model.onnx").read_bytes() == onnx_model.read_bytes()
    check_deployed(onnx_model, folder, plates, tmp_path)


@pytest.mark.slow
def test_a_tvm_deploy_folder_runs_with_tvm_alone(onnx_model, plates, tmp_path):
    from tests.test_backends import build_tvm_artifact

    artifact = tmp_path / "tvm"
    build_tvm_artifact(str(onnx_model), str(artifact))
    folder = deploy(artifact, tmp_path / "deploy")
    assert json.loads((folder / DEPLOY_FILE).read_text())["runtime"] == "tvm"
    check_deployed(artifact, folder, plates, tmp_path)


def test_the_blocker_blocks(tmp_path):
    script = tmp_path / "uses_torch.py"
    script.write_text("import torch\n")
    result = subprocess.run([sys.executable, "-c", BLOCKER, str(script)], capture_output=True, text=True)
    assert result.returncode != 0 and "torch is blocked" in result.stderr


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("runtime"), "missing key\\(s\\) runtime"),
    (lambda m: m.update(format=2), "format 2; this version reads format 1"),
    (lambda m: m.update(artifact="../elsewhere.onnx"), "runtime 'onnxruntime' with artifact '../elsewhere.onnx'"),
    (lambda m: m.update(alphabet={"name": "chinese68", "chars": "x"}), "its alphabet does not match"),
])
def test_a_damaged_manifest_is_refused_by_name(onnx_model, tmp_path, change, message):
    folder = deploy(onnx_model, tmp_path / "deploy")
    manifest = json.loads((folder / DEPLOY_FILE).read_text())
    change(manifest)
    (folder / DEPLOY_FILE).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=f"^{folder / DEPLOY_FILE}: {message}"):
        load_predictor(folder)
    (folder / DEPLOY_FILE).write_text("[1, 2")
    with pytest.raises(InputError, match="not a JSON deploy manifest"):
        load_predictor(folder)
