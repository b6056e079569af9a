"""Quantization-aware fine-tuning (QAT): the int8 model of quantize.py, with its weights fine-tuned through fake
quantization so that they learn to live with int8 rounding.

`prepare_qat` builds the QAT twin of the post-training graph: the same int8/float split (calibrate.qconfig_mapping),
per-channel symmetric int8 weights and full 8-bit activations, but every quantized tensor passes through a
FakeQuantize whose range starts from the calibration artifact's (the chosen method's clipping, not a blank moving
average) and then follows the training batches. Batch norm runs on its running statistics (frozen) and is folded
into the convolution exactly as in inference, so the network trains as it will compute. `convert_qat` returns a
model with the very module structure and state dict keys of `quantize.quantize`'s, which `save_quantized` and
`load_quantized` handle unchanged. The training loop itself is train.py's; this file adds no optimizer or data.
"""

from __future__ import annotations

import copy

import torch
from torch.ao.nn import intrinsic
from torch.ao.nn.intrinsic import qat as intrinsic_qat
from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import prepare_qat_fx
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lprnet.errors import InputError
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.model.network import LPRNet
from lprnet.optimize.calibrate import (
    ACTIVATION_DTYPE_ARGS,
    check_calibration,
    check_float_layers,
    float_modules_of,
    int8_except_float_parts,
    observers,
    prepare_observed,
    quiet_torch_ao,
    untraced_fx,
)
from lprnet.optimize.quantize import convert, load_statistics

ACTIVATION_FAKE_QUANT = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                               **ACTIVATION_DTYPE_ARGS)
WEIGHT_FAKE_QUANT = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                           quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


def qat_qconfig_mapping(float_modules: tuple[str, ...] = ()) -> QConfigMapping:
    """calibrate.qconfig_mapping's int8/float split, with fake quantization in place of the observers."""
    return int8_except_float_parts(QConfig(activation=ACTIVATION_FAKE_QUANT, weight=WEIGHT_FAKE_QUANT), float_modules)


def prepare_qat(model: LPRNet, calibration: dict, float_layers: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """A trainable fake-quantized FX copy of `model` (untouched), activation ranges starting from `calibration`,
    the layers in `float_layers` float (as in quantize.quantize)."""
    check_calibration(calibration, "calibration", model)
    float_layers = check_float_layers(model, float_layers, "float_layers")
    example = (torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH),)
    with quiet_torch_ao(), untraced_fx():
        prepared = prepare_qat_fx(copy.deepcopy(model).train(),
                                  qat_qconfig_mapping(float_modules_of(model, float_layers)), example)
    prepared.apply(intrinsic_qat.freeze_bn_stats)
    # Start every activation range at the calibration's clipping: the post-training graph observes the same tensors
    # under the same node names.
    observed = prepare_observed(model, calibration["method"], float_layers)
    load_statistics(observed, calibration["observers"])
    ranges = {name: observer.select_range() for name, observer in observers(observed).items()}
    fake_quants = activation_fake_quants(prepared)
    if set(ranges) != set(fake_quants):
        raise InputError(f"the QAT graph quantizes other activations than the calibrated one: "
                         f"{sorted(set(ranges) ^ set(fake_quants))}")
    for name, fake_quant in fake_quants.items():
        low, high = ranges[name]
        fake_quant.activation_post_process.min_val.copy_(torch.as_tensor(low))
        fake_quant.activation_post_process.max_val.copy_(torch.as_tensor(high))
        scale, zero_point = fake_quant.activation_post_process.calculate_qparams()
        fake_quant.scale.resize_(scale.shape).copy_(scale)
        fake_quant.zero_point.resize_(zero_point.shape).copy_(zero_point)
    return prepared


def activation_fake_quants(prepared: torch.fx.GraphModule) -> dict[str, FakeQuantize]:
    """Activation FakeQuantize modules keyed by the node they quantize, as calibrate.observers keys observers."""
    found: dict[str, FakeQuantize] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module":
            module = prepared.get_submodule(node.target)
            if isinstance(module, FakeQuantize) and all(module is not seen for seen in found.values()):
                found[node.args[0].name] = module
    return found


def convert_qat(prepared: torch.fx.GraphModule, float_modules: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """The int8 model of a fine-tuned QAT graph, structured as quantize.quantize's (see load_quantized)."""
    model = copy.deepcopy(prepared).eval()
    # prepare_qat_fx fused the float part's convolution + batch norm (+ ReLU) into trainable intrinsic modules, which
    # convert leaves as they are; the post-training graph has them folded (conv with bias, + ReLU). Fold them here.
    for name, module in list(model.named_modules()):
        if isinstance(module, (intrinsic.ConvBn2d, intrinsic.ConvBnReLU2d)):
            folded = fuse_conv_bn_eval(module[0], module[1])
            replacement = intrinsic.ConvReLU2d(folded, module[2]) if isinstance(module, intrinsic.ConvBnReLU2d) \
                else folded
            replacement.qconfig = module.qconfig  # None: convert_fx reads it to leave the module float
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, replacement)
    return convert(model, float_modules)
