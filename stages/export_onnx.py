"""DVC stage `export-onnx`: the pruned fp32 model and its int8 QDQ form as ONNX, checked against their sources.

fp32: a dynamic batch axis, ONNX Runtime's logits within `export_onnx.fp32_tolerance` of PyTorch's on the test split
(or within 16 times PyTorch fp32's own error against float64). int8: ONNX Runtime's quantize_static over that graph,
with the PyTorch int8 model's ranges (`calibrate.onnx_method: torch`) or the calibrate stage's ONNX Runtime ranges;
its plates must agree with the PyTorch int8 model's on `export_onnx.int8_min_agreement` of the test split.
reference: the unpruned baseline as ONNX, which `benchmark` times and `select` may deliver.
The work: lprnet/pipeline/export_onnx_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.export_onnx_step import ExportParams, export_onnx_stage
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig


def main() -> None:
    args = parse_args(__doc__, reads=["pruned", "quantized", "calibration", "data", "baseline"],
                      writes=["fp32", "int8", "reference", "metrics_fp32", "metrics_int8"])
    params = read_section(args.params, "export_onnx", ExportParams)
    bench = read_section(args.params, "bench", BenchConfig)
    fp32_metrics, int8_metrics = export_onnx_stage(args.pruned, args.quantized, args.calibration, args.data,
                                                   args.baseline, args.fp32, args.int8, args.reference, params,
                                                   bench)
    write_json_atomic(args.metrics_fp32, fp32_metrics)
    write_json_atomic(args.metrics_int8, int8_metrics)


if __name__ == "__main__":
    run(main)
