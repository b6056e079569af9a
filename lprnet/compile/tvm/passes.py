"""The named TVM passes and pass lists (pipelines) of the TVM stages, and operator/kernel counts.

`PASSES` maps a name (what params.yaml and a manifest say) to a factory of a Relax pass; `PIPELINES` names the
lists the stages run, as `tvm/relax/pipeline.py` names TVM's own. `resolve_pipeline` turns a param (a pipeline's
name, or an explicit list of pass names) into the list; `apply_passes` runs it. Does not import or build (see
frontend.py, build.py); the int8 rewrites are in int8.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import tvm
from tvm import relax
from tvm.relax import transform as relax_transform

from lprnet.compile.tvm.int8 import legalize_ops, qdq_conv_to_integer, qdq_to_arithmetic
from lprnet.errors import InputError

# Kernel layout paired with each data layout when the caller gives none: Relay's "default" choice (Relax's
# ConvertLayout needs an explicit one and fails on the string "default").
DEFAULT_KERNEL_LAYOUTS = {"NCHW": "OIHW", "NHWC": "HWIO"}

PassFactory = Callable[..., tvm.transform.Pass]


def _convert_layout(layout: str = "NHWC", kernel_layout: str | None = None) -> tvm.transform.Pass:
    # Only plain layouts: TOPI cannot legalize a conv2d with a channel-chunked layout such as NCHW4c.
    if sorted(layout) != sorted("NCHW"):
        raise InputError(f"layout {layout!r} is not a permutation of NCHW")
    kernel_layout = kernel_layout or DEFAULT_KERNEL_LAYOUTS.get(layout)
    if kernel_layout is None or sorted(kernel_layout) != sorted("OIHW"):
        raise InputError(f"kernel_layout {kernel_layout!r} for layout {layout!r} is not a permutation of OIHW")
    return relax_transform.ConvertLayout({"relax.nn.conv2d": [layout, kernel_layout]})


# The Relax counterparts of Relay's SimplifyInference / FoldScaleAxis / FoldConstant / DeadCodeElimination, the
# layout passes, and our int8 rewrites. The ONNX from lprnet.compile.onnx_export has no BatchNormalization left (the
# exporter folds it into the convolutions), so the two batch-norm passes only matter for other ONNX files.
PASSES: dict[str, PassFactory] = {
    "decompose_ops_for_inference": relax_transform.DecomposeOpsForInference,  # batch_norm -> arithmetic
    "fold_batchnorm_to_conv2d": relax_transform.FoldBatchnormToConv2D,
    "fold_constant": relax_transform.FoldConstant,
    "canonicalize_bindings": relax_transform.CanonicalizeBindings,
    "eliminate_common_subexpr": relax_transform.EliminateCommonSubexpr,
    "dead_code_elimination": relax_transform.DeadCodeElimination,
    "qdq_to_arithmetic": qdq_to_arithmetic,
    "qdq_conv_to_integer": qdq_conv_to_integer,
    "convert_layout": _convert_layout,
    # Removes layout_transform pairs. ConvertLayout writes plain NCHW<->NHWC changes as permute_dims, which this
    # pass does not match, so it only matters after passes that emit layout_transform (e.g. AlterOpImpl).
    "optimize_layout_transform": relax_transform.OptimizeLayoutTransform,
    "legalize_ops": legalize_ops,
    "annotate_tir_op_pattern": relax_transform.AnnotateTIROpPattern,
    "fuse_ops": relax_transform.FuseOps,
    "fuse_tir": relax_transform.FuseTIR,
    # A tuned schedule that reads a weight in another layout does so through a layout-rewrite block: this splits it
    # into a kernel of its own, which fold_constant then folds (the weights are constants).
    "split_layout_rewrite_preproc": relax_transform.SplitLayoutRewritePreproc,
}

# The pass lists the TVM stages run, by name: params.yaml's tvm.graph_passes and tvm.layout_passes name one of these
# or give a list of PASSES names instead.
PIPELINES: dict[str, tuple[str, ...]] = {
    # qdq_conv_to_integer before fold_constant, which would fold each int8 weight's dequantize into a float constant.
    # fold_batchnorm_to_conv2d before decompose_ops_for_inference, which would otherwise turn every batch_norm into
    # arithmetic first: for a conv2d + batch_norm the order leaves 2 operators after fold_constant instead of 5.
    "graph": ("qdq_conv_to_integer", "fold_batchnorm_to_conv2d", "decompose_ops_for_inference", "fold_constant",
              "qdq_to_arithmetic", "canonicalize_bindings", "eliminate_common_subexpr", "dead_code_elimination"),
    # fold_constant right after convert_layout turns the weights' permute_dims into transposed constants.
    "layout": ("convert_layout", "fold_constant", "legalize_ops", "annotate_tir_op_pattern", "fuse_ops", "fuse_tir",
               "dead_code_elimination"),
    # After MetaSchedule's records are applied (tune.apply_database): the packed weights folded into constants.
    "tuned": ("split_layout_rewrite_preproc", "fold_constant", "dead_code_elimination"),
}


def resolve_pipeline(value: str | Sequence[str], where: str = "passes") -> list[str]:
    """A pipeline's name (a key of PIPELINES) or a list of pass names, as the list of pass names; unknown names fail
    with the valid ones."""
    if isinstance(value, str):
        if value not in PIPELINES:
            raise InputError(f"{where}: unknown pipeline {value!r}; valid: {', '.join(PIPELINES)}, or a list of passes")
        return list(PIPELINES[value])
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise InputError(f"{where}: expected a pipeline name or a list of pass names, got {value!r}")
    unknown = [name for name in value if name not in PASSES]
    if unknown:
        raise InputError(f"{where}: unknown pass {', '.join(map(repr, unknown))}; valid: {', '.join(PASSES)}")
    return list(value)


def _accepted_options(factory: PassFactory) -> set[str]:
    return set(inspect.signature(factory).parameters)


def make_passes(names: Sequence[str], **options) -> list[tvm.transform.Pass]:
    """The named passes, each given the options its factory takes; an option no named pass takes is an error."""
    names = resolve_pipeline(list(names))
    accepted = set().union(*(_accepted_options(PASSES[name]) for name in names)) if names else set()
    unused = sorted(set(options) - accepted)
    if unused:
        raise InputError(f"option {', '.join(map(repr, unused))} is taken by none of the passes {list(names)}")
    return [PASSES[name](**{key: value for key, value in options.items() if key in _accepted_options(PASSES[name])})
            for name in names]


def apply_passes(mod: tvm.IRModule, names: Sequence[str], **options) -> tvm.IRModule:
    """`mod` after the named passes, in order (e.g. `apply_passes(mod, ["convert_layout"], layout="NHWC")`)."""
    # Called one by one, not as a Sequential: a Sequential skips passes above the ambient PassContext's opt_level
    # (EliminateCommonSubexpr and DeadCodeElimination are level 1), and a pass list here means run them all.
    for transform in make_passes(names, **options):
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


