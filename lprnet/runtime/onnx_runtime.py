"""The ONNX Runtime: an ONNX model (fp32 or int8 QDQ) on its CPU execution provider, as a Predictor.

Needs neither torch nor the onnx package: a deployment that runs ONNX models imports only this and ONNX Runtime.
"""

from __future__ import annotations

import os

import numpy as np

from lprnet.errors import InputError
from lprnet.model.alphabet import get_alphabet
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH

# ONNX Runtime's QDQ propagation moves the quantize after each channel-selecting max pool above the pool, which then
# runs on uint8 in NCHW through ONNX Runtime's scalar pooling code, a quarter of the int8 model's time under ONNX
# Runtime's per-node profiler. Without it the pools stay float, the int8 model is faster than fp32 again, and its
# logits are unchanged. Models without QDQ are unaffected.
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
        raise InputError(f"{path}: ONNX Runtime cannot load this model ({str(error).splitlines()[0]})") from None


class OnnxRuntimePredictor:
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.session = onnx_session(path, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "alphabet" not in metadata:
            raise InputError(f"{path}: no 'alphabet' in the ONNX metadata (export it with lprnet.export)")
        try:
            self.alphabet = get_alphabet(metadata["alphabet"])
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4 \
                or list(inputs[0].shape[1:]) != [3, INPUT_HEIGHT, INPUT_WIDTH]:
            found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise InputError(f"{path}: expects input(s) {found}, not one float tensor (N, 3, {INPUT_HEIGHT}, "
                             f"{INPUT_WIDTH})")
        if not outputs or outputs[0].type != "tensor(float)" or len(outputs[0].shape) != 3:
            raise InputError(f"{path}: its first output is {outputs[0].type if outputs else 'absent'}, not float "
                             "logits (N, classes, sequence)")
        self.input_name = inputs[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]
