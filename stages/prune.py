"""DVC stage `prune`: lossless dead-channel removal, then structural filter pruning, then optional fine-tuning
(on the labels, or distilled from the model before structural pruning).

Writes the pruned model, and metrics with the common keys, the reduction ratios against the baseline, what the
lossless step removed and, when it fine-tunes, the validation accuracy before and after (fine-tuning keeps the
starting weights when no validation beats them). Fine-tuning reads the train split and validates on calib; the
test split is only scored. With `prune.ratio: auto`, the ratio is searched against the accuracy budget (`budget`
section) on the validation split, and reports/prune_search.csv lists each ratio tried, its validation accuracy and
verdict (header only for an explicit ratio). Each fine-tuning's training curves go to a DVCLive folder while it runs
(with `ratio: auto`, the fine-tunings one after the other on the step axis, in the order of the search).
The work: lprnet/pipeline/prune_step.py.
"""

from __future__ import annotations

from lprnet.csv_io import write_csv_atomic
from lprnet.io import write_json_atomic
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.prune_step import SEARCH_COLUMNS, PruneParams, prune_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.pipeline.training_log import training_log
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["baseline", "data"], writes=["model", "metrics", "search", "live"])
    params = read_section(args.params, "prune", PruneParams)
    bench = read_section(args.params, "bench", BenchConfig)
    budget = read_section(args.params, "budget", BudgetParams)
    with training_log(args.live) as curves:
        metrics, tried = prune_stage(args.baseline, args.data, args.model, params, bench, budget, curves.run)
    write_csv_atomic(args.search, SEARCH_COLUMNS, tried, digits=4)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
