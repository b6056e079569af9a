"""The hardware floor (lprnet.runtime.floor): the rate arithmetic on a fake kernel, the real kernel against an
independent dense fp32 kernel (PyTorch's matmul), and the one-line error without a compiler."""

from __future__ import annotations

import time

import pytest
import torch

from lprnet.runtime import floor
from lprnet.runtime.floor import CHAINS, UNROLL, FloorUnavailable, Kernel, measure_floor


class FakeLibrary:
    """A compiled kernel whose every run takes `seconds_per_iteration` x iterations."""

    def __init__(self, seconds_per_iteration: float):
        self.seconds_per_iteration = seconds_per_iteration

    def floor_fp32_macs_per_instruction(self):
        return 16

    def floor_int8_macs_per_instruction(self):
        return 64

    def floor_run(self, int8, threads, iterations, sink):
        return self.seconds_per_iteration * iterations


def test_the_rate_counts_every_threads_multiply_adds_over_the_wall_time():
    kernel = Kernel(FakeLibrary(1e-8), int8=True, threads=2, seconds=0.5)
    assert kernel.iterations == pytest.approx(0.5 / 1e-8, rel=1e-6)
    # Per iteration and thread: UNROLL x CHAINS instructions of 64 MACs, in 1e-8 s.
    assert kernel.rate() == pytest.approx(2 * UNROLL * CHAINS * 64 / 1e-8 / 1e9)


def sgemm_gmacs(size: int = 512, repeats: int = 5) -> float:
    """One-thread PyTorch fp32 matmul: the best of `repeats`, in G-MAC/s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.rand(size, size)
        a @ a
        best = min(time_one(lambda: a @ a) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    return size**3 / best / 1e9


def time_one(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_the_measured_fp32_peak_bounds_a_real_dense_kernel_from_above():
    """No fp32 kernel can beat the floor; a library sgemm reaches a good share of it (here 40 %: MKL's AVX2 path on
    AMD), so a floor counting too few (or too many, beyond 5x) MACs per second fails."""
    try:
        measured = measure_floor(1, seconds=0.001, repeats=20)
    except FloorUnavailable as error:
        pytest.skip(str(error))
    assert measured.fp32_macs_per_instruction in (8, 16) and measured.int8_macs_per_instruction in (32, 64)
    reference = sgemm_gmacs()
    assert reference <= measured.fp32_gmacs_one_thread <= 5 * reference
    assert measured.int8_gmacs_one_thread > measured.fp32_gmacs_one_thread  # 4 MACs per int32 lane per step


def test_without_a_compiler_it_fails_with_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(FloorUnavailable, match="^hardware floor: no C compiler 'no-such-cc' on PATH") as error:
        measure_floor(1)
    assert "\n" not in str(error.value)


def test_a_bad_thread_count_is_named():
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        measure_floor(0)


def test_the_unroll_and_chain_counts_reach_the_c_source():
    assert floor.C_SOURCE.count("%[c") == CHAINS and "floor_unroll(void) { return UNROLL; }" in floor.C_SOURCE


ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: fpu avx avx2 fma\n\n" \
       "processor\t: 1\nmodel name\t: other\n"
ZEN5 = "processor\t: 0\nmodel name\t: AMD EPYC 9B45\ncpu family\t: 26\nmodel\t\t: 2\n" \
       "flags\t\t: avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (ZEN3, "AMD EPYC, x86_64 family 25 model 1, AVX2 + FMA, no AVX-512"),
    (ZEN5, "AMD EPYC 9B45, x86_64 family 26 model 2, AVX-512 with VNNI"),
])
def test_the_cpu_is_named_with_its_family_and_vector_extensions(tmp_path, monkeypatch, cpuinfo, expected):
    """Latencies from CPUs of other families are not comparable; the benchmark's metrics and the report name it."""
    monkeypatch.setattr(floor.platform, "machine", lambda: "x86_64")
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert floor.cpu_description(tmp_path / "cpuinfo") == expected


def test_without_proc_cpuinfo_the_cpu_is_the_platforms_processor(tmp_path, monkeypatch):
    monkeypatch.setattr(floor.platform, "processor", lambda: "some ARM core")
    assert floor.cpu_description(tmp_path / "missing") == "some ARM core"
