"""The PyTorch runtime: an LPRNet (fp32, or the int8 FX model of lprnet.optimize.quantize) as a Predictor."""

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

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(images)).numpy()
