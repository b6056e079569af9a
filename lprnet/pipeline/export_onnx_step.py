"""The export-onnx stage's work: the pruned fp32 model and its int8 QDQ form as ONNX, each checked against its source,
and the unpruned baseline as ONNX, the benchmark's reference (artifacts.REFERENCE).

fp32: exported with a dynamic batch axis, each channel selection before a pool and a 1x1 convolution folded into
that convolution (onnx_export.fold_channel_selections: ONNX Runtime then keeps the pool and the convolution in its
NCHWc layout); fails unless ONNX Runtime's logits are within `fp32_tolerance` of PyTorch's on the test split or, for
models with large logits, within ROUNDING_FACTOR times PyTorch fp32's own error against float64 (both runtimes
round, each in its own summation order; an export bug shows as errors of the logits' own scale, thousands of times
above that).
int8: ONNX Runtime's quantize_static over that fp32 graph as exported, before the fold. With
`calibrate.onnx_method: torch` it takes the PyTorch int8 model's own activation ranges and float parts, so that it
is the `quantize` artifact as a QDQ graph; otherwise ONNX Runtime's ranges from the calibrate stage (no new
calibration). Its plate predictions are compared with the PyTorch int8 model from `quantize`, and the step fails
below `int8_min_agreement`.
reference: the baseline through the same exporter and fold, unchecked (the fp32 check covers both; `select` scores
it on the validation split before it could deliver it). Exported here once, rather than by `benchmark` and
`select` each: an export costs about 13 s in a fresh process.
Does not export or quantize by itself (see lprnet.compile.onnx_export and onnx_int8).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from lprnet.compile.onnx_export import export_onnx, fold_channel_selections
from lprnet.compile.onnx_int8 import TORCH_RANGES, onnx_runtime_plan, quantize_qdq, torch_int8_plan
from lprnet.errors import InputError
from lprnet.io import atomic_path
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared, to_network_input
from lprnet.optimize.quantize import load_quantized
from lprnet.pipeline.calibrate_step import onnx_method_of
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import predict_texts
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.torch_runtime import TorchPredictor

# Two fp32 kernels that sum in different orders err by the same magnitude but not the same amount: ONNX Runtime's AVX2
# kernels (a CPU without AVX-512) erred 6.6x as much as PyTorch against float64 on an untrained model with logits up
# to 66 (9.9e-5 against 1.5e-5); with AVX-512, under 2x.
ROUNDING_FACTOR = 16


@dataclass(frozen=True)
class ExportParams:
    fp32_tolerance: float  # max abs logit difference, ONNX Runtime vs PyTorch
    int8_min_agreement: float  # share of test plates on which ONNX int8 and PyTorch int8 agree
    reduce_range: bool  # 7-bit weights: what ONNX Runtime documents for x86 without VNNI

    def __post_init__(self):
        if not self.fp32_tolerance > 0:
            raise InputError(f"export_onnx.fp32_tolerance must be positive, got {self.fp32_tolerance!r}")
        if not 0 <= self.int8_min_agreement <= 1:
            raise InputError(f"export_onnx.int8_min_agreement must be in [0, 1], got {self.int8_min_agreement!r}")
        if not isinstance(self.reduce_range, bool):
            raise InputError(f"export_onnx.reduce_range must be true or false, got {self.reduce_range!r}")


def max_logit_difference(a, b, images: np.ndarray, batch: int = 64) -> float:
    return max(float(np.abs(a(x) - b(x)).max())
               for x in (to_network_input(images[i:i + batch]) for i in range(0, len(images), batch)))


def float64_predictor(model: torch.nn.Module):
    reference = copy.deepcopy(model).double().eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return reference(torch.from_numpy(x).double()).numpy()
    return predict


def export_onnx_stage(pruned: str | os.PathLike, quantized: str | os.PathLike, calibration: str | os.PathLike,
                      data: str | os.PathLike, baseline: str | os.PathLike, fp32_path: str | os.PathLike,
                      int8_path: str | os.PathLike, reference_path: str | os.PathLike, params: ExportParams,
                      bench: BenchConfig) -> tuple[dict, dict]:
    """Write the fp32 and int8 ONNX models and the baseline's (`reference_path`), check the first two and return
    their metrics (fp32, int8). Every input is read first, and the three models appear together, only once both
    checks pass."""
    method = onnx_method_of(calibration)
    images, labels = load_prepared(data, "test")
    model, alphabet = load_model(pruned)
    baseline_model, baseline_alphabet = load_model(baseline)
    torch_int8_model, torch_alphabet = load_quantized(quantized)
    with (atomic_path(fp32_path) as fp32_tmp, atomic_path(int8_path) as int8_tmp,
          atomic_path(reference_path) as reference_tmp):
        export_onnx(model, alphabet, fp32_tmp)
        exported = onnx.load(str(fp32_tmp))  # the int8 plans pair its convolutions with the PyTorch int8 model's
        folds = fold_in_place(fp32_tmp)
        fp32 = OnnxRuntimePredictor(fp32_tmp, bench.threads)
        difference = max_logit_difference(fp32, TorchPredictor(model, alphabet, bench.threads), images)
        rounding = max_logit_difference(TorchPredictor(model, alphabet), float64_predictor(model), images)
        if difference > max(params.fp32_tolerance, ROUNDING_FACTOR * rounding):
            raise InputError(f"{fp32_path}: max abs logit difference to PyTorch {difference:.2e} exceeds both "
                             f"export_onnx.fp32_tolerance {params.fp32_tolerance:.0e} and {ROUNDING_FACTOR} times "
                             f"PyTorch fp32's own error against float64 ({rounding:.2e})")
        fp32_metrics = {**artifact_metrics(fp32, fp32_tmp, images, labels, bench, source=model),
                        "max_abs_logit_diff": difference, "torch_fp32_rounding": rounding,
                        "channel_selections_folded": folds}

        if method == TORCH_RANGES:
            plan = torch_int8_plan(exported, torch_int8_model)
        else:
            plan = onnx_runtime_plan(exported, Path(calibration) / "onnx_ranges.json")
        quantize_qdq(plan, int8_tmp, reduce_range=params.reduce_range)
        int8 = OnnxRuntimePredictor(int8_tmp, bench.threads)
        torch_int8 = TorchPredictor(torch_int8_model, torch_alphabet, bench.threads)
        ours, reference = predict_texts(int8, images), predict_texts(torch_int8, images)
        agreement = float(np.mean([a == b for a, b in zip(ours, reference)]))
        if agreement < params.int8_min_agreement:
            raise InputError(f"{int8_path}: plates agree with the PyTorch int8 model on {agreement:.1%} of the "
                             f"test split, below export_onnx.int8_min_agreement {params.int8_min_agreement:.0%}")
        int8_metrics = {**artifact_metrics(int8, int8_tmp, images, labels, bench, source=model),
                        "agreement_with_torch_int8": agreement}
        export_onnx(baseline_model, baseline_alphabet, reference_tmp)
        fold_in_place(reference_tmp)  # the reference runs the same graph form as the model it is compared with
    return fp32_metrics, int8_metrics


def fold_in_place(path: Path) -> int:
    """`fold_channel_selections` on the ONNX file at `path` (a temporary file of this stage); returns the count."""
    model = onnx.load(str(path))
    folds = fold_channel_selections(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return folds
