"""DVC stage `baseline`: train LPRNet from scratch with CTC, or load published weights; then evaluate it.

Writes the model artifact, the common metrics on the test split, and the training curves (a DVCLive folder: loss,
validation accuracy and learning rate at each validation, written while it trains).
Training validates on the calib split; the test split is only scored at the end.
The work: lprnet/pipeline/baseline_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.baseline_step import BaselineParams, baseline_stage
from lprnet.pipeline.stage import parse_args, read_section, refuse_params_paths, run
from lprnet.pipeline.training_log import training_log
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["data"], writes=["model", "metrics", "live"])
    params = read_section(args.params, "baseline", BaselineParams)
    bench = read_section(args.params, "bench", BenchConfig)
    refuse_params_paths(args, {"baseline.weights": params.weights})
    with training_log(args.live) as curves:
        metrics, _ = baseline_stage(args.data, args.model, params, bench, on_validation=curves.run())
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
