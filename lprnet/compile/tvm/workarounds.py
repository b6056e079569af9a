"""Workarounds for TVM 0.27 and LLVM 22 that tuning needs here, each with what would make it removable.

- `build_without_tensor_intrinsics` / `import_tensor_intrinsics`: importing `tvm.s_tir.tensor_intrin` takes 25-40 s
  after torch, ONNX and DVC are imported (CPython's `inspect.getmodule` rescans `sys.modules` for every frozen frame),
  which made MetaSchedule's default LocalBuilder time out on every candidate. Removable when TVM's tensor-intrinsic
  registration stops calling `inspect.stack()` per kernel, or the builder stops importing it.
- `register_vnni_for_llvm22`: TVM 0.27 declares vpdpbusd.512's byte operands as <16 x i32>, LLVM 22 as <64 x i8>
  (llvm/llvm-project#155194). Removable when TVM's dot_16x4_vnni intrinsic uses LLVM 22's operand types.
- `PooledBuilder`: MetaSchedule's LocalBuilder starts a new process pool, which imports TVM, for every batch.
  Removable if LocalBuilder grows an option to keep its workers.
"""

from __future__ import annotations

import functools
import logging
import time

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import default_export
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

logger = logging.getLogger(__name__)

# A candidate kernel builds in about a second; the limit only stops a build that hangs. The limit counts from the
# build function's start, after the worker process has imported TVM.
BUILD_TIMEOUT_S = 30.0
WORKER_USES = 64  # builds per builder worker process before it is replaced (see PooledBuilder)


def build_without_tensor_intrinsics(mod: tvm.IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    """MetaSchedule's default build function minus its `import tvm.s_tir.tensor_intrin`.

    That import registers every tensor intrinsic TVM has and takes tens of seconds, in each builder worker process
    (the LocalBuilder starts fresh ones for every batch), so within the build time-out every candidate timed out. A
    candidate only needs the intrinsics while it is scheduled (in this process), not when it is compiled.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


@functools.cache
def import_tensor_intrinsics() -> None:
    """Import `tvm.s_tir.tensor_intrin` (MetaSchedule's TuneContext does, for the schedule rules) in seconds.

    Written by hand because the cost is in CPython's inspect, which no library setting reaches: each of the ~250
    TVMScript kernels in that package calls `inspect.stack()`, which looks up the module of every frame on the stack,
    and for the importer's own frames (file name "<frozen importlib._bootstrap>", no file on disk)
    `inspect.getmodule` finds no module and rescans all of `sys.modules`, every time, which grows with every package
    imported before (torch, ONNX, DVC). Mapping each frozen module's file name to it in inspect's cache answers
    those look-ups at once; the frames still have no source lines, as before, so TVM sees the same stacks.
    """
    import inspect
    import sys

    cache = getattr(inspect, "modulesbyfile", None)  # undocumented; without it the import is only slower
    for name, module in list(sys.modules.items()) if isinstance(cache, dict) else ():
        if getattr(getattr(module, "__spec__", None), "origin", None) == "frozen":
            cache.setdefault(f"<frozen {name}>", name)
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics)

    register_vnni_for_llvm22()


def register_vnni_for_llvm22() -> None:
    """Re-register TVM's VNNI intrinsic (dot_16x4_vnni, which MetaSchedule's x86 rules tensorize uint8 x int8
    convolutions with) with the operand types LLVM 22 declares for vpdpbusd.512: <64 x i8> for the two byte operands,
    where TVM 0.27 passes <16 x i32> as LLVM 21 and older declared them (llvm/llvm-project#155194). With TVM's own
    definition every tensorized candidate failed LLVM's module verification, so no int8 kernel used VNNI."""
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import x86
    from tvm.script import tirx as T

    if tvm.target.codegen.llvm_version_major() < 22:
        return

    @T.prim_func(s_tir=True)
    def dot_16x4_vnni_i8_operands(a: T.Buffer((4,), "uint8", offset_factor=1),
                                  b: T.Buffer((16, 4), "int8", offset_factor=1),
                                  c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_u8x64 = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                                    dtype="uint8x64")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], dtype="int32x16"),
                a_u8x64, b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(x86.VNNI_DOT_16x4_INTRIN, x86.dot_product_16x4_u8i8i32_desc, dot_16x4_vnni_i8_operands,
                          override=True)


def build_and_export(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """What a builder worker does with one candidate: compile it, write it to a file for the runner, return the path."""
    return default_export(build_without_tensor_intrinsics(mod, target))


@derived_object
class PooledBuilder(PyBuilder):
    """MetaSchedule's LocalBuilder with its worker processes kept from one batch to the next, advancing the progress
    bar by each batch it builds (the runner times the batch right after).

    LocalBuilder starts a fresh pool for every batch (against a memory leak of long-lived workers), and each worker
    imports TVM first, which costs seconds per round. Here a worker is replaced after WORKER_USES builds instead. The
    bar is advanced here because the scheduler hands results to the measure callbacks only once every task has had
    its first batch: with dozens of tasks it would stand still for minutes."""

    def __init__(self, max_workers: int, timeout_sec: float, bar, start: float):
        super().__init__()
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec, maximum_process_uses=WORKER_USES)
        self.timeout_sec = timeout_sec
        self.bar = bar
        self.start = start
        self.timeline: list[tuple[int, float]] = []  # (candidates built so far, seconds since `start`)

    def build(self, build_inputs):
        results = []
        for result in self.pool.map_with_error_catching(lambda args: build_and_export(*args),
                                                        [(item.mod, item.target) for item in build_inputs]):
            if result.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(result.value, None))
            elif result.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed: {result.value}"))
        self.bar.update(len(build_inputs))
        built = self.timeline[-1][0] if self.timeline else 0
        self.timeline.append((built + len(build_inputs), time.perf_counter() - self.start))
        return results

    def shutdown(self) -> None:
        self.pool.shutdown()


