"""One small Predictor per runtime with the same call: images (N,3,24,94) float32 -> logits (N,C,18) float32.

PyTorch and ONNX Runtime predictors live here, TVM's in compile_tvm.py. Evaluation and benchmarking take a
Predictor and never branch on the runtime. `load_predictor` picks the runtime from the artifact: a .onnx file, a
TVM artifact folder, or a PyTorch file. Does not decode or score (see evaluate.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lprnet.alphabet import Alphabet, get_alphabet
from lprnet.model import INPUT_HEIGHT, INPUT_WIDTH


class Predictor(Protocol):
    name: str
    alphabet: Alphabet

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class TorchPredictor:
    name = "torch"

    def __init__(self, model: torch.nn.Module, alphabet: Alphabet, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.alphabet = alphabet

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(images)).numpy()


# ONNX Runtime's QDQ propagation moves the quantize after each channel-selecting max pool above the pool, which then
# runs on uint8 in NCHW through ONNX Runtime's scalar pooling code (0.56 of 2.1 ms under its per-node profiler, for the
# default profile's int8 model). Without it the pools stay float and that model takes 0.93 ms instead of 1.43 (fp32:
# 1.34 ms; 2 threads, interleaved), with identical logits on the test split. Models without QDQ are unaffected.
ORT_DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


def onnx_session(path: str | os.PathLike, threads: int | None = None,
                 optimized_model_path: str | os.PathLike | None = None):
    """An ONNX Runtime CPU session as the pipeline runs every ONNX model; `optimized_model_path` also writes the graph
    ONNX Runtime optimised it to (to see which kernels it runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=ORT_DISABLED_OPTIMIZERS)
    except Exception as error:  # ORT raises its own exception types; name the file
        raise ValueError(f"{path}: ONNX Runtime cannot load this model ({str(error).splitlines()[0]})") from None


class OnnxRuntimePredictor:
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.session = onnx_session(path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "alphabet" not in metadata:
            raise ValueError(f"{path}: no 'alphabet' in the ONNX metadata (export it with lprnet.export)")
        self.alphabet = get_alphabet(metadata["alphabet"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


def load_predictor(path: str | os.PathLike, threads: int | None = None, alphabet: Alphabet | None = None
                   ) -> Predictor:
    """A predictor for any artifact the pipeline writes, or an LPRNet_Pytorch state dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such artifact")
    if path.is_dir():
        from lprnet.compile_tvm import TVMPredictor, is_tvm_artifact

        if not is_tvm_artifact(path):
            raise ValueError(f"{path}: a folder without a TVM manifest.json")
        return TVMPredictor(path, threads)
    if path.suffix == ".onnx":
        return OnnxRuntimePredictor(path, threads)
    from lprnet.artifacts import load_model
    from lprnet.quantize import is_quantized_artifact, load_quantized

    if is_quantized_artifact(path):
        model, saved = load_quantized(path)
        if alphabet is not None and alphabet != saved:
            raise ValueError(f"{path}: the int8 model's alphabet is {saved.name!r}, not {alphabet.name!r}")
        return TorchPredictor(model, saved, threads)
    model, alphabet = load_model(path, alphabet)
    return TorchPredictor(model, alphabet, threads)


def example_input(batch: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic normalised input batch for timing and parity checks."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(batch, 3, INPUT_HEIGHT, INPUT_WIDTH)).astype(np.float32)
