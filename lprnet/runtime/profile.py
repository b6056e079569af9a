"""Per-kernel profile of a compiled artifact: which kernels take the time, which run in float, and how close each
convolution comes to this CPU's peak for its precision.

  python -m lprnet profile ARTIFACT [--threads N] [--rounds N] [--out docs/speed.md]

ARTIFACT is a TVM artifact folder, an ONNX model, or a deploy folder holding either (models/deploy).

- TVM: one run of the Relax VM with an instrument (`VirtualMachine.set_instrument`, TVM 0.27 has no `vm.profile`)
  records each kernel call and its arguments; each kernel is then timed on those arguments with TVM's own
  `time_evaluator` (C++ timing loop, no Python in between), in `rounds` rounds over all kernels so that the
  machine's drift falls on every kernel alike; the median per kernel counts. Kernels run on TVM's thread pool at
  `threads`. Allocation and the VM's own instructions are not kernels: the whole model's p50 minus the kernels' sum
  is that overhead.
- ONNX Runtime: its own profiler (`SessionOptions.enable_profiling`), one `*_kernel_time` event per node and run;
  the median over `rounds` runs per node.

A kernel's kind comes from its tensors: a convolution (the kernel or node name says conv) is int8 when it reads
integers (TVM: its weight; ONNX Runtime: its input), else fp32; any other kernel is "other", with the dtypes it
reads and writes, so float element-wise work, pools and (de)quantization show as such. A convolution's MACs are its
weight's element count times its output positions (TVM's outputs are channels-last, as `tvm.layout` NHWC makes
them), so padded channels count: the work the kernel does. ONNX Runtime's profile omits prepacked int8 weights, so
its QLinearConv MACs are unknown. Each convolution is compared with runtime/floor.py's peak for its precision at
`threads`.

Kernels are timed one at a time on warm caches, so their sum can differ from a call of the model; the page says both.
Does not change the artifact, and needs no torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lprnet.errors import InputError
from lprnet.runtime.floor import FP32, INT8, Floor, cpu_description
from lprnet.runtime.predictor import example_input

CONV, OTHER = "conv", "other"
INTEGER_DTYPES = ("int8", "uint8")
MIN_REPEAT_MS = 1  # each kernel's timing repeats its call for at least this long (TVM time_evaluator)
MODEL_CALLS_PER_ROUND = 10  # whole-model calls timed per round, for its p50


@dataclass(frozen=True)
class Kernel:
    """One kernel (a TVM PrimFunc call, or an ONNX Runtime node) of one forward pass."""

    name: str
    op: str  # CONV or OTHER
    precision: str  # FP32 or INT8 for a convolution; for another kernel its input -> output dtypes
    macs: int  # a convolution's multiply-accumulates (0 for other kernels)
    seconds: float  # median over the rounds


@dataclass(frozen=True)
class Profile:
    artifact: str
    runtime: str
    threads: int
    rounds: int
    model_p50_s: float
    kernels: list[Kernel]


def artifact_of(path: Path) -> tuple[str, Path]:
    """(runtime, the artifact itself) of a TVM folder, an ONNX file or a deploy folder holding one of them."""
    from lprnet.runtime.deploy import is_deployed, read_deploy_manifest

    if not path.exists():
        raise InputError(f"{path}: no such artifact")
    if is_deployed(path):
        manifest = read_deploy_manifest(path)
        return artifact_of(path / manifest["artifact"])
    if path.is_dir():
        return "tvm", path
    if path.suffix == ".onnx":
        return "onnxruntime", path
    raise InputError(f"{path}: not a TVM artifact folder, an ONNX model or a deploy folder holding one; the "
                     "profile reads compiled kernels, not PyTorch modules")


def profile_artifact(path: str | os.PathLike, threads: int, rounds: int) -> Profile:
    if not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"rounds must be a positive integer, got {rounds!r}")
    runtime, artifact = artifact_of(Path(path))
    kernels, model_p50 = (profile_tvm if runtime == "tvm" else profile_onnx)(artifact, threads, rounds)
    return Profile(str(path), runtime, threads, rounds, model_p50, kernels)


def other_kind(inputs: list[tuple[str, tuple]], outputs: list[tuple[str, tuple]]) -> str:
    """A kernel that is no convolution, by the dtypes it reads and writes, e.g. 'float32 -> uint8'."""
    return f"{'/'.join(sorted({d for d, _ in inputs}))} -> {'/'.join(sorted({d for d, _ in outputs}))}"


def tvm_kind(symbol: str, inputs: list[tuple[str, tuple]], outputs: list[tuple[str, tuple]]) -> tuple[str, str, int]:
    """(op, precision, macs) of a TVM kernel: a convolution's weight is its second argument, its output (the last
    argument, destination-passing) channels-last."""
    if "conv" in symbol and len(inputs) > 1:
        (dtype, weight), (_, output) = inputs[1], outputs[0]
        macs = int(np.prod(weight)) * int(np.prod(output)) // int(output[-1])
        return CONV, INT8 if dtype in INTEGER_DTYPES else FP32, macs
    return OTHER, other_kind(inputs, outputs), 0


def onnx_kind(op_name: str, inputs: list[tuple[str, tuple]], outputs: list[tuple[str, tuple]]
              ) -> tuple[str, str, int]:
    """(op, precision, macs) of an ONNX Runtime node. A convolution reading integers is int8. ONNX Runtime lists a
    float convolution's weight (OIHW) but drops a QLinearConv's prepacked one from the profile, whose MACs are then
    unknown (0, shown as '-')."""
    if "Conv" in op_name:
        integer = any(dtype in INTEGER_DTYPES for dtype, _ in inputs[:1])
        weight = inputs[1][1] if len(inputs) > 1 and not integer else ()
        macs = int(np.prod(weight)) * int(np.prod(outputs[0][1])) // int(weight[0]) if len(weight) == 4 else 0
        return CONV, INT8 if integer else FP32, macs
    return OTHER, other_kind(inputs, outputs), 0


# ------------------------------------------------------------------------------------------------------------ TVM


def profile_tvm(folder: Path, threads: int, rounds: int) -> tuple[list[Kernel], float]:
    import tvm

    from lprnet.runtime.tvm_runtime import TVMPredictor

    predictor = TVMPredictor(folder, threads)
    calls: list[tuple[str, list]] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run and not symbol.startswith("vm.builtin"):
            calls.append((symbol, [arg for arg in args if hasattr(arg, "shape") and hasattr(arg, "dtype")]))
        return 0

    predictor.vm.set_instrument(instrument)
    predictor(example_input(1))
    predictor.vm.set_instrument(None)
    library = next((module for module in predictor.vm.module.imports if module.implements_function(calls[0][0])),
                   None) if calls else None
    if library is None:
        raise InputError(f"{folder}: the VM called no kernel of its library")
    timers = [library.time_evaluator(symbol, tvm.cpu(), number=1, repeat=1, min_repeat_ms=MIN_REPEAT_MS)
              for symbol, _ in calls]
    samples: list[list[float]] = [[] for _ in calls]
    model: list[float] = []
    inputs = example_input(1)
    for _ in range(rounds):
        for index, ((_, args), timer) in enumerate(zip(calls, timers)):
            samples[index].append(float(timer(*args).mean))
        model.extend(timed(predictor, inputs) for _ in range(MODEL_CALLS_PER_ROUND))
    kernels = []
    for (symbol, args), seconds in zip(calls, samples):
        tensors = [(str(t.dtype), tuple(t.shape)) for t in args]
        kernels.append(Kernel(symbol, *tvm_kind(symbol, tensors[:-1], tensors[-1:]), float(np.median(seconds))))
    return kernels, float(np.median(model))


def timed(predictor, inputs) -> float:
    start = time.perf_counter()
    predictor(inputs)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------- ONNX Runtime


def profile_onnx(path: Path, threads: int, rounds: int) -> tuple[list[Kernel], float]:
    import onnxruntime as ort

    from lprnet.runtime.onnx_runtime import ORT_DISABLED_OPTIMIZERS

    inputs = example_input(1)
    with tempfile.TemporaryDirectory(prefix="profile.") as work:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=ORT_DISABLED_OPTIMIZERS)
        feed = {session.get_inputs()[0].name: inputs}
        for _ in range(MODEL_CALLS_PER_ROUND):  # warm-up, as every timing here
            session.run(None, feed)
        model = [timed(lambda x: session.run(None, {session.get_inputs()[0].name: x}), inputs)
                 for _ in range(rounds)]
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    durations: dict[str, list[float]] = defaultdict(list)
    described: dict[str, tuple] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name, args = event["name"][:-len("_kernel_time")], event.get("args", {})
        durations[name].append(event["dur"] * 1e-6)
        described[name] = (args.get("op_name", ""), onnx_tensors(args.get("input_type_shape", [])),
                           onnx_tensors(args.get("output_type_shape", [])))
    kernels = []
    for name, seconds in durations.items():
        op_name, ins, outs = described[name]
        kernels.append(Kernel(f"{name} ({op_name})", *onnx_kind(op_name, ins, outs),
                              float(np.median(seconds[-rounds:]))))
    return kernels, float(np.median(model))


ONNX_DTYPES = {"float": "float32", "double": "float64"}  # ONNX Runtime's profile names them as C types


def onnx_tensors(described: list[dict]) -> list[tuple[str, tuple]]:
    """(dtype, shape) of each tensor of a profile event's `input_type_shape` / `output_type_shape`."""
    return [(ONNX_DTYPES.get(dtype, dtype), tuple(shape)) for tensor in described for dtype, shape in tensor.items()]


# ------------------------------------------------------------------------------------------------------- the page


def summary_by_kind(kernels: list[Kernel]) -> dict[tuple[str, str], dict]:
    """(op, precision) -> calls, seconds and MACs summed, slowest kind first."""
    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"calls": 0, "seconds": 0.0, "macs": 0})
    for kernel in kernels:
        group = groups[kernel.op, kernel.precision]
        group["calls"] += 1
        group["seconds"] += kernel.seconds
        group["macs"] += kernel.macs
    return dict(sorted(groups.items(), key=lambda item: -item[1]["seconds"]))


def peak_share(macs: int, seconds: float, precision: str, floor: Floor) -> tuple[float, float] | None:
    """(G-MAC/s, share of the precision's peak), or None for kernels without MACs."""
    if not macs or seconds <= 0:
        return None
    achieved = macs / seconds / 1e9
    return achieved, achieved / floor.peak(precision)


def runs_in_float(kernel: Kernel) -> bool:
    return kernel.precision == FP32 or (kernel.op == OTHER and "float" in kernel.precision)


def mmacs(macs: int) -> str:
    return f"{macs / 1e6:.2f}" if macs else "-"


def render(profile: Profile, floor: Floor, command: str, top: int) -> str:
    """docs/speed.md: how it was made, the whole model, the kinds of kernels, the `top` slowest kernels."""
    total = sum(kernel.seconds for kernel in profile.kernels)
    convs = [k for k in profile.kernels if k.op == CONV]
    floats = [k for k in profile.kernels if runs_in_float(k)]
    float_convs = sorted((k for k in convs if k.precision == FP32), key=lambda k: -k.seconds)
    conv_macs_total = sum(k.macs for k in convs)

    def rate(kernel_or_group_macs, seconds, precision):
        shared = peak_share(kernel_or_group_macs, seconds, precision, floor) if precision in (FP32, INT8) else None
        return ("-", "-") if shared is None else (f"{shared[0]:.1f}", f"{100 * shared[1]:.1f} %")

    lines = [
        "# Speed: the delivered model, kernel by kernel", "",
        f"Generated by `{command}`; re-run it to refresh this page (it overwrites it). Numbers are from one run on a "
        "shared machine: compare shares within the page, not absolute times with another run.", "",
        f"Artifact: `{profile.artifact}` ({profile.runtime}), batch 1, {profile.threads} threads, {profile.rounds} "
        "rounds. How each kernel is timed and classified: `lprnet/runtime/profile.py`. This CPU "
        f"({cpu_description()}): its peaks at {floor.threads} threads, measured now (`lprnet/runtime/floor.py`): "
        f"fp32 {floor.fp32_gmacs:.0f} G-MAC/s, "
        f"int8 {floor.int8_gmacs:.0f} G-MAC/s.", "",
        "## The whole model", "",
        f"- p50 of a call: **{1e6 * profile.model_p50_s:.0f} µs**; the kernels timed one by one sum to "
        f"{1e6 * total:.0f} µs ({len(profile.kernels)} kernels; the difference is the runtime's own work, "
        "allocation and dispatch, and cache effects).",
        f"- Convolutions: {len(convs)} kernels, {conv_macs_total / 1e6:.1f} M MACs (padding included"
        + (f"; {unknown} of them with MACs unknown" if (unknown := sum(not k.macs for k in convs)) else "") + "), "
        f"{100 * sum(k.seconds for k in convs) / total:.1f} % of the kernel time.",
        f"- In float (fp32 convolutions and every other kernel that reads or writes float): {len(floats)} kernels, "
        f"**{100 * sum(k.seconds for k in floats) / total:.1f} % of the kernel time**; the fp32 convolutions: "
        + (", ".join(f"`{k.name}` ({100 * k.seconds / total:.1f} %)" for k in float_convs) or "none") + ".",
        "- The slowest kernel: " + (f"`{slowest.name}` ({slowest.op}, {slowest.precision}), "
                                    f"{100 * slowest.seconds / total:.1f} % of the kernel time." if
                                    (slowest := max(profile.kernels, key=lambda k: k.seconds, default=None))
                                    else "none."), "",
        "## By kind", "",
        "| kind | precision (other: reads -> writes) | kernels | µs | share | M MACs | G-MAC/s | of its peak |",
        "|---|---|---|---|---|---|---|---|"]
    for (op, precision), group in summary_by_kind(profile.kernels).items():
        achieved, share = rate(group["macs"], group["seconds"], precision)
        lines.append(f"| {op} | {precision} | {group['calls']} | {1e6 * group['seconds']:.1f} | "
                     f"{100 * group['seconds'] / total:.1f} % | {mmacs(group['macs'])} | {achieved} | {share} |")
    lines += ["", f"## The {min(top, len(profile.kernels))} slowest kernels", "",
              "| kernel | kind | precision | µs | share | M MACs | G-MAC/s | of its peak |",
              "|---|---|---|---|---|---|---|---|"]
    for kernel in sorted(profile.kernels, key=lambda k: -k.seconds)[:top]:
        achieved, share = rate(kernel.macs, kernel.seconds, kernel.precision)
        lines.append(f"| `{kernel.name}` | {kernel.op} | {kernel.precision} | {1e6 * kernel.seconds:.1f} | "
                     f"{100 * kernel.seconds / total:.1f} % | {mmacs(kernel.macs)} | {achieved} | {share} |")
    return "\n".join(lines) + "\n"
