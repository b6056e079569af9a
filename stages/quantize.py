"""DVC stage `quantize`: static int8 quantization of the pruned model for x86 (PyTorch FX), held to the accuracy
budget on the validation split, post-training or with quantization-aware fine-tuning (`quantize.qat_steps` > 0).

Activation ranges come from the `calibrate` stage's statistics; conv-bn-relu are fused, weights per-channel
symmetric int8, and the global-context arithmetic stays float. When int8 falls below its share of the budget
(`budget` section) on validation, the most sensitive int8 layers are kept float, one at a time, until it fits
(`quantize.float_fallback`); reports/quantize_fallback.csv lists each step. Writes the int8 artifact and metrics with
the common keys, its validation accuracy against its floor, the layers kept float, and its size and batch-1 latency
against the fp32 model, measured side by side in this process. With QAT, its training curves go to a DVCLive folder
while it runs (empty without). The work: lprnet/pipeline/quantize_step.py.
"""

from __future__ import annotations

from tqdm import tqdm

from lprnet.csv_io import write_csv_atomic
from lprnet.io import write_json_atomic
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.quantize_step import FALLBACK_COLUMNS, QuantizeParams, quantize_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.pipeline.training_log import training_log
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["pruned", "calibration", "data", "baseline"],
                      writes=["model", "metrics", "fallback", "live"])
    params = read_section(args.params, "quantize", QuantizeParams)
    bench = read_section(args.params, "bench", BenchConfig)
    budget = read_section(args.params, "budget", BudgetParams)
    with training_log(args.live) as curves:
        metrics, steps = quantize_stage(args.pruned, args.calibration, args.data, args.baseline, args.model, params,
                                        bench, budget, report=lambda items, what: tqdm(items, desc=what, unit="layer"),
                                        on_validation=curves.run())
    write_csv_atomic(args.fallback, FALLBACK_COLUMNS, steps, digits=4)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
