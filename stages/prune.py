"""DVC stage `prune`: lossless dead-channel removal, then structural filter pruning, then optional fine-tuning
(on the labels, or distilled from the model before structural pruning).

Writes the pruned model, and metrics with the common keys, the reduction ratios against the baseline, what the
lossless step removed and, when it fine-tunes, the validation accuracy before and after (fine-tuning keeps the
starting weights when no validation beats them). Fine-tuning reads the train split and validates on calib; the
test split is only scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.io import write_json_atomic
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import load_prepared
from lprnet.optimize.prune import ACTIVATION, prune_channels, remove_dead_channels
from lprnet.optimize.train import TrainConfig, distill, train_ctc
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.metrics import artifact_metrics, count_macs, count_params
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class PruneParams:
    ratio: float  # share of channels removed by the criterion, in [0, 1)
    criterion: str  # l1 | l2 | activation
    scope: str  # global | layer
    round_to: int  # pruned groups keep a multiple of this many channels (1: any count)
    finetune_steps: int  # 0: no fine-tuning
    finetune_lr: float
    distill: bool  # fine-tune towards the losslessly pruned model's outputs instead of the labels
    distill_temperature: float
    batch_size: int
    seed: int

    def __post_init__(self):
        if self.round_to < 1:
            raise InputError(f"prune.round_to must be a positive integer, got {self.round_to!r}")
        if not self.distill_temperature > 0:  # also refuses NaN
            raise InputError(f"prune.distill_temperature must be positive, got {self.distill_temperature!r}")
        if self.distill and self.finetune_steps <= 0:
            raise InputError(f"prune.distill is true but prune.finetune_steps is {self.finetune_steps}: "
                             "distillation is fine-tuning, give it steps")


def main() -> None:
    args = parse_args(__doc__, ["baseline", "data", "model", "metrics"])
    params = read_section(args.params, "prune", PruneParams)
    bench = read_section(args.params, "bench", BenchConfig)
    baseline, alphabet = load_model(args.baseline)
    before = {"params": count_params(baseline), "macs": count_macs(baseline)}

    lossless, dead = remove_dead_channels(baseline)  # the same function as the baseline (a test), fewer MACs
    lossless_macs = count_macs(lossless)
    # The activation criterion runs the model on train images (never the test split); fine-tuning trains on them.
    train = (load_prepared(args.data, "train") if params.criterion == ACTIVATION or params.finetune_steps > 0
             else None)
    model = prune_channels(lossless, params.ratio, params.criterion, params.scope,
                           train[0] if params.criterion == ACTIVATION else None, params.round_to)
    finetuning = {}
    if params.finetune_steps > 0:
        config = TrainConfig(steps=params.finetune_steps, batch_size=params.batch_size, lr=params.finetune_lr,
                             eval_every=max(1, params.finetune_steps // 5), patience=10**9, seed=params.seed,
                             threads=bench.threads, keep_start=True)
        calib = load_prepared(args.data, "calib")
        if params.distill:
            history = distill(model, lossless, alphabet, train, calib, config, params.distill_temperature)
        else:
            history = train_ctc(model, alphabet, train, calib, config)
        best = max(history, key=lambda row: row["val_accuracy"])  # the first of equals: what fine-tuning keeps
        # Validation (calib split) accuracy before fine-tuning and of the weights kept, and the step they are from
        # (0: fine-tuning did not beat the start).
        finetuning = {"finetune_val_accuracy_start": history[0]["val_accuracy"],
                      "finetune_val_accuracy": best["val_accuracy"], "finetune_kept_step": best["step"]}
    save_model(args.model, model, alphabet)

    metrics = artifact_metrics(TorchPredictor(model, alphabet, bench.threads), args.model,
                               *load_prepared(args.data, "test"), bench)
    metrics.update({
        "params_ratio": metrics["params"] / before["params"],
        "macs_ratio": metrics["macs"] / before["macs"],
        "size_ratio": metrics["size_bytes"] / Path(args.baseline).stat().st_size,
        "dead_channels_removed": dead["dead_channels_removed"],
        "dead_channels_kept": dead["dead_channels_kept"],
        "dead_macs_removed": before["macs"] - lossless_macs,
        **finetuning,
    })
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
