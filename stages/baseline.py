"""DVC stage `baseline`: train LPRNet from scratch with CTC, or load published weights; then evaluate it.

Writes the model artifact, the common metrics on the test split, and the learning curve (a DVC plot).
Training validates on the calib split; the test split is only scored at the end.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch

from lprnet.io import write_json_atomic, write_text_atomic
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import load_prepared, prepared_alphabet
from lprnet.model.network import LPRNet, LPRNetConfig
from lprnet.optimize.train import TrainConfig, train_ctc
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.torch_runtime import TorchPredictor

CURVE_FIELDS = ["step", "epoch", "train_loss", "val_accuracy", "val_char_accuracy", "lr"]


@dataclass(frozen=True)
class BaselineParams:
    weights: str  # a state dict to load instead of training ("" trains from scratch)
    dropout: float
    epochs: float
    batch_size: int
    lr: float
    weight_decay: float
    eval_every: int
    patience: int
    seed: int


def main() -> None:
    args = parse_args(__doc__, ["data", "model", "metrics", "curve"])
    params = read_section(args.params, "baseline", BaselineParams)
    bench = read_section(args.params, "bench", BenchConfig)
    alphabet = prepared_alphabet(args.data)
    history = []
    if params.weights:
        model, alphabet = load_model(params.weights, alphabet)
    else:
        torch.manual_seed(params.seed)  # the initial weights too: two runs with the same params give the same model
        model = LPRNet(LPRNetConfig(num_classes=alphabet.num_classes, dropout=params.dropout))
        config = TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                             weight_decay=params.weight_decay, eval_every=params.eval_every,
                             patience=params.patience, seed=params.seed, threads=bench.threads)
        history = train_ctc(model, alphabet, load_prepared(args.data, "train"), load_prepared(args.data, "calib"),
                            config)
    save_model(args.model, model, alphabet)
    metrics = artifact_metrics(TorchPredictor(model, alphabet, bench.threads), args.model,
                               *load_prepared(args.data, "test"), bench)
    metrics["train_steps"] = history[-1]["step"] if history else 0
    write_json_atomic(args.metrics, metrics)
    curve = io.StringIO()
    writer = csv.DictWriter(curve, fieldnames=CURVE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in history)
    write_text_atomic(args.curve, curve.getvalue())


if __name__ == "__main__":
    run(main)
