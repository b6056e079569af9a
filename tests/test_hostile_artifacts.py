"""Hostile artifacts and arguments given to the CLI (`predict`, `eval`) and to each artifact loader: exit status 1 (2
for a usage error) with one line naming the file or argument, no traceback, nothing written, the file untouched.

- PyTorch files: a pipeline file with a bad or missing config or state dict, a tensor replaced by an int, a config
  demanding terabytes or more weights than its file holds, an unknown alphabet, a pickle of an object (refused
  without PyTorch's advice to load it unsafely), a bare state dict whose class count names no alphabet.
- ONNX models with an int64 input, or another alphabet than `--alphabet`; TVM folders whose manifest is a JSON
  number or points outside its folder, whose `model.so` is random bytes, truncated (this once died of SIGBUS: one
  subprocess proves it no longer does) or built for another machine.
- The prepared folder's split files (truncated, object arrays) and alphabet.json (`[]`), a calibration pickle.
- Thread counts that once crashed the process (SIGSEGV at 100000), and `--runs 0`: usage errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lprnet.__main__ import main as cli
from lprnet.errors import InputError
from lprnet.model.checkpoint import FORMAT, save_model
from lprnet.model.data import load_split, prepared_alphabet, save_split
from lprnet.optimize.calibrate import load_calibration
from tests.conftest import REPO, make_random_model


class Pickled:
    """Any object that is not a tensor or plain data: what a malicious pickle would carry."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder with a pipeline model file, a bare state dict and one plate image."""
    from lprnet.model.alphabet import get_alphabet
    from lprnet.model.synth import render_split

    root = tmp_path_factory.mktemp("hostile")
    latin = get_alphabet("latin")
    save_model(root / "model.pt", make_random_model(latin), latin)
    torch.save(make_random_model(get_alphabet("chinese68")).state_dict(), root / "bare.pt")
    images, _ = render_split(seed=1, split="test", count=1, symbols=latin.symbols)
    Image.fromarray(np.ascontiguousarray(images[0, :, :, ::-1])).save(root / "AB123.png")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys, root: Path, code: int = 1) -> str:
    """Run the CLI in this process; assert the exit status, one line on stderr, nothing on stdout, `root` untouched;
    returns the line."""
    before = snapshot(root)
    try:
        status = cli(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    assert status == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured
    assert "Traceback" not in captured.err and snapshot(root) == before
    return captured.err


# ------------------------------------------------------------------------------------------------ PyTorch files

def pipeline_payload(root: Path, change) -> dict:
    payload = torch.load(root / "model.pt", weights_only=True)
    change(payload)
    return payload


def set_key(key, value):
    return lambda payload: payload.__setitem__(key, value)


def set_config(key, value):
    return lambda payload: payload["config"].__setitem__(key, value)


def del_key(key):
    return lambda payload: payload.pop(key)


def int_for_tensor(payload):
    payload["state_dict"][next(iter(payload["state_dict"]))] = 3


TORCH_FILES = {  # name -> (what to save, from the pipeline file's payload; what the line must say)
    "config is a string": (lambda r: pipeline_payload(r, set_key("config", "x")), "config is a str"),
    "no config": (lambda r: pipeline_payload(r, del_key("config")), "no config"),
    "no state_dict": (lambda r: pipeline_payload(r, del_key("state_dict")), "no state_dict"),
    "state_dict is a string": (lambda r: pipeline_payload(r, set_key("state_dict", "x")), "state_dict is a str"),
    "a tensor is an int": (lambda r: pipeline_payload(r, int_for_tensor), "not tensors: backbone.0.weight"),
    "terabyte config": (lambda r: pipeline_payload(r, set_config("stem", 10**7)), "stem must be"),
    "config beyond its file": (lambda r: pipeline_payload(r, set_config("head", 4096)), "more than its"),
    "unknown config key": (lambda r: pipeline_payload(r, set_config("layers", 3)), "unknown model config key"),
    "config value a string": (lambda r: pipeline_payload(r, set_config("block1", "128")), "block1 must be"),
    "unknown alphabet": (lambda r: pipeline_payload(r, set_key("alphabet", "greek")), "unknown alphabet 'greek'"),
    "alphabet a list": (lambda r: pipeline_payload(r, set_key("alphabet", ["latin"])), "not an alphabet name"),
    "pickled object": (lambda r: {"weights": Pickled()}, "never unpickled"),
    "a list": (lambda r: [1, 2], "expected a state dict"),
    "bare 50 classes": (lambda r: {**torch.load(r / "bare.pt", weights_only=True),
                                   "container.0.weight": torch.zeros(50, 1, 1, 1)}, "no unique alphabet has 50"),
    "bare, a tensor is a string": (lambda r: {**torch.load(r / "bare.pt", weights_only=True),
                                              "backbone.0.weight": "x"}, "not tensors"),
}


@pytest.mark.parametrize("case", sorted(TORCH_FILES))
def test_a_bad_pytorch_file_is_one_line_naming_it(tmp_path, files, capsys, case):
    make, expected = TORCH_FILES[case]
    path = tmp_path / "bad.pt"
    torch.save(make(files), path)
    line = refused(["predict", str(path), str(files / "AB123.png")], capsys, tmp_path)
    assert str(path) in line and expected in line, line
    assert "weights_only" not in line, line  # PyTorch's advice to load it unsafely is not passed on


@pytest.mark.parametrize("content", [b"", os.urandom(2048), b"PK\x03\x04" + os.urandom(64)],
                         ids=["empty", "random bytes", "a broken zip"])
def test_bytes_that_are_no_pytorch_file_are_one_line(tmp_path, files, capsys, content):
    (tmp_path / "bad.pt").write_bytes(content)
    line = refused(["predict", str(tmp_path / "bad.pt"), str(files / "AB123.png")], capsys, tmp_path)
    assert f"{tmp_path / 'bad.pt'}: not a loadable PyTorch state dict" in line


def test_an_int8_file_with_a_bad_config_is_one_line(tmp_path, files, capsys):
    from lprnet.optimize.quantize import FORMAT as INT8_FORMAT

    payload = pipeline_payload(files, set_config("stem", 10**7))
    torch.save({**payload, "format": INT8_FORMAT, "method": "minmax", "float_layers": []}, tmp_path / "int8.pt")
    line = refused(["predict", str(tmp_path / "int8.pt"), str(files / "AB123.png")], capsys, tmp_path)
    assert str(tmp_path / "int8.pt") in line and "stem must be" in line


def test_a_pipeline_file_read_with_another_alphabet_is_refused(files, capsys):
    payload = pipeline_payload(files, lambda p: None)
    assert payload["format"] == FORMAT
    line = refused(["predict", str(files / "model.pt"), str(files / "AB123.png"), "--alphabet", "chinese68"], capsys,
                   files)
    assert "alphabet" in line and str(files / "model.pt") in line


# -------------------------------------------------------------------------------------------------- CLI usage

@pytest.mark.parametrize(("extra", "flag"), [(["--threads", "100000"], "--threads"), (["--threads", "0"], "--threads"),
                                             (["--threads", "-3"], "--threads"), (["--threads", "two"], "--threads"),
                                             (["--batch", "0"], "--batch")],
                         ids=["threads=100000", "threads=0", "threads=-3", "threads=two", "batch=0"])
def test_thread_and_batch_counts_out_of_range_are_usage_errors(files, capsys, extra, flag):
    line = refused(["predict", str(files / "model.pt"), str(files / "AB123.png"), *extra], capsys, files, code=2)
    assert f"argument {flag}" in line


def test_eval_with_no_timed_runs_is_a_usage_error(files, capsys):
    line = refused(["eval", str(files / "model.pt"), "--images", str(files), "--runs", "0"], capsys, files, code=2)
    assert "argument --runs" in line


def test_the_thread_bound_holds_for_every_caller():
    from lprnet.runtime.predictor import MAX_THREADS, load_predictor

    with pytest.raises(InputError, match=f"threads must be an integer from 1 to {MAX_THREADS}"):
        load_predictor(REPO / "params.yaml", threads=MAX_THREADS + 1)


# ----------------------------------------------------------------------------------------------- ONNX models

def write_onnx(path: Path, input_type: int, alphabet: str = "latin", classes: int = 35) -> None:
    """A tiny ONNX model in the pipeline's contract: images (N,3,24,94) -> logits (N,classes,18)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((classes, 3, 24, 77), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("Conv", ["x", "w"], ["y"]),
         helper.make_node("Squeeze", ["y", "axis"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("images", input_type, ["N", 3, 24, 94])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, 18])],
        [weight, numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"alphabet": alphabet})
    onnx.save(model, str(path))


def test_an_onnx_model_with_an_int64_input_is_refused_at_load(tmp_path, files, capsys):
    from onnx import TensorProto

    write_onnx(tmp_path / "int64.onnx", TensorProto.INT64)
    line = refused(["predict", str(tmp_path / "int64.onnx"), str(files / "AB123.png")], capsys, tmp_path)
    assert str(tmp_path / "int64.onnx") in line and "tensor(int64)" in line


@pytest.mark.parametrize(("alphabet", "expected"), [("greek", "unknown alphabet 'greek'"),
                                                    ("latin", "alphabet is 'latin', not 'chinese68'")])
def test_an_onnx_alphabet_is_checked_against_the_flag(tmp_path, files, capsys, alphabet, expected):
    from onnx import TensorProto

    write_onnx(tmp_path / "model.onnx", TensorProto.FLOAT, alphabet)
    line = refused(["predict", str(tmp_path / "model.onnx"), str(files / "AB123.png"), "--alphabet", "chinese68"],
                   capsys, tmp_path)
    assert str(tmp_path / "model.onnx") in line and expected in line


# ---------------------------------------------------------------------------------------------- TVM artifacts

@pytest.fixture(scope="module")
def tvm_library(tmp_path_factory) -> Path:
    """A real TVM-built shared library (a tiny Relax function), the kind a TVM artifact folder holds."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with builder.function("main", [x]):
        builder.emit_func_output(builder.emit(relax.op.add(x, x)))
    path = tmp_path_factory.mktemp("tvm") / "model.so"
    relax.build(builder.get(), target=tvm.target.Target({"kind": "llvm"}),
                relax_pipeline="default_build").export_library(str(path))
    return path


def tvm_folder(folder: Path, so: bytes, **manifest) -> Path:
    """A TVM artifact folder with `so` as its library and a manifest whose SHA-256 matches it, with `manifest`'s
    keys changed."""
    import tvm

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.so").write_bytes(so)
    content = {"format": 1, "runtime": "tvm", "library": "model.so",
               "library_sha256": hashlib.sha256(so).hexdigest(), "target": {"kind": "llvm"},
               "input_shape": [1, 3, 24, 94], "output_shape": [1, 35, 18], "alphabet": "latin",
               "tvm_version": tvm.__version__, **manifest}
    (folder / "manifest.json").write_text(json.dumps(content), encoding="utf-8")
    return folder


def machine(library: bytes, e_machine: int) -> bytes:
    return library[:18] + e_machine.to_bytes(2, "little") + library[20:]


TVM_CASES = {  # name -> (library bytes from the real one, manifest changes, what the line must say)
    "random bytes": (lambda lib: os.urandom(len(lib)), {}, "no ELF header"),
    "truncated": (lambda lib: lib[: len(lib) * 2 // 3], {}, "past the file's"),
    "cut after the header": (lambda lib: lib[:64], {}, "past the file's"),
    "another machine": (lambda lib: machine(lib, 183), {}, "ELF machine 183"),
    "target of another machine": (lambda lib: lib, {"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}},
                                  "ELF machine 62"),
    "library outside its folder": (lambda lib: lib, {"library": "../model.so"}, "not a file name in its folder"),
    "library an absolute path": (lambda lib: lib, {"library": "/usr/lib/x.so"}, "not a file name in its folder"),
    "hash not a string": (lambda lib: lib, {"library_sha256": 5}, "library_sha256 5 is not a string"),
    "shape not a list": (lambda lib: lib, {"input_shape": "1x3"}, "input_shape '1x3'"),
    "unknown alphabet": (lambda lib: lib, {"alphabet": "greek"}, "unknown alphabet 'greek'"),
}


@pytest.mark.parametrize("case", sorted(TVM_CASES))
def test_a_bad_tvm_folder_is_refused_before_its_library_is_loaded(tmp_path, files, tvm_library, capsys, case):
    if case == "another machine" or case == "target of another machine":
        if os.uname().machine != "x86_64":
            pytest.skip("the case is written for an x86-64 host")
    make, changes, expected = TVM_CASES[case]
    folder = tvm_folder(tmp_path / "artifact", make(tvm_library.read_bytes()), **changes)
    line = refused(["predict", str(folder), str(files / "AB123.png")], capsys, tmp_path)
    assert str(folder) in line and expected in line, line


@pytest.mark.parametrize("content", ["3", "[1, 2]", "{", b"\xff\xfe"],
                         ids=["a number", "a list", "broken", "not UTF-8"])
def test_a_tvm_manifest_that_is_no_json_object_is_one_line(tmp_path, files, capsys, content):
    folder = tmp_path / "artifact"
    folder.mkdir()
    target = folder / "manifest.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = refused(["predict", str(folder), str(files / "AB123.png")], capsys, tmp_path)
    assert str(target) in line


def test_a_library_linked_out_of_its_folder_is_refused(tmp_path, files, tvm_library, capsys):
    folder = tvm_folder(tmp_path / "artifact", tvm_library.read_bytes())
    outside = tmp_path / "elsewhere.so"
    (folder / "model.so").rename(outside)
    (folder / "model.so").symlink_to(outside)
    line = refused(["predict", str(folder), str(files / "AB123.png")], capsys, tmp_path)
    assert "a link out of the artifact's folder" in line


def test_a_truncated_library_no_longer_kills_the_process(tmp_path, files, tvm_library):
    """In a subprocess: the process that loaded such a library died of SIGBUS (exit status 135)."""
    library = tvm_library.read_bytes()
    folder = tvm_folder(tmp_path / "artifact", library[: len(library) * 2 // 3])
    result = subprocess.run([sys.executable, "-m", "lprnet", "predict", str(folder), str(files / "AB123.png")],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert result.stderr.count("\n") == 1 and "not a whole shared library" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------- the prepared folder, ...

def split_files(folder: Path) -> dict:
    """Case -> a function writing that kind of bad split file to a path."""
    images = np.zeros((2, 24, 94, 3), np.uint8)
    save_split(folder / "good.npz", images, np.array(["A1", "B2"]))
    good = (folder / "good.npz").read_bytes()
    return {
        "truncated": lambda path: path.write_bytes(good[: len(good) // 2]),
        "object arrays": lambda path: np.savez(path, images=np.array([Pickled()], dtype=object),
                                               labels=np.array(["A"])),
        "a lone array": lambda path: np.save(path.with_suffix(".npy"), images) or path.with_suffix(".npy").rename(path),
        "no labels": lambda path: np.savez(path, images=images),
        "float images": lambda path: np.savez(path, images=images.astype(np.float32), labels=np.array(["A1", "B2"])),
        "labels of bytes": lambda path: np.savez(path, images=images, labels=np.array([b"A1", b"B2"])),
        "one label short": lambda path: np.savez(path, images=images, labels=np.array(["A1"])),
    }


SPLIT_CASES = ["truncated", "object arrays", "a lone array", "no labels", "float images", "labels of bytes",
               "one label short"]


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_a_bad_split_file_is_one_error_naming_it(tmp_path, case):
    split_files(tmp_path)[case](tmp_path / "test.npz")
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as error:
        load_split(tmp_path / "test.npz")
    assert str(error.value).startswith(f"{tmp_path / 'test.npz'}: ") and "\n" not in str(error.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("content", "expected"), [(b"[]", "expected an object"), (b'{"alphabet": "greek"}',
                                                                                    "unknown alphabet 'greek'"),
                                                   (b'{"alphabet": 5}', "expected an object"),
                                                   (b"\xff", "not UTF-8"), (b"{", "not UTF-8 JSON")])
def test_a_bad_alphabet_json_is_one_error_naming_it(tmp_path, content, expected):
    (tmp_path / "alphabet.json").write_bytes(content)
    with pytest.raises(InputError, match=f"^{tmp_path / 'alphabet.json'}: .*{expected}"):
        prepared_alphabet(tmp_path)


def test_a_calibration_pickle_is_refused_without_loading_it(tmp_path):
    torch.save({"format": "x", "observers": Pickled()}, tmp_path / "torch.pt")
    with pytest.raises(InputError) as error:
        load_calibration(tmp_path / "torch.pt")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'torch.pt'}: not a calibration artifact") and "never unpickled" in message
    assert "weights_only" not in message
