"""DVC stage `baseline`: train LPRNet from scratch with CTC, or load published weights; then evaluate it.

Writes the model artifact, the common metrics on the test split, and the learning curve (a DVC plot).
Training validates on the calib split; the test split is only scored at the end.
The work: lprnet/pipeline/baseline_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic, write_text_atomic
from lprnet.pipeline.baseline_step import BaselineParams, baseline_stage, curve_csv
from lprnet.pipeline.stage import parse_args, read_section, refuse_params_paths, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["data"], writes=["model", "metrics", "curve"])
    params = read_section(args.params, "baseline", BaselineParams)
    bench = read_section(args.params, "bench", BenchConfig)
    refuse_params_paths(args, {"baseline.weights": params.weights})
    metrics, history = baseline_stage(args.data, args.model, params, bench)
    write_json_atomic(args.metrics, metrics)
    write_text_atomic(args.curve, curve_csv(history))


if __name__ == "__main__":
    run(main)
