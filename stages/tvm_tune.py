"""DVC stage `tvm-tune`: MetaSchedule tuning of the fp32 and int8 modules from tvm-layout-passes with the budget in
`tune`; the tuned builds are checked against ONNX Runtime and evaluated like the other TVM stages.

The database is its own folder (`--database`), kept between runs (persist in dvc.yaml): kernels it has records for
are not tuned again, so after an upstream change that keeps the kernels' shapes (new weights, a new calibration) the
stage only applies the records and builds. A database tuned with another budget, seed or target is replaced by a new
one (e.g. `dvc exp run -S tune.total_trials=576`; DVC's cache keeps the old one). Also writes, per precision, the
estimated kernel time against trials (a DVC plot). With `tune.rpc_tracker`, candidates are timed on the RPC servers
of that TVM tracker (`tune.rpc_key`); the tuned builds are still checked and evaluated on this machine.
"""

from __future__ import annotations

from lprnet.pipeline.stage import run
from lprnet.pipeline.tvm_tune_step import run_tune_stage

if __name__ == "__main__":
    run(lambda: run_tune_stage(__doc__))
