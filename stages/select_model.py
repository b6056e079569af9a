"""DVC stage `select`: the one model to ship, the fastest artifact within the accuracy budget, in models/deploy.

Walks the benchmark's artifacts from the lowest batch-1 p50 up, scoring each on the validation split until one keeps
`budget.max_accuracy_drop` against the baseline (and the optional size goal); writes it with its manifest to the
deploy folder (DVC artifact `lprnet` in dvc.yaml), verified on the test split after the choice. Writes metrics (the
delivered artifact, its validation and test accuracy against the baseline's, its latency and ratios) and
reports/select.csv (each candidate looked at and its verdict). The work: lprnet/pipeline/select_step.py.

Named select_model.py, not select.py: a script's folder comes first on sys.path, and a stages/select.py would shadow
Python's own `select` module, which the libraries every stage imports load (through socket and selectors).
"""

from __future__ import annotations

from pathlib import Path

from lprnet.csv_io import write_csv_atomic
from lprnet.errors import MissingFileError
from lprnet.io import write_json_atomic
from lprnet.pipeline.artifacts import ARTIFACTS
from lprnet.pipeline.budget import BudgetParams
from lprnet.pipeline.revision import parse_metrics
from lprnet.pipeline.select_step import CSV_COLUMNS, select_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["data", "benchmark"], writes=["metrics", "csv"], folders=["out"],
                      within={"models": [artifact.path for artifact in ARTIFACTS.values()]})
    budget = read_section(args.params, "budget", BudgetParams)
    bench = read_section(args.params, "bench", BenchConfig)
    benchmark = Path(args.benchmark)
    if not benchmark.is_file():
        raise MissingFileError(f"{benchmark}: missing (run `dvc repro benchmark`)")
    timings = parse_metrics(benchmark.read_bytes(), str(benchmark))
    metrics, candidates = select_stage(args.models, args.data, timings, args.out, budget, bench)
    write_csv_atomic(args.csv, CSV_COLUMNS, candidates, digits=4)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
