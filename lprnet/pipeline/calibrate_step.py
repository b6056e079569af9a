"""The calibrate stage's work: activation statistics of the pruned model on the calibration split only, for the
PyTorch int8 model and, unless its ranges are to be the PyTorch model's own, for the ONNX int8 model.

Writes into one folder (all or nothing): `torch.pt`, the histograms of every activation the PyTorch int8 model
quantizes (read by `quantize`); `onnx_ranges.json`, ONNX Runtime's range cache for the ONNX export of the same
model (read by `export-onnx`; only when `onnx_method` is a calibration method, not `torch`); and
`calibration.json`, the methods and image count. Does not quantize (see lprnet.optimize.quantize and the export-onnx
stage) and never reads the test split.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lprnet.compile.onnx_export import export_onnx
from lprnet.compile.onnx_int8 import TORCH_RANGES, calibrate_onnx, check_onnx_method
from lprnet.errors import InputError, MissingFileError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.optimize.calibrate import calibrate, get_method, save_calibration

SUMMARY = "calibration.json"


@dataclass(frozen=True)
class CalibrateParams:
    method: str  # PyTorch int8 activation ranges: a name in lprnet.optimize.calibrate.METHODS
    onnx_method: str  # ONNX int8 ranges: torch (the PyTorch int8 model's own) or a name in METHODS
    num_images: int  # 0: the whole calib split

    def __post_init__(self):
        for key, check in (("method", get_method), ("onnx_method", check_onnx_method)):
            try:
                check(getattr(self, key))
            except InputError as error:
                raise InputError(f"calibrate.{key}: {error}") from None
        if self.num_images < 0:
            raise InputError(f"calibrate.num_images must be >= 0 (0: the whole calib split), got {self.num_images!r}")


def calibrate_stage(pruned: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                    params: CalibrateParams) -> dict:
    """Calibrate the model in `pruned` on the calib split of `data` into the folder `out`; returns the metrics."""
    model, alphabet = load_model(pruned)
    images, _ = load_prepared(data, "calib")
    images = images[:params.num_images] if params.num_images else images
    with atomic_dir(out) as folder, tempfile.TemporaryDirectory(prefix="calibrate.") as work:
        torch_calibration = calibrate(model, images, params.method)
        save_calibration(folder / "torch.pt", torch_calibration)
        if params.onnx_method != TORCH_RANGES:
            onnx_path = Path(work) / "fp32.onnx"
            export_onnx(model, alphabet, onnx_path)
            calibrate_onnx(onnx_path, images, params.onnx_method, folder / "onnx_ranges.json")
        write_json_atomic(folder / SUMMARY, {"method": params.method, "onnx_method": params.onnx_method,
                                             "num_images": len(images)})
    return {"num_images": len(images), "num_observed_tensors": len(torch_calibration["observers"])}


def onnx_method_of(calibration: str | os.PathLike) -> str:
    """The `onnx_method` a calibrate stage's folder was made with (and so which ranges the ONNX int8 model takes)."""
    path = Path(calibration) / SUMMARY
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; `calibration` must be the calibrate stage's folder")
    try:
        method = json.loads(path.read_text(encoding="utf-8"))["onnx_method"]
        check_onnx_method(method)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a calibrate stage summary ({error})") from None
    return method
