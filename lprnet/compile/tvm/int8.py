"""int8 graph rewrites and legalization for TVM: what TVM 0.27 does not do for a QDQ ONNX model.

`qdq_conv_to_integer` writes each uint8 x int8 QDQ convolution as the integer convolution it stands for,
`qdq_to_arithmetic` the remaining quantize/dequantize pairs as float arithmetic, and `legalize_ops` is Relax's
LegalizeOps with those integer convolutions reading their weights packed in VNNI blocks. The passes are registered
by name in passes.py. Does not tune (the VNNI schedules come from MetaSchedule, see tune.py).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import transform as relax_transform


def qdq_to_arithmetic() -> tvm.transform.Pass:
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


def qdq_conv_to_integer() -> tvm.transform.Pass:
    """Each convolution of a uint8 QDQ activation by a symmetric int8 QDQ weight, conv2d(dequantize(quantize(x)),
    dequantize(w)), as the integer convolution it stands for: uint8 x int8 products summed in int32, then one float
    scale per output channel, s_x * s_w[o]. An input zero point z_x != 0 pads with z_x (the quantized zero) and
    subtracts z_x * sum(w[o]) from each sum. Every other consumer of the pair keeps it (see qdq_to_arithmetic).

    Written by hand because TVM 0.27 imports QDQ ONNX as fake quantization (float convolutions between the pairs)
    and has no pass that recovers the integer arithmetic; with it, the int8 convolutions can use VNNI (see
    `legalize_ops`). The sums are exact, so only float rounding differs from the fake-quantized module (a test).
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


def legalize_ops() -> tvm.transform.Pass:
    """Relax's LegalizeOps, with int8 convolutions legalized for VNNI (see _legalize_conv2d)."""
    return relax_transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d})


# The Relax counterparts of Relay's SimplifyInference / FoldScaleAxis / FoldConstant / DeadCodeElimination. The ONNX
# from lprnet.export has no BatchNormalization left (the exporter folds it into the convolutions), so the first two
