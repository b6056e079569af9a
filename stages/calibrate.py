"""DVC stage `calibrate`: activation statistics of the pruned model on the calibration split only.

Writes into --out: `torch.pt`, the histograms of every activation the PyTorch int8 model quantizes (read by
`quantize`); `onnx_ranges.json`, ONNX Runtime's range cache for the ONNX export of the same model (read by
`export-onnx`; only when `onnx_method` is a calibration method, not `torch`, which takes the PyTorch int8 model's
ranges there); and `calibration.json`, the methods and image count. The work: lprnet/pipeline/calibrate_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.calibrate_step import CalibrateParams, calibrate_stage
from lprnet.pipeline.stage import parse_args, read_section, run


def main() -> None:
    args = parse_args(__doc__, reads=["pruned", "data"], writes=["metrics"], folders=["out"])
    params = read_section(args.params, "calibrate", CalibrateParams)
    metrics = calibrate_stage(args.pruned, args.data, args.out, params)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
