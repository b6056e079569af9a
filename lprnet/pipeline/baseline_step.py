"""The baseline stage's work: the `baseline` section of params.yaml, checked, and the fp32 model it describes.

Trains LPRNet from scratch with CTC (lprnet.optimize.train), validating on the calib split, or loads a state dict
(lprnet.model.checkpoint: weights only, strict keys); writes the model and scores it on the test split, which
training never reads. Each validation goes to the stage's `on_validation` callback (its DVCLive curves) as it is made.
Does not train, load or evaluate by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import load_prepared, prepared_alphabet
from lprnet.model.network import LPRNet, LPRNetConfig
from lprnet.optimize.train import OnValidation, TrainConfig, epoch_steps, train_ctc
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class BaselineParams:
    """The `baseline:` section of params.yaml (each key's meaning is there, beside its value). The training keys
    are checked also when `weights` is given and training does not run."""

    weights: str  # a state dict to load instead of training ("" trains from scratch)
    dropout: float
    epochs: float
    batch_size: int
    lr: float
    weight_decay: float
    eval_every: int  # steps between validations on the calib split
    patience: int  # validations without improvement before an early stop
    seed: int  # initial weights, batch order, dropout

    def __post_init__(self):
        if not 0 <= self.dropout < 1:  # `not` also refuses NaN, here and below
            raise InputError(f"baseline.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.epochs > 0:
            raise InputError(f"baseline.epochs must be positive, got {self.epochs!r}")
        if not self.lr > 0:
            raise InputError(f"baseline.lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise InputError(f"baseline.weight_decay must be >= 0, got {self.weight_decay!r}")
        for key in ("batch_size", "eval_every", "patience"):
            if getattr(self, key) < 1:
                raise InputError(f"baseline.{key} must be at least 1, got {getattr(self, key)!r}")
        if self.seed < 0:
            raise InputError(f"baseline.seed must be >= 0, got {self.seed!r}")


def baseline_stage(data: str | os.PathLike, model_path: str | os.PathLike, params: BaselineParams,
                   bench: BenchConfig, on_validation: OnValidation | None = None) -> tuple[dict, list[dict]]:
    """Train or load the model for the prepared folder `data`, write it to `model_path`; returns the metrics and the
    training history (one row per validation, each also passed to `on_validation`; empty when loaded)."""
    alphabet = prepared_alphabet(data)
    test = load_prepared(data, "test")  # every input read before the model is written
    history = []
    if params.weights:
        model, alphabet = load_model(params.weights, alphabet)
    else:
        torch.manual_seed(params.seed)  # the initial weights too: two runs with the same params give the same model
        model = LPRNet(LPRNetConfig(num_classes=alphabet.num_classes, dropout=params.dropout))
        train = load_prepared(data, "train")
        config = TrainConfig(steps=epoch_steps(params.epochs, len(train[0]), params.batch_size),
                             batch_size=params.batch_size, lr=params.lr, weight_decay=params.weight_decay,
                             eval_every=params.eval_every, patience=params.patience, seed=params.seed,
                             threads=bench.threads, keep_start=False)
        history = train_ctc(model, alphabet, train, load_prepared(data, "calib"), config, on_validation=on_validation)
    save_model(model_path, model, alphabet)
    metrics = artifact_metrics(TorchPredictor(model, alphabet, bench.threads), model_path,
                               *test, bench)
    metrics["train_steps"] = history[-1]["step"] if history else 0
    return metrics, history

