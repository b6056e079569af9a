"""DVC stage `tvm-import`: both ONNX models through TVM's Relax ONNX frontend, built with no optimisation beyond
what a build requires, checked against ONNX Runtime and evaluated."""

from __future__ import annotations

from lprnet.compile.tvm.frontend import import_onnx
from lprnet.pipeline.stage import run
from lprnet.pipeline.tvm_step import PRECISIONS, run_stage


def main() -> None:
    run_stage("tvm-import", __doc__, lambda args: {p: import_onnx(getattr(args, p)) for p in PRECISIONS})


if __name__ == "__main__":
    run(main)
