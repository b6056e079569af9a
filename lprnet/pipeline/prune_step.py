"""The prune stage's work: the `prune` section of params.yaml, checked, and the pruned model it describes.

Lossless dead-channel removal, then structural filter pruning (lprnet.optimize.prune), then optional fine-tuning on
the labels or distilled from the losslessly pruned model (lprnet.optimize.train), which keeps the starting weights
when no validation beats them. Fine-tuning and the activation criterion read the train split, validation reads
calib, and the test split is only scored. The metrics add to the common keys the reductions against the baseline,
what the lossless step removed and, when it fine-tunes, the validation accuracy before and after. Does not prune or
train by itself.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import load_prepared
from lprnet.optimize.prune import ACTIVATION, CRITERIA, SCOPES, prune_channels, remove_dead_channels
from lprnet.optimize.train import distill, finetune_config, train_ctc
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.metrics import artifact_metrics, count_macs, count_params
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class PruneParams:
    """The `prune:` section of params.yaml (each key's meaning is there, beside its value)."""

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
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) or not 0 <= self.ratio < 1:
            raise InputError(f"prune.ratio must be a number in [0, 1), got {self.ratio!r}")
        criteria = [*sorted(CRITERIA), ACTIVATION]
        if self.criterion not in criteria:
            raise InputError(f"prune.criterion: unknown pruning criterion {self.criterion!r}; valid: "
                             f"{', '.join(criteria)}")
        if self.scope not in SCOPES:
            raise InputError(f"prune.scope: unknown pruning scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise InputError(f"prune.round_to must be a positive integer, got {self.round_to!r}")
        if self.finetune_steps < 0:
            raise InputError(f"prune.finetune_steps must be 0 (no fine-tuning) or positive, got "
                             f"{self.finetune_steps!r}")
        if not self.finetune_lr > 0:  # `not` also refuses NaN, here and below
            raise InputError(f"prune.finetune_lr must be positive, got {self.finetune_lr!r}")
        if not self.distill_temperature > 0:
            raise InputError(f"prune.distill_temperature must be positive, got {self.distill_temperature!r}")
        if self.distill and self.finetune_steps <= 0:
            raise InputError(f"prune.distill is true but prune.finetune_steps is {self.finetune_steps}: "
                             "distillation is fine-tuning, give it steps")
        if self.batch_size < 1:
            raise InputError(f"prune.batch_size must be at least 1, got {self.batch_size!r}")
        if self.seed < 0:
            raise InputError(f"prune.seed must be >= 0, got {self.seed!r}")


def prune_stage(baseline: str | os.PathLike, data: str | os.PathLike, model_path: str | os.PathLike,
                params: PruneParams, bench: BenchConfig) -> dict:
    """Prune the model in `baseline` (fine-tuning on the prepared folder `data`), write it to `model_path`; returns
    the metrics."""
    model, alphabet = load_model(baseline)
    before = {"params": count_params(model), "macs": count_macs(model)}

    lossless, dead = remove_dead_channels(model)  # the same function as the baseline (a test), fewer MACs
    lossless_macs = count_macs(lossless)
    # The activation criterion runs the model on train images (never the test split); fine-tuning trains on them.
    activation = params.criterion == ACTIVATION
    train = load_prepared(data, "train") if activation or params.finetune_steps > 0 else None
    pruned = prune_channels(lossless, params.ratio, params.criterion, params.scope,
                            train[0] if activation else None, params.round_to)
    finetuning = {}
    if params.finetune_steps > 0:
        config = finetune_config(params.finetune_steps, params.batch_size, params.finetune_lr, params.seed,
                                 bench.threads)
        calib = load_prepared(data, "calib")
        if params.distill:
            history = distill(pruned, lossless, alphabet, train, calib, config, params.distill_temperature)
        else:
            history = train_ctc(pruned, alphabet, train, calib, config)
        best = max(history, key=lambda row: row["val_accuracy"])  # the first of equals: what fine-tuning keeps
        # Validation (calib split) accuracy before fine-tuning and of the weights kept, and the step they are from
        # (0: fine-tuning did not beat the start).
        finetuning = {"finetune_val_accuracy_start": history[0]["val_accuracy"],
                      "finetune_val_accuracy": best["val_accuracy"], "finetune_kept_step": best["step"]}
    save_model(model_path, pruned, alphabet)

    metrics = artifact_metrics(TorchPredictor(pruned, alphabet, bench.threads), model_path,
                               *load_prepared(data, "test"), bench)
    metrics.update({
        "params_ratio": metrics["params"] / before["params"],
        "macs_ratio": metrics["macs"] / before["macs"],
        "size_ratio": metrics["size_bytes"] / Path(baseline).stat().st_size,
        "dead_channels_removed": dead["dead_channels_removed"],
        "dead_channels_kept": dead["dead_channels_kept"],
        "dead_macs_removed": before["macs"] - lossless_macs,
        **finetuning,
    })
    return metrics
