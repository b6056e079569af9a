"""Saving and loading PyTorch model artifacts: the pipeline's own files and bare LPRNet_Pytorch state dicts.

Everything is loaded with `weights_only=True`, so a file cannot execute code, and with strict key matching.
The pipeline's file is a dict {format, alphabet, config, state_dict}; a bare state dict gets its architecture
from its tensor shapes and its alphabet from its class count. Does not run models (see lprnet.runtime).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lprnet.errors import InputError, MissingFileError
from lprnet.io import save_torch_atomic
from lprnet.model.alphabet import Alphabet, alphabet_for_classes, get_alphabet
from lprnet.model.network import LPRNet, LPRNetConfig

FORMAT = "lprnet-pipeline-torch/1"


def config_from_state_dict(state_dict: dict, dropout: float = 0.5) -> LPRNetConfig:
    """The architecture of a published-layout state dict, read off its tensor shapes (pruned files carry their
    config, since the kept pool channels and context divisors cannot be read off shapes)."""
    def out_channels(key: str) -> int:
        if key not in state_dict:
            raise KeyError(key)
        return int(state_dict[key].shape[0])

    return LPRNetConfig(
        num_classes=out_channels("container.0.weight"),
        dropout=dropout,
        stem=out_channels("backbone.0.weight"),
        block1=out_channels("backbone.4.block.6.weight"),
        block2=out_channels("backbone.8.block.6.weight"),
        block3=out_channels("backbone.11.block.6.weight"),
        head=out_channels("backbone.16.weight"),
        mid1=out_channels("backbone.4.block.0.weight"),
        mid2=out_channels("backbone.8.block.0.weight"),
        mid3=out_channels("backbone.11.block.0.weight"),
    )


def save_model(path: str | os.PathLike, model: LPRNet, alphabet: Alphabet) -> None:
    if model.config.num_classes != alphabet.num_classes:
        raise InputError(f"model has {model.config.num_classes} classes, alphabet {alphabet.name!r} has "
                         f"{alphabet.num_classes}")
    payload = {"format": FORMAT, "alphabet": alphabet.name, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    save_torch_atomic(path, payload)


def load_model(path: str | os.PathLike, alphabet: Alphabet | None = None) -> tuple[LPRNet, Alphabet]:
    """Load a pipeline artifact or an LPRNet_Pytorch state dict as an eval-mode model and its alphabet.

    `alphabet`, when given, must match the file (a bare state dict has none of its own)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files; name the file
        raise InputError(f"{path}: not a loadable PyTorch state dict ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a state dict, found {type(payload).__name__}")
    if payload.get("format") == FORMAT:
        state_dict, saved_alphabet = payload["state_dict"], get_alphabet(payload["alphabet"])
        config = LPRNetConfig(**payload["config"])
    elif isinstance(payload.get("format"), str):
        raise InputError(f"{path}: a {payload['format']!r} artifact, not a float model "
                         "(use lprnet.runtime.predictor.load_predictor)")
    else:
        state_dict = payload
        try:
            config = config_from_state_dict(state_dict)
        except KeyError as key:
            raise InputError(f"{path}: not an LPRNet state dict (no tensor {key})") from None
        saved_alphabet = alphabet or alphabet_for_classes(config.num_classes)
    if alphabet is not None and alphabet.num_classes != config.num_classes:
        raise InputError(f"{path}: the model has {config.num_classes} classes but alphabet {alphabet.name!r} has "
                         f"{alphabet.num_classes}")
    model = LPRNet(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()
        raise InputError(f"{path}: state dict does not match LPRNet ({' '.join(first[:2])[:300]})") from None
    return model.eval(), alphabet or saved_alphabet
