"""Calibration for post-training static int8 quantization: activation statistics from the calibration split, and
the registry of calibration methods (`METHODS`) that both int8 runtimes use.

`calibrate` traces LPRNet with PyTorch FX, inserts one observer per activation that the int8 model quantizes, runs
the calibration images through it and returns the observers' statistics as a plain dict (tensors, numbers,
strings) that `torch.load(weights_only=True)` reads back. Every observer records the same statistics, a
2048-bin histogram over the exact [min, max] of the tensor; the calibration method is only the rule that turns
them into a clipping range, so one calibration pass serves every method. The ONNX Runtime path
(lprnet.compile.onnx_int8.calibrate_onnx) records the same statistics for the ONNX graph's tensors and applies the
same rules, so `calibrate.method` and `calibrate.onnx_method` name the same thing.

This file also decides which part of the network is int8 (`qconfig_mapping`), because the observed tensors, and
so the artifact's keys, follow from that choice; quantize.py rebuilds exactly this graph. It does not convert to
int8 or save int8 models (see quantize.py) and never sees the test split: the caller passes calibration images.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import prepare_fx

from lprnet.errors import InputError, MissingFileError
from lprnet.io import load_torch, save_torch_atomic
from lprnet.model.data import to_network_input
from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.model.network import LPRNet

FORMAT = "lprnet-calibration/1"
HISTOGRAM_BINS = 2048
PERCENTILE = 99.99  # the `percentile` method, in both runtimes: each end of the histogram clips 100 - this %
BATCH_SIZE = 32  # images per forward pass; histograms merge per batch, so both runtimes read the same batches

# The global context stays float: its normalisation (square, per-sample sum, division) has no int8 kernels, and
# making the rest of it int8 (the two average pools, the concatenation of four maps with unrelated ranges under one
# scale, `container`, the mean) costs plate accuracy for no measurable speed, the context being a small share of
# the MACs. Three of the four context taps stay int8 and are dequantized where they enter the pools.
FLOAT_MODULES = ("pool_stem", "pool_block", "container") + (
    # The fourth, block 3's output (last conv, batch norm, ReLU), stays float: the context reads all of its
    # channels, with values far larger than those of the every-4th channel the backbone reads, so one int8 scale
    # for both would leave the backbone's channels only a few levels; in float, the channel-select pool's own int8
    # scale fits them.
    "backbone.11.block.6", "backbone.12", "backbone.13",
)
# Functions and tensor methods that appear only in the context arithmetic and the final mean (the backbone calls
# modules and slices only), so setting them float by type touches nothing else.
FLOAT_FUNCTIONS = ("pow", "sum", "mean", operator.mul, operator.truediv, torch.cat)

# Full 8-bit activations, not PyTorch's x86 default of 7 bits (reduce_range), which costs accuracy. The 7-bit
# default guards against int16 saturation in FBGEMM's u8 x s8 kernels on x86 CPUs without VNNI (AVX2 only); the
# target CPU has AVX512-VNNI. For CPUs without VNNI set reduce_range=True here and re-measure.
ACTIVATION_DTYPE_ARGS = {"dtype": torch.quint8, "qscheme": torch.per_tensor_affine, "reduce_range": False}
WEIGHT_OBSERVER = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


class RangeObserver(HistogramObserver):
    """A histogram over the exact [min, max] of everything observed; subclasses choose the quantization range
    from it in `select_range`. All methods share this state, so any method's statistics load into any other.

    The recording is PyTorch's HistogramObserver's own. Ours is only the split between recording and rule: PyTorch
    ties its histogram to one rule (the L2 search) and ONNX Runtime's calibrators each record their own histogram
    for their own rule, so neither lets one recorded histogram be turned into a range by any method."""

    def __init__(self, **kwargs):
        super().__init__(bins=HISTOGRAM_BINS, **kwargs)

    def calculate_qparams(self):  # type: ignore[override]
        if bool(self.min_val == float("inf")):
            # PyTorch warns and returns scale 1; an unobserved activation means a broken calibration, so fail.
            raise InputError("an activation observer saw no data: calibrate on at least one image")
        low, high = self.select_range()
        return self._calculate_qparams(low, high)

    def select_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def bin_edge(self, index: int) -> torch.Tensor:
        """The value at histogram bin boundary `index` (0 .. bins)."""
        return self.min_val + (self.max_val - self.min_val) * (index / self.bins)


class MinMaxRange(RangeObserver):
    """The full observed range: no clipping, so one outlier widens every quantization step. What PyTorch's
    MinMaxObserver and ONNX Runtime's MinMaxCalibrater compute; here it reads the recorded exact range."""

    def select_range(self):
        return self.min_val, self.max_val


class L2Range(RangeObserver):
    """PyTorch's histogram search (HistogramObserver's own code): the range minimising the expected L2
    quantization error (clipping plus rounding) under the histogram. ONNX Runtime has no such method."""

    def select_range(self):
        return self._non_linear_param_search()


class PercentileRange(RangeObserver):
    """Clips each end of the histogram at a percentile: the lowest and the highest (100 - `percentile`) % of the
    observed values fall outside the range. Our own: PyTorch has no percentile observer, and ONNX Runtime's
    percentile calibrator reads its own histogram, symmetric about zero over [-max|x|, max|x|] (a ReLU output fills
    half of its bins), and splits the clipped share between the two ends."""

    percentile = PERCENTILE

    def select_range(self):
        cumulative = torch.cumsum(self.histogram.double(), 0)
        tail = cumulative[-1] * (1 - self.percentile / 100)
        low_bin = int(torch.searchsorted(cumulative, tail, right=True))
        high_bin = int(torch.searchsorted(cumulative, cumulative[-1] - tail)) + 1
        return self.bin_edge(low_bin), self.bin_edge(max(high_bin, low_bin + 1))


class EntropyRange(RangeObserver):
    """The TensorRT / MXNet KL-divergence rule: the upper clip whose int8 rendering of the histogram loses the
    least information. Only the upper end is searched; every activation quantized here but the network input is a
    ReLU output starting at 0, and the input's range is fixed by the normalisation. Known weakness: on sparse,
    few-valued histograms (a random network's class scores) the search clips far too much. Our own: PyTorch has no
    entropy observer, and ONNX Runtime's entropy calibrator searches thresholds symmetric about zero on its own
    histogram (by default 128 bins for 128 levels, which leaves only the full range to choose)."""

    def select_range(self):
        levels = self.quant_max - self.quant_min + 1
        histogram = self.histogram.double().numpy().copy()
        if self.min_val >= 0:
            # A ReLU output's first bin holds its exact zeros (often most of the tensor), which int8 represents
            # exactly; left in, that spike dominates the divergence and the search clips far too much. Flatten it
            # to its neighbour, as NVIDIA's pytorch-quantization entropy calibrator does.
            histogram[0] = histogram[1]
        end_bin = kl_optimal_end_bin(histogram, levels)
        return self.min_val, self.bin_edge(end_bin)


def kl_optimal_end_bin(histogram: np.ndarray, levels: int) -> int:
    """The bin count i (levels <= i <= len(histogram)) minimising KL(P_i || Q_i), where P_i is the histogram cut
    at i with the cut-off mass added to its last bin and Q_i is P_i's first i bins merged into `levels` groups
    and spread back over their non-empty bins."""
    total_bins = len(histogram)
    if total_bins <= levels:
        return total_bins
    best_bins, best_divergence = total_bins, float("inf")
    tail_mass = np.concatenate([np.cumsum(histogram[::-1])[::-1], [0.0]])  # tail_mass[i] = histogram[i:].sum()
    for bins in range(levels, total_bins + 1):
        kept = histogram[:bins]
        reference = kept.copy()
        reference[-1] += tail_mass[bins]
        nonzero = reference > 0
        group_starts = np.arange(levels) * bins // levels  # equal groups, within one bin
        group_mass = np.add.reduceat(kept, group_starts)
        group_nonzero = np.add.reduceat(nonzero.astype(np.float64), group_starts)
        group_of_bin = np.searchsorted(group_starts, np.arange(bins), side="right") - 1
        spread = np.where(group_nonzero > 0, group_mass / np.maximum(group_nonzero, 1), 0.0)
        candidate = np.where(nonzero, spread[group_of_bin], 0.0)
        divergence = kl_divergence(reference, candidate)
        if divergence < best_divergence:
            best_bins, best_divergence = bins, divergence
    return best_bins


def kl_divergence(reference: np.ndarray, candidate: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) of two unnormalised histograms, both smoothed so that q is non-zero wherever p is (as MXNet
    does: a bin that held mass in the reference but none after merging would make the divergence infinite)."""
    p = smooth(reference / reference.sum(), eps)
    q = smooth(candidate / max(candidate.sum(), 1e-30), eps)
    support = p > 0
    return float(np.sum(p[support] * np.log(p[support] / np.maximum(q[support], 1e-30))))


def smooth(distribution: np.ndarray, eps: float) -> np.ndarray:
    zero = distribution == 0
    zeros, nonzeros = int(zero.sum()), int((~zero).sum())
    if zeros == 0 or nonzeros == 0:
        return distribution
    taken = eps * zeros / nonzeros
    return np.where(zero, eps, distribution - taken).clip(min=0)


# The calibration registry of both int8 runtimes: `calibrate.method` (PyTorch) and `calibrate.onnx_method` (ONNX
# Runtime, besides `torch`) name one of these rules.
METHODS: dict[str, type[RangeObserver]] = {
    "minmax": MinMaxRange,
    "histogram": L2Range,
    "percentile": PercentileRange,
    "entropy": EntropyRange,
}


def get_method(name: str) -> type[RangeObserver]:
    if name not in METHODS:
        raise InputError(f"unknown calibration method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def qconfig_mapping(method: str, float_modules: tuple[str, ...] = ()) -> QConfigMapping:
    """int8 everywhere (conv + batch norm + ReLU fused, per-channel symmetric weights, per-tensor activations
    ranged by `method`) except the global context, block 3's output and `float_modules`, which stay float."""
    activation = get_method(method).with_args(**ACTIVATION_DTYPE_ARGS)
    return int8_except_float_parts(QConfig(activation=activation, weight=WEIGHT_OBSERVER), float_modules)


def int8_except_float_parts(qconfig: QConfig, float_modules: tuple[str, ...] = ()) -> QConfigMapping:
    """`qconfig` everywhere but FLOAT_FUNCTIONS, FLOAT_MODULES and `float_modules` (from `float_modules_of`), which
    stay float (also for QAT, see qat.py)."""
    mapping = QConfigMapping().set_global(qconfig)
    for function in FLOAT_FUNCTIONS:
        mapping.set_object_type(function, None)
    for name in (*FLOAT_MODULES, *float_modules):
        mapping.set_module_name(name, None)
    return mapping


def in_float_modules(name: str) -> bool:
    """Whether the module `name` is (in) one of FLOAT_MODULES, whose arithmetic is float in every int8 model."""
    return any(name == part or name.startswith(part + ".") for part in FLOAT_MODULES)


def int8_layers(model: LPRNet) -> dict[str, tuple[str, ...]]:
    """The layers the int8 fallback can keep float, by module name in forward order, each with the modules that take
    its precision: convolutions (fused with their batch norm and ReLU, so keeping one float keeps the three) and max
    pools, which compute on int8 values; and the convolutions of FLOAT_MODULES, which compute in float with int8
    weights (kept float: with their float weights). A dropout (identity at inference, whose output is int8 when its
    input is) goes with the layer before it, so that keeping a layer float never leaves a requantization in front
    of a dropout, which the ONNX export has no node for. With every layer float the model is the float model."""
    layers: dict[str, tuple[str, ...]] = {}
    last = None
    for name, module in model.named_modules():
        if in_float_modules(name):
            if isinstance(module, torch.nn.Conv2d):
                layers[name], last = (name,), None
            continue
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            layers[name], last = (name,), name
        elif isinstance(module, torch.nn.Dropout) and last is not None:
            layers[last] += (name,)
    return layers


def float_modules_of(model: LPRNet, float_layers: tuple[str, ...]) -> tuple[str, ...]:
    """The module names `float_layers` (keys of `int8_layers`) keep float."""
    layers = int8_layers(model)
    return tuple(name for layer in float_layers for name in layers[layer])


def check_float_layers(model: LPRNet, float_layers, source) -> tuple[str, ...]:
    """`float_layers` as a tuple, after checking that it lists distinct names of `int8_layers(model)`."""
    known = list(int8_layers(model))
    if (not isinstance(float_layers, (list, tuple)) or not all(isinstance(name, str) for name in float_layers)
            or len(set(float_layers)) != len(float_layers)):
        raise InputError(f"{source}: float_layers must be a list of distinct layer names, got {float_layers!r}")
    unknown = [name for name in float_layers if name not in known]
    if unknown:
        raise InputError(f"{source}: float_layers names {unknown} that are not int8 layers of this model "
                         f"(those are: {', '.join(known)})")
    return tuple(float_layers)


@contextmanager
def quiet_torch_ao():
    """Silence torch.ao.quantization's deprecation notices (FX quantization is deprecated upstream in favour of
    torchao's pt2e flow but present and working in the pinned torch); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        # torch.load's own rebuilding of quantized tensors still goes through TypedStorage.
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        yield


@contextmanager
def untraced_fx():
    """FX tracing without a Python stack trace recorded on every node (torch.fx.config.do_not_emit_stack_traces).
    torch.ao's quantization tracer records them for its error messages, and the first one it formats imports
    torch._dynamo and torch._inductor: 3 s of the 3.3 it took to load an int8 model in a fresh process. The graphs
    traced here come from one module we wrote, and nothing reads the traces."""
    previous = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = previous


def prepare_observed(model: LPRNet, method: str, float_layers: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """An FX copy of `model` (the model itself is untouched) with conv-bn-relu fused and an observer on every
    activation the int8 model with `float_layers` float quantizes, keyed by the traced node names, which do not
    depend on the split (see `calibrate` for which tensors one calibration covers)."""
    example = (torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH),)
    with quiet_torch_ao(), untraced_fx():
        return prepare_fx(copy.deepcopy(model).eval(), qconfig_mapping(method, float_modules_of(model, float_layers)),
                          example)


def observers(prepared: torch.fx.GraphModule) -> dict[str, RangeObserver]:
    """Observer modules keyed by the name of the graph node they observe ('x', 'backbone_0', ...): stable for a
    given architecture, and readable. An observer shared by two nodes (a max pool reuses its input's) appears once,
    under the first."""
    found: dict[str, RangeObserver] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        module = prepared.get_submodule(node.target)
        if isinstance(module, torch.ao.quantization.ObserverBase):
            assert isinstance(module, RangeObserver), f"{node.target} is a {type(module).__name__}"
            if all(module is not seen for seen in found.values()):
                found[node.args[0].name] = module
    return found


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict: calibration statistics are only valid for the weights they were measured on."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def calibrate(model: LPRNet, images: np.ndarray, method: str, batch_size: int = BATCH_SIZE) -> dict:
    """Observe every quantized activation of `model` on (N,24,94,3) uint8 BGR calibration images.

    Returns {format, method, num_images, model_sha256, observers: {node: {min_val, max_val, histogram}}}."""
    get_method(method)
    check_images(images, batch_size)
    # A max pool kept float moves the quantization of its input to its output, where the all-int8 graph has no
    # observer. Observing a graph with every max pool float as well covers every split `quantize` may build: any
    # split observes a subset of the two graphs' tensors, and every tensor's statistics are those of the float
    # model, whichever graph recorded them.
    pools = tuple(name for name in int8_layers(model) if isinstance(model.get_submodule(name), torch.nn.MaxPool2d))
    graphs = [prepare_observed(model, method), prepare_observed(model, method, pools)]
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(to_network_input(images[start:start + batch_size]))
            for graph in graphs:
                graph(batch)
    statistics = {}
    for graph in graphs:
        for name, observer in observers(graph).items():
            statistics.setdefault(name, {key: value.detach().clone() for key, value in observer.state_dict().items()})
    return {"format": FORMAT, "method": method, "num_images": len(images), "model_sha256": model_fingerprint(model),
            "observers": statistics}


def check_images(images: np.ndarray, batch_size: int) -> None:
    """Calibration images are a non-empty (N,24,94,3) uint8 BGR array, read in batches of at least one."""
    if images.ndim != 4 or images.shape[1:] != (INPUT_HEIGHT, INPUT_WIDTH, 3) or images.dtype != np.uint8:
        raise InputError(f"calibration images must be (N,{INPUT_HEIGHT},{INPUT_WIDTH},3) uint8, got "
                         f"{images.shape} {images.dtype}")
    if len(images) == 0:
        raise InputError("no calibration images")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")


def save_calibration(path: str | os.PathLike, calibration: dict) -> None:
    check_calibration(calibration, path)
    save_torch_atomic(path, calibration)


def load_calibration(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such calibration file")
    with quiet_torch_ao():
        calibration = load_torch(path, "calibration artifact")
    check_calibration(calibration, path)
    return calibration


def check_calibration(calibration, source, model: torch.nn.Module | None = None) -> None:
    """Fails unless `calibration` is a calibration artifact (and, given `model`, was measured on its weights)."""
    if not isinstance(calibration, dict) or calibration.get("format") != FORMAT:
        found = calibration.get("format") if isinstance(calibration, dict) else type(calibration).__name__
        raise InputError(f"{source}: not a calibration artifact (format {found!r}, expected {FORMAT!r})")
    try:
        get_method(calibration.get("method"))
    except (InputError, TypeError) as error:
        raise InputError(f"{source}: {error}") from None
    if not isinstance(calibration.get("observers"), dict) or not calibration["observers"]:
        raise InputError(f"{source}: the calibration artifact has no observer statistics")
    if model is not None and calibration.get("model_sha256") != model_fingerprint(model):
        raise InputError(f"{source}: measured on different weights than this model's; recalibrate")
