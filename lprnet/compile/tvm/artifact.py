"""The deployable TVM artifact: a folder with the compiled library, the module's TVMScript text and a manifest.

`save_artifact` writes it whole or not at all; `read_manifest` is what a runtime reads first (see
lprnet.runtime.tvm_runtime, which runs it). Imports nothing beyond TVM and the alphabets, so that a deployment
that only runs artifacts needs neither ONNX nor torch.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import tvm
from tvm import relax

from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_dir, sha256_file
from lprnet.model.alphabet import get_alphabet

INPUT_NAME = "images"  # lprnet.compile.onnx_export names the ONNX input so
LIBRARY_FILE = "model.so"
IR_FILE = "model.relax.py"  # TVMScript text of the module that was built, for reading, not for loading
MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = 1
MANIFEST_KEYS = ("format", "library", "library_sha256", "input_shape", "output_shape", "alphabet", "tvm_version")
BATCHED = "batched"  # optional manifest key: the build for a larger batch (library, library_sha256, input_shape)
BATCHED_LIBRARY_FILE = "model_batch{batch}.so"


def save_artifact(folder: str | os.PathLike, executable: relax.VMExecutable, mod: tvm.IRModule, target: dict,
                  input_shape: Sequence[int], alphabet_name: str, extra: dict | None = None,
                  batched: tuple[relax.VMExecutable, Sequence[int], dict] | None = None) -> dict:
    """Write library, TVMScript and manifest into `folder`, which appears whole or not at all; returns the manifest.

    `extra` adds keys to the manifest (e.g. the pass lists), never replacing the ones written here. `batched`
    (executable, its input shape, keys for its manifest entry) adds a second library, the same model built for a
    larger batch, which the runtime uses for whole batches of that size (manifest key `batched`).
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
        if batched is not None:
            batched_executable, batched_shape, batched_extra = batched
            library = BATCHED_LIBRARY_FILE.format(batch=int(batched_shape[0]))
            batched_executable.export_library(str(tmp / library))
            manifest[BATCHED] = {"library": library, "library_sha256": sha256_file(tmp / library),
                                 "input_shape": [int(dim) for dim in batched_shape], **batched_extra}
        clashes = sorted(set(extra or {}) & set(manifest))
        if clashes:
            raise ValueError(f"extra manifest keys {clashes} would replace the artifact's own")
        manifest.update(extra or {})
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def is_tvm_artifact(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of the artifact in `folder`, checked: a JSON object with every key, of the right type, whose
    `library` is a file name inside `folder`."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no TVM artifact manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not UTF-8 JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: a JSON {type(manifest).__name__}, not an object")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}")
    if manifest["format"] != ARTIFACT_FORMAT:
        raise InputError(f"{path}: artifact format {manifest['format']!r}, this code reads {ARTIFACT_FORMAT}")
    _check_library_keys(path, manifest, "")
    for key in ("alphabet", "tvm_version"):
        if not isinstance(manifest[key], str):
            raise InputError(f"{path}: {key} {manifest[key]!r} is not a string")
    for key in ("input_shape", "output_shape"):
        _check_shape(path, key, manifest[key])
    if not isinstance(manifest.get("target", {}), dict):
        raise InputError(f"{path}: target {manifest['target']!r} is not a dict")
    if BATCHED in manifest:
        batched = manifest[BATCHED]
        if not isinstance(batched, dict) or any(key not in batched for key in ("library", "library_sha256",
                                                                                  "input_shape")):
            raise InputError(f"{path}: {BATCHED} {batched!r} is not an object with library, library_sha256 and "
                             f"input_shape")
        _check_library_keys(path, batched, f"{BATCHED}.")
        _check_shape(path, f"{BATCHED}.input_shape", batched["input_shape"])
        if batched["input_shape"][1:] != manifest["input_shape"][1:]:
            raise InputError(f"{path}: {BATCHED}.input_shape {batched['input_shape']} is not input_shape "
                             f"{manifest['input_shape']} with another batch")
    return manifest


def _check_library_keys(path: Path, entry: dict, prefix: str) -> None:
    library = entry["library"]
    if not isinstance(library, str) or not library or Path(library).name != library or library in (".", ".."):
        raise InputError(f"{path}: {prefix}library {library!r} is not a file name in its folder")
    if not isinstance(entry["library_sha256"], str):
        raise InputError(f"{path}: {prefix}library_sha256 {entry['library_sha256']!r} is not a string")


def _check_shape(path: Path, key: str, shape) -> None:
    if not isinstance(shape, list) or len(shape) < 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise InputError(f"{path}: {key} {shape!r} is not a list of positive integers")


# ELF e_machine of LLVM's target architectures (the triple's first part), for the ones an artifact may be built for.
ELF_MACHINES = {"x86_64": 62, "i386": 3, "aarch64": 183, "arm": 40, "thumb": 40, "riscv64": 243, "riscv32": 243,
                "powerpc64": 21, "powerpc64le": 21, "powerpc": 20, "s390x": 22, "mips": 8, "mipsel": 8,
                "mips64": 8, "mips64el": 8, "loongarch64": 258, "sparcv9": 43}
ELF_DYN = 3  # e_type of a shared object


def target_arch(target: dict) -> str:
    """The architecture an llvm target compiles for: its mtriple's first part, or this machine's."""
    triple = target.get("mtriple") or tvm.target.codegen.llvm_get_system_triple()
    arch = str(triple).split("-")[0]
    return "i386" if re.fullmatch(r"i[3-7]86", arch) else arch


def check_library(library: Path, target: dict) -> None:
    """Fail unless `library` is a whole ELF shared object (every header, segment and section inside the file) for
    `target`'s architecture: TVM maps it into the process, and a truncated or foreign file crashes it (SIGBUS)
    instead of failing."""
    data = library.read_bytes()
    size = len(data)

    def refuse(why: str):
        raise InputError(f"{library}: not a whole shared library for this artifact's target ({why})")

    if size < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        refuse("no ELF header")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    header = struct.unpack_from(order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"), data, 16)
    e_type, e_machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = header
    if e_type != ELF_DYN:
        refuse(f"ELF type {e_type}, not a shared object")
    expected = ELF_MACHINES.get(target_arch(target)) if target.get("kind", "llvm") == "llvm" else None
    if expected is not None and e_machine != expected:
        refuse(f"ELF machine {e_machine}, the target's {target_arch(target)} is {expected}")
    if phnum == 0 or phentsize < (56 if wide else 32) or (shnum and shentsize < (64 if wide else 40)):
        refuse("malformed header tables")
    if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
        refuse(f"its header tables end past the file's {size} bytes")
    for i in range(phnum):  # a segment's bytes are what the loader maps
        if wide:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", data, phoff + i * phentsize)
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIIII", data, phoff + i * phentsize)
        if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
            refuse(f"segment {i} ends past the file's {size} bytes")
    for i in range(shnum):
        fields = struct.unpack_from(order + ("IIQQQQ" if wide else "IIIIII"), data, shoff + i * shentsize)
        sh_type, sh_offset, sh_size = fields[1], fields[4], fields[5]
        if sh_type != 8 and sh_offset + sh_size > size:  # SHT_NOBITS (.bss) takes no bytes
            refuse(f"section {i} ends past the file's {size} bytes")
