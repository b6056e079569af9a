"""DVC stage `benchmark`: every artifact of the pipeline side by side in one process.

Each artifact is loaded through `load_predictor` (so this stage may run any runtime), timed batch-1 in interleaved
turns and at `bench.throughput_batch`, with its p50 as ratios to the baseline's and to ONNX Runtime fp32's, and its
MACs per second as a share of this CPU's measured peak for its precision (the hardware floor); see
lprnet/pipeline/benchmark.py. Writes metrics/benchmark.json (flat keys `<artifact>_<metric>` beside the run's
settings and the floor, see lprnet/pipeline/artifacts.py) and reports/benchmark.csv (a DVC plot). Accuracy is not
re-measured.
"""

from __future__ import annotations

from pathlib import Path

from lprnet.csv_io import write_csv_atomic
from lprnet.io import write_json_atomic
from lprnet.pipeline.benchmark import CSV_COLUMNS, benchmark_artifacts, benchmark_csv_rows, benchmark_metrics
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["models"], writes=["metrics", "csv"])
    bench = read_section(args.params, "bench", BenchConfig)
    results, floor = benchmark_artifacts(Path(args.models), bench)
    write_json_atomic(args.metrics, benchmark_metrics(results, floor, bench))
    write_csv_atomic(args.csv, CSV_COLUMNS, benchmark_csv_rows(results), digits=4)


if __name__ == "__main__":
    run(main)
