"""One step of the TVM part of the pipeline, shared by the tvm-import, tvm-graph-passes and tvm-layout-passes stages.

For each precision (fp32, int8): apply the step's passes to the incoming Relax module, build it, write a deployable
artifact folder and the module for the next step, and check it against ONNX Runtime on the same model: fp32 within
`fp32_tolerance` max abs logit difference and with identical plates; int8 within `int8_max_accuracy_drop` of ONNX
Runtime's accuracy. A step that breaks parity raises instead of reporting a different accuracy.
Does not define passes or builds (see lprnet.compile.tvm).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lprnet.compile.tvm.artifact import save_artifact
from lprnet.compile.tvm.build import build, detect_target, parse_target
from lprnet.compile.tvm.frontend import module_alphabet_name, module_input_shape, save_ir
from lprnet.compile.tvm.passes import apply_passes, count_ops, make_passes, resolve_pipeline
from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model.checkpoint import load_model
from lprnet.model.data import load_prepared
from lprnet.pipeline.stage import parse_args, read_section
from lprnet.runtime.bench import BenchConfig
from lprnet.runtime.evaluate import predict_logits, score, texts_from_logits
from lprnet.runtime.metrics import artifact_metrics
from lprnet.runtime.onnx_runtime import OnnxRuntimePredictor
from lprnet.runtime.tvm_runtime import TVMPredictor

PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class TVMParams:
    target: dict  # e.g. {kind: llvm}; mcpu is filled in with this machine's CPU when absent
    graph_passes: str | list  # a name in passes.PIPELINES, or a list of pass names; read back as the list
    layout_passes: str | list
    layout: str  # conv2d data layout for convert_layout
    fp32_tolerance: float
    int8_max_accuracy_drop: float

    def __post_init__(self):
        for key in ("graph_passes", "layout_passes"):
            object.__setattr__(self, key, resolve_pipeline(getattr(self, key), f"tvm.{key}"))
        try:
            parse_target(self.target)
        except InputError as error:
            raise InputError(f"tvm.target: {error}") from None
        if sorted(self.layout) != sorted("NCHW"):
            raise InputError(f"tvm.layout: {self.layout!r} is not a permutation of NCHW")
        if not self.fp32_tolerance > 0:
            raise InputError(f"tvm.fp32_tolerance must be positive, got {self.fp32_tolerance!r}")
        if not 0 <= self.int8_max_accuracy_drop <= 1:
            raise InputError(f"tvm.int8_max_accuracy_drop must be in [0, 1], got {self.int8_max_accuracy_drop!r}")


@dataclass(frozen=True)
class Reference:
    """What a TVM step's builds are checked and evaluated against: the ONNX model of each precision (run with ONNX
    Runtime), the PyTorch model they came from (for params and MACs), and the labelled images."""

    onnx_models: dict
    source: torch.nn.Module
    images: np.ndarray
    labels: list


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
            raise InputError(f"{where}: fp32 parity with ONNX Runtime broken: max abs logit difference "
                             f"{difference:.2e} (tvm.fp32_tolerance {params.fp32_tolerance:.0e}), {changed} plates "
                             f"changed")
    else:
        drop = score(texts_ref, labels)["accuracy"] - score(texts_ours, labels)["accuracy"]
        if drop > params.int8_max_accuracy_drop:
            raise InputError(f"{where}: int8 accuracy {drop:.1%} below ONNX Runtime int8 "
                             f"(tvm.int8_max_accuracy_drop {params.int8_max_accuracy_drop:.1%})")
    return {"max_abs_logit_diff_vs_ort": difference}, texts_ours


def compile_step(step: str, modules: dict, out: str | os.PathLike, reference: Reference, params: TVMParams,
                 bench: BenchConfig, passes: Sequence[str] = (), options: dict | None = None) -> dict[str, dict]:
    """Run one step (`passes` with `options`) for every precision in `modules`; returns metrics per precision. `out`
    gets one folder per precision (the artifact) and `<precision>.json` (the module for the next step), all or
    nothing."""
    options = options or {}
    target = detect_target(params.target)
    metrics = {}
    with atomic_dir(out) as tmp:
        for precision, mod in modules.items():
            before = count_ops(mod)
            mod = apply_passes(mod, passes, **options) if passes else mod
            after = count_ops(mod)
            save_ir(tmp / f"{precision}.json", mod)
            save_artifact(tmp / precision, build(mod, target), mod, target, module_input_shape(mod),
                          module_alphabet_name(mod),
                          extra={"step": step, "passes": list(passes), "pass_options": options})
            predictor = TVMPredictor(tmp / precision, bench.threads)
            onnx_runtime = OnnxRuntimePredictor(reference.onnx_models[precision], bench.threads)
            # These builds are untuned, their kernels single-threaded: the accuracy pass runs one VM per thread.
            parity, texts = check_parity(precision, TVMPredictor(tmp / precision, bench.threads, workers=bench.threads),
                                         onnx_runtime, reference.images, reference.labels, params,
                                         f"{Path(out) / precision}")
            metrics[precision] = {
                **artifact_metrics(predictor, tmp / precision, reference.images, reference.labels, bench,
                                   source=reference.source, texts=texts),
                **parity,
                "ops_before": before["ops"], "ops_after": after["ops"],
                "kernels_before": before["kernels_legalized"], "kernels_after": after["kernels_legalized"],
            }
    return metrics


def run_stage(step: str, description: str, modules, passes_key: str | None = None, options=lambda params: {}) -> None:
    """The body of the tvm-import, tvm-graph-passes and tvm-layout-passes stage scripts: read `tvm` and `bench`,
    load the step's modules (`modules(args)`, after the params are checked), run `compile_step` with the pass list
    `params.<passes_key>`, write each precision's metrics."""
    args = parse_args(description, reads=(["source"] if passes_key else []) + ["fp32", "int8", "pruned", "data"],
                      writes=["metrics_fp32", "metrics_int8"], folders=["out"])
    params = read_section(args.params, "tvm", TVMParams)
    bench = read_section(args.params, "bench", BenchConfig)
    passes = getattr(params, passes_key) if passes_key else []
    make_passes(passes, **options(params))  # an option no pass takes fails before any work
    reference = Reference({"fp32": args.fp32, "int8": args.int8}, load_model(args.pruned)[0],
                          *load_prepared(args.data, "test"))
    metrics = compile_step(step, modules(args), args.out, reference, params, bench, passes, options(params))
    write_json_atomic(args.metrics_fp32, metrics["fp32"])
    write_json_atomic(args.metrics_int8, metrics["int8"])
