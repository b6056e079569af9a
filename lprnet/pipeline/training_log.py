"""Training curves logged with DVCLive while a stage trains, so that `dvc exp show` and `dvc plots show` in another
shell follow a running `dvc exp run`.

`training_log(directory)` opens one stage's DVCLive folder (named in dvc.yaml, which declares it as the stage's output,
its metrics.json as metrics and its curves as plots; DVCLive empties it first). Its `run()` gives the `on_validation`
callback of one training run (lprnet.optimize.train): every validation row is logged at its optimizer step, and
metrics.json is rewritten with the latest values at once. A stage that trains more than once (prune's `ratio: auto`
fine-tunes once per ratio tried) logs the runs one after the other on the step axis. DVCLive writes no dvc.yaml and
saves no experiment here: dvc.yaml's declarations are the project's, and `dvc exp run` saves the experiment. Every
curve's file is started with its header at once, so that a stage that does not train (published weights,
`quantize.qat_steps` 0) leaves empty curves and an empty summary, which `dvc plots show` draws as nothing rather than
reporting missing files.
Does not train, and is the one module that imports DVCLive (inside `training_log`, so the library imports without it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

from lprnet.optimize.train import OnValidation

# The history keys logged (lprnet.optimize.train's rows), each a curve against `step` in plots/metrics/<key>.tsv.
CURVES = ("train_loss", "val_accuracy", "val_char_accuracy", "lr")


class TrainingLog:
    """One stage's curves: `run()` for each training run, in the order they run."""

    def __init__(self, live):
        self._live = live
        self._next_start = 0  # where the next run's step 0 goes: the last step logged so far

    def run(self) -> OnValidation:
        """The `on_validation` callback of the next training run."""
        start = self._next_start

        def log(row: dict) -> None:
            self._live.step = start + row["step"]
            for key in CURVES:
                if math.isfinite(row[key]):  # the start row has no training loss yet (NaN)
                    self._live.log_metric(key, row[key])
            self._live.make_summary()
            self._next_start = self._live.step

        return log


@contextmanager
def training_log(directory: str | os.PathLike) -> Iterator[TrainingLog]:
    """A TrainingLog writing to the DVCLive folder `directory`, ended (its summary written) on leaving the block."""
    from dvclive import Live  # here: the library and its tests run without DVCLive
    from dvclive.plots import Metric

    with Live(dir=os.fspath(directory), save_dvc_exp=False, dvcyaml=False) as live:
        for key in CURVES:  # DVCLive's own file and header, which its log_metric appends to
            Metric(key, live.plots_dir).output_path.write_text(f"step\t{key}\n", encoding="utf-8")
        live.make_summary()  # metrics.json exists from the start, also when the stage does not train
        yield TrainingLog(live)
