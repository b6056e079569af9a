"""DVC stage `quantize`: static int8 quantization of the pruned model for x86 (PyTorch FX), post-training, or with
quantization-aware fine-tuning when `quantize.qat_steps` > 0.

Activation ranges come from the `calibrate` stage's statistics; conv-bn-relu are fused, weights per-channel
symmetric int8, and the global-context arithmetic stays float. With QAT, the post-training model is still built
and scored, the QAT one starts from its ranges, fine-tunes on the train split (validating on calib, never test) and
becomes the artifact; the metrics then say whether it beat post-training quantization. Writes the int8 artifact and
metrics with the common keys, plus its size and batch-1 latency against the fp32 model, measured side by side in
this process. The work: lprnet/pipeline/quantize_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.quantize_step import QuantizeParams, quantize_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, ["pruned", "calibration", "data", "model", "metrics"])
    params = read_section(args.params, "quantize", QuantizeParams)
    bench = read_section(args.params, "bench", BenchConfig)
    metrics = quantize_stage(args.pruned, args.calibration, args.data, args.model, params, bench)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
