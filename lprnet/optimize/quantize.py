"""Post-training static int8 quantization of LPRNet for x86 CPUs (PyTorch FX, FBGEMM/oneDNN kernels), and its artifact.

`quantize` turns a float model and a calibration artifact (calibrate.py) into an int8 FX GraphModule without
running any data: it loads the recorded statistics into the observers and converts. What computes in int8 and
what stays float is decided in calibrate.py (`qconfig_mapping`): the backbone is int8, the global context and
block 3's output convolution are float, and so are the backbone layers the caller names in `float_layers` (the
quantize stage's sensitivity-ranked fallback), which the artifact records. The global context and block 3's output
keep their convolution weights as per-channel int8, dequantized once when built or loaded (`Int8WeightConv2d`),
which keeps the file under 30 % of the fp32 one while the in-memory model computes with exactly the rounded weights
the file holds; the `float_layers` keep float weights, since they are float to win accuracy back.

The artifact never pickles the GraphModule: it stores the float config, the calibration method and the int8 state
dict (weights, scales and zero points are tensors in it), all readable with `torch.load(weights_only=True)`.
`load_quantized` rebuilds the same graph from the config and loads that state dict. This file does not collect
statistics (see calibrate.py) or measure accuracy (see evaluate.py).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization.quantize_fx import convert_fx

from lprnet.errors import InputError, MissingFileError
from lprnet.io import load_torch, save_torch_atomic
from lprnet.model.alphabet import Alphabet
from lprnet.model.checkpoint import check_config_fits, file_alphabet, pipeline_payload
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.model.network import LPRNet, LPRNetConfig
from lprnet.optimize.calibrate import (
    WEIGHT_OBSERVER,
    check_calibration,
    check_float_layers,
    float_modules_of,
    observers,
    prepare_observed,
    quiet_torch_ao,
)

FORMAT = "lprnet-pipeline-int8/1"


class Int8WeightConv2d(nn.Module):
    """A float convolution whose weight is kept as per-channel symmetric int8 (the same scheme as the int8
    convolutions) and computed with in float. The weight is a quantized tensor in the state dict, a quarter of the
    float one; its float copy is rebuilt whenever the weight is set, never saved."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise InputError(f"padding mode {conv.padding_mode!r} is not supported")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        weight = conv.weight.detach()
        observer = WEIGHT_OBSERVER()
        observer(weight)
        scales, zero_points = observer.calculate_qparams()
        self.set_weight(torch.quantize_per_channel(weight, scales.double(), zero_points, 0, observer.dtype))

    def set_weight(self, weight: torch.Tensor) -> None:
        self.register_buffer("weight", weight)
        self.register_buffer("float_weight", weight.dequantize(), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The default copies values into the existing tensor, which keeps the old quantization scales; take the
        # stored quantized tensor whole instead.
        weight = state_dict.get(prefix + "weight")
        if weight is not None:
            if not weight.is_quantized or weight.shape != self.weight.shape:
                error_msgs.append(f"{prefix}weight: expected a quantized tensor of shape {tuple(self.weight.shape)}")
                return
            self.set_weight(weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.float_weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def quantize(model: LPRNet, calibration: dict, float_layers: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """The int8 version of `model`, with activation ranges chosen by the calibration's method from its statistics,
    and the convolutions named in `float_layers` (calibrate.int8_layers) computing in float.

    `model` is not modified. The calibration must come from the same weights (checked by fingerprint)."""
    check_calibration(calibration, "calibration", model)
    float_layers = check_float_layers(model, float_layers, "float_layers")
    prepared = prepare_observed(model, calibration["method"], float_layers)
    load_statistics(prepared, calibration["observers"])
    return convert(prepared, float_modules_of(model, float_layers))


def load_statistics(prepared: torch.fx.GraphModule, statistics: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load recorded statistics into `prepared`'s observers. The calibration records more tensors than one split
    observes (calibrate.calibrate), so only missing ones are an error."""
    expected = observers(prepared)
    missing = sorted(set(expected) - set(statistics))
    if missing:
        raise InputError(f"calibration statistics lack activations this model quantizes ({missing}); recalibrate "
                         f"this model")
    for name, observer in expected.items():
        observer.load_state_dict(statistics[name])


def convert(prepared: torch.fx.GraphModule, float_modules: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """The int8 model of an observed graph. Its float convolutions keep int8 weights (Int8WeightConv2d), except
    those of `float_modules` (calibrate.float_modules_of): a layer kept float to win accuracy back keeps its float
    weights too, since int8 weights alone can cost plates."""
    with quiet_torch_ao():
        model = convert_fx(prepared)
    float_convs = [name for name, module in model.named_modules() if type(module) is nn.Conv2d
                   and not any(name == kept or name.startswith(kept + ".") for kept in float_modules)]
    for name in float_convs:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Int8WeightConv2d(getattr(parent, child)))
    return model.eval()


def save_quantized(path: str | os.PathLike, float_config: LPRNetConfig, alphabet: Alphabet,
                   quantized_model: torch.nn.Module, calibration: dict, float_layers: tuple[str, ...] = ()) -> None:
    """Write {format, alphabet, config, method, float_layers, state_dict}: everything `load_quantized` needs, no
    code. `float_layers` must be the ones `quantized_model` was built with."""
    if float_config.num_classes != alphabet.num_classes:
        raise InputError(f"config has {float_config.num_classes} classes, alphabet {alphabet.name!r} has "
                         f"{alphabet.num_classes}")
    check_calibration(calibration, "calibration")
    float_layers = check_float_layers(LPRNet(float_config), float_layers, "float_layers")
    payload = {"format": FORMAT, "alphabet": alphabet.name, "config": float_config.to_dict(),
               "method": calibration["method"], "float_layers": list(float_layers),
               "state_dict": pack_state_dict(quantized_model.state_dict())}
    save_torch_atomic(path, payload)


# torch.save writes a per-channel quantized tensor with float64 scales and int64 zero points: 16 bytes per output
# channel next to its int8 weights, a large share of a pruned model's narrow layers. Symmetric weights have
# zero points of 0, so the file keeps int8 values and float32 scales and rebuilds the quantized tensor on load.
PACKED = ".packed_int8"


def pack_state_dict(state_dict: dict) -> dict:
    packed = {}
    for key, value in state_dict.items():
        value = value.detach()
        if (isinstance(value, torch.Tensor) and value.is_quantized and value.qscheme() == torch.per_channel_affine
                and not value.q_per_channel_zero_points().any()):
            packed[key + PACKED] = value.int_repr().clone()
            packed[key + PACKED + ".scales"] = value.q_per_channel_scales().float()
            packed[key + PACKED + ".axis"] = torch.tensor(value.q_per_channel_axis())
        else:
            packed[key] = value.clone()
    return packed


def unpack_state_dict(packed: dict) -> dict:
    state_dict = {}
    for key, value in packed.items():
        if key.endswith(PACKED):
            scales = packed[key + ".scales"].double()
            state_dict[key[: -len(PACKED)]] = torch._make_per_channel_quantized_tensor(
                value, scales, torch.zeros(len(scales), dtype=torch.long), int(packed[key + ".axis"]))
        elif not key.endswith((PACKED + ".scales", PACKED + ".axis")):
            state_dict[key] = value
    return state_dict


def is_quantized_artifact(path: str | os.PathLike) -> bool:
    """Whether `path` is a file written by `save_quantized` (for loaders that dispatch on the artifact kind)."""
    try:
        with quiet_torch_ao():
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return False  # not a (zip-format, weights-only) torch file, so not ours; the caller's loader will say why
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_quantized(path: str | os.PathLike) -> tuple[torch.fx.GraphModule, Alphabet]:
    """Rebuild an int8 model saved by `save_quantized`, in eval mode, with its alphabet."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such int8 model file")
    with quiet_torch_ao():
        payload = load_torch(path, "int8 LPRNet artifact")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path}: not an int8 LPRNet artifact (format {found!r}, expected {FORMAT!r})")
    pipeline_payload(payload, path, ("alphabet", "config", "state_dict"))
    config = LPRNetConfig.from_dict(payload["config"], str(path))
    alphabet = file_alphabet(payload["alphabet"], path)
    if config.num_classes != alphabet.num_classes:
        raise InputError(f"{path}: config has {config.num_classes} classes, alphabet {alphabet.name!r} has "
                         f"{alphabet.num_classes}")
    check_config_fits(config, path)
    # Absent in files written before layers could be kept float, which had none.
    float_layers = check_float_layers(LPRNet(config), payload.get("float_layers", []), path)
    model = rebuild_graph(config, float_layers)
    try:
        model.load_state_dict(unpack_state_dict(payload["state_dict"]), strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as error:  # incl. a packed weight's parts
        raise InputError(f"{path}: int8 state dict does not match the rebuilt graph "
                         f"({type(error).__name__}: {' '.join(str(error).splitlines()[:2])[:300]})") from None
    return model.eval(), alphabet


def rebuild_graph(config: LPRNetConfig, float_layers: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """The int8 graph of an LPRNet with this config and these float layers, with placeholder weights and
    quantization parameters: every one of them is a tensor in the saved state dict, which the caller loads over
    them."""
    # Every method places the same observers with the same dtypes, so the cheapest one builds the same graph.
    model = LPRNet(config).eval()
    prepared = prepare_observed(model, "minmax", float_layers)
    with torch.no_grad():  # one pass so that every observer has a (meaningless) range to convert with
        prepared(torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH))
    return convert(prepared, float_modules_of(model, float_layers))
