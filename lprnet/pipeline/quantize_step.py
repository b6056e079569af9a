"""The quantize stage's work: the `quantize` section of params.yaml, checked, and the int8 model it describes.

Post-training static int8 quantization of the pruned model (lprnet.optimize.quantize) with the calibrate stage's
statistics, held to the accuracy budget (lprnet/pipeline/budget.py) on the validation split. When the int8 model
falls below its floor (`BudgetParams.int8_floor`) and `float_fallback` is on, its int8 layers are ranked by
sensitivity, measured as how much of the int8 model's logit error (mean squared difference from the fp32 model's
logits on validation) goes away when that layer alone computes in float; then the most sensitive are kept float,
one at a time, until the model keeps the floor or every layer is float; then each of those but the last is tried
back in int8, least sensitive first. This is Intel Neural Compressor's op-wise fallback with a continuous score in
place of one accuracy run per ranking step, which on a few hundred validation plates moves by whole plates, and a
backward pass, since the ranking is only a guide to which layers the plates need. Each split is scored in PyTorch
and, as the QDQ graph export-onnx makes of it, in ONNX Runtime, whose integer rounding the TVM stages share: a split
keeps the floor when both do. The metrics and reports/quantize_fallback.csv list each step: the layer, its share of
the convolution MACs, and the validation accuracy of the split.

With `qat_steps` > 0, the quantization-aware model (lprnet.optimize.qat) starts from the post-training ranges and
float layers, fine-tunes on the train split (validating on calib; each validation goes to `on_validation`, the
stage's DVCLive curves) and becomes the artifact. A model that misses its floor is still written, with
`budget_met: false`: the select stage passes over it. The test split is only scored, beside the fp32 model in the
same process (accuracy, size and batch-1 latency ratios). Does not calibrate (see calibrate_step.py) and does not
quantize or train by itself.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from lprnet.compile.onnx_export import export_onnx
from lprnet.compile.onnx_int8 import TORCH_RANGES, quantize_qdq, torch_int8_plan
from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.model.network import LPRNet
from lprnet.optimize.calibrate import float_modules_of, in_float_modules, int8_layers, load_calibration
from lprnet.optimize.qat import convert_qat, prepare_qat
from lprnet.optimize.quantize import load_quantized, quantize, save_quantized
from lprnet.optimize.train import OnValidation, finetune_config, train_ctc
from lprnet.pipeline.budget import VALIDATION_SPLIT, BudgetParams, keeps_floor
from lprnet.pipeline.calibrate_step import onnx_method_of
from lprnet.runtime.bench import BenchConfig, measure_speed
from lprnet.runtime.evaluate import evaluate, predict_logits, score, texts_from_logits
from lprnet.runtime.metrics import artifact_metrics, conv_macs
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.torch_runtime import TorchPredictor

# reports/quantize_fallback.csv: step 0 is the all-int8 model; step k keeps k layers float, the k-th named.
# Each row is the split tried at that step: a step back to int8 names the layer tried without it.
FALLBACK_COLUMNS = ("step", "float_layer", "logit_mse_removed", "float_macs_share", "val_accuracy",
                    "val_accuracy_torch", "val_accuracy_qdq", "val_accuracy_floor", "verdict")
KEEPS, BELOW = "keeps the floor", "below the floor"
BACK_TO_INT8, STAYS_FLOAT = "back to int8: the floor still holds", "stays float: below the floor in int8"


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
    """Validation plate accuracy and logit error against the fp32 model of int8 versions of `model`.

    With `qdq_folder`, each int8 model is also scored as the QDQ graph `export-onnx` makes of it, run by ONNX
    Runtime: the integer arithmetic ONNX Runtime and the TVM stages deploy, whose rounding differs from PyTorch's
    (on 106 validation plates that was one plate, the whole budget). A model's accuracy is then the lower of the
    two, so a split kept for the budget keeps it in every runtime that runs it."""

    def __init__(self, model: LPRNet, statistics: dict, validation, alphabet, bench: BenchConfig,
                 qdq_folder: Path | None = None):
        self.model, self.statistics, self.alphabet, self.bench = model, statistics, alphabet, bench
        self.images, self.labels = validation
        self.fp32_logits = self.logits(TorchPredictor(model, alphabet, bench.threads))
        self.fp32_accuracy = self.accuracy(self.fp32_logits)
        self.qdq_folder = qdq_folder
        if qdq_folder is not None:
            export_onnx(model, alphabet, qdq_folder / "fp32.onnx")

    def logits(self, predictor) -> np.ndarray:
        return predict_logits(predictor, self.images, self.bench.eval_batch)

    def accuracy(self, logits: np.ndarray) -> float:
        return score(texts_from_logits(logits, self.alphabet), self.labels)["accuracy"]

    def error(self, float_layers: tuple[str, ...]) -> float:
        """The mean squared logit error of the PyTorch int8 model with `float_layers` float (the ranking's
        continuous score)."""
        int8_model = quantize(self.model, self.statistics, float_layers)
        logits = self.logits(TorchPredictor(int8_model, self.alphabet, self.bench.threads))
        return float(np.mean((logits - self.fp32_logits) ** 2))

    def scores(self, int8_model: torch.fx.GraphModule) -> dict:
        """Validation accuracy of `int8_model` in PyTorch and, with a QDQ folder, as its QDQ graph in ONNX Runtime."""
        torch_logits = self.logits(TorchPredictor(int8_model, self.alphabet, self.bench.threads))
        scores = {"val_accuracy_torch": self.accuracy(torch_logits), "val_accuracy_qdq": ""}
        if self.qdq_folder is not None:
            path = self.qdq_folder / "int8.onnx"
            quantize_qdq(torch_int8_plan(onnx.load(str(self.qdq_folder / "fp32.onnx")), int8_model), path)
            scores["val_accuracy_qdq"] = self.accuracy(self.logits(OnnxRuntimePredictor(path, self.bench.threads)))
        scores["val_accuracy"] = min(score for score in scores.values() if score != "")
        return scores

    def int8(self, float_layers: tuple[str, ...]) -> tuple[torch.fx.GraphModule, dict]:
        """The int8 model with `float_layers` float and its validation scores (`scores`)."""
        int8_model = quantize(self.model, self.statistics, float_layers)
        return int8_model, self.scores(int8_model)


def float_macs_share(model: LPRNet, float_layers: tuple[str, ...]) -> float:
    """The share of `model`'s convolution MACs computed in float arithmetic when `float_layers` are kept float: those
    and the convolutions of calibrate.FLOAT_MODULES, which compute in float in every int8 model."""
    macs = conv_macs(model)
    return sum(count for layer, count in macs.items()
               if layer in float_layers or in_float_modules(layer)) / sum(macs.values())


def fallback_to_floor(scorer: ValidationScorer, floor: float, enabled: bool, report) -> tuple:
    """The post-training int8 model with as few layers float as it takes to keep `floor` on validation (every
    layer int8 when it already does, or when `enabled` is false); returns it, its float layers, its validation
    accuracy, and one FALLBACK_COLUMNS row per step taken.

    The steps: rank the int8 layers by the logit error each removes when float alone; keep the most sensitive
    float one at a time until the floor holds; then try each of those but the last back in int8, least sensitive
    first, and leave it int8 when the floor still holds. Accuracy moves by whole plates, so the ranking is only a
    guide: the layers added before the one that reached the floor are not all needed."""
    float_layers: tuple[str, ...] = ()
    model, scores = scorer.int8(float_layers)
    steps: list[dict] = []

    def step(layer: str, removed, layers: tuple[str, ...], scored: dict, verdict: str) -> None:
        steps.append({"step": len(steps), "float_layer": layer, "logit_mse_removed": removed,
                      "float_macs_share": float_macs_share(scorer.model, layers), **scored,
                      "val_accuracy_floor": floor, "verdict": verdict})

    def verdict(scored: dict) -> str:
        return KEEPS if keeps_floor(scored["val_accuracy"], floor) else BELOW

    step("", "", float_layers, scores, verdict(scores))
    if steps[-1]["verdict"] == KEEPS or not enabled:
        return model, float_layers, scores["val_accuracy"], steps
    error = scorer.error(())
    removed = {layer: error - scorer.error((layer,)) for layer in report(int8_layers(scorer.model),
                                                                          "ranking int8 layers")}
    ranking = sorted(removed, key=lambda layer: -removed[layer])  # stable: equal scores keep forward order
    for layer in report(ranking, "keeping layers float"):
        float_layers += (layer,)
        model, scores = scorer.int8(float_layers)
        step(layer, removed[layer], float_layers, scores, verdict(scores))
        if steps[-1]["verdict"] == KEEPS:
            break
    else:
        return model, float_layers, scores["val_accuracy"], steps
    for layer in report(float_layers[-2::-1], "trying layers back in int8"):
        candidate = tuple(name for name in float_layers if name != layer)
        candidate_model, candidate_scores = scorer.int8(candidate)
        kept = keeps_floor(candidate_scores["val_accuracy"], floor)
        step(layer, removed[layer], candidate, candidate_scores, BACK_TO_INT8 if kept else STAYS_FLOAT)
        if kept:
            float_layers, model, scores = candidate, candidate_model, candidate_scores
    return model, float_layers, scores["val_accuracy"], steps


def quantize_stage(pruned: str | os.PathLike, calibration: str | os.PathLike, data: str | os.PathLike,
                   baseline: str | os.PathLike, model_path: str | os.PathLike, params: QuantizeParams,
                   bench: BenchConfig, budget: BudgetParams, report=lambda items, _: items,
                   on_validation: OnValidation | None = None) -> tuple[dict, list]:
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
    # With its own ranges (any other onnx_method), export-onnx's QDQ graph is not a graph of this int8 model.
    score_qdq = onnx_method_of(calibration) == TORCH_RANGES
    with tempfile.TemporaryDirectory(prefix="quantize-qdq.") as work:
        scorer = ValidationScorer(model, statistics, validation, alphabet, bench, Path(work) if score_qdq else None)
        floor = budget.int8_floor(baseline_accuracy, scorer.fp32_accuracy)
        int8_model, float_layers, val_accuracy, steps = fallback_to_floor(scorer, floor, params.float_fallback,
                                                                          report)
        ptq = {}
        if params.qat_steps > 0:
            ptq = {"ptq_accuracy": evaluate(TorchPredictor(int8_model, alphabet, bench.threads), images, labels,
                                            bench.eval_batch)["accuracy"], "ptq_val_accuracy": val_accuracy}
            prepared = prepare_qat(model, statistics, float_layers)
            config = finetune_config(params.qat_steps, params.qat_batch_size, params.qat_lr, params.seed,
                                     bench.threads)
            train_ctc(prepared, alphabet, train, validation, config, on_validation=on_validation)
            int8_model = convert_qat(prepared, float_modules_of(model, float_layers))
            val_accuracy = scorer.scores(int8_model)["val_accuracy"]
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
        "float_macs_share": float_macs_share(model, float_layers),
        "qat_steps": params.qat_steps,
        **ptq,
    })
    if ptq:
        metrics["qat_gain_vs_ptq"] = metrics["accuracy"] - ptq["ptq_accuracy"]
    return metrics, steps
