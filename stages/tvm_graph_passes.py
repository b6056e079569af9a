"""DVC stage `tvm-graph-passes`: the graph-level Relax passes listed in `tvm.graph_passes` (int8: QDQ convolutions
as integer convolutions, the remaining QDQ pairs as arithmetic; inference simplification and batch-norm folding,
constant folding, common subexpression and dead code elimination, binding canonicalisation) on the modules from
tvm-import; built, checked against ONNX Runtime and evaluated."""

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
    compile_tvm.make_passes(params.graph_passes, compile_tvm.GRAPH_PASSES)  # unknown names fail before any work
    modules = {p: compile_tvm.load_ir(Path(args.source) / f"{p}.json") for p in PRECISIONS}
    metrics = compile_step("tvm-graph-passes", modules, params.graph_passes, compile_tvm.GRAPH_PASSES, {}, args.out,
                           {"fp32": args.fp32, "int8": args.int8}, load_model(args.pruned)[0],
                           *load_prepared(args.data, "test"), params, bench)
    write_json_atomic(args.metrics_fp32, metrics["fp32"])
    write_json_atomic(args.metrics_int8, metrics["int8"])


if __name__ == "__main__":
    run(main)
