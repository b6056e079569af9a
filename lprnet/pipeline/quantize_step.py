"""The quantize stage's work: the `quantize` section of params.yaml, checked, and the int8 model it describes.

Post-training static int8 quantization of the pruned model (lprnet.optimize.quantize) with the calibrate stage's
statistics, held to the accuracy budget (lprnet/pipeline/budget.py) on the validation split. When the int8 model
falls below its floor (`BudgetParams.int8_floor`) and `float_fallback` is on, its int8 layers are ranked by
sensitivity, measured as how much of the int8 model's logit error (mean squared difference from the fp32 model's
logits on validation) goes away when that layer alone computes in float; then the most sensitive are kept float,
one at a time, until the model keeps the floor or every layer is float. This is Intel Neural Compressor's op-wise
fallback with a continuous score in place of one accuracy run per ranking step, which on a few hundred validation
plates moves by whole plates. The metrics and reports/quantize_fallback.csv list each step: the layer kept float,
its share of the convolution MACs, and the validation accuracy it bought.

With `qat_steps` > 0, the quantization-aware model (lprnet.optimize.qat) starts from the post-training ranges and
float layers, fine-tunes on the train split (validating on calib) and becomes the artifact. A model that misses its
floor is still written, with `budget_met: false`: the select stage passes over it. The test split is only scored,
beside the fp32 model in the same process (accuracy, size and batch-1 latency ratios). Does not calibrate (see
calibrate_step.py) and does not quantize or train by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.model.network import LPRNet
from lprnet.optimize.calibrate import float_modules_of, int8_layers, load_calibration
from lprnet.optimize.qat import convert_qat, prepare_qat
from lprnet.optimize.quantize import load_quantized, quantize, save_quantized
from lprnet.optimize.train import finetune_config, train_ctc
from lprnet.pipeline.budget import VALIDATION_SPLIT, BudgetParams, keeps_floor
from lprnet.runtime.bench import BenchConfig, measure_speed
from lprnet.runtime.evaluate import evaluate, predict_logits, score, texts_from_logits
from lprnet.runtime.metrics import artifact_metrics, conv_macs
from lprnet.runtime.torch_runtime import TorchPredictor

# reports/quantize_fallback.csv: step 0 is the all-int8 model; step k keeps k layers float, the k-th named.
FALLBACK_COLUMNS = ("step", "float_layer", "logit_mse_removed", "float_macs_share", "val_accuracy",
                    "val_accuracy_floor", "verdict")


@dataclass(frozen=True)
class QuantizeParams:
    """The `quantize:` section of params.yaml (each key's meaning is there, beside its value)."""

    float_fallback: bool  # below the budget's int8 floor: keep the most sensitive int8 layers float until it fits
    qat_steps: int  # 0: post-training quantization only; > 0: that many quantization-aware fine-tuning steps
    qat_lr: float
    qat_batch_size: int
    seed: int

    def __post_init__(self):
        if not isinstance(self.float_fallback, bool):
            raise InputError(f"quantize.float_fallback must be true or false, got {self.float_fallback!r}")
        if self.qat_steps < 0:
            raise InputError(f"quantize.qat_steps must be 0 (off) or positive, got {self.qat_steps!r}")
        if not self.qat_lr > 0:  # `not` also refuses NaN
            raise InputError(f"quantize.qat_lr must be positive, got {self.qat_lr!r}")
        if self.qat_batch_size < 1:
            raise InputError(f"quantize.qat_batch_size must be at least 1, got {self.qat_batch_size!r}")
        if self.seed < 0:
            raise InputError(f"quantize.seed must be >= 0, got {self.seed!r}")


class ValidationScorer:
    """Validation plate accuracy and logit error against the fp32 model of int8 versions of `model`."""

    def __init__(self, model: LPRNet, statistics: dict, validation, alphabet, bench: BenchConfig):
        self.model, self.statistics, self.alphabet, self.bench = model, statistics, alphabet, bench
        self.images, self.labels = validation
        self.fp32_logits = self.logits(model)
        self.fp32_accuracy = self.accuracy(self.fp32_logits)

    def logits(self, model: torch.nn.Module) -> np.ndarray:
        predictor = TorchPredictor(model, self.alphabet, self.bench.threads)
        return predict_logits(predictor, self.images, self.bench.eval_batch)

    def accuracy(self, logits: np.ndarray) -> float:
        return score(texts_from_logits(logits, self.alphabet), self.labels)["accuracy"]

    def int8(self, float_layers: tuple[str, ...]) -> tuple[torch.fx.GraphModule, float, float]:
        """The int8 model with `float_layers` float, its validation accuracy and its mean squared logit error."""
        int8_model = quantize(self.model, self.statistics, float_layers)
        logits = self.logits(int8_model)
        return int8_model, self.accuracy(logits), float(np.mean((logits - self.fp32_logits) ** 2))


def fallback_to_floor(scorer: ValidationScorer, floor: float, enabled: bool, report) -> tuple:
    """The post-training int8 model with as few layers float as it takes to keep `floor` on validation (every
    layer int8 when it already does, or when `enabled` is false); returns it, its float layers and validation
    accuracy, and one FALLBACK_COLUMNS row per step taken."""
    macs = conv_macs(scorer.model)
    int8_macs = {layer: macs.get(layer, 0) for layer in int8_layers(scorer.model)}  # pools have none
    fixed_float_macs = sum(macs.values()) - sum(int8_macs.values())  # calibrate.FLOAT_MODULES' convolutions
    float_layers: tuple[str, ...] = ()
    model, accuracy, error = scorer.int8(float_layers)

    def row(step: int, layer: str, removed) -> dict:
        kept = keeps_floor(accuracy, floor)
        return {"step": step, "float_layer": layer, "logit_mse_removed": removed,
                "float_macs_share": (fixed_float_macs + sum(int8_macs[name] for name in float_layers))
                / sum(macs.values()), "val_accuracy": accuracy,
                "val_accuracy_floor": floor, "verdict": "keeps the floor" if kept else "below the floor"}

    steps = [row(0, "", "")]
    if steps[-1]["verdict"] == "keeps the floor" or not enabled:
        return model, float_layers, accuracy, steps
    removed = {}
    for layer in report(int8_layers(scorer.model), "ranking int8 layers"):
        removed[layer] = error - scorer.int8((layer,))[2]
    ranking = sorted(removed, key=lambda layer: -removed[layer])  # stable: equal scores keep forward order
    for step, layer in enumerate(report(ranking, "keeping layers float"), 1):
        float_layers += (layer,)
        model, accuracy, _ = scorer.int8(float_layers)
        steps.append(row(step, layer, removed[layer]))
        if steps[-1]["verdict"] == "keeps the floor":
            break
    return model, float_layers, accuracy, steps


def quantize_stage(pruned: str | os.PathLike, calibration: str | os.PathLike, data: str | os.PathLike,
                   baseline: str | os.PathLike, model_path: str | os.PathLike, params: QuantizeParams,
                   bench: BenchConfig, budget: BudgetParams, report=lambda items, _: items) -> tuple[dict, list]:
    """Quantize the model in `pruned` with the calibrate stage's folder `calibration` to the budget against the
    model in `baseline`, write it to `model_path`; returns the metrics and the fallback steps (FALLBACK_COLUMNS).
    `report(items, description)` wraps the slow loops (a progress bar in the stage script)."""
    model, alphabet = load_model(pruned)
    statistics = load_calibration(Path(calibration) / "torch.pt")
    validation = load_prepared(data, VALIDATION_SPLIT)
    images, labels = load_prepared(data, "test")  # every input read before the model is written
    train = load_prepared(data, "train") if params.qat_steps > 0 else None
    baseline_model, _ = load_model(baseline)
    baseline_accuracy = evaluate(TorchPredictor(baseline_model, alphabet, bench.threads), *validation,
                                 bench.eval_batch)["accuracy"]
    scorer = ValidationScorer(model, statistics, validation, alphabet, bench)
    floor = budget.int8_floor(baseline_accuracy, scorer.fp32_accuracy)
    int8_model, float_layers, val_accuracy, steps = fallback_to_floor(scorer, floor, params.float_fallback, report)
    ptq = {}
    if params.qat_steps > 0:
        ptq = {"ptq_accuracy": evaluate(TorchPredictor(int8_model, alphabet, bench.threads), images, labels,
                                        bench.eval_batch)["accuracy"], "ptq_val_accuracy": val_accuracy}
        prepared = prepare_qat(model, statistics, float_layers)
        config = finetune_config(params.qat_steps, params.qat_batch_size, params.qat_lr, params.seed, bench.threads)
        train_ctc(prepared, alphabet, train, validation, config)
        int8_model = convert_qat(prepared, float_modules_of(model, float_layers))
        val_accuracy = scorer.accuracy(scorer.logits(int8_model))
    save_quantized(model_path, model.config, alphabet, int8_model, statistics, float_layers)
    int8 = TorchPredictor(load_quantized(model_path)[0], alphabet, bench.threads)  # the artifact as users load it
    fp32 = TorchPredictor(model, alphabet, bench.threads)
    metrics = artifact_metrics(int8, model_path, images, labels, bench, source=model)
    fp32_accuracy = evaluate(fp32, images, labels, bench.eval_batch)["accuracy"]
    fp32_speed, int8_speed = measure_speed(fp32, bench), measure_speed(int8, bench)
    metrics.update({
        "fp32_accuracy": fp32_accuracy,
        "accuracy_drop": fp32_accuracy - metrics["accuracy"],
        "size_ratio_vs_fp32": metrics["size_bytes"] / Path(pruned).stat().st_size,
        "latency_ratio_vs_fp32": int8_speed["latency_ms_p50"] / fp32_speed["latency_ms_p50"],
        "val_accuracy": val_accuracy,
        "fp32_val_accuracy": scorer.fp32_accuracy,
        "baseline_val_accuracy": baseline_accuracy,
        "val_accuracy_floor": floor,
        "budget_met": keeps_floor(val_accuracy, floor),
        "float_layers": ",".join(float_layers),
        "float_layer_count": len(float_layers),
        "float_macs_share": steps[-1]["float_macs_share"],
        "qat_steps": params.qat_steps,
        **ptq,
    })
    if ptq:
        metrics["qat_gain_vs_ptq"] = metrics["accuracy"] - ptq["ptq_accuracy"]
    return metrics, steps
