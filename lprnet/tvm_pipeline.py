"""One step of the TVM part of the pipeline, shared by the tvm-import, tvm-graph-passes and tvm-layout-passes stages.

For each precision (fp32, int8): apply the step's passes to the incoming Relax module, build it, write a deployable
artifact folder and the module for the next step, and check it against ONNX Runtime on the same model: fp32 within
`fp32_tolerance` max abs logit difference and with identical plates; int8 within `int8_max_accuracy_drop` of ONNX
Runtime's accuracy. A step that breaks parity raises instead of reporting a different accuracy.
Does not define passes or builds (see compile_tvm.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lprnet import compile_tvm
from lprnet.backends import load_predictor
from lprnet.bench import BenchConfig
from lprnet.evaluate import predict_logits, score, texts_from_logits
from lprnet.io import atomic_dir
from lprnet.metrics import artifact_metrics

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class TVMParams:
    target: dict  # e.g. {kind: llvm}; mcpu is filled in with this machine's CPU when absent
    graph_passes: list = field(default_factory=lambda: list(compile_tvm.DEFAULT_GRAPH_PASSES))
    layout_passes: list = field(default_factory=lambda: list(compile_tvm.DEFAULT_LAYOUT_PASSES))
    layout: str = "NHWC"  # conv2d data layout for convert_layout
    fp32_tolerance: float = 1e-3
    int8_max_accuracy_drop: float = 0.005


def check_parity(precision: str, predictor, reference, images: np.ndarray, labels, params: TVMParams,
                 where: str) -> tuple[dict, list[str]]:
    """Raise when `predictor` breaks parity with `reference`; returns the difference and `predictor`'s plates.

    One pass over the images per runtime: untuned TVM takes tens of ms per image."""
    ours, theirs = predict_logits(predictor, images), predict_logits(reference, images)
    difference = float(np.abs(ours - theirs).max())
    texts_ours = texts_from_logits(ours, predictor.alphabet)
    texts_ref = texts_from_logits(theirs, reference.alphabet)
    if precision == "fp32":
        changed = sum(a != b for a, b in zip(texts_ours, texts_ref))
        if difference > params.fp32_tolerance or changed:
            raise ValueError(f"{where}: fp32 parity with ONNX Runtime broken: max abs logit difference "
                             f"{difference:.2e} (tvm.fp32_tolerance {params.fp32_tolerance:.0e}), {changed} plates "
                             f"changed")
    else:
        drop = score(texts_ref, labels)["accuracy"] - score(texts_ours, labels)["accuracy"]
        if drop > params.int8_max_accuracy_drop:
            raise ValueError(f"{where}: int8 accuracy {drop:.1%} below ONNX Runtime int8 "
                             f"(tvm.int8_max_accuracy_drop {params.int8_max_accuracy_drop:.1%})")
    return {"max_abs_logit_diff_vs_ort": difference}, texts_ours


def compile_step(step: str, modules: dict, passes: list[str], registry: dict, options: dict,
                 out: str | os.PathLike, onnx_models: dict, source: torch.nn.Module, images: np.ndarray, labels,
                 params: TVMParams, bench: BenchConfig) -> dict[str, dict]:
    """Run one step for every precision in `modules`; returns metrics per precision. `out` gets one folder per
    precision (the artifact) and `<precision>.json` (the module for the next step), all or nothing."""
    target = compile_tvm.detect_target(params.target)
    metrics = {}
    with atomic_dir(out) as tmp:
        for precision, mod in modules.items():
            before = compile_tvm.count_ops(mod)
            mod = compile_tvm.apply_passes(mod, passes, registry, **options) if passes else mod
            after = compile_tvm.count_ops(mod)
            compile_tvm.save_ir(tmp / f"{precision}.json", mod)
            compile_tvm.save_artifact(tmp / precision, compile_tvm.build(mod, target), mod, target,
                                      compile_tvm.module_input_shape(mod), compile_tvm.module_alphabet_name(mod),
                                      extra={"step": step, "passes": list(passes), "pass_options": options})
            predictor = compile_tvm.TVMPredictor(tmp / precision, bench.threads)
            reference = load_predictor(onnx_models[precision], bench.threads)
            # These builds are untuned, their kernels single-threaded: the accuracy pass runs one VM per thread.
            parity, texts = check_parity(precision, compile_tvm.TVMPredictor(tmp / precision, bench.threads,
                                                                             workers=bench.threads),
                                         reference, images, labels, params, f"{Path(out) / precision}")
            metrics[precision] = {
                **artifact_metrics(predictor, tmp / precision, images, labels, bench, source=source, texts=texts),
                **parity,
                "ops_before": before["ops"], "ops_after": after["ops"],
                "kernels_before": before["kernels_legalized"], "kernels_after": after["kernels_legalized"],
            }
    return metrics
