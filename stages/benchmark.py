"""DVC stage `benchmark`: every artifact of the pipeline side by side in one process.

Batch-1 latency is measured interleaved in turns (A B C ... A B C ..., each turn after settling calls, see
bench.interleaved_latency; after warm-up, the same thread count for every runtime), with p50 and p90, then
throughput at `bench.throughput_batch`. Each artifact's p50 is divided by the baseline's (PyTorch fp32) and by ONNX
Runtime fp32's on the same (pruned) model; ONNX Runtime fp32 of the unpruned baseline is measured too, as the
reference the study used. Accuracy is not re-measured: the report joins each artifact with its stage's metrics.
Writes metrics/benchmark.json and reports/benchmark.csv (a DVC plot).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from lprnet.compile.onnx_export import export_onnx
from lprnet.errors import MissingFileError
from lprnet.io import write_json_atomic, write_text_atomic
from lprnet.model.checkpoint import load_model
from lprnet.pipeline.report import ARTIFACTS
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig, interleaved_latency, throughput
from lprnet.runtime.predictor import load_predictor

BASELINE, ORT_FP32 = "torch_fp32_baseline", "ort_fp32"


def main() -> None:
    args = parse_args(__doc__, ["models", "metrics", "csv"])
    bench = read_section(args.params, "bench", BenchConfig)
    models = Path(args.models)
    missing = [str(models / a.path) for a in ARTIFACTS.values() if not (models / a.path).exists()]
    if missing:
        raise MissingFileError(f"{missing[0]}: artifact missing (run `dvc repro`)")
    with tempfile.TemporaryDirectory(prefix="benchmark.") as work:
        baseline_onnx = Path(work) / "baseline.onnx"
        export_onnx(*load_model(models / "baseline.pt"), baseline_onnx)
        predictors = {name: load_predictor(models / a.path, bench.threads) for name, a in ARTIFACTS.items()}
        predictors["ort_fp32_baseline"] = load_predictor(baseline_onnx, bench.threads)
        results = interleaved_latency(predictors, bench)
        for name, predictor in predictors.items():
            results[name]["throughput_ips"] = throughput(predictor, bench)
    for result in results.values():
        result["ratio_vs_baseline"] = result["latency_ms_p50"] / results[BASELINE]["latency_ms_p50"]
        result["ratio_vs_ort_fp32"] = result["latency_ms_p50"] / results[ORT_FP32]["latency_ms_p50"]
        result["ratio_vs_ort_fp32_baseline"] = (result["latency_ms_p50"]
                                                / results["ort_fp32_baseline"]["latency_ms_p50"])
    write_json_atomic(args.metrics, {"threads": bench.threads, "runs": bench.runs,
                                     "throughput_batch": bench.throughput_batch, **results})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["artifact", "latency_ms_p50", "latency_ms_p90", "throughput_ips", "ratio_vs_ort_fp32"])
    for name, result in results.items():
        writer.writerow([name, *(round(result[k], 4) for k in ("latency_ms_p50", "latency_ms_p90", "throughput_ips",
                                                               "ratio_vs_ort_fp32"))])
    write_text_atomic(args.csv, table.getvalue())


if __name__ == "__main__":
    run(main)
