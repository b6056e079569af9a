"""Latency and throughput of a Predictor on in-memory inputs: no image decoding, no Python decoding.

Medians over repeated calls after warm-up, with the thread count fixed by the caller and recorded. Does not
score predictions (see evaluate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lprnet.backends import Predictor, example_input


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 2
    warmup: int = 10
    runs: int = 100
    throughput_batch: int = 32
    throughput_runs: int = 10
    eval_batch: int = 64


def time_calls(predictor: Predictor, inputs: np.ndarray, warmup: int, runs: int) -> np.ndarray:
    """Seconds per call, one sample per call."""
    for _ in range(warmup):
        predictor(inputs)
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        predictor(inputs)
        samples[i] = time.perf_counter() - start
    return samples


def measure_speed(predictor: Predictor, config: BenchConfig) -> dict:
    """Batch-1 latency percentiles in ms and throughput in images/s at `config.throughput_batch`."""
    latency = time_calls(predictor, example_input(1), config.warmup, config.runs) * 1e3
    batch = example_input(config.throughput_batch)
    per_batch = time_calls(predictor, batch, max(1, config.warmup // 5), config.throughput_runs)
    return {
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p90": float(np.percentile(latency, 90)),
        "throughput_ips": float(config.throughput_batch / np.median(per_batch)),
        "throughput_batch": config.throughput_batch,
        "threads": config.threads,
    }
