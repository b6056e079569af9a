"""A parameter sweep read back from DVC's experiments: accuracy, ONNX Runtime latency and ONNX size of the fp32 and
int8 models against one parameter, as a CSV and a PNG.

The experiments are whatever `dvc exp run -S PARAM=...` (queued or not) left in the repository; `dvc.api.exp_show`
gives one flat row per commit and experiment, with a metric's column named `file:key` when several metrics files
share the key. The figures are the `export-onnx` stage's (ONNX Runtime, the same thread count and timing method for
every row), so a sweep only needs to run up to that stage: `dvc exp run --queue -S prune.ratio=0.5 export-onnx`.
Latency figures are only comparable if the experiments ran one at a time (`dvc queue start -j 1`). Does not run
experiments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lprnet.csv_io import write_csv_atomic
from lprnet.errors import InputError
from lprnet.io import atomic_path

# Column of the sweep table -> (metrics file, key).
FIGURES = {
    "fp32_accuracy": ("metrics/onnx-fp32.json", "accuracy"),
    "int8_accuracy": ("metrics/onnx-int8.json", "accuracy"),
    "fp32_latency_ms_p50": ("metrics/onnx-fp32.json", "latency_ms_p50"),
    "int8_latency_ms_p50": ("metrics/onnx-int8.json", "latency_ms_p50"),
    "fp32_size_bytes": ("metrics/onnx-fp32.json", "size_bytes"),
    "int8_size_bytes": ("metrics/onnx-int8.json", "size_bytes"),
    "macs": ("metrics/onnx-fp32.json", "macs"),
}


def sweep_table(rows: list[dict], param: str) -> pd.DataFrame:
    """One row per value of `param` (sorted), from `dvc.api.exp_show` rows: the committed results and every
    experiment that finished with the figures; for a value run more than once, the first row DVC lists."""
    frame = pd.DataFrame(rows)
    if param not in frame:
        raise InputError(f"no commit or experiment has the param {param!r}; run e.g. `dvc exp run --queue -S "
                         f"{param}=VALUE export-onnx` first")
    table = pd.DataFrame({"experiment": frame["Experiment"].fillna(frame["rev"]), param: frame[param]})
    for column, (path, key) in FIGURES.items():
        table[column] = frame.get(f"{path}:{key}", frame.get(key))
    finished = frame["State"].isna() | (frame["State"] == "Success")  # None: a commit's own results
    table = table[finished & (frame["rev"] != "workspace")].dropna()
    if table.empty:
        raise InputError(f"no finished experiment has both {param!r} and the export-onnx metrics")
    return table.drop_duplicates(subset=param).sort_values(param).reset_index(drop=True)


def plot_sweep(table: pd.DataFrame, param: str, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    panels = [("plate accuracy (%)", "accuracy", 100), ("ONNX Runtime batch-1 p50 (ms)", "latency_ms_p50", 1),
              ("ONNX file (MB)", "size_bytes", 1e-6)]
    for ax, (label, key, scale) in zip(axes, panels):
        for precision, style in (("fp32", "o-"), ("int8", "s--")):
            ax.plot(table[param], table[f"{precision}_{key}"] * scale, style, label=precision)
        ax.set_xlabel(param)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Sweep of {param} ({len(table)} runs, export-onnx metrics)")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_sweep(param: str, out: str | os.PathLike, repo: str | None = None, num: int = 1) -> pd.DataFrame:
    """`out`.csv and `out`.png for `param` over the experiments of the DVC repository `repo` (default: here) based
    on its last `num` commits (as `dvc exp show -n`; experiments queued before later commits hang off older ones)."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        rows = dvc.api.exp_show(repo=repo, num=num)
    except DvcException as error:  # e.g. not a DVC repository
        raise InputError(f"{repo or Path.cwd()}: cannot list DVC experiments ({error})") from None
    table = sweep_table(rows, param)
    out = Path(out)
    write_csv_atomic(out.with_suffix(".csv"), list(table.columns), table.itertuples(index=False, name=None))
    plot_sweep(table, param, out.with_suffix(".png"))
    return table
