"""DVC stage `tvm-layout-passes`: the layout and computation passes `tvm.layout_passes` names (by default the
pipeline `layout` of lprnet/compile/tvm/passes.py: conv2d layout conversion to `tvm.layout`, legalisation with int8
weights packed for VNNI, operator fusion with FuseOps and FuseTIR) on the modules from tvm-graph-passes; built,
checked against ONNX Runtime and evaluated."""

from __future__ import annotations

from pathlib import Path

from lprnet.compile.tvm.frontend import load_ir
from lprnet.pipeline.stage import run
from lprnet.pipeline.tvm_step import PRECISIONS, run_stage


def main() -> None:
    run_stage("tvm-layout-passes", __doc__,
              lambda args: {p: load_ir(Path(args.source) / f"{p}.json") for p in PRECISIONS},
              passes_key="layout_passes", options=lambda params: {"layout": params.layout})


if __name__ == "__main__":
    run(main)
