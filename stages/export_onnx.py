"""DVC stage `export-onnx`: the pruned fp32 model and its int8 QDQ form as ONNX, checked against their sources.

fp32: exported with a dynamic batch axis; fails unless ONNX Runtime's logits are within `fp32_tolerance` of
PyTorch's on the test split or, for models with large logits, within twice PyTorch fp32's own error against
float64 (both runtimes round; an export bug shows as errors far above that).
int8: ONNX Runtime's quantize_static over that fp32 graph. By default (`calibrate.onnx_method: torch`) with the
PyTorch int8 model's own activation ranges and float parts, so that it is the `quantize` artifact as a QDQ graph;
otherwise with ONNX Runtime's ranges from the `calibrate` stage (no new calibration). Its plate predictions are
compared with the PyTorch int8 model from `quantize`, and the stage fails below `int8_min_agreement`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from lprnet.compile.onnx_export import export_onnx
from lprnet.compile.onnx_int8 import TORCH_RANGES, onnx_runtime_plan, quantize_qdq, torch_int8_plan
from lprnet.errors import InputError
from lprnet.io import write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared, to_network_input
from lprnet.optimize.quantize import load_quantized
from lprnet.pipeline.stage import parse_args, read_section, run
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import predict_texts
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.torch_runtime import TorchPredictor


@dataclass(frozen=True)
class ExportParams:
    fp32_tolerance: float  # max abs logit difference, ONNX Runtime vs PyTorch
    int8_min_agreement: float  # share of test plates on which ONNX int8 and PyTorch int8 agree
    reduce_range: bool  # 7-bit weights: what ONNX Runtime documents for x86 without VNNI


def max_logit_difference(a, b, images: np.ndarray, batch: int = 64) -> float:
    return max(float(np.abs(a(x) - b(x)).max())
               for x in (to_network_input(images[i:i + batch]) for i in range(0, len(images), batch)))


def float64_predictor(model: torch.nn.Module):
    reference = copy.deepcopy(model).double().eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return reference(torch.from_numpy(x).double()).numpy()
    return predict


def main() -> None:
    args = parse_args(__doc__, ["pruned", "quantized", "calibration", "data", "fp32", "int8", "metrics_fp32",
                                "metrics_int8"])
    params = read_section(args.params, "export_onnx", ExportParams)
    bench = read_section(args.params, "bench", BenchConfig)
    method = json.loads((Path(args.calibration) / "calibration.json").read_text())["onnx_method"]
    images, labels = load_prepared(args.data, "test")

    model, alphabet = load_model(args.pruned)
    export_onnx(model, alphabet, args.fp32)
    fp32 = OnnxRuntimePredictor(args.fp32, bench.threads)
    difference = max_logit_difference(fp32, TorchPredictor(model, alphabet, bench.threads), images)
    exact = float64_predictor(model)
    rounding = max_logit_difference(TorchPredictor(model, alphabet), exact, images)
    if difference > max(params.fp32_tolerance, 2 * rounding):
        raise InputError(f"{args.fp32}: max abs logit difference to PyTorch {difference:.2e} exceeds both "
                         f"export_onnx.fp32_tolerance {params.fp32_tolerance:.0e} and twice PyTorch fp32's own "
                         f"error against float64 ({rounding:.2e})")
    metrics = artifact_metrics(fp32, args.fp32, images, labels, bench, source=model)
    write_json_atomic(args.metrics_fp32, {**metrics, "max_abs_logit_diff": difference,
                                          "torch_fp32_rounding": rounding})

    torch_int8_model, torch_alphabet = load_quantized(args.quantized)
    if method == TORCH_RANGES:
        plan = torch_int8_plan(onnx.load(args.fp32), torch_int8_model)
    else:
        plan = onnx_runtime_plan(onnx.load(args.fp32), Path(args.calibration) / "onnx_ranges.json")
    quantize_qdq(plan, args.int8, reduce_range=params.reduce_range)
    int8 = OnnxRuntimePredictor(args.int8, bench.threads)
    torch_int8 = TorchPredictor(torch_int8_model, torch_alphabet, bench.threads)
    ours, reference = predict_texts(int8, images), predict_texts(torch_int8, images)
    agreement = float(np.mean([a == b for a, b in zip(ours, reference)]))
    if agreement < params.int8_min_agreement:
        raise InputError(f"{args.int8}: plates agree with the PyTorch int8 model on {agreement:.1%} of the test "
                         f"split, below export_onnx.int8_min_agreement {params.int8_min_agreement:.0%}")
    metrics = artifact_metrics(int8, args.int8, images, labels, bench, source=model)
    write_json_atomic(args.metrics_int8, {**metrics, "agreement_with_torch_int8": agreement})


if __name__ == "__main__":
    run(main)
