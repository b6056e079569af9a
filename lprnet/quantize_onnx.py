"""int8 QDQ ONNX with ONNX Runtime's own tooling: calibration ranges from the calib split, then quantize_static.

Calibration writes ONNX Runtime's JSON range cache (every activation tensor's range, by tensor name) for a given
fp32 ONNX file; quantization reads that cache instead of re-running data, so the two steps can be separate
pipeline stages. The global-context arithmetic (pools, pow, sums, divisions, concat and the `container` conv after
it) stays fp32: int8 there costs accuracy and saves almost nothing. Does not export from PyTorch (see export.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

from lprnet.data import to_network_input
from lprnet.io import atomic_path

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# Quantized op types: the backbone's convolutions (BN is folded into them at export) and the max pools between.
QUANTIZED_OP_TYPES = ["Conv", "MaxPool"]


def calibration_method(name: str) -> CalibrationMethod:
    if name not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {name!r}; valid: {', '.join(CALIBRATION_METHODS)}")
    return CALIBRATION_METHODS[name]


class ImageBatches(CalibrationDataReader):
    # Batch 1: the histogram calibrators stack per-run outputs and refuse a ragged last batch.
    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 1):
        self.batches = iter([{input_name: to_network_input(images[i:i + batch_size])}
                             for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def context_nodes(model: onnx.ModelProto) -> list[str]:
    """The `container` conv: the Conv that reads the global-context Concat (kept fp32)."""
    concat_outputs = {out for node in model.graph.node if node.op_type == "Concat" for out in node.output}
    return [node.name for node in model.graph.node if node.op_type == "Conv" and set(node.input) & concat_outputs]


def calibrate_onnx(fp32_path: str | os.PathLike, images: np.ndarray, method: str, cache_path: str | os.PathLike,
                   percentile: float = 99.999) -> None:
    """Run the fp32 model over `images` (the calib split) and write ONNX Runtime's range cache."""
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="calibrate.") as work:
        calibrator = create_calibrator(Path(fp32_path), QUANTIZED_OP_TYPES,
                                       augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       calibrate_method=calibration_method(method),
                                       extra_options={"percentile": percentile, "symmetric": False})
        calibrator.collect_data(ImageBatches(images, input_name))
        ranges = calibrator.compute_data()
    # compute_data's order follows a set of tensor names (it varies with Python's hash seed); sorted, equal ranges
    # give an equal file.
    ranges = TensorsData(ranges.calibration_method, {name: ranges[name] for name in sorted(ranges.data)})
    with atomic_path(cache_path) as tmp:
        save_tensors_data(ranges, tmp)


def quantize_qdq(fp32_path: str | os.PathLike, cache_path: str | os.PathLike, method: str,
                 out_path: str | os.PathLike, reduce_range: bool = True) -> None:
    """Static int8 QDQ: uint8 activations, per-channel int8 weights; `reduce_range` (7-bit weights) is what ONNX
    Runtime documents for x86 without VNNI, such as this AVX2 machine."""
    model = onnx.load(str(fp32_path))
    metadata = {p.key: p.value for p in model.metadata_props}
    with atomic_path(out_path) as tmp:
        quantize_static(str(fp32_path), str(tmp), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OP_TYPES, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=context_nodes(model), calibrate_method=calibration_method(method),
                        calibration_cache_path=str(cache_path))
        quantized = onnx.load(str(tmp))
        onnx.helper.set_model_props(quantized, metadata)
        onnx.checker.check_model(quantized)
        onnx.save(quantized, str(tmp))
