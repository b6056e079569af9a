"""DVC stage `calibrate`: activation statistics of the pruned model on the calibration split only.

Writes into --out: `torch.pt`, the histograms of every activation the PyTorch int8 model quantizes (read by
`quantize`); `onnx_ranges.json`, ONNX Runtime's range cache for the ONNX export of the same model (read by
`export-onnx`; only when `onnx_method` is an ONNX Runtime method, not `torch`, which takes the PyTorch int8 model's
ranges there); and `calibration.json`, the methods and image count.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from lprnet.compile.onnx_export import export_onnx
from lprnet.compile.onnx_int8 import CALIBRATION_METHODS, TORCH_RANGES, calibrate_onnx
from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.optimize.calibrate import calibrate, get_method, save_calibration
from lprnet.pipeline.stage import parse_args, read_section, run


@dataclass(frozen=True)
class CalibrateParams:
    method: str  # PyTorch int8: minmax | percentile | entropy | histogram (see lprnet.calibrate.METHODS)
    onnx_method: str  # ONNX int8: torch (the PyTorch int8 model's ranges) | minmax | percentile | entropy
    num_images: int  # 0: the whole calib split


def main() -> None:
    args = parse_args(__doc__, ["pruned", "data", "out", "metrics"])
    params = read_section(args.params, "calibrate", CalibrateParams)
    get_method(params.method)
    if params.onnx_method != TORCH_RANGES and params.onnx_method not in CALIBRATION_METHODS:
        raise InputError(f"calibrate.onnx_method: unknown value {params.onnx_method!r}; valid: "
                         f"{', '.join([TORCH_RANGES, *CALIBRATION_METHODS])}")
    if params.num_images < 0:
        raise InputError(f"calibrate.num_images must be >= 0, got {params.num_images}")
    model, alphabet = load_model(args.pruned)
    images, _ = load_prepared(args.data, "calib")
    images = images[:params.num_images] if params.num_images else images

    with atomic_dir(args.out) as out, tempfile.TemporaryDirectory(prefix="calibrate.") as work:
        torch_calibration = calibrate(model, images, params.method)
        save_calibration(out / "torch.pt", torch_calibration)
        if params.onnx_method != TORCH_RANGES:
            onnx_path = Path(work) / "fp32.onnx"
            export_onnx(model, alphabet, onnx_path)
            calibrate_onnx(onnx_path, images, params.onnx_method, out / "onnx_ranges.json")
        write_json_atomic(out / "calibration.json", {"method": params.method, "onnx_method": params.onnx_method,
                                                     "num_images": len(images)})
    write_json_atomic(args.metrics, {"num_images": len(images),
                                     "num_observed_tensors": len(torch_calibration["observers"])})


if __name__ == "__main__":
    run(main)
