"""DVC stage `tvm-import`: both ONNX models through TVM's Relax ONNX frontend, built with no optimisation beyond
what a build requires, checked against ONNX Runtime and evaluated."""

from __future__ import annotations

from lprnet import compile_tvm
from lprnet.artifacts import load_model
from lprnet.bench import BenchConfig
from lprnet.data import load_prepared
from lprnet.io import write_json_atomic
from lprnet.stage import parse_args, read_section, run
from lprnet.tvm_pipeline import PRECISIONS, TVMParams, compile_step


def main() -> None:
    args = parse_args(__doc__, ["fp32", "int8", "pruned", "data", "out", "metrics_fp32", "metrics_int8"])
    params = read_section(args.params, "tvm", TVMParams)
    bench = read_section(args.params, "bench", BenchConfig)
    onnx_models = {"fp32": args.fp32, "int8": args.int8}
    modules = {p: compile_tvm.import_onnx(onnx_models[p]) for p in PRECISIONS}
    metrics = compile_step("tvm-import", modules, [], {}, {}, args.out, onnx_models, load_model(args.pruned)[0],
                           *load_prepared(args.data, "test"), params, bench)
    write_json_atomic(args.metrics_fp32, metrics["fp32"])
    write_json_atomic(args.metrics_int8, metrics["int8"])


if __name__ == "__main__":
    run(main)
