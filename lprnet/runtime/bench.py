"""Latency and throughput of a Predictor on in-memory inputs: no image decoding, no Python decoding.

Medians over repeated calls after warm-up, with the thread count fixed by the caller and recorded. The settings are
the `bench:` section of params.yaml, their one home (BenchConfig has no defaults; a caller outside the pipeline, like
the CLI, passes its own). Does not score predictions (see evaluate.py) and does not know which artifacts the
pipeline benchmarks (see lprnet/pipeline/benchmark.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lprnet.errors import InputError
from lprnet.runtime.predictor import Predictor, check_threads, example_input


@dataclass(frozen=True)
class BenchConfig:
    """The `bench:` section of params.yaml (the meaning of each key is there, beside its value)."""

    threads: int
    warmup: int
    runs: int
    throughput_batch: int
    throughput_runs: int  # at most; see throughput_seconds
    throughput_seconds: float  # a throughput measurement stops once its timed calls took this long
    eval_batch: int

    def __post_init__(self):
        check_threads(self.threads, "bench.threads")
        for name, minimum in (("warmup", 0), ("runs", 1), ("throughput_batch", 1),
                              ("throughput_runs", 1), ("eval_batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"bench.{name} must be an integer >= {minimum}, got {value!r}")
        seconds = self.throughput_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise InputError(f"bench.throughput_seconds must be positive, got {seconds!r}")


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
    state (frequency, other load) falls on all of them alike; p50, p90 and MAD in ms per predictor.

    A turn starts with SETTLE_S seconds of untimed calls. The runtimes' thread pools (PyTorch's OpenMP, ONNX
    Runtime's, TVM's) keep spinning for a while after a call, waiting for the next; on a machine with few cores, a
    call timed right after another runtime's shares the cores with those threads and reads slow. Settling calls of
    the predictor's own let the previous runtime's pool go idle first.
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


def interleaved_throughput(predictors: dict[str, Predictor], config: BenchConfig) -> dict[str, float]:
    """Images per second at `config.throughput_batch` of several predictors, measured in turns as
    `interleaved_latency` measures latency: each turn settles (SETTLE_S of untimed batch-1 calls), then times one
    call of the batch. A predictor leaves the turns after `throughput_runs` timed calls, or once they took
    `throughput_seconds` (and there are MIN_THROUGHPUT_RUNS), so that a slow build costs seconds, not minutes. The
    median call counts."""
    inputs, single = example_input(config.throughput_batch), example_input(1)
    for predictor in predictors.values():
        for _ in range(max(1, config.warmup // 5)):
            predictor(inputs)
    samples: dict[str, list[float]] = {name: [] for name in predictors}
    min_runs = min(MIN_THROUGHPUT_RUNS, config.throughput_runs)

    def done(timed: list[float]) -> bool:
        return len(timed) >= config.throughput_runs or (len(timed) >= min_runs
                                                          and sum(timed) >= config.throughput_seconds)

    while not all(done(timed) for timed in samples.values()):
        for name, predictor in predictors.items():
            if done(samples[name]):
                continue
            settle_start = time.perf_counter()
            while time.perf_counter() - settle_start < SETTLE_S:
                predictor(single)
            start = time.perf_counter()
            predictor(inputs)
            samples[name].append(time.perf_counter() - start)
    return {name: float(config.throughput_batch / np.median(timed)) for name, timed in samples.items()}


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
