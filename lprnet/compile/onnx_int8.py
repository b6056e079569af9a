"""int8 QDQ ONNX with ONNX Runtime's own tooling (quantize_static), from one of two sources of activation ranges.

`torch_int8_plan`: the PyTorch int8 model's own scales and zero points, int8 weights and float parts, so that the
ONNX int8 model is the same quantization as the `quantize` stage's artifact (the default).
`calibrate_onnx`: ONNX Runtime's calibrators over the calib split, written as its JSON range cache (every activation
tensor's range, by tensor name) so that calibration and quantization can be separate pipeline stages; the
global-context arithmetic (pools, pow, sums, divisions, concat and the `container` conv after it) stays fp32.
Does not export from PyTorch (see export.py).
"""

from __future__ import annotations

import ast
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import (
    TensorData,
    TensorsData,
    create_calibrator,
    load_tensors_data,
    save_tensors_data,
)

from lprnet.errors import InputError
from lprnet.io import atomic_path
from lprnet.model.data import to_network_input

TORCH_RANGES = "torch"  # the `calibrate.onnx_method` that takes the PyTorch int8 model's ranges instead
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# Quantized op types: the backbone's convolutions (BN is folded into them at export) and the max pools between.
QUANTIZED_OP_TYPES = ["Conv", "MaxPool"]


def calibration_method(name: str) -> CalibrationMethod:
    if name not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {name!r}; valid: {', '.join(CALIBRATION_METHODS)}")
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


def _uint8_range(scale: float, zero_point: int) -> TensorData:
    # ONNX Runtime turns a range into scale (max - min) / 255 and zero point -min / scale: this range gives back
    # PyTorch's own (its activations are full 8-bit, see calibrate.ACTIVATION_DTYPE_ARGS).
    return TensorData(lowest=np.float32(-zero_point * scale), highest=np.float32((255 - zero_point) * scale))


def _quantized_weight(module: torch.nn.Module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    weight = weight() if callable(weight) else weight  # quantized convs expose it as a method
    return weight if isinstance(weight, torch.Tensor) and weight.is_quantized else None


class _OnnxNodes:
    """Finds the ONNX node that computes an FX module of the same float model.

    The exporter folds batch norm into the convolution and names the result after the batch norm, so convolutions
    are paired by order instead: the k-th FX convolution of a weight shape with the k-th ONNX Conv of that shape,
    both graphs being in forward order. Their weights are not compared: the plan replaces them with the int8
    model's, which quantization-aware training may have moved far from the export's (tiny published weights moved
    80 % in two steps). Other modules are found by the exporter's name scopes."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.found: dict[str, onnx.NodeProto] = {}

    def consumers(self, tensor: str, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if node.op_type == op_type and tensor in node.input]

    def node_of(self, name: str, module: torch.nn.Module) -> onnx.NodeProto:
        if name in self.found:
            return self.found[name]
        weight = _quantized_weight(module)
        if weight is not None:
            shape = list(weight.shape)
            taken = {id(node) for node in self.found.values()}
            matches = [node for node in self.nodes if node.op_type == "Conv" and id(node) not in taken
                       and list(getattr(self.initializers.get(node.input[1]), "dims", [])) == shape][:1]
            what = f"Conv with {tuple(shape)} weights left"
        else:
            matches = [node for node in self.nodes if name in _name_scopes(node)]
            what = "node in this module's name scope"
        if len(matches) != 1:
            raise InputError(f"{name}: expected one ONNX {what}, found {len(matches)}; the ONNX and the int8 model "
                             f"must come from the same float model")
        self.found[name] = matches[0]
        return matches[0]


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
    return ast.literal_eval(scopes)


@dataclass(frozen=True)
class QDQPlan:
    """What quantize_static needs besides the format: the fp32 graph, the activation ranges, the Conv nodes that
    stay fp32."""

    model: onnx.ModelProto
    ranges: TensorsData
    keep_float: list[str]


def onnx_runtime_plan(fp32: onnx.ModelProto, cache_path: str | os.PathLike) -> QDQPlan:
    """ONNX Runtime's own ranges (`calibrate_onnx`'s cache); the global context stays fp32."""
    return QDQPlan(fp32, load_tensors_data(cache_path), context_nodes(fp32))


def torch_int8_plan(fp32: onnx.ModelProto, quantized: torch.fx.GraphModule) -> QDQPlan:
    """The PyTorch int8 model's quantization in ONNX Runtime's terms, for `fp32`, the ONNX export of the same float
    model: the range of every activation it quantizes (by ONNX tensor name), its Conv nodes that compute in float,
    and its int8 weights (dequantized, written over the float ones so that ONNX Runtime rounds them to the same
    integers, up to its symmetric range of +-127 against PyTorch's -128..127).

    The two int8 models then round where, and as, each other; they differ in kernel arithmetic only (ONNX
    Runtime's int32 bias, PyTorch's float bias). Measured on the default profile's pruned model: plates agree on
    99.5 % of the test split, 99.1 % with the ranges alone, 98.7 % with ONNX Runtime's percentile ranges.
    """
    fp32 = copy.deepcopy(fp32)
    finder = _OnnxNodes(fp32)
    modules = dict(quantized.named_modules())
    ranges: dict[str, TensorData] = {}
    keep_float: list[str] = []

    def conv_node(name: str, module: torch.nn.Module) -> onnx.NodeProto:
        # The int8 model's own weights and biases replace the export's (equal unless quantization-aware training
        # changed them, up to rounding and batch-norm folding order).
        node = finder.node_of(name, module)
        bias = module.bias() if callable(module.bias) else module.bias
        for index, value in ((1, _quantized_weight(module).dequantize()), (2, bias)):
            if value is not None and len(node.input) > index and node.input[index] in finder.initializers:
                finder.initializers[node.input[index]].CopyFrom(onnx.numpy_helper.from_array(
                    value.detach().float().numpy(), node.input[index]))
        return node

    for node in quantized.graph.nodes:
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            _, scale, zero_point, _ = node.args
            consumers = list(node.users)
            if len(consumers) != 1 or consumers[0].op != "call_module":
                raise InputError(f"{node.name}: expected a quantize feeding one module, found {consumers}")
            onnx_node = finder.node_of(consumers[0].target, modules[consumers[0].target])
            ranges[onnx_node.input[0]] = _uint8_range(float(getattr(quantized, scale.target)),
                                                      int(getattr(quantized, zero_point.target)))
        elif node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, torch.ao.nn.quantized.Conv2d):
                output = conv_node(node.target, module).output[0]
                ranges[output] = _uint8_range(float(module.scale), int(module.zero_point))
                # FX fuses the ReLU into the convolution (the scale is the ReLU output's); ONNX keeps it separate.
                for relu in finder.consumers(output, "Relu"):
                    ranges[relu.output[0]] = ranges[output]
            else:  # int8 weights, float arithmetic (quantize.Int8WeightConv2d, alone or fused with its ReLU)
                for inner in module.modules():
                    if _quantized_weight(inner) is not None:
                        keep_float.append(conv_node(node.target, inner).name)
    for onnx_node in fp32.graph.node:  # topological order: a max pool passes its input's int8 values through
        if onnx_node.op_type == "MaxPool" and onnx_node.input[0] in ranges:
            ranges[onnx_node.output[0]] = ranges[onnx_node.input[0]]
    return QDQPlan(fp32, TensorsData(CalibrationMethod.MinMax, dict(sorted(ranges.items()))), keep_float)


def quantize_qdq(plan: QDQPlan, out_path: str | os.PathLike, reduce_range: bool = False) -> None:
    """Static int8 QDQ: uint8 activations with the plan's ranges, per-channel int8 weights, the plan's `keep_float`
    Conv nodes in fp32. `reduce_range` (7-bit weights) is what ONNX Runtime documents for x86 without VNNI."""
    metadata = {p.key: p.value for p in plan.model.metadata_props}
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(prefix="quantize.") as work:
        cache = Path(work) / "ranges.json"  # quantize_static reads given ranges only from a cache file
        save_tensors_data(plan.ranges, cache)
        quantize_static(plan.model, str(tmp), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OP_TYPES, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=plan.keep_float, calibrate_method=plan.ranges.calibration_method,
                        calibration_cache_path=str(cache))
        quantized = onnx.load(str(tmp))
        onnx.helper.set_model_props(quantized, metadata)
        onnx.checker.check_model(quantized)
        onnx.save(quantized, str(tmp))
