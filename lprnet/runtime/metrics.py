"""The metrics schema: one flat dict per artifact with units in the key names, the same keys in every stage.

Keys: accuracy, char_accuracy, num_images (evaluate.py); latency_ms_p50, latency_ms_p90, throughput_ips,
throughput_batch, threads (bench.py); size_bytes, params, macs (here). Does not write files (see io.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lprnet.model.input_spec import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.runtime.bench import BenchConfig, measure_speed
from lprnet.runtime.evaluate import evaluate, score
from lprnet.runtime.predictor import Predictor


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of one batch-1 forward pass: those of its Conv2d and Linear layers (LPRNet has no other
    multiplying op; tests/test_prune.py checks the count against PyTorch's FLOP counter).

    Why not `torch.utils.flop_counter.FlopCounterMode` itself: its first use imports torch._dynamo, 2-3 s in every
    stage process that reports MACs."""
    return sum(_layer_macs(model, (torch.nn.Conv2d, torch.nn.Linear)).values())


def conv_macs(model: torch.nn.Module) -> dict[str, int]:
    """Multiply-accumulates of each float Conv2d of `model` (by module name) in one batch-1 forward pass."""
    return _layer_macs(model, (torch.nn.Conv2d,))


def _layer_macs(model: torch.nn.Module, types: tuple[type, ...]) -> dict[str, int]:
    macs: dict[str, int] = {}

    def hook(name):
        def record(module, _, output):
            macs[name] = output.numel() * module.weight[0].numel()  # each output reads one filter's weights
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, types)]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, INPUT_HEIGHT, INPUT_WIDTH))
    finally:
        for handle in handles:
            handle.remove()
    return macs


def model_stats(model: torch.nn.Module) -> dict:
    return {"params": count_params(model), "macs": count_macs(model)}


def artifact_size(artifact: str | os.PathLike) -> int:
    """Bytes of a model file, or of every file in an artifact folder."""
    path = Path(artifact)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def artifact_metrics(predictor: Predictor, artifact: str | os.PathLike, images: np.ndarray, labels,
                     config: BenchConfig, source: torch.nn.Module | None = None,
                     texts: list[str] | None = None) -> dict:
    """Accuracy on (images, labels), speed, and size of one artifact: the common metrics of every stage.

    `params` and `macs` are counted on the PyTorch model: the predictor's own, or `source` for a compiled one.
    `texts`, when the caller already has the predictor's plates for `images`, saves a pass over them."""
    metrics = score(texts, labels) if texts is not None else evaluate(predictor, images, labels, config.eval_batch)
    metrics.update(measure_speed(predictor, config))
    metrics["size_bytes"] = artifact_size(artifact)
    model = source if source is not None else getattr(predictor, "model", None)
    if isinstance(model, torch.nn.Module):
        metrics.update(model_stats(model))
    return metrics
