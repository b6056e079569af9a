"""Apache TVM (Relax) for LPRNet: ONNX import, named pass lists, op/kernel counts, build, and a deployable artifact.

The stages tvm-import, tvm-graph-passes and tvm-layout-passes call these functions; between stages a module travels
as TVM's JSON (`save_ir` / `load_ir`, constants included). A build is `relax.build` with the "default_build" Relax
pipeline: the lowering a VM executable needs (LegalizeOps, memory planning, VM lowering) and nothing else, so every
optimisation is one of the named passes a stage chose. The artifact is a folder with the compiled library, the
module's TVMScript text and a manifest; `TVMPredictor` runs it with the Relax VM without recompiling.

Does not tune (MetaSchedule), does not quantize (it imports QDQ ONNX as it is: TVM 0.27 then computes the
convolutions in fp32 between quantize/dequantize pairs; the graph pass qdq_conv_to_integer writes them as the integer
convolutions they stand for, qdq_to_arithmetic the remaining pairs as float arithmetic), and does not decode or score
logits (see evaluate.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.relax import transform as relax_transform

from lprnet.alphabet import get_alphabet
from lprnet.io import atomic_dir, write_text_atomic
from lprnet.model import INPUT_HEIGHT, INPUT_WIDTH

INPUT_NAME = "images"  # lprnet.export names the ONNX input so
ALPHABET_ATTR = "lprnet_alphabet"  # IRModule attribute carrying the alphabet name from import to artifact

LIBRARY_FILE = "model.so"
IR_FILE = "model.relax.py"  # TVMScript text of the module that was built, for reading, not for loading
MANIFEST_FILE = "manifest.json"
ARTIFACT_FORMAT = 1
MANIFEST_KEYS = ("format", "library", "library_sha256", "input_shape", "output_shape", "alphabet", "tvm_version")

# "default_build" is relax.pipeline.default_build_pipeline: LegalizeOps plus the lowering to VM code. Plain "default"
# is the same for CPU targets but switches to the fusing, DLight-scheduling pipeline for GPU targets.
BUILD_PIPELINE = "default_build"

# Kernel layout paired with each data layout when the caller gives none: Relay's "default" choice (Relax's
# ConvertLayout needs an explicit one and fails on the string "default").
DEFAULT_KERNEL_LAYOUTS = {"NCHW": "OIHW", "NHWC": "HWIO"}

PassFactory = Callable[..., tvm.transform.Pass]


# --------------------------------------------------------------------------------------------------------- import


def import_onnx(path: str | os.PathLike, batch: int = 1) -> tvm.IRModule:
    """The ONNX model as a Relax module with a fixed (batch,3,24,94) input and its weights as constants.

    A fixed batch gives static shapes, which tuning and the untuned kernels both need; `TVMPredictor` runs larger
    inputs in chunks of this batch. The alphabet name from the ONNX metadata rides along as a module attribute.
    """
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    model = onnx.load(str(path))
    input_names = [tensor.name for tensor in model.graph.input]
    if INPUT_NAME not in input_names:
        raise ValueError(f"{path}: no input named {INPUT_NAME!r} (inputs: {input_names}); export it with lprnet.export")
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "alphabet" not in metadata:
        raise ValueError(f"{path}: no 'alphabet' in the ONNX metadata (export it with lprnet.export)")
    # keep_params_in_input=False binds the initializers as Relax constants, so main takes only the images.
    mod = from_onnx(model, shape_dict={INPUT_NAME: [batch, 3, INPUT_HEIGHT, INPUT_WIDTH]},
                    keep_params_in_input=False)
    return mod.with_attr(ALPHABET_ATTR, metadata["alphabet"])


def module_alphabet_name(mod: tvm.IRModule) -> str:
    attrs = mod.attrs or {}
    if ALPHABET_ATTR not in attrs:
        raise ValueError(f"the module has no {ALPHABET_ATTR!r} attribute (import it with compile_tvm.import_onnx)")
    return str(attrs[ALPHABET_ATTR])


def module_input_shape(mod: tvm.IRModule) -> tuple[int, ...]:
    return tuple(int(dim) for dim in mod["main"].params[0].ty.shape)


def save_ir(path: str | os.PathLike, mod: tvm.IRModule) -> None:
    """The module as TVM JSON, constants included, for the next stage."""
    write_text_atomic(path, tvm.ir.save_json(mod))


def load_ir(path: str | os.PathLike) -> tvm.IRModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TVM module file")
    mod = tvm.ir.load_json(path.read_text(encoding="utf-8"))
    if not isinstance(mod, tvm.IRModule):
        raise ValueError(f"{path}: holds a {type(mod).__name__}, not an IRModule (write it with compile_tvm.save_ir)")
    return mod


# --------------------------------------------------------------------------------------------------------- passes


def _convert_layout(layout: str = "NHWC", kernel_layout: str | None = None) -> tvm.transform.Pass:
    # Only plain layouts: TOPI cannot legalize a conv2d with a channel-chunked layout such as NCHW4c.
    if sorted(layout) != sorted("NCHW"):
        raise ValueError(f"layout {layout!r} is not a permutation of NCHW")
    kernel_layout = kernel_layout or DEFAULT_KERNEL_LAYOUTS.get(layout)
    if kernel_layout is None or sorted(kernel_layout) != sorted("OIHW"):
        raise ValueError(f"kernel_layout {kernel_layout!r} for layout {layout!r} is not a permutation of OIHW")
    return relax_transform.ConvertLayout({"relax.nn.conv2d": [layout, kernel_layout]})


def _qdq_to_arithmetic() -> tvm.transform.Pass:
    """Each per-tensor quantize -> dequantize pair (an int8 QDQ model's activations) as the float arithmetic it
    computes: (min(max(round(x / s) + z, qmin), qmax) - z') * s'.

    Written by hand because Relax 0.27's ConvertLayout has no layout rule for quantize, dequantize or clip: it left
    every pair in NCHW between two transposes, and FuseOps does not fuse a transpose into the convolution before it,
    so the default int8 layout module had 49 kernels (20 with transposes) against 32 for fp32. As divide, round, add,
    maximum, minimum, subtract and multiply by scalars, the pair follows the convolution's layout and fuses into its
    kernel. The values are those of TVM's own quantize/dequantize legalization (the same division and rounding; the
    clamped value is integral, so no cast is needed). Per-channel pairs are left as they are (a weight's is a
    constant, which fold_constant has already folded).
    """
    data, scale, zero_point = relax.dpl.wildcard(), relax.dpl.is_const(), relax.dpl.is_const()
    out_scale, out_zero_point = relax.dpl.is_const(), relax.dpl.is_const()
    quantize = relax.dpl.is_op("relax.quantize")(data, scale, zero_point)
    pair = relax.dpl.is_op("relax.dequantize")(quantize, out_scale, out_zero_point)

    def as_float(value) -> tvm.ir.expr.Constant:
        return relax.const(float(np.asarray(value).reshape(())), "float32")

    def rewrite(matched: relax.Expr, found: dict) -> relax.Expr:
        quantized_dtype, out_dtype = str(found[quantize].attrs.out_dtype), str(found[pair].attrs.out_dtype)
        if (any(found[p].value.numpy().size != 1 for p in (scale, zero_point, out_scale, out_zero_point))
                or str(found[scale].value.dtype) != "float32"  # ONNX: the data has the scale's type
                or not quantized_dtype.startswith(("int", "uint")) or out_dtype != "float32"):
            return matched  # per-channel, or dtypes whose legalization casts or clips differently
        limits = np.iinfo(quantized_dtype)
        op = relax.op
        quantized = op.add(op.round(op.divide(found[data], found[scale])), as_float(found[zero_point].value.numpy()))
        clamped = op.minimum(op.maximum(quantized, as_float(limits.min)), as_float(limits.max))
        return op.multiply(op.subtract(clamped, as_float(found[out_zero_point].value.numpy())), found[out_scale])

    @tvm.transform.module_pass(opt_level=0, name="QDQToArithmetic")
    def rewrite_module(mod: tvm.IRModule, _context) -> tvm.IRModule:
        rewritten = mod.clone()  # the caller keeps its module unchanged
        for global_var, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewritten[global_var] = relax.dpl.rewrite_call(pair, rewrite, func)
        return rewritten

    return rewrite_module


def _qdq_conv_to_integer() -> tvm.transform.Pass:
    """Each convolution of a uint8 QDQ activation by a symmetric int8 QDQ weight, conv2d(dequantize(quantize(x)),
    dequantize(w)), as the integer convolution it stands for: uint8 x int8 products summed in int32, then one float
    scale per output channel, s_x * s_w[o]. An input zero point z_x != 0 pads with z_x (the quantized zero) and
    subtracts z_x * sum(w[o]) from each sum. Every other consumer of the pair keeps it (see qdq_to_arithmetic).

    Written by hand because TVM 0.27 imports QDQ ONNX as fake quantization (float convolutions between the pairs)
    and has no pass that recovers the integer arithmetic; with it, the int8 convolutions can use VNNI (see
    `_legalize_ops`). The sums are exact, so only float rounding differs from the fake-quantized module (a test).
    The quantize is written as the arithmetic TVM's legalization computes, since ConvertLayout has no rule for it.
    """
    data, scale, zero_point = relax.dpl.wildcard(), relax.dpl.is_const(), relax.dpl.is_const()
    quantize = relax.dpl.is_op("relax.quantize")(data, scale, zero_point)
    pair = relax.dpl.is_op("relax.dequantize")(quantize, relax.dpl.is_const(), relax.dpl.is_const())
    weight, weight_scale, weight_zero_point = relax.dpl.is_const(), relax.dpl.is_const(), relax.dpl.is_const()
    weight_pair = relax.dpl.is_op("relax.dequantize")(weight, weight_scale, weight_zero_point)
    conv = relax.dpl.is_op("relax.nn.conv2d")(pair, weight_pair)

    def rewrite(matched: relax.Expr, found: dict) -> relax.Expr:
        attrs, op = found[conv].attrs, relax.op
        x_scale, x_zero_point = found[scale].value.numpy(), found[zero_point].value.numpy()
        w = found[weight].value.numpy()
        w_scale, w_zero_point = found[weight_scale].value.numpy(), found[weight_zero_point].value.numpy()
        if (str(found[quantize].attrs.out_dtype) != "uint8" or w.dtype != np.int8 or x_scale.size != 1
                or x_scale.dtype != np.float32 or x_zero_point.size != 1
                or not np.array_equal(found[pair].args[1].value.numpy(), x_scale)
                or not np.array_equal(found[pair].args[2].value.numpy(), x_zero_point)
                or np.any(w_zero_point != 0) or (w_scale.size != 1 and int(found[weight_pair].attrs.axis) != 0)
                or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or int(attrs.groups) != 1):
            return matched  # not the uint8 x symmetric int8 per-output-channel case this rewrite is exact for
        zero = int(x_zero_point.reshape(()))
        quantized = op.add(op.round(op.divide(found[data], found[scale])), relax.const(float(zero), "float32"))
        x_int = op.astype(op.minimum(op.maximum(quantized, relax.const(0.0)), relax.const(255.0)), "uint8")
        padding = [int(p) for p in attrs.padding]  # top, left, bottom, right
        if zero and any(padding):
            x_int = op.nn.pad(x_int, [0, 0, 0, 0, padding[0], padding[2], padding[1], padding[3]],
                              pad_value=float(zero))
            padding = [0, 0, 0, 0]
        sums = op.nn.conv2d(x_int, relax.const(w), strides=attrs.strides, padding=padding,
                            dilation=attrs.dilation, out_dtype="int32")
        if zero:
            weight_sums = w.astype(np.int64).sum(axis=(1, 2, 3)) * zero
            sums = op.subtract(sums, relax.const(weight_sums.astype(np.int32).reshape(1, -1, 1, 1)))
        channel_scale = x_scale.reshape(()) * np.broadcast_to(w_scale.astype(np.float32), (w.shape[0],))
        return op.multiply(op.astype(sums, "float32"), relax.const(channel_scale.reshape(1, -1, 1, 1)))

    @tvm.transform.module_pass(opt_level=0, name="QDQConvToInteger")
    def rewrite_module(mod: tvm.IRModule, _context) -> tvm.IRModule:
        rewritten = mod.clone()
        for global_var, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewritten[global_var] = relax.dpl.rewrite_call(conv, rewrite, func)
        return rewritten

    return rewrite_module


# Output and input channels per VNNI step: vpdpbusd adds 4 uint8 x int8 products into each of 16 int32 lanes.
VNNI_LANES, VNNI_DEPTH = 16, 4


def _packed_int8_conv2d(data: tvm.te.Tensor, packed_weight: tvm.te.Tensor, strides: list[int], padding: list[int],
                        out_channels: int) -> tvm.te.Tensor:
    """NHWC uint8 `data` (channels a multiple of VNNI_DEPTH) convolved with an int8 weight packed as
    [O / 16, KH, KW, I / 4, 16, 4], summed in int32; NHWC output with `out_channels` channels."""
    from tvm import te, topi

    batch, height, width, _ = data.shape
    out_blocks, kernel_h, kernel_w, in_blocks, lanes, depth = packed_weight.shape
    padded = topi.nn.pad(data, [0, padding[0], padding[1], 0], [0, padding[2], padding[3], 0], name="pad")
    out_h = (height + padding[0] + padding[2] - kernel_h) // strides[0] + 1
    out_w = (width + padding[1] + padding[3] - kernel_w) // strides[1] + 1
    ry, rx = te.reduce_axis((0, kernel_h), "ry"), te.reduce_axis((0, kernel_w), "rx")
    rc, rd = te.reduce_axis((0, in_blocks), "rc"), te.reduce_axis((0, depth), "rd")
    sums = te.compute(
        (batch, out_h, out_w, out_blocks, lanes),
        lambda n, y, x, block, lane: te.sum(
            padded[n, y * strides[0] + ry, x * strides[1] + rx, rc * depth + rd].astype("int32")
            * packed_weight[block, ry, rx, rc, lane, rd].astype("int32"), axis=[ry, rx, rc, rd]),
        name="conv2d_int8")
    return te.compute((batch, out_h, out_w, out_channels),
                      lambda n, y, x, c: sums[n, y, x, c // lanes, c % lanes], name="conv2d_int8_unpack")


def _legalize_conv2d(block_builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """TOPI's legalization, except for an NHWC uint8 x int8 convolution by a constant weight (what qdq_conv_to_integer
    writes, after ConvertLayout): that one reads the weight packed as [O / 16, KH, KW, I / 4, 16, 4].

    TOPI's NHWC convolution reads 16 output channels of one input channel at a stride of KH*KW*I bytes, which does not
    match VNNI's 16 x 4 block of consecutive bytes, so MetaSchedule's VNNI rule could not tensorize it. The packing
    (Relay's NCHWc int8 layouts did the same) is done once, on the constant; channels are padded with zeros up to
    whole blocks, the input's with a pad that its kernel fuses."""
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    data, weight = call.args
    if not (str(data.ty.dtype) == "uint8" and str(weight.ty.dtype) == "int8" and hasattr(weight, "value")
            and attrs.data_layout == "NHWC" and sorted(attrs.kernel_layout) == sorted("OIHW")
            and attrs.out_layout == "NHWC" and int(attrs.groups) == 1 and all(int(d) == 1 for d in attrs.dilation)):
        return _nn_conv2d(block_builder, call)
    w = weight.value.numpy().transpose([attrs.kernel_layout.index(axis) for axis in "OHWI"])
    out_channels, kernel_h, kernel_w, in_channels = w.shape
    blocks_o, blocks_i = -(-out_channels // VNNI_LANES), -(-in_channels // VNNI_DEPTH)
    padded = np.zeros((blocks_o * VNNI_LANES, kernel_h, kernel_w, blocks_i * VNNI_DEPTH), np.int8)
    padded[:out_channels, :, :, :in_channels] = w
    packed = padded.reshape(blocks_o, VNNI_LANES, kernel_h, kernel_w, blocks_i, VNNI_DEPTH).transpose(0, 2, 3, 4, 1, 5)
    if blocks_i * VNNI_DEPTH != in_channels:
        data = block_builder.emit(relax.op.nn.pad(data, [0, 0, 0, 0, 0, 0, 0, blocks_i * VNNI_DEPTH - in_channels]))
    return block_builder.call_te(_packed_int8_conv2d, data, relax.const(np.ascontiguousarray(packed)),
                                 [int(s) for s in attrs.strides], [int(p) for p in attrs.padding], out_channels,
                                 primfunc_name_hint="conv2d_int8")


def _legalize_ops() -> tvm.transform.Pass:
    """Relax's LegalizeOps, with int8 convolutions legalized for VNNI (see _legalize_conv2d)."""
    return relax_transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d})


# The Relax counterparts of Relay's SimplifyInference / FoldScaleAxis / FoldConstant / DeadCodeElimination. The ONNX
# from lprnet.export has no BatchNormalization left (the exporter folds it into the convolutions), so the first two
# only matter for other ONNX files.
GRAPH_PASSES: dict[str, PassFactory] = {
    "decompose_ops_for_inference": relax_transform.DecomposeOpsForInference,  # batch_norm -> arithmetic
    "fold_batchnorm_to_conv2d": relax_transform.FoldBatchnormToConv2D,
    "fold_constant": relax_transform.FoldConstant,
    "canonicalize_bindings": relax_transform.CanonicalizeBindings,
    "eliminate_common_subexpr": relax_transform.EliminateCommonSubexpr,
    "dead_code_elimination": relax_transform.DeadCodeElimination,
    "qdq_to_arithmetic": _qdq_to_arithmetic,
    "qdq_conv_to_integer": _qdq_conv_to_integer,
}

LAYOUT_PASSES: dict[str, PassFactory] = {
    "convert_layout": _convert_layout,
    # Removes layout_transform pairs. ConvertLayout writes plain NCHW<->NHWC changes as permute_dims, which this
    # pass does not match, so it only matters after passes that emit layout_transform (e.g. AlterOpImpl).
    "optimize_layout_transform": relax_transform.OptimizeLayoutTransform,
    "fold_constant": relax_transform.FoldConstant,
    "legalize_ops": _legalize_ops,
    "annotate_tir_op_pattern": relax_transform.AnnotateTIROpPattern,
    "fuse_ops": relax_transform.FuseOps,
    "fuse_tir": relax_transform.FuseTIR,
    "dead_code_elimination": relax_transform.DeadCodeElimination,
}

# qdq_conv_to_integer before fold_constant, which would fold each int8 weight's dequantize into a float constant.
# fold_batchnorm_to_conv2d before decompose_ops_for_inference, which would otherwise turn every batch_norm into
# arithmetic first: for a conv2d + batch_norm the order leaves 2 operators after fold_constant instead of 5.
DEFAULT_GRAPH_PASSES = ("qdq_conv_to_integer", "fold_batchnorm_to_conv2d", "decompose_ops_for_inference",
                        "fold_constant", "qdq_to_arithmetic", "canonicalize_bindings", "eliminate_common_subexpr",
                        "dead_code_elimination")
# fold_constant right after convert_layout turns the weights' permute_dims into transposed constants.
DEFAULT_LAYOUT_PASSES = ("convert_layout", "fold_constant", "legalize_ops", "annotate_tir_op_pattern", "fuse_ops",
                         "fuse_tir", "dead_code_elimination")


def _accepted_options(factory: PassFactory) -> set[str]:
    return set(inspect.signature(factory).parameters)


def make_passes(names: Sequence[str], registry: dict[str, PassFactory], **options) -> list[tvm.transform.Pass]:
    """The named passes, each given the options its factory takes; an option no named pass takes is an error."""
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(f"unknown pass {', '.join(map(repr, unknown))}; valid: {', '.join(registry)}")
    accepted = set().union(*(_accepted_options(registry[name]) for name in names)) if names else set()
    unused = sorted(set(options) - accepted)
    if unused:
        raise ValueError(f"option {', '.join(map(repr, unused))} is taken by none of the passes {list(names)}")
    return [registry[name](**{key: value for key, value in options.items() if key in _accepted_options(registry[name])})
            for name in names]


def apply_passes(mod: tvm.IRModule, names: Sequence[str], registry: dict[str, PassFactory], **options
                 ) -> tvm.IRModule:
    """`mod` after the named passes, in order (e.g. `apply_passes(mod, ["convert_layout"], LAYOUT_PASSES,
    layout="NHWC")`)."""
    # Called one by one, not as a Sequential: a Sequential skips passes above the ambient PassContext's opt_level
    # (EliminateCommonSubexpr and DeadCodeElimination are level 1), and a pass list here means run them all.
    for transform in make_passes(names, registry, **options):
        mod = transform(mod)
    return mod


def count_ops(mod: tvm.IRModule) -> dict[str, int]:
    """Operator calls in `main` and TIR kernels in the module.

    ops = relax_ops (high-level operators such as relax.nn.conv2d) + call_tir (calls of TIR kernels) + fused_calls
    (calls of the Relax functions FuseOps groups operators into, before FuseTIR makes them kernels). kernels counts
    the TIR PrimFuncs in the module; kernels_legalized counts them after LegalizeOps, i.e. what a build would compile.
    """
    counts = {"relax_ops": 0, "call_tir": 0, "fused_calls": 0}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if not isinstance(expr, relax.Call):
            return
        if expr.op.same_as(call_tir):
            counts["call_tir"] += 1
        elif isinstance(expr.op, tvm.ir.Op):
            counts["relax_ops"] += 1
        elif isinstance(expr.op, tvm.ir.GlobalVar):
            counts["fused_calls"] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    counts["ops"] = counts["relax_ops"] + counts["call_tir"] + counts["fused_calls"]
    counts["kernels"] = _count_prim_funcs(mod)
    counts["kernels_legalized"] = _count_prim_funcs(relax_transform.LegalizeOps()(mod))
    return counts


def _count_prim_funcs(mod: tvm.IRModule) -> int:
    return sum(isinstance(func, tvm.tirx.PrimFunc) for func in mod.functions.values())


# ---------------------------------------------------------------------------------------------------------- build


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def parse_target(target: dict) -> tvm.target.Target:
    """TVM's Target for a JSON dict such as {"kind": "llvm", "mcpu": "znver3"}; a one-line ValueError if TVM would
    not parse it or LLVM does not know its mcpu (TVM itself accepts an unknown mcpu, logs an error and compiles for
    a generic CPU). An explicit "mtriple" is passed through unchecked."""
    if not isinstance(target, dict):
        raise ValueError(f"target {target!r}: expected a dict such as {{'kind': 'llvm'}}")
    described = json.dumps(target, sort_keys=True)
    try:
        parsed = tvm.target.Target(target)
    except (ValueError, TypeError, tvm.error.InternalError) as error:
        raise ValueError(f"target {described}: TVM cannot parse it ({_one_line(error)})") from None
    # Only for the host's triple: LLVM's CPU list for a triple it cannot parse crashes the process (TVM 0.27).
    if parsed.kind.name == "llvm" and "mtriple" not in target and "mcpu" in target:
        # Asked of a bare llvm target: with the unknown mcpu itself LLVM logs an error before answering.
        known_cpus = {str(cpu) for cpu in tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target("llvm"))}
        if str(target["mcpu"]) not in known_cpus:
            triple = tvm.target.codegen.llvm_get_system_triple()
            raise ValueError(f"target {described}: LLVM does not know mcpu {target['mcpu']!r} for {triple!r}")
    return parsed


def detect_target(target: dict) -> dict:
    """`target` with "mcpu" filled in with this machine's CPU for llvm targets that name none, validated.

    A library built for the host CPU may use instructions (e.g. AVX-512) other x86-64 machines lack.
    """
    filled = dict(target) if isinstance(target, dict) else target
    if isinstance(filled, dict) and filled.get("kind") == "llvm" and "mcpu" not in filled:
        filled["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    parse_target(filled)
    return filled


def build(mod: tvm.IRModule, target: dict) -> relax.VMExecutable:
    """A VM executable with no optimisation beyond what a build requires (see BUILD_PIPELINE)."""
    return relax.build(mod, target=parse_target(target), relax_pipeline=BUILD_PIPELINE)


# ------------------------------------------------------------------------------------------------------- artifact


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(folder: str | os.PathLike, executable: relax.VMExecutable, mod: tvm.IRModule, target: dict,
                  input_shape: Sequence[int], alphabet_name: str, extra: dict | None = None) -> dict:
    """Write library, TVMScript and manifest into `folder`, which appears whole or not at all; returns the manifest.

    `extra` adds keys to the manifest (e.g. the pass lists), never replacing the ones written here.
    """
    get_alphabet(alphabet_name)  # an unknown name fails here, not when the artifact is loaded
    output_shape = [int(dim) for dim in mod["main"].ret_ty.shape]
    with atomic_dir(folder) as tmp:
        executable.export_library(str(tmp / LIBRARY_FILE))
        (tmp / IR_FILE).write_text(mod.script(), encoding="utf-8")
        manifest = {
            "format": ARTIFACT_FORMAT,
            "runtime": "tvm",
            "library": LIBRARY_FILE,
            "library_sha256": _sha256(tmp / LIBRARY_FILE),
            "ir": IR_FILE,
            "target": target,
            "input_name": INPUT_NAME,
            "input_shape": [int(dim) for dim in input_shape],
            "output_shape": output_shape,
            "alphabet": alphabet_name,
            "tvm_version": tvm.__version__,
        }
        clashes = sorted(set(extra or {}) & set(manifest))
        if clashes:
            raise ValueError(f"extra manifest keys {clashes} would replace the artifact's own")
        manifest.update(extra or {})
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def is_tvm_artifact(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no TVM artifact manifest")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if manifest["format"] != ARTIFACT_FORMAT:
        raise ValueError(f"{path}: artifact format {manifest['format']!r}, this code reads {ARTIFACT_FORMAT}")
    return manifest


def configure_runtime_threads(threads: int) -> int:
    """Make TVM's CPU kernels use `threads` threads; returns the count TVM reports.

    TVM creates one worker pool per calling thread on first use, sized by TVM_NUM_THREADS (default: half the logical
    CPUs on x86), and never grows it; "runtime.config_threadpool" then picks how many of its workers run. So the pool
    is sized for every CPU and `threads` chosen from it, which lets a later predictor ask for more. These are
    process-wide settings, not per predictor. TVM_BIND_THREADS=0 (unless the caller set it) stops TVM pinning the
    calling thread to one core, which would also slow every other runtime in the process.
    """
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    affinity_big_cores = 1  # ThreadGroup::kBig, the mode TVM's pool starts in
    tvm.get_global_func("runtime.config_threadpool")(affinity_big_cores, threads)
    used = int(tvm.runtime.num_threads())
    if used != threads:
        raise ValueError(f"threads={threads}: TVM's thread pool in this thread has only {used} workers; set "
                         f"TVM_NUM_THREADS before the first TVM run in the process")
    return used


class TVMPredictor:
    """Runs a `save_artifact` folder with the Relax VM: images (N,3,24,94) float32 -> logits (N,C,18) float32.

    Loads the library only after its SHA-256 matches the manifest's (this catches a corrupt or swapped file, not a
    forger who also edits the manifest). The library has a fixed batch; larger inputs run in chunks of it, the last
    one zero-padded, which is exact because LPRNet normalises each sample on its own.

    `workers` > 1 runs the chunks on that many VMs at once, one Python thread each (TVM releases the GIL). That only
    pays for an untuned build, whose kernels are single-threaded (LegalizeOps writes no parallel loops): 32 plates in
    0.77 s instead of 1.41 s on 2 cores. A tuned build's kernels already use `threads`; keep the default 1 there and
    whenever latency or throughput is measured.
    """

    name = "tvm"

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, workers: int = 1):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        library = self.folder / self.manifest["library"]
        if not library.is_file():
            raise FileNotFoundError(f"{library}: the library named in the manifest is absent")
        if _sha256(library) != self.manifest["library_sha256"]:
            raise ValueError(f"{library}: SHA-256 does not match {MANIFEST_FILE}; refusing to load it")
        if self.manifest["tvm_version"] != tvm.__version__:
            # The VM bytecode and the library's ABI are not stable across TVM releases.
            raise ValueError(f"{library}: built with TVM {self.manifest['tvm_version']}, this is TVM "
                             f"{tvm.__version__}; rebuild it")
        self.alphabet = get_alphabet(self.manifest["alphabet"])
        self.input_shape = tuple(self.manifest["input_shape"])
        # None leaves TVM's defaults alone (asking TVM for its count would create the pool at its default size).
        self.threads = configure_runtime_threads(threads) if threads else None
        module = tvm.runtime.load_module(str(library))
        self.vm = relax.VirtualMachine(module, tvm.cpu())
        # A VM is not safe to call from two threads at once: each worker gets its own.
        self._mains = [self.vm["main"]] + [relax.VirtualMachine(module, tvm.cpu())["main"] for _ in range(workers - 1)]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"images of shape {images.shape}; {self.folder} expects (N, "
                             f"{', '.join(map(str, self.input_shape[1:]))})")
        images = np.ascontiguousarray(images, dtype=np.float32)
        batch = self.input_shape[0]
        chunks = [images[start:start + batch] for start in range(0, len(images), batch)]
        empty = np.zeros((0, *self.manifest["output_shape"][1:]), np.float32)  # so N=0 gives (0,C,18)
        workers = min(len(self._mains), len(chunks))
        if workers <= 1:
            return np.concatenate([empty, *(self._run(self._mains[0], chunk) for chunk in chunks)])
        with ThreadPoolExecutor(workers) as pool:  # worker i runs chunks i, i + workers, ... on its own VM
            shares = list(pool.map(lambda i: [self._run(self._mains[i], chunk) for chunk in chunks[i::workers]],
                                   range(workers)))
        ordered = [shares[i % workers][i // workers] for i in range(len(chunks))]
        return np.concatenate([empty, *ordered])

    def _run(self, main, chunk: np.ndarray) -> np.ndarray:
        count, batch = len(chunk), self.input_shape[0]
        if count < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - count, *chunk.shape[1:]), np.float32)])
        return main(tvm.runtime.tensor(chunk)).numpy()[:count]
