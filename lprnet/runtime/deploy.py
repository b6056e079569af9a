"""The delivered model's folder (models/deploy): one artifact in its runtime's own format, and a manifest that says
how to feed it and read it.

`select` (lprnet/pipeline/select_step.py) writes the folder; `load_deployed` runs it through the artifact's own
Predictor. The manifest (`deploy.json`) carries everything a program needs to run the model with its runtime alone
(ONNX Runtime or TVM, plus numpy), without this package: the runtime and the artifact's path in the folder, the TVM
target, the input (name, shape, layout, channel order, normalisation), the output and its decoding, the alphabet's
characters, and the evidence it was chosen on (validation and test accuracy, latency, the budget, the source
artifact's SHA-256). The README shows such a program.

Imports neither torch, nor the onnx package, nor DVC: `python -m lprnet predict models/deploy IMAGE` loads only the
runtime the manifest names (tests/test_deploy.py runs it with those imports blocked). Does not choose or write the
model (see select_step.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lprnet.errors import InputError, MissingFileError
from lprnet.model.alphabet import ALPHABETS, get_alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH, PIXEL_MEAN, PIXEL_SCALE, SEQUENCE_LENGTH

DEPLOY_FILE = "deploy.json"
DEPLOY_FORMAT = 1
# The runtime -> the artifact's name in the folder: a PyTorch file, an ONNX model, a TVM artifact folder.
ARTIFACT_NAMES = {"torch": "model.pt", "onnxruntime": "model.onnx", "tvm": "model"}
MANIFEST_KEYS = ("format", "runtime", "artifact", "input", "output", "alphabet")


def is_deployed(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / DEPLOY_FILE).is_file()


def input_spec(batch: int) -> dict:
    """The manifest's `input`: what the network expects, in the terms a program without this package needs."""
    return {"name": "images", "shape": [batch, 3, INPUT_HEIGHT, INPUT_WIDTH], "dtype": "float32", "layout": "NCHW",
            "channels": "BGR", "pixel_mean": PIXEL_MEAN, "pixel_scale": PIXEL_SCALE,
            "normalisation": "(pixel - pixel_mean) * pixel_scale"}


def output_spec(num_classes: int) -> dict:
    return {"shape": ["N", num_classes, SEQUENCE_LENGTH], "dtype": "float32",
            "decoding": "greedy CTC: argmax over axis 1 per column, collapse repeats, drop the blank (the alphabet's "
                        "last character)"}


def read_deploy_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / DEPLOY_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no deploy manifest (run `dvc repro select`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a JSON deploy manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a JSON object")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    if manifest["format"] != DEPLOY_FORMAT:
        raise InputError(f"{path}: format {manifest['format']!r}; this version reads format {DEPLOY_FORMAT}")
    if manifest["runtime"] not in ARTIFACT_NAMES or manifest["artifact"] != ARTIFACT_NAMES[manifest["runtime"]]:
        raise InputError(f"{path}: runtime {manifest['runtime']!r} with artifact {manifest['artifact']!r}; valid: "
                         + ", ".join(f"{runtime} with {name}" for runtime, name in ARTIFACT_NAMES.items()))
    return manifest


def load_deployed(folder: str | os.PathLike, threads: int | None = None):
    """The Predictor of a deploy folder: its artifact through that runtime's own Predictor, which imports only that
    runtime. The alphabet in the manifest must be the artifact's own."""
    from lprnet.runtime.predictor import load_predictor

    manifest = read_deploy_manifest(folder)
    predictor = load_predictor(Path(folder) / manifest["artifact"], threads)
    alphabet = manifest["alphabet"]
    name = alphabet.get("name") if isinstance(alphabet, dict) else None
    if not isinstance(name, str) or name not in ALPHABETS or get_alphabet(name).chars != alphabet.get("chars") \
            or predictor.alphabet.name != name:
        raise InputError(f"{Path(folder) / DEPLOY_FILE}: its alphabet does not match the artifact's "
                         f"({predictor.alphabet.name!r})")
    return predictor
