"""DVC stage `quantize`: post-training static int8 quantization of the pruned model for x86 (PyTorch FX).

Activation ranges come from the `calibrate` stage's statistics; conv-bn-relu are fused, weights per-channel
symmetric int8, and the global-context arithmetic stays float. Writes the int8 artifact and metrics with the
common keys, plus its size and batch-1 latency against the fp32 model, measured side by side in this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lprnet.artifacts import load_model
from lprnet.backends import TorchPredictor
from lprnet.bench import BenchConfig, measure_speed
from lprnet.calibrate import load_calibration
from lprnet.data import load_prepared
from lprnet.evaluate import evaluate
from lprnet.io import write_json_atomic
from lprnet.metrics import artifact_metrics
from lprnet.quantize import load_quantized, quantize, save_quantized
from lprnet.stage import parse_args, read_section, run


@dataclass(frozen=True)
class QuantizeParams:
    max_accuracy_drop: float  # the stage fails when int8 loses more plate accuracy than this vs fp32


def main() -> None:
    args = parse_args(__doc__, ["pruned", "calibration", "data", "model", "metrics"])
    params = read_section(args.params, "quantize", QuantizeParams)
    bench = read_section(args.params, "bench", BenchConfig)
    model, alphabet = load_model(args.pruned)
    calibration = load_calibration(Path(args.calibration) / "torch.pt")
    save_quantized(args.model, model.config, alphabet, quantize(model, calibration), calibration)
    int8 = TorchPredictor(load_quantized(args.model)[0], alphabet, bench.threads)  # the artifact as users load it
    fp32 = TorchPredictor(model, alphabet, bench.threads)
    images, labels = load_prepared(args.data, "test")
    metrics = artifact_metrics(int8, args.model, images, labels, bench, source=model)
    fp32_accuracy = evaluate(fp32, images, labels, bench.eval_batch)["accuracy"]
    fp32_speed, int8_speed = measure_speed(fp32, bench), measure_speed(int8, bench)
    metrics.update({
        "fp32_accuracy": fp32_accuracy,
        "accuracy_drop": fp32_accuracy - metrics["accuracy"],
        "size_ratio_vs_fp32": metrics["size_bytes"] / Path(args.pruned).stat().st_size,
        "latency_ratio_vs_fp32": int8_speed["latency_ms_p50"] / fp32_speed["latency_ms_p50"],
    })
    if metrics["accuracy_drop"] > params.max_accuracy_drop:
        raise ValueError(f"{args.model}: int8 accuracy {metrics['accuracy']:.1%} is {metrics['accuracy_drop']:.1%} "
                         f"below fp32, more than quantize.max_accuracy_drop {params.max_accuracy_drop:.1%}")
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
