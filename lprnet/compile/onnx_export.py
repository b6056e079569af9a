"""ONNX export of an LPRNet with a dynamic batch axis and the alphabet in the model's metadata.

Uses PyTorch's torch.export-based exporter (opset 18, the lowest it implements), which turns the channel-selecting
max pools into a Slice (or Gather) and a MaxPool. Does not quantize (see quantize.py) and does not check numerics
(the tests do).
"""

from __future__ import annotations

import os

import onnx
import torch

from lprnet.io import atomic_path
from lprnet.model.alphabet import Alphabet
from lprnet.model.network import INPUT_HEIGHT, INPUT_WIDTH

OPSET = 18


def export_onnx(model: torch.nn.Module, alphabet: Alphabet, path: str | os.PathLike, opset: int = OPSET) -> None:
    model = model.eval()
    example = torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH)
    program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                dynamo=True, verbose=False)
    proto = program.model_proto
    with atomic_path(path) as tmp:
        onnx.helper.set_model_props(proto, {"alphabet": alphabet.name})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
