"""DVC stage `tvm-graph-passes`: the graph-level Relax passes `tvm.graph_passes` names (by default the pipeline
`graph` of lprnet/compile/tvm/passes.py: int8 QDQ convolutions as integer convolutions, the remaining QDQ pairs as
arithmetic; inference simplification and batch-norm folding, constant folding, common subexpression and dead code
elimination, binding canonicalisation) on the modules from tvm-import; built, checked against ONNX Runtime and
evaluated."""

from __future__ import annotations

from pathlib import Path

from lprnet.compile.tvm.frontend import load_ir
from lprnet.pipeline.stage import run
from lprnet.pipeline.tvm_step import PRECISIONS, run_stage


def main() -> None:
    run_stage("tvm-graph-passes", __doc__,
              lambda args: {p: load_ir(Path(args.source) / f"{p}.json") for p in PRECISIONS},
              passes_key="graph_passes")


if __name__ == "__main__":
    run(main)
