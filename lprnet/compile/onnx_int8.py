"""int8 QDQ ONNX with ONNX Runtime's own tooling (quantize_static), from one of two sources of activation ranges.

`torch_int8_plan`: the PyTorch int8 model's own scales and zero points, int8 weights and float parts, so that the
ONNX int8 model is the same quantization as the `quantize` stage's artifact (`calibrate.onnx_method: torch`).
`calibrate_onnx`: ranges for the ONNX graph's own tensors over the calib split, by any method of the calibration
registry (lprnet.optimize.calibrate.METHODS, the one the PyTorch path uses: same names, same rules, same
percentile), written as ONNX Runtime's JSON range cache (every activation tensor's range, by tensor name) so that
calibration and quantization can be separate pipeline stages; the global-context arithmetic (pools, pow, sums,
divisions, concat and the `container` conv after it) then stays fp32.
Does not export from PyTorch (see onnx_export.py) and does not run the int8 model (see lprnet.runtime).
"""

from __future__ import annotations

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
    CalibrationDataCollector,
    HistogramCalibrater,
    TensorData,
    TensorsData,
    load_tensors_data,
    save_tensors_data,
)

from lprnet.errors import InputError
from lprnet.io import atomic_path
from lprnet.model.data import to_network_input
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.optimize.calibrate import (
    ACTIVATION_DTYPE_ARGS,
    BATCH_SIZE,
    METHODS,
    RangeObserver,
    check_images,
    get_method,
)

TORCH_RANGES = "torch"  # the `calibrate.onnx_method` that takes the PyTorch int8 model's ranges instead
ONNX_METHODS = (TORCH_RANGES, *sorted(METHODS))
# Quantized op types: the backbone's convolutions (BN is folded into them at export) and the max pools between.
QUANTIZED_OP_TYPES = ["Conv", "MaxPool"]


def check_onnx_method(name: str) -> None:
    """`name` is a source of ONNX int8 ranges: `torch` or a calibration method of the registry."""
    if name not in ONNX_METHODS:
        raise InputError(f"unknown calibration method {name!r}; choose one of: {', '.join(ONNX_METHODS)}")


class ImageBatches(CalibrationDataReader):
    def __init__(self, images: np.ndarray, input_name: str, batch_size: int):
        self.batches = iter([{input_name: to_network_input(images[i:i + batch_size])}
                             for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


class RangeCollector(CalibrationDataCollector):
    """ONNX Runtime's collector interface, recording each calibrated tensor in an observer of the registry's method
    (a PyTorch HistogramObserver: exact [min, max] and a 2048-bin histogram, as on the PyTorch path) and turning it
    into a range with that method's rule.

    ONNX Runtime's own collectors are not used because they compute other statistics under the same names: their
    histograms span [-max|x|, max|x|] (a ReLU output fills half the bins), their percentile splits the clipped share
    between the two ends, their entropy search is symmetric about zero over 128 bins by default, and they have no
    L2 search. Its min-max calibrator computes what `minmax` does here (the exact range), so the recorded
    statistics serve that method too and one code path serves all four."""

    def __init__(self, observer: type[RangeObserver]):
        self.observer = observer
        self.observers: dict[str, RangeObserver] = {}

    def collect(self, name_to_arr: dict[str, list[np.ndarray]]) -> None:
        for name, arrays in name_to_arr.items():
            if name not in self.observers:
                self.observers[name] = self.observer(**ACTIVATION_DTYPE_ARGS)
            for array in arrays:
                self.observers[name](torch.from_numpy(np.ascontiguousarray(array)))

    def compute_collection_result(self) -> dict[str, TensorData]:
        ranges = {}
        for name, observer in self.observers.items():
            low, high = observer.select_range()
            ranges[name] = TensorData(lowest=np.float32(float(low)), highest=np.float32(float(high)))
        return ranges


def context_nodes(model: onnx.ModelProto) -> list[str]:
    """The `container` conv: the Conv that reads the global-context Concat (kept fp32)."""
    concat_outputs = {out for node in model.graph.node if node.op_type == "Concat" for out in node.output}
    return [node.name for node in model.graph.node if node.op_type == "Conv" and set(node.input) & concat_outputs]


def calibrate_onnx(fp32_path: str | os.PathLike, images: np.ndarray, method: str, cache_path: str | os.PathLike,
                   batch_size: int = BATCH_SIZE) -> None:
    """Run the fp32 model over `images` (the calib split) in ONNX Runtime and write the range `method` chooses for
    every input and output of its Conv and MaxPool nodes, as ONNX Runtime's range cache.

    ONNX Runtime's histogram calibrator selects those tensors, adds them to the graph's outputs and runs it; our
    collector records them one batch at a time: in the batches `calibrate` uses, so that both runtimes merge their
    histograms alike, and holding no more than one batch's activations in memory."""
    collector = RangeCollector(get_method(method))
    check_images(images, batch_size)
    with tempfile.TemporaryDirectory(prefix="calibrate.") as work:
        calibrator = HistogramCalibrater(Path(fp32_path), QUANTIZED_OP_TYPES,
                                         augmented_model_path=str(Path(work) / "augmented.onnx"))
        calibrator.collector = collector  # read by collect_data, which creates ONNX Runtime's own only when unset
        calibrator.augment_graph()
        calibrator.create_inference_session()
        input_name = calibrator.infer_session.get_inputs()[0].name
        for start in range(0, len(images), batch_size):
            calibrator.collect_data(ImageBatches(images[start:start + batch_size], input_name, batch_size))
    # Sorted by tensor name, so that equal ranges give an equal file. Labelled MinMax, as torch_int8_plan's: the
    # ranges are final, and quantize_static only checks that the label matches the method it is called with.
    ranges = collector.compute_collection_result()
    with atomic_path(cache_path) as tmp:
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, dict(sorted(ranges.items()))), tmp)


def _uint8_range(scale: float, zero_point: int) -> TensorData:
    # ONNX Runtime turns a range into scale (max - min) / 255 and zero point -min / scale: this range gives back
    # PyTorch's own (its activations are full 8-bit, see calibrate.ACTIVATION_DTYPE_ARGS).
    return TensorData(lowest=np.float32(-zero_point * scale), highest=np.float32((255 - zero_point) * scale))


def _conv_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """A convolution's weight: int8 (quantized convs, quantize.Int8WeightConv2d) or float (a layer kept float with
    its float weights); None for any other module."""
    weight = getattr(module, "weight", None)
    weight = weight() if callable(weight) else weight  # quantized convs expose it as a method
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 4 else None


class _OnnxNodes:
    """Finds the ONNX node that computes an FX module of the same float model, by graph structure and order only
    (the exported file keeps no name scopes, see onnx_export.py).

    The exporter folds batch norm into the convolution and names the result after the batch norm, so convolutions
    are paired by order: the k-th FX convolution of a weight shape with the k-th ONNX Conv of that shape, both graphs
    being in forward order. Their weights are not compared: the plan replaces them with the int8 model's, which
    quantization-aware training may have moved far from the export's. Max pools, which have no weight, are paired
    the same way: the k-th MaxPool2d the FX graph calls with the k-th ONNX MaxPool, of the same kernel and strides."""

    def __init__(self, model: onnx.ModelProto, quantized: torch.fx.GraphModule):
        self.nodes = list(model.graph.node)
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.found: dict[str, onnx.NodeProto] = {}
        modules = dict(quantized.named_modules())
        self.pools = [node.target for node in quantized.graph.nodes
                      if node.op == "call_module" and isinstance(modules[node.target], torch.nn.MaxPool2d)]

    def consumers(self, tensor: str, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if node.op_type == op_type and tensor in node.input]

    def node_of(self, name: str, module: torch.nn.Module) -> onnx.NodeProto:
        if name in self.found:
            return self.found[name]
        weight = _conv_weight(module)
        if weight is not None:
            shape = list(weight.shape)
            taken = {id(node) for node in self.found.values()}
            matches = [node for node in self.nodes if node.op_type == "Conv" and id(node) not in taken
                       and list(getattr(self.initializers.get(node.input[1]), "dims", [])) == shape][:1]
            what = f"Conv with {tuple(shape)} weights left"
        elif isinstance(module, torch.nn.MaxPool2d):
            pools, position = [node for node in self.nodes if node.op_type == "MaxPool"], self.pools.index(name)
            matches = [pools[position]] if len(pools) == len(self.pools) else []
            matches = [node for node in matches if _pool_attributes(node) == _pool_attributes(module)]
            what = f"MaxPool with {_pool_attributes(module)} at position {position + 1} of {len(self.pools)}"
        else:
            raise InputError(f"{name}: a quantize feeds a {type(module).__name__}, which has no ONNX counterpart here")
        if len(matches) != 1:
            raise InputError(f"{name}: expected one ONNX {what}, found {len(matches)}; the ONNX and the int8 model "
                             f"must come from the same float model")
        self.found[name] = matches[0]
        return matches[0]


def _pool_attributes(pool: onnx.NodeProto | torch.nn.MaxPool2d) -> dict[str, list[int]]:
    """Kernel and strides of an ONNX MaxPool or a PyTorch MaxPool2d, in ONNX's terms."""
    if isinstance(pool, torch.nn.MaxPool2d):
        kernel, stride = ([*value] if isinstance(value, (tuple, list)) else [value, value]
                          for value in (pool.kernel_size, pool.stride or pool.kernel_size))
        return {"kernel_shape": kernel, "strides": stride}
    attributes = {attribute.name: list(attribute.ints) for attribute in pool.attribute}
    return {key: attributes.get(key, [1, 1]) for key in ("kernel_shape", "strides")}


def float_max_pools(quantized: torch.fx.GraphModule) -> list[str]:
    """The max pools of an int8 FX model that compute in float (a layer quantize.quantize kept float): those whose
    input is a float tensor in a forward pass. Their type is the same as an int8 pool's, so only the data says."""
    float_pools = []
    hooks = [module.register_forward_pre_hook(
        lambda _, args, name=name: None if args[0].is_quantized else float_pools.append(name))
        for name, module in quantized.named_modules() if isinstance(module, torch.nn.MaxPool2d)]
    try:
        with torch.inference_mode():
            quantized(torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH))
    finally:
        for hook in hooks:
            hook.remove()
    return float_pools


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
    model: the range of every activation it quantizes (by ONNX tensor name), its Conv and MaxPool nodes that compute
    in float,
    and its int8 weights (dequantized, written over the float ones so that ONNX Runtime rounds them to the same
    integers, up to its symmetric range of +-127 against PyTorch's -128..127).

    The two int8 models then round where, and as, each other; they differ in kernel arithmetic only (ONNX
    Runtime's int32 bias, PyTorch's float bias).
    """
    fp32 = copy.deepcopy(fp32)
    finder = _OnnxNodes(fp32, quantized)
    modules = dict(quantized.named_modules())
    ranges: dict[str, TensorData] = {}
    keep_float: list[str] = []

    def conv_node(name: str, module: torch.nn.Module) -> onnx.NodeProto:
        # The int8 model's own weights and biases replace the export's (equal unless quantization-aware training
        # changed them, up to rounding and batch-norm folding order).
        node = finder.node_of(name, module)
        bias = module.bias() if callable(module.bias) else module.bias
        weight = _conv_weight(module)
        for index, value in ((1, weight.dequantize() if weight.is_quantized else weight), (2, bias)):
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
            else:  # float arithmetic (quantize.Int8WeightConv2d or a float conv, alone or fused with its ReLU)
                for inner in module.modules():
                    if _conv_weight(inner) is not None:
                        keep_float.append(conv_node(node.target, inner).name)
    float_pools = [finder.node_of(name, modules[name]).name for name in float_max_pools(quantized)]
    keep_float += float_pools
    for onnx_node in fp32.graph.node:  # topological order: an int8 max pool passes its input's int8 values through
        if onnx_node.op_type == "MaxPool" and onnx_node.input[0] in ranges and onnx_node.name not in float_pools:
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
