"""DVC stage `quantize`: static int8 quantization of the pruned model for x86 (PyTorch FX), post-training, or with
quantization-aware fine-tuning when `quantize.qat_steps` > 0.

Activation ranges come from the `calibrate` stage's statistics; conv-bn-relu are fused, weights per-channel
symmetric int8, and the global-context arithmetic stays float. With QAT, the post-training model is still built
and scored, the QAT one starts from its ranges, fine-tunes on the train split (validating on calib, never test) and
becomes the artifact; the metrics then say whether it beat post-training quantization. Writes the int8 artifact and
metrics with the common keys, plus its size and batch-1 latency against the fp32 model, measured side by side in
this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError
from lprnet.io import write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.optimize.calibrate import load_calibration
from lprnet.optimize.qat import convert_qat, prepare_qat
from lprnet.optimize.quantize import load_quantized, quantize, save_quantized
from lprnet.optimize.train import TrainConfig, train_ctc
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig, measure_speed
from lprnet.runtime.evaluate import evaluate
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class QuantizeParams:
    max_accuracy_drop: float  # the stage fails when int8 loses more plate accuracy than this vs fp32
    qat_steps: int = 0  # 0: post-training quantization only; > 0: that many quantization-aware fine-tuning steps
    qat_lr: float = 1e-4
    qat_batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.max_accuracy_drop <= 1:
            raise InputError(f"quantize.max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop!r}")
        if self.qat_steps < 0:
            raise InputError(f"quantize.qat_steps must be 0 (off) or positive, got {self.qat_steps!r}")
        if not self.qat_lr > 0:
            raise InputError(f"quantize.qat_lr must be positive, got {self.qat_lr!r}")
        if self.qat_batch_size < 1:
            raise InputError(f"quantize.qat_batch_size must be at least 1, got {self.qat_batch_size!r}")


def main() -> None:
    args = parse_args(__doc__, ["pruned", "calibration", "data", "model", "metrics"])
    params = read_section(args.params, "quantize", QuantizeParams)
    bench = read_section(args.params, "bench", BenchConfig)
    model, alphabet = load_model(args.pruned)
    calibration = load_calibration(Path(args.calibration) / "torch.pt")
    images, labels = load_prepared(args.data, "test")
    int8_model = quantize(model, calibration)
    extra = {}
    if params.qat_steps > 0:
        ptq_accuracy = evaluate(TorchPredictor(int8_model, alphabet, bench.threads), images, labels,
                                bench.eval_batch)["accuracy"]
        prepared = prepare_qat(model, calibration)
        config = TrainConfig(steps=params.qat_steps, batch_size=params.qat_batch_size, lr=params.qat_lr,
                             eval_every=max(1, params.qat_steps // 5), patience=10**9, seed=params.seed,
                             threads=bench.threads, keep_start=True)
        train_ctc(prepared, alphabet, load_prepared(args.data, "train"), load_prepared(args.data, "calib"), config)
        int8_model = convert_qat(prepared)
        extra["ptq_accuracy"] = ptq_accuracy
    save_quantized(args.model, model.config, alphabet, int8_model, calibration)
    int8 = TorchPredictor(load_quantized(args.model)[0], alphabet, bench.threads)  # the artifact as users load it
    fp32 = TorchPredictor(model, alphabet, bench.threads)
    metrics = artifact_metrics(int8, args.model, images, labels, bench, source=model)
    fp32_accuracy = evaluate(fp32, images, labels, bench.eval_batch)["accuracy"]
    fp32_speed, int8_speed = measure_speed(fp32, bench), measure_speed(int8, bench)
    metrics.update({
        "fp32_accuracy": fp32_accuracy,
        "accuracy_drop": fp32_accuracy - metrics["accuracy"],
        "size_ratio_vs_fp32": metrics["size_bytes"] / Path(args.pruned).stat().st_size,
        "latency_ratio_vs_fp32": int8_speed["latency_ms_p50"] / fp32_speed["latency_ms_p50"],
        "qat_steps": params.qat_steps,
    })
    if "ptq_accuracy" in extra:
        metrics.update({"ptq_accuracy": extra["ptq_accuracy"],
                        "qat_gain_vs_ptq": metrics["accuracy"] - extra["ptq_accuracy"]})
    if metrics["accuracy_drop"] > params.max_accuracy_drop:
        raise InputError(f"{args.model}: int8 accuracy {metrics['accuracy']:.1%} is {metrics['accuracy_drop']:.1%} "
                         f"below fp32, more than quantize.max_accuracy_drop {params.max_accuracy_drop:.1%}")
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
