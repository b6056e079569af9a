"""The Predictor protocol: one call for every runtime, images (N,3,24,94) float32 -> logits (N,C,18) float32.

Each runtime has its module: torch_runtime.py, onnx_runtime.py, tvm_runtime.py. Evaluation and benchmarking take a
Predictor and never branch on the runtime. `load_predictor` picks the runtime from the artifact: a .onnx file, a TVM
artifact folder, a deploy folder (deploy.py) or a PyTorch file, and imports only that runtime. Does not decode or
score (see evaluate.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from lprnet.errors import InputError, MissingFileError
from lprnet.model.alphabet import Alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

# The most threads any runtime is asked for. An inference call on one plate cannot use more, and the runtimes do not
# bound it themselves: PyTorch given 100000 OpenMP threads crashes the process (SIGSEGV).
MAX_THREADS = 256


def check_threads(value, where: str) -> int:
    """`value` as a thread count in 1..MAX_THREADS; an InputError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise InputError(f"{where} must be an integer from 1 to {MAX_THREADS}, got {value!r}")
    return value


class Predictor(Protocol):
    name: str
    alphabet: Alphabet

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def load_predictor(path: str | os.PathLike, threads: int | None = None, alphabet: Alphabet | None = None
                   ) -> Predictor:
    """A predictor for any artifact the pipeline writes (the deploy folder included), or an LPRNet_Pytorch state
    dict. `alphabet` is what a bare state dict is read with; any other artifact carries its own, which must be it."""
    predictor = _load(Path(path), threads, alphabet)
    if alphabet is not None and predictor.alphabet != alphabet:
        raise InputError(f"{path}: the artifact's alphabet is {predictor.alphabet.name!r}, not {alphabet.name!r}")
    return predictor


def _load(path: Path, threads: int | None, alphabet: Alphabet | None) -> Predictor:
    if threads is not None:
        check_threads(threads, "threads")
    if not path.exists():
        raise MissingFileError(f"{path}: no such artifact")
    if path.is_dir():
        from lprnet.runtime.deploy import is_deployed, load_deployed

        if is_deployed(path):
            return load_deployed(path, threads)
        from lprnet.compile.tvm.artifact import is_tvm_artifact
        from lprnet.runtime.tvm_runtime import TVMPredictor

        if not is_tvm_artifact(path):
            raise InputError(f"{path}: a folder without a TVM manifest.json")
        return TVMPredictor(path, threads)
    if path.suffix == ".onnx":
        from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor

        return OnnxRuntimePredictor(path, threads)
    from lprnet.model.checkpoint import load_model
    from lprnet.optimize.quantize import is_quantized_artifact, load_quantized
    from lprnet.runtime.torch_runtime import TorchPredictor

    if is_quantized_artifact(path):
        return TorchPredictor(*load_quantized(path), threads)
    model, alphabet = load_model(path, alphabet)
    return TorchPredictor(model, alphabet, threads)


def example_input(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic normalised input batch for timing and parity checks."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(batch, 3, INPUT_HEIGHT, INPUT_WIDTH)).astype(np.float32)
