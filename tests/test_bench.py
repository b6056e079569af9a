"""bench.time_calls and bench.throughput: how many calls they time, against a fake clock that each call advances;
BenchConfig: every key from params.yaml's `bench:` section, each checked by name."""

import dataclasses

import numpy as np
import pytest

from lprnet.runtime import bench
from tests.conftest import params_from_repo


class FakeClock:
    """Stands in for time.perf_counter; a FakePredictor call moves it forward."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakePredictor:
    def __init__(self, clock: FakeClock, seconds_per_call: float):
        self.clock, self.seconds_per_call, self.calls = clock, seconds_per_call, 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock.now += self.seconds_per_call
        return np.zeros((len(images), 4, 18), np.float32)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake)
    return fake


def test_a_fast_predictor_gets_every_run(clock):
    predictor = FakePredictor(clock, 0.001)
    samples = bench.time_calls(predictor, np.zeros((1, 3, 24, 94), np.float32), warmup=2, runs=10, max_seconds=3.0,
                               min_runs=3)
    assert len(samples) == 10 and predictor.calls == 12
    assert np.allclose(samples, 0.001)


def test_a_slow_predictor_stops_once_the_timed_calls_reach_max_seconds(clock):
    predictor = FakePredictor(clock, 1.4)
    samples = bench.time_calls(predictor, np.zeros((1, 3, 24, 94), np.float32), warmup=1, runs=10, max_seconds=3.0,
                               min_runs=2)
    assert len(samples) == 3  # 1.4 and 2.8 s are under 3 s; the third call reaches 4.2
    assert predictor.calls == 4


def test_min_runs_holds_even_when_one_call_exceeds_max_seconds(clock):
    samples = bench.time_calls(FakePredictor(clock, 10.0), np.zeros((1, 3, 24, 94), np.float32), warmup=0, runs=10,
                               max_seconds=3.0, min_runs=3)
    assert len(samples) == 3


def test_throughput_stops_at_throughput_seconds_and_reports_images_per_second(clock):
    config = params_from_repo("bench", bench.BenchConfig, warmup=10, throughput_batch=32, throughput_runs=10,
                              throughput_seconds=3.0)
    slow, fast = FakePredictor(clock, 1.6), FakePredictor(clock, 0.016)
    assert bench.throughput(slow, config) == pytest.approx(20.0)
    assert slow.calls == 2 + bench.MIN_THROUGHPUT_RUNS  # warm-up (warmup // 5), then 3 timed calls (4.8 s)
    assert bench.throughput(fast, config) == pytest.approx(2000.0)
    assert fast.calls == 2 + 10
    one_run = dataclasses.replace(config, throughput_runs=1)
    slow.calls = 0
    bench.throughput(slow, one_run)
    assert slow.calls == 2 + 1  # throughput_runs caps the minimum too


def test_interleaved_throughput_takes_turns_until_each_has_its_runs_or_its_seconds(clock, monkeypatch):
    monkeypatch.setattr(bench, "SETTLE_S", 0.0)
    config = params_from_repo("bench", bench.BenchConfig, warmup=5, throughput_batch=32, throughput_runs=4,
                              throughput_seconds=3.0)
    order = []

    class Recorded(FakePredictor):
        def __init__(self, name, seconds):
            super().__init__(clock, seconds)
            self.name = name

        def __call__(self, images):
            order.append(self.name)
            return super().__call__(images)

    fast, slow = Recorded("fast", 0.016), Recorded("slow", 1.6)
    rates = bench.interleaved_throughput({"fast": fast, "slow": slow}, config)
    assert rates == {"fast": pytest.approx(2000.0), "slow": pytest.approx(20.0)}
    # One warm-up call each, then turns: slow leaves after MIN_THROUGHPUT_RUNS calls (4.8 s), fast takes its 4th.
    assert order == ["fast", "slow"] + ["fast", "slow"] * 3 + ["fast"]


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_a_non_positive_throughput_seconds_is_refused_by_name(seconds):
    with pytest.raises(ValueError, match="^bench.throughput_seconds must be positive"):
        params_from_repo("bench", bench.BenchConfig, throughput_seconds=seconds)


@pytest.mark.parametrize("key, value", [("threads", 0), ("threads", 257), ("warmup", -1), ("runs", 0),
                                        ("throughput_batch", 0), ("throughput_runs", 0), ("eval_batch", 0),
                                        ("runs", True), ("runs", 2.5)])
def test_a_bad_count_is_refused_by_name(key, value):
    # threads also has a ceiling (MAX_THREADS): "an integer from 1 to 256"
    with pytest.raises(ValueError, match=f"^bench.{key} must be an integer (>= |from 1 to )"):
        params_from_repo("bench", bench.BenchConfig, **{key: value})


def test_the_clis_eval_gives_every_setting_itself():
    """`python -m lprnet eval` runs outside the pipeline: its own values, not params.yaml's, fill a BenchConfig."""
    from lprnet.__main__ import EVAL_BATCH, EVAL_BENCH, RUNS, THREADS

    config = bench.BenchConfig(threads=THREADS, eval_batch=EVAL_BATCH, runs=RUNS, **EVAL_BENCH)
    assert (config.threads, config.eval_batch, config.runs) == (THREADS, EVAL_BATCH, RUNS)
