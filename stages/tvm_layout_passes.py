"""DVC stage `tvm-layout-passes`: the layout and computation passes listed in `tvm.layout_passes` (layout
conversion to `tvm.layout` for conv2d, layout-transform optimisation, legalisation, operator fusion with FuseOps
and FuseTIR) on the modules from tvm-graph-passes; built, checked against ONNX Runtime and evaluated."""

from __future__ import annotations

from pathlib import Path

from lprnet import compile_tvm
from lprnet.artifacts import load_model
from lprnet.bench import BenchConfig
from lprnet.data import load_prepared
from lprnet.io import write_json_atomic
from lprnet.stage import parse_args, read_section, run
from lprnet.tvm_pipeline import PRECISIONS, TVMParams, compile_step


def main() -> None:
    args = parse_args(__doc__, ["source", "fp32", "int8", "pruned", "data", "out", "metrics_fp32", "metrics_int8"])
    params = read_section(args.params, "tvm", TVMParams)
    bench = read_section(args.params, "bench", BenchConfig)
    # Unknown pass names fail before any work.
    compile_tvm.make_passes(params.layout_passes, compile_tvm.LAYOUT_PASSES, layout=params.layout)
    modules = {p: compile_tvm.load_ir(Path(args.source) / f"{p}.json") for p in PRECISIONS}
    metrics = compile_step("tvm-layout-passes", modules, params.layout_passes, compile_tvm.LAYOUT_PASSES,
                           {"layout": params.layout}, args.out,
                           {"fp32": args.fp32, "int8": args.int8}, load_model(args.pruned)[0],
                           *load_prepared(args.data, "test"), params, bench)
    write_json_atomic(args.metrics_fp32, metrics["fp32"])
    write_json_atomic(args.metrics_int8, metrics["int8"])


if __name__ == "__main__":
    run(main)
