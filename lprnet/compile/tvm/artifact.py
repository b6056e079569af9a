"""The deployable TVM artifact: a folder with the compiled library, the module's TVMScript text and a manifest.

`save_artifact` writes it whole or not at all; `read_manifest` is what a runtime reads first (see
lprnet.runtime.tvm_runtime, which runs it). Imports nothing beyond TVM and the alphabets, so that a deployment
that only runs artifacts needs neither ONNX nor torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import tvm
from tvm import relax

from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_dir
from lprnet.model.alphabet import get_alphabet

INPUT_NAME = "images"  # lprnet.compile.onnx_export names the ONNX input so
LIBRARY_FILE = "model.so"
IR_FILE = "model.relax.py"  # TVMScript text of the module that was built, for reading, not for loading
MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = 1
MANIFEST_KEYS = ("format", "library", "library_sha256", "input_shape", "output_shape", "alphabet", "tvm_version")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(folder: str | os.PathLike, executable: relax.VMExecutable, mod: tvm.IRModule, target: dict,
                  input_shape: Sequence[int], alphabet_name: str, extra: dict | None = None) -> dict:
    """Write library, TVMScript and manifest into `folder`, which appears whole or not at all; returns the manifest.

    `extra` adds keys to the manifest (e.g. the pass lists), never replacing the ones written here.
    """
    get_alphabet(alphabet_name)  # an unknown name fails here, not when the artifact is loaded
    output_shape = [int(dim) for dim in mod["main"].ret_ty.shape]
    with atomic_dir(folder) as tmp:
        executable.export_library(str(tmp / LIBRARY_FILE))
        (tmp / IR_FILE).write_text(mod.script(), encoding="utf-8")
        manifest = {
            "format": ARTIFACT_FORMAT,
            "runtime": "tvm",
            "library": LIBRARY_FILE,
            "library_sha256": sha256_file(tmp / LIBRARY_FILE),
            "ir": IR_FILE,
            "target": target,
            "input_name": INPUT_NAME,
            "input_shape": [int(dim) for dim in input_shape],
            "output_shape": output_shape,
            "alphabet": alphabet_name,
            "tvm_version": tvm.__version__,
        }
        clashes = sorted(set(extra or {}) & set(manifest))
        if clashes:
            raise ValueError(f"extra manifest keys {clashes} would replace the artifact's own")
        manifest.update(extra or {})
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def is_tvm_artifact(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no TVM artifact manifest")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}")
    if manifest["format"] != ARTIFACT_FORMAT:
        raise InputError(f"{path}: artifact format {manifest['format']!r}, this code reads {ARTIFACT_FORMAT}")
    return manifest


