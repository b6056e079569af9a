"""Latency and throughput of a Predictor on in-memory inputs: no image decoding, no Python decoding.

Medians over repeated calls after warm-up, with the thread count fixed by the caller and recorded. Does not
score predictions (see evaluate.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lprnet.errors import InputError
from lprnet.runtime.predictor import Predictor, example_input


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 2
    warmup: int = 10
    runs: int = 100
    throughput_batch: int = 32
    throughput_runs: int = 10  # at most; see throughput_seconds
    # A throughput measurement stops once its timed calls have taken this long (after MIN_THROUGHPUT_RUNS calls): an
    # untuned TVM build takes 1.4 s per batch of 32, and 10 of them in every stage and in the benchmark cost minutes.
    throughput_seconds: float = 3.0
    eval_batch: int = 64

    def __post_init__(self):
        if not self.throughput_seconds > 0:
            raise InputError(f"bench.throughput_seconds must be positive, got {self.throughput_seconds!r}")


MIN_THROUGHPUT_RUNS = 3  # the median of fewer calls is one call


def time_calls(predictor: Predictor, inputs: np.ndarray, warmup: int, runs: int, max_seconds: float = math.inf,
               min_runs: int = 1) -> np.ndarray:
    """Seconds per call, one sample per call: `runs` calls, or fewer once the timed calls have taken `max_seconds`
    (at least `min_runs` of them)."""
    for _ in range(warmup):
        predictor(inputs)
    samples = []
    while len(samples) < runs and (len(samples) < min_runs or sum(samples) < max_seconds):
        start = time.perf_counter()
        predictor(inputs)
        samples.append(time.perf_counter() - start)
    return np.asarray(samples)


def measure_speed(predictor: Predictor, config: BenchConfig) -> dict:
    """Batch-1 latency percentiles in ms and throughput in images/s at `config.throughput_batch`."""
    latency = time_calls(predictor, example_input(1), config.warmup, config.runs) * 1e3
    return {
        **latency_summary(latency),
        "throughput_ips": throughput(predictor, config),
        "throughput_batch": config.throughput_batch,
        "threads": config.threads,
    }


# Each predictor's turn in `interleaved_latency`: untimed calls for SETTLE_S seconds, then TURN_CALLS timed calls.
SETTLE_S = 0.1
TURN_CALLS = 10


def interleaved_latency(predictors: dict[str, Predictor], config: BenchConfig) -> dict[str, dict]:
    """Batch-1 latency of several predictors measured in turns (A B C ... A B C ...), so that drift in the machine's
    state (frequency, other load) falls on all of them alike; p50 and p90 in ms per predictor.

    A turn starts with SETTLE_S seconds of untimed calls. The runtimes' thread pools (PyTorch's OpenMP, ONNX
    Runtime's, TVM's) keep spinning for a while after a call, waiting for the next; on 2 cores a call timed right
    after another runtime's shares them with those threads. Measured here with one call per turn: ONNX Runtime
    fp32 2.3 ms against 1.2 ms timed alone, tuned TVM 5.0 against 2.4, PyTorch fp32 9.7 against 5.6. With 50 to
    200 ms of settling calls, 17 of 18 medians (6 artifacts, 3 runs) came within 5 % of their alone figures; the
    18th, ONNX Runtime int8 with 50 ms, was 29 % above.
    """
    inputs = example_input(1)
    for predictor in predictors.values():
        for _ in range(config.warmup):
            predictor(inputs)
    samples: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(-(-config.runs // TURN_CALLS)):
        for name, predictor in predictors.items():
            settle_start = time.perf_counter()
            while time.perf_counter() - settle_start < SETTLE_S:
                predictor(inputs)
            for _ in range(min(TURN_CALLS, config.runs - len(samples[name]))):
                start = time.perf_counter()
                predictor(inputs)
                samples[name].append(time.perf_counter() - start)
    return {name: latency_summary(np.asarray(s) * 1e3) for name, s in samples.items()}


def latency_summary(samples_ms: np.ndarray) -> dict:
    """p50, p90 and the median absolute deviation (the noise scale the regression gate compares against)."""
    median = float(np.median(samples_ms))
    return {"latency_ms_p50": median, "latency_ms_p90": float(np.percentile(samples_ms, 90)),
            "latency_ms_mad": float(np.median(np.abs(samples_ms - median)))}


def throughput(predictor: Predictor, config: BenchConfig) -> float:
    """Images per second at batch `config.throughput_batch` (median over `config.throughput_runs` calls, or over the
    calls made in `config.throughput_seconds`)."""
    per_batch = time_calls(predictor, example_input(config.throughput_batch), max(1, config.warmup // 5),
                           config.throughput_runs, config.throughput_seconds,
                           min(MIN_THROUGHPUT_RUNS, config.throughput_runs))
    return float(config.throughput_batch / np.median(per_batch))
