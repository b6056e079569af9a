"""The quantize stage's work: the `quantize` section of params.yaml, checked, and the int8 model it describes.

Post-training static int8 quantization of the pruned model (lprnet.optimize.quantize) with the calibrate stage's
statistics; with `qat_steps` > 0, the post-training model is still built and scored, and the quantization-aware one
(lprnet.optimize.qat) starts from its ranges, fine-tunes on the train split (validating on calib, never test) and
becomes the artifact. The artifact is scored as users load it, beside the fp32 model in the same process (accuracy,
size and batch-1 latency ratios); the step fails when int8 loses more plate accuracy than `max_accuracy_drop`.
Does not calibrate (see calibrate_step.py) and does not quantize or train by itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.optimize.calibrate import load_calibration
from lprnet.optimize.qat import convert_qat, prepare_qat
from lprnet.optimize.quantize import load_quantized, quantize, save_quantized
from lprnet.optimize.train import finetune_config, train_ctc
from lprnet.runtime.bench import BenchConfig, measure_speed
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class QuantizeParams:
    """The `quantize:` section of params.yaml (each key's meaning is there, beside its value)."""

    max_accuracy_drop: float  # the step fails when int8 loses more plate accuracy than this vs fp32
    qat_steps: int  # 0: post-training quantization only; > 0: that many quantization-aware fine-tuning steps
    qat_lr: float
    qat_batch_size: int
    seed: int

    def __post_init__(self):
        if not 0 <= self.max_accuracy_drop <= 1:  # `not` also refuses NaN, here and below
            raise InputError(f"quantize.max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop!r}")
        if self.qat_steps < 0:
            raise InputError(f"quantize.qat_steps must be 0 (off) or positive, got {self.qat_steps!r}")
        if not self.qat_lr > 0:
            raise InputError(f"quantize.qat_lr must be positive, got {self.qat_lr!r}")
        if self.qat_batch_size < 1:
            raise InputError(f"quantize.qat_batch_size must be at least 1, got {self.qat_batch_size!r}")
        if self.seed < 0:
            raise InputError(f"quantize.seed must be >= 0, got {self.seed!r}")


def quantize_stage(pruned: str | os.PathLike, calibration: str | os.PathLike, data: str | os.PathLike,
                   model_path: str | os.PathLike, params: QuantizeParams, bench: BenchConfig) -> dict:
    """Quantize the model in `pruned` with the calibrate stage's folder `calibration`, write it to `model_path`;
    returns the metrics. Raises InputError after writing when the accuracy drop exceeds `max_accuracy_drop`."""
    model, alphabet = load_model(pruned)
    statistics = load_calibration(Path(calibration) / "torch.pt")
    images, labels = load_prepared(data, "test")
    int8_model = quantize(model, statistics)
    ptq_accuracy = None
    if params.qat_steps > 0:
        ptq_accuracy = evaluate(TorchPredictor(int8_model, alphabet, bench.threads), images, labels,
                                bench.eval_batch)["accuracy"]
        prepared = prepare_qat(model, statistics)
        config = finetune_config(params.qat_steps, params.qat_batch_size, params.qat_lr, params.seed, bench.threads)
        train_ctc(prepared, alphabet, load_prepared(data, "train"), load_prepared(data, "calib"), config)
        int8_model = convert_qat(prepared)
    save_quantized(model_path, model.config, alphabet, int8_model, statistics)
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
        "qat_steps": params.qat_steps,
    })
    if ptq_accuracy is not None:
        metrics.update({"ptq_accuracy": ptq_accuracy, "qat_gain_vs_ptq": metrics["accuracy"] - ptq_accuracy})
    if metrics["accuracy_drop"] > params.max_accuracy_drop:
        raise InputError(f"{model_path}: int8 accuracy {metrics['accuracy']:.1%} is {metrics['accuracy_drop']:.1%} "
                         f"below fp32, more than quantize.max_accuracy_drop {params.max_accuracy_drop:.1%}")
    return metrics
