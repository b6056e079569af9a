"""DVC stage `prune`: lossless dead-channel removal, then structural filter pruning, then optional fine-tuning
(on the labels, or distilled from the model before structural pruning).

Writes the pruned model, and metrics with the common keys, the reduction ratios against the baseline, what the
lossless step removed and, when it fine-tunes, the validation accuracy before and after (fine-tuning keeps the
starting weights when no validation beats them). Fine-tuning reads the train split and validates on calib; the
test split is only scored. The work: lprnet/pipeline/prune_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.prune_step import PruneParams, prune_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, ["baseline", "data", "model", "metrics"])
    params = read_section(args.params, "prune", PruneParams)
    bench = read_section(args.params, "bench", BenchConfig)
    metrics = prune_stage(args.baseline, args.data, args.model, params, bench)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
