"""This CPU's floor: the fp32 FMA peak and the int8 `vpdpbusd` peak, in G-MAC/s, at a given thread count.

How it measures. A small C kernel (C_SOURCE, below) is compiled at run time with the system's C compiler (`$CC`, else
`gcc`) for this machine (`-march=native -O2`), loaded with ctypes and run on `threads` POSIX threads at once. Each
thread runs a loop of inline-assembly multiply-accumulates on registers only:

- fp32: `vfmadd231ps` on zmm registers (16 fp32 lanes, so 16 MACs per instruction) where the CPU has AVX-512,
  else on ymm (8 lanes, AVX2 + FMA);
- int8: `vpdpbusd` on zmm (AVX512-VNNI: 16 int32 lanes x 4 u8*s8 products, so 64 MACs per instruction), else the
  VEX-encoded ymm form (AVX-VNNI, 32 MACs), else (AVX2 only) the three-instruction step ONNX Runtime's and oneDNN's
  AVX2 int8 kernels use: `vpmaddubsw`, `vpmaddwd` by ones, `vpaddd` (32 MACs a step, counted as one "instruction").
  An AMD EPYC of family 25 (Zen 3) read 46 G-MAC/s fp32 and 88 int8 on one thread: 16 fp32 MACs a cycle (two
  256-bit FMA pipes) and one int8 step a cycle at about 2.85 GHz.

Why it is an honest peak. The loop body is CHAINS independent accumulators, each one instruction per iteration, so
no instruction waits for the previous result of its own chain while the others issue: 12 chains cover a latency of
up to 6 cycles on two pipes (current x86 cores: FMA latency 4, two FMA pipes, and the same for VNNI). Per core and
cycle that is 16 fp32 lanes x 2 FMA pipes = 32 fp32 MACs where both pipes are 512 bits wide (Zen 5, `mcpu`
znver5; Intel server cores), and 16 where each zmm operation is split into two 256-bit halves (Zen 4); `vpdpbusd`
on zmm does 4x the fp32 count. A Zen 5 EPYC read 135-143 G-MAC/s fp32 on one thread, which is 32 MACs a cycle at
4.2-4.5 GHz: the full-width case (the clock is not measured here).
The multiplicands and accumulators stay in registers (no loads or stores in the loop, so memory bandwidth plays no
part), the assembly is `volatile` with the accumulators as in/out operands (the compiler can neither drop nor fold
it), and the accumulators are summed and returned at the end. The loop is unrolled (UNROLL copies of the chains) so
its counter and branch are a small share of the instructions. Rates count only the MACs of the multiply-add
instructions; each thread times its own loop, and the rate is all threads' MACs over the wall time from the first
start to the last end, so a thread that got less of the CPU lowers it. The best of `repeats` short runs (1 ms,
about as long as a model's call) is kept: other processes on a shared machine only ever slow a run down, and a run
as short as a call gets the same quiet windows a call's p50 does (long runs average the other processes in, and
read a peak the artifacts then exceed).

The ymm forms serve CPUs without AVX-512; the AVX-VNNI form was compiled but never run here (no such CPU).

What it does not do: it knows no model (the benchmark divides each artifact's MACs per second by these peaks, see
lprnet/pipeline/benchmark.py), it does not pin threads to cores, and it measures the arithmetic peak only, not
memory bandwidth. Without a C compiler, or on a CPU that is not x86-64 with FMA and AVX2, it raises
FloorUnavailable (an InputError: the benchmark stage ends with that one line rather than writing a floor it did not
measure; the TVM stages need the same compiler to link their libraries).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lprnet.errors import InputError

CHAINS = 12  # independent accumulators per thread; spelled out in C_SOURCE's asm operands
UNROLL = 4  # copies of the CHAINS instructions per loop iteration
# Each timed run aims at SECONDS_PER_RUN (its iteration count sized from a short probe), and the best of REPEATS
# counts. Runs as short as a model's call find the windows in which no other process holds a core: on this shared
# 2-core machine under load, 50 ms runs read 126 G-MAC/s fp32 at 2 threads, 1 ms runs 269 (2.0x one thread's 135).
SECONDS_PER_RUN = 0.001
REPEATS = 200
PROBE_ITERATIONS = 20_000

FP32, INT8 = "fp32", "int8"

C_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vf; typedef __m512i vi;
#define FP32_LANES 16
#define SET1_PS _mm512_set1_ps
#define SET1_EPI32 _mm512_set1_epi32
#define ADD_PS _mm512_add_ps
#define ADD_EPI32 _mm512_add_epi32
#define HSUM_PS _mm512_reduce_add_ps
#define HSUM_EPI32 _mm512_reduce_add_epi32
#else
typedef __m256 vf; typedef __m256i vi;
#define FP32_LANES 8
#define SET1_PS _mm256_set1_ps
#define SET1_EPI32 _mm256_set1_epi32
#define ADD_PS _mm256_add_ps
#define ADD_EPI32 _mm256_add_epi32
static float HSUM_PS(__m256 v) {
    float t[8], s = 0;
    _mm256_storeu_ps(t, v);
    for (int i = 0; i < 8; i++) s += t[i];
    return s;
}
static int HSUM_EPI32(__m256i v) {
    int t[8], s = 0;
    _mm256_storeu_si256((__m256i *)t, v);
    for (int i = 0; i < 8; i++) s += t[i];
    return s;
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#define DPBUSD "vpdpbusd"
#define INT8_MACS (16 * 4)
#elif defined(__AVXVNNI__)
#define DPBUSD "%{vex%} vpdpbusd"
#define INT8_MACS (8 * 4)
#else
/* No VNNI (AVX2 only): the sequence ONNX Runtime's and oneDNN's AVX2 kernels use, vpmaddubsw (32 u8*s8 products
   summed in pairs to 16 int16), vpmaddwd by ones (to 8 int32), vpaddd into the accumulator: 32 MACs a step. */
#define INT8_MACS 32
#define AVX2_INT8 1
#endif

#define OPS(I) \
    I " %[a], %[b], %[c0]\n\t" I " %[a], %[b], %[c1]\n\t" I " %[a], %[b], %[c2]\n\t" I " %[a], %[b], %[c3]\n\t" \
    I " %[a], %[b], %[c4]\n\t" I " %[a], %[b], %[c5]\n\t" I " %[a], %[b], %[c6]\n\t" I " %[a], %[b], %[c7]\n\t" \
    I " %[a], %[b], %[c8]\n\t" I " %[a], %[b], %[c9]\n\t" I " %[a], %[b], %[c10]\n\t" I " %[a], %[b], %[c11]\n\t"
#define STEP(C) "vpmaddubsw %[b], %[a], %[t]\n\tvpmaddwd %[ones], %[t], %[t]\n\tvpaddd %[t], %[" C "], %[" C "]\n\t"
#define STEPS STEP("c0") STEP("c1") STEP("c2") STEP("c3") STEP("c4") STEP("c5") STEP("c6") STEP("c7") STEP("c8") \
    STEP("c9") STEP("c10") STEP("c11")
#define OUTS [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5), \
    [c6] "+v"(c6), [c7] "+v"(c7), [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11)

int floor_chains(void) { return 12; }
int floor_unroll(void) { return UNROLL; }
int floor_fp32_macs_per_instruction(void) { return FP32_LANES; }
int floor_int8_macs_per_instruction(void) { return INT8_MACS; }

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static double fp32_loop(long iterations) {
    vf a = SET1_PS(1.0f), b = SET1_PS(1e-7f);
    vf c0 = SET1_PS(0), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0,
       c11 = c0;
    for (long i = 0; i < iterations; i++) {
        for (int u = 0; u < UNROLL; u++)
            __asm__ volatile(OPS("vfmadd231ps") : OUTS : [a] "v"(a), [b] "v"(b));
    }
    vf s = ADD_PS(ADD_PS(ADD_PS(c0, c1), ADD_PS(c2, c3)), ADD_PS(ADD_PS(c4, c5), ADD_PS(c6, c7)));
    s = ADD_PS(s, ADD_PS(ADD_PS(c8, c9), ADD_PS(c10, c11)));
    return HSUM_PS(s);
}

static double int8_loop(long iterations) {
    vi a = SET1_EPI32(0x01010101), b = SET1_EPI32(0x01010101);
    vi c0 = SET1_EPI32(0), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0,
       c11 = c0;
#if defined(AVX2_INT8)
    /* One temporary for all chains (16 ymm registers: 12 accumulators, a, b, ones, t): register renaming keeps the
       chains independent. */
    vi ones = _mm256_set1_epi16(1), t;
    for (long i = 0; i < iterations; i++) {
        for (int u = 0; u < UNROLL; u++)
            __asm__ volatile(STEPS : OUTS, [t] "=&v"(t) : [a] "v"(a), [b] "v"(b), [ones] "v"(ones));
    }
#else
    for (long i = 0; i < iterations; i++) {
        for (int u = 0; u < UNROLL; u++)
            __asm__ volatile(OPS(DPBUSD) : OUTS : [a] "v"(a), [b] "v"(b));
    }
#endif
    vi s = ADD_EPI32(ADD_EPI32(ADD_EPI32(c0, c1), ADD_EPI32(c2, c3)), ADD_EPI32(ADD_EPI32(c4, c5), ADD_EPI32(c6, c7)));
    s = ADD_EPI32(s, ADD_EPI32(ADD_EPI32(c8, c9), ADD_EPI32(c10, c11)));
    return HSUM_EPI32(s);
}

typedef struct { int int8; long iterations; pthread_barrier_t *barrier; double start, end, sink; } job_t;

static void *worker(void *arg) {
    job_t *job = (job_t *)arg;
    pthread_barrier_wait(job->barrier);
    job->start = now();
    job->sink = job->int8 ? int8_loop(job->iterations) : fp32_loop(job->iterations);
    job->end = now();
    return NULL;
}

/* Seconds from the first thread's start to the last one's end; negative on a thread error. `sink` receives the
   accumulators' sum, so that nothing the kernel computes is dead. */
double floor_run(int int8, int threads, long iterations, double *sink) {
    pthread_t ids[256];
    job_t jobs[256];
    pthread_barrier_t barrier;
    if (threads < 1 || threads > 256 || pthread_barrier_init(&barrier, NULL, threads)) return -1;
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job_t){int8, iterations, &barrier, 0, 0, 0};
        if (pthread_create(&ids[t], NULL, worker, &jobs[t])) return -1;  /* the barrier then never opens: abort */
    }
    double first = 1e300, last = 0;
    *sink = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        if (jobs[t].start < first) first = jobs[t].start;
        if (jobs[t].end > last) last = jobs[t].end;
        *sink += jobs[t].sink;
    }
    pthread_barrier_destroy(&barrier);
    return last - first;
}
"""


def cpu_description(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """This CPU as a line for the benchmark's metrics and report, e.g. "AMD EPYC, x86_64 family 25 model 1, AVX2 + FMA,
    no AVX-512", from `cpuinfo` (Linux); the platform's processor string elsewhere. Figures measured on CPUs of other
    families are not comparable: the project's runs have met Zen 3 (AVX2) and Zen 5 (AVX-512 with VNNI) machines."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first logical CPU's block describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    if "avx512f" in flags:
        isa = "AVX-512 with VNNI" if "avx512_vnni" in flags else "AVX-512, no VNNI"
    elif "avx2" in flags:
        isa = "AVX2 + FMA, AVX-VNNI" if "avx_vnni" in flags else "AVX2 + FMA, no AVX-512"
    else:
        isa = "no AVX2"
    family = f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields and "model" in fields \
        else "family unknown"
    return f"{fields.get('model name', platform.processor() or 'unknown CPU')}, {platform.machine()} {family}, {isa}"


class FloorUnavailable(InputError):
    """This machine cannot run the floor's kernel: no C compiler, or not x86-64 with AVX2; the message says which."""


@dataclass(frozen=True)
class Floor:
    """The measured peaks (G-MAC/s) at `threads` threads and on one, and what each multiply-add instruction counts.

    The one-thread peaks show how the peak scales: at 2 threads well under twice the one-thread peak, the other
    core was busy while the floor ran (a shared machine), or the two logical CPUs share one physical core."""

    threads: int
    fp32_gmacs: float
    int8_gmacs: float
    fp32_gmacs_one_thread: float
    int8_gmacs_one_thread: float
    fp32_macs_per_instruction: int
    int8_macs_per_instruction: int

    def peak(self, precision: str) -> float:
        """The peak of `precision` (FP32 or INT8) in G-MAC/s."""
        peaks = {FP32: self.fp32_gmacs, INT8: self.int8_gmacs}
        if precision not in peaks:
            raise InputError(f"precision {precision!r}; valid: {', '.join(peaks)}")
        return peaks[precision]


def compile_kernel(folder: Path) -> ctypes.CDLL:
    """C_SOURCE compiled for this CPU into `folder` and loaded. Raises FloorUnavailable without a compiler, on a
    machine that is not x86-64, or when the compiler fails (its first error line)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise FloorUnavailable(f"hardware floor: the kernel is x86-64 only, this machine is {platform.machine()}")
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise FloorUnavailable(f"hardware floor: no C compiler {compiler!r} on PATH (set CC to one); the "
                               "benchmark stage measures this CPU's peaks with a compiled kernel")
    source, library = folder / "floor.c", folder / "floor.so"
    source.write_text(C_SOURCE.replace("UNROLL", str(UNROLL)), encoding="utf-8")
    command = [compiler, "-O2", "-march=native", "-shared", "-fPIC", "-pthread", str(source), "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
        raise FloorUnavailable(f"hardware floor: {' '.join(command[:3])} failed: {first}")
    kernel = ctypes.CDLL(str(library))
    kernel.floor_run.restype = ctypes.c_double
    kernel.floor_run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.POINTER(ctypes.c_double)]
    assert kernel.floor_chains() == CHAINS and kernel.floor_unroll() == UNROLL
    return kernel


class Kernel:
    """The compiled kernel of one precision at a thread count: `rate()` times one run of about `seconds`."""

    def __init__(self, library: ctypes.CDLL, int8: bool, threads: int, seconds: float):
        self.library, self.int8, self.threads = library, int8, threads
        self.macs_per_instruction = (library.floor_int8_macs_per_instruction() if int8
                                     else library.floor_fp32_macs_per_instruction())
        probe = self.seconds(PROBE_ITERATIONS)
        self.iterations = max(PROBE_ITERATIONS, int(PROBE_ITERATIONS * seconds / max(probe, 1e-9)))

    def seconds(self, iterations: int) -> float:
        sink = ctypes.c_double()
        elapsed = self.library.floor_run(int(self.int8), self.threads, iterations, ctypes.byref(sink))
        if elapsed < 0:
            raise RuntimeError(f"hardware floor: could not start {self.threads} threads")
        return elapsed

    def rate(self) -> float:
        """G-MAC/s of one timed run, over all threads."""
        macs = self.threads * self.iterations * UNROLL * CHAINS * self.macs_per_instruction
        return macs / self.seconds(self.iterations) / 1e9


def measure_floor(threads: int, seconds: float = SECONDS_PER_RUN, repeats: int = REPEATS) -> Floor:
    """The fp32 and int8 peaks of this CPU at `threads` threads and on one thread (see the module docstring for
    how). Runs about 4 x `repeats` x `seconds`, plus the compilation."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    with tempfile.TemporaryDirectory(prefix="floor.") as work:
        library = compile_kernel(Path(work))
    kernels = {(int8, count): Kernel(library, int8, count, seconds) for count in (threads, 1) for int8 in (False, True)}
    rates: dict[tuple, list[float]] = {key: [] for key in kernels}
    for _ in range(repeats):  # alternate, so that a burst of load elsewhere falls on every kernel
        for key, kernel in kernels.items():
            rates[key].append(kernel.rate())
    best = {key: max(samples) for key, samples in rates.items()}
    return Floor(threads, best[False, threads], best[True, threads], best[False, 1], best[True, 1],
                 kernels[False, 1].macs_per_instruction, kernels[True, 1].macs_per_instruction)
