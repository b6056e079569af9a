"""The PyTorch runtime: an LPRNet (fp32, or the int8 FX model of lprnet.optimize.quantize) as a Predictor.

A float model reads its images in channels-last memory format, which PyTorch's CPU convolutions run 1.5-3x faster
than the NCHW arrays the other runtimes take (the model's logits move by rounding only, ~1e-5). An int8 model reads
NCHW: FBGEMM's int8 kernels without VNNI saturate differently on a channels-last input, and its logits would move.
"""

from __future__ import annotations

import numpy as np
import torch

from lprnet.model.alphabet import Alphabet


class TorchPredictor:
    name = "torch"

    def __init__(self, model: torch.nn.Module, alphabet: Alphabet, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.alphabet = alphabet
        self.memory_format = torch.contiguous_format if is_quantized(model) else torch.channels_last

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(images).contiguous(memory_format=self.memory_format)).numpy()


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether `model` has quantized (int8) modules, as lprnet.optimize.quantize's int8 models do."""
    return any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in model.modules())
