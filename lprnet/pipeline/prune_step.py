"""The prune stage's work: the `prune` section of params.yaml, checked, and the pruned model it describes.

Lossless dead-channel removal, then structural filter pruning (lprnet.optimize.prune), then optional fine-tuning on
the labels (with `distill_alpha` > 0, plus a distillation term towards the losslessly pruned model) or distilled from
that model alone (lprnet.optimize.train), which keeps the starting weights when no validation beats them.
Fine-tuning and the activation criterion read the train split, validation reads calib, and the test split is only
scored. The metrics add to the common keys the reductions against the baseline, what the lossless step removed and,
when it fine-tunes, the validation accuracy before and after.

`ratio: auto` searches `auto_ratios` for the largest ratio whose fine-tuned model keeps `budget.prune_share` of the
accuracy budget (lprnet/pipeline/budget.py) against the baseline on the validation split, by bisection: accuracy
falls as the ratio grows, so a rejected ratio rules out every larger one and an accepted one every smaller one, and
about log2(len(auto_ratios)) fine-tunings decide. The model kept is the accepted ratio's fine-tuned one; when no
ratio keeps the share, the losslessly pruned model (ratio 0). Each ratio tried, with its validation accuracy and
verdict, is returned for reports/prune_search.csv; an explicit ratio gets one row there, with the same check against
the budget's share (a verdict only: the model is kept either way). Does not prune or train by itself.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model, save_model
from lprnet.model.data import load_prepared
from lprnet.model.network import LPRNet
from lprnet.optimize.prune import ACTIVATION, CRITERIA, SCOPES, prune_channels, remove_dead_channels
from lprnet.optimize.train import OnValidation, distill, finetune_config, train_ctc
from lprnet.pipeline.budget import VALIDATION_SPLIT, BudgetParams
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.metrics import artifact_metrics, count_macs, count_params
from lprnet.runtime.torch_runtime import TorchPredictor

AUTO = "auto"
# reports/prune_search.csv, one line per ratio `ratio: auto` tried, in the order tried.
SEARCH_COLUMNS = ("ratio", "macs", "val_accuracy_start", "val_accuracy", "val_accuracy_floor", "verdict")
# Gives the `on_validation` callback of the next fine-tuning (lprnet/pipeline/training_log.py's TrainingLog.run).
NewRun = Callable[[], OnValidation | None]


def no_curves() -> None:
    """The `new_run` of a caller that logs no curves."""
    return None


@dataclass(frozen=True)
class PruneParams:
    """The `prune:` section of params.yaml (each key's meaning is there, beside its value)."""

    ratio: float | str  # share of channels removed by the criterion, in [0, 1), or "auto"
    auto_ratios: list  # ratio auto: the ratios it may choose
    criterion: str  # l1 | l2 | activation
    scope: str  # global | layer
    round_to: int  # pruned groups keep a multiple of this many channels (1: any count)
    finetune_steps: int  # 0: no fine-tuning
    finetune_lr: float
    distill: bool  # fine-tune towards the losslessly pruned model's outputs instead of the labels
    distill_temperature: float
    distill_alpha: float  # label fine-tuning: weight of the distillation term added to the CTC loss (0: labels only)
    batch_size: int
    seed: int

    def __post_init__(self):
        if self.ratio != AUTO and not _is_share(self.ratio, allow_zero=True):
            raise InputError(f"prune.ratio must be a number in [0, 1) or {AUTO}, got {self.ratio!r}")
        ratios = self.auto_ratios
        if (not isinstance(ratios, (list, tuple)) or not ratios or not all(_is_share(r) for r in ratios)
                or list(ratios) != sorted(set(ratios))):
            raise InputError(f"prune.auto_ratios must be a non-empty list of increasing numbers in (0, 1), got "
                             f"{ratios!r}")
        object.__setattr__(self, "auto_ratios", tuple(float(r) for r in ratios))
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
        if (isinstance(self.distill_alpha, bool) or not isinstance(self.distill_alpha, numbers.Real)
                or not 0 <= self.distill_alpha < float("inf")):
            raise InputError(f"prune.distill_alpha must be a finite number >= 0, got {self.distill_alpha!r}")
        if self.distill and self.finetune_steps <= 0:
            raise InputError(f"prune.distill is true but prune.finetune_steps is {self.finetune_steps}: "
                             "distillation is fine-tuning, give it steps")
        if self.batch_size < 1:
            raise InputError(f"prune.batch_size must be at least 1, got {self.batch_size!r}")
        if self.seed < 0:
            raise InputError(f"prune.seed must be >= 0, got {self.seed!r}")


def _is_share(value, allow_zero: bool = False) -> bool:
    return (not isinstance(value, bool) and isinstance(value, numbers.Real)
            and (0 <= value < 1 if allow_zero else 0 < value < 1))  # also false for NaN


def prune_and_finetune(lossless: LPRNet, ratio: float, params: PruneParams, train, validation, alphabet,
                       threads: int, new_run: NewRun = no_curves) -> tuple[LPRNet, dict]:
    """`lossless` pruned at `ratio` and fine-tuned as `params` say; returns it and its fine-tuning metrics (empty
    without fine-tuning): validation accuracy before and of the weights kept, and the step they are from (0:
    fine-tuning did not beat the start)."""
    activation = params.criterion == ACTIVATION  # it runs the model on train images, never the test split
    pruned = prune_channels(lossless, ratio, params.criterion, params.scope, train[0] if activation else None,
                            params.round_to)
    if params.finetune_steps <= 0:
        return pruned, {}
    config = finetune_config(params.finetune_steps, params.batch_size, params.finetune_lr, params.seed, threads)
    if params.distill:
        history = distill(pruned, lossless, alphabet, train, validation, config, params.distill_temperature,
                          on_validation=new_run())
    else:
        history = train_ctc(pruned, alphabet, train, validation, config, teacher=lossless,
                            distill_alpha=params.distill_alpha, temperature=params.distill_temperature,
                            on_validation=new_run())
    best = max(history, key=lambda row: row["val_accuracy"])  # the first of equals: what fine-tuning keeps
    return pruned, {"finetune_val_accuracy_start": history[0]["val_accuracy"],
                    "finetune_val_accuracy": best["val_accuracy"], "finetune_kept_step": best["step"]}


def search_ratio(lossless: LPRNet, params: PruneParams, budget: BudgetParams, train, validation, alphabet,
                 threads: int, new_run: NewRun = no_curves) -> tuple[float, LPRNet, dict, list[dict]]:
    """`ratio: auto`: the largest of `params.auto_ratios` whose fine-tuned model (with `finetune_steps` 0: the
    pruned model as it is, for weights whose pruned models keep their accuracy untrained) keeps `budget.prune_share`
    of the accuracy budget against `lossless` (the baseline's function) on `validation`, found by bisection; returns
    that ratio (0 when none keeps it), its model, its fine-tuning metrics, and one row per ratio tried
    (SEARCH_COLUMNS)."""
    baseline_accuracy = evaluate(TorchPredictor(lossless, alphabet), *validation)["accuracy"]
    floor = budget.prune_floor(baseline_accuracy)
    best: tuple[float, LPRNet, dict] = (0.0, lossless, {})
    tried = []
    low, high = -1, len(params.auto_ratios)  # every ratio up to index `low` keeps the floor; from `high` on, none
    while high - low > 1:
        middle = (low + high) // 2
        ratio = params.auto_ratios[middle]
        model, finetuning = prune_and_finetune(lossless, ratio, params, train, validation, alphabet, threads, new_run)
        accuracy = finetuning.get("finetune_val_accuracy")
        if accuracy is None:  # no fine-tuning: the pruned model as it is
            accuracy = evaluate(TorchPredictor(model, alphabet), *validation)["accuracy"]
        kept = budget.keeps_prune_share(accuracy, baseline_accuracy)
        tried.append({"ratio": ratio, "macs": count_macs(model),
                      "val_accuracy_start": finetuning.get("finetune_val_accuracy_start", accuracy),
                      "val_accuracy": accuracy,
                      "val_accuracy_floor": floor,
                      "verdict": "kept: within the budget's share" if kept else "rejected: below the floor"})
        if kept:
            low, best = middle, (ratio, model, finetuning)
        else:
            high = middle
    return *best, tried


def explicit_ratio_row(lossless: LPRNet, pruned: LPRNet, ratio: float, finetuning: dict, budget: BudgetParams,
                       data, alphabet) -> dict:
    """The SEARCH_COLUMNS row of an explicit ratio: no search, but the same check against the budget's share on
    validation that `ratio: auto` makes, so the prune-search plot and its floor say whether the ratio keeps it."""
    validation = load_prepared(data, VALIDATION_SPLIT)
    baseline_accuracy = evaluate(TorchPredictor(lossless, alphabet), *validation)["accuracy"]
    accuracy = finetuning.get("finetune_val_accuracy")
    if accuracy is None:  # no fine-tuning
        accuracy = evaluate(TorchPredictor(pruned, alphabet), *validation)["accuracy"]
    kept = budget.keeps_prune_share(accuracy, baseline_accuracy)
    return {"ratio": ratio, "macs": count_macs(pruned),
            "val_accuracy_start": finetuning.get("finetune_val_accuracy_start", accuracy), "val_accuracy": accuracy,
            "val_accuracy_floor": budget.prune_floor(baseline_accuracy),
            "verdict": "explicit: within the budget's share" if kept else "explicit: below the floor"}


def prune_stage(baseline: str | os.PathLike, data: str | os.PathLike, model_path: str | os.PathLike,
                params: PruneParams, bench: BenchConfig, budget: BudgetParams, new_run: NewRun = no_curves
                ) -> tuple[dict, list[dict]]:
    """Prune the model in `baseline` (fine-tuning on the prepared folder `data`), write it to `model_path`; returns
    the metrics and the ratios tried (SEARCH_COLUMNS; an explicit ratio's one row). Each fine-tuning logs
    its validations to a callback from `new_run`."""
    model, alphabet = load_model(baseline)
    before = {"params": count_params(model), "macs": count_macs(model)}

    lossless, dead = remove_dead_channels(model)  # the same function as the baseline (a test), fewer MACs
    lossless_macs = count_macs(lossless)
    needs_train = params.criterion == ACTIVATION or params.finetune_steps > 0
    train = load_prepared(data, "train") if needs_train else None
    validation = load_prepared(data, VALIDATION_SPLIT) if params.finetune_steps > 0 or params.ratio == AUTO else None
    test = load_prepared(data, "test")  # every input read before the model is written
    tried = []
    if params.ratio == AUTO:
        ratio, pruned, finetuning, tried = search_ratio(lossless, params, budget, train, validation, alphabet,
                                                        bench.threads, new_run)
        search = {"ratio": ratio, "auto_ratios_tried": len(tried), "auto_val_accuracy_floor":
                  tried[0]["val_accuracy_floor"]}
    else:
        pruned, finetuning = prune_and_finetune(lossless, params.ratio, params, train, validation, alphabet,
                                                bench.threads, new_run)
        search = {"ratio": params.ratio}
        tried = [explicit_ratio_row(lossless, pruned, params.ratio, finetuning, budget, data, alphabet)]
    save_model(model_path, pruned, alphabet)

    metrics = artifact_metrics(TorchPredictor(pruned, alphabet, bench.threads), model_path,
                               *test, bench)
    metrics.update({
        "params_ratio": metrics["params"] / before["params"],
        "macs_ratio": metrics["macs"] / before["macs"],
        "size_ratio": metrics["size_bytes"] / Path(baseline).stat().st_size,
        "dead_channels_removed": dead["dead_channels_removed"],
        "dead_channels_kept": dead["dead_channels_kept"],
        "dead_macs_removed": before["macs"] - lossless_macs,
        **search,
        **finetuning,
    })
    return metrics, tried
