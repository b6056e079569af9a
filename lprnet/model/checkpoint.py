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
from lprnet.io import load_torch, save_torch_atomic
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


def file_alphabet(name, path: Path) -> Alphabet:
    """The alphabet a file names; an InputError naming the file for a name that is none."""
    try:
        return get_alphabet(name)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    except TypeError:  # an unhashable name
        raise InputError(f"{path}: alphabet {name!r} is not an alphabet name") from None


def pipeline_payload(payload: dict, path: Path, keys: tuple[str, ...]) -> None:
    """Fail naming `path` unless a pipeline file's `payload` holds each of `keys`, with a dict `state_dict` of
    tensors."""
    missing = [key for key in keys if key not in payload]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} in this {payload.get('format')} file")
    check_tensors(payload["state_dict"], path)


def check_tensors(state_dict, path: Path) -> None:
    if not isinstance(state_dict, dict):
        raise InputError(f"{path}: its state_dict is a {type(state_dict).__name__}, not a dict of tensors")
    not_tensors = sorted(str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise InputError(f"{path}: state_dict entries that are not tensors: {', '.join(not_tensors[:5])}")


def check_config_fits(config: LPRNetConfig, path: Path) -> None:
    """Fail unless the file at `path` could hold the weights `config` declares (one byte each at least, as int8):
    a config must not allocate more than its file could fill before its tensors' shapes are compared with it."""
    with torch.device("meta"):  # shapes only, nothing allocated
        count = sum(p.numel() for p in LPRNet(config).parameters())
    size = path.stat().st_size
    if count > size:
        raise InputError(f"{path}: its config declares {count} weights, more than its {size} bytes can hold")


def load_model(path: str | os.PathLike, alphabet: Alphabet | None = None) -> tuple[LPRNet, Alphabet]:
    """Load a pipeline artifact or an LPRNet_Pytorch state dict as an eval-mode model and its alphabet.

    `alphabet`, when given, must match the file (a bare state dict has none of its own)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such model file")
    payload = load_torch(path, "PyTorch state dict")
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a state dict, found {type(payload).__name__}")
    if payload.get("format") == FORMAT:
        pipeline_payload(payload, path, ("alphabet", "config", "state_dict"))
        state_dict, saved_alphabet = payload["state_dict"], file_alphabet(payload["alphabet"], path)
        config = LPRNetConfig.from_dict(payload["config"], str(path))
        if alphabet is not None and alphabet != saved_alphabet:
            raise InputError(f"{path}: the model's alphabet is {saved_alphabet.name!r}, not {alphabet.name!r}")
    elif isinstance(payload.get("format"), str):
        raise InputError(f"{path}: a {payload['format']!r} artifact, not a float model "
                         "(use lprnet.runtime.predictor.load_predictor)")
    else:
        state_dict = payload
        check_tensors(state_dict, path)
        try:
            config = config_from_state_dict(state_dict)
        except KeyError as key:
            raise InputError(f"{path}: not an LPRNet state dict (no tensor {key})") from None
        except (IndexError, InputError) as error:  # a scalar tensor, or widths out of range
            raise InputError(f"{path}: not an LPRNet state dict ({error})") from None
        if alphabet is None:
            try:
                alphabet = alphabet_for_classes(config.num_classes)
            except InputError as error:
                raise InputError(f"{path}: {error}; name one (--alphabet)") from None
        saved_alphabet = alphabet
    if saved_alphabet.num_classes != config.num_classes:
        raise InputError(f"{path}: the model has {config.num_classes} classes but alphabet {saved_alphabet.name!r} "
                         f"has {saved_alphabet.num_classes}")
    check_config_fits(config, path)
    model = LPRNet(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()
        raise InputError(f"{path}: state dict does not match LPRNet ({' '.join(first[:2])[:300]})") from None
    return model.eval(), saved_alphabet
