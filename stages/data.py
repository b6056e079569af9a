"""DVC stage `data`: render the synthetic splits, or read and split a folder of labelled plate images.

Writes train.npz, calib.npz, test.npz and alphabet.json into --out, and the split sizes into --metrics. With
source=folder the `finetune` share becomes train.npz (the split that training and fine-tuning read).
The work: lprnet/pipeline/data_step.py.
"""

from __future__ import annotations

from lprnet.io import write_json_atomic
from lprnet.pipeline.data_step import DataParams, data_stage
from lprnet.pipeline.stage import parse_args, read_section, refuse_params_paths, run


def main() -> None:
    args = parse_args(__doc__, reads=[], writes=["metrics"], folders=["out"])
    params = read_section(args.params, "data", DataParams)
    refuse_params_paths(args, {"data.folder": params.folder if params.source == "folder" else ""})
    metrics = data_stage(args.out, params)
    write_json_atomic(args.metrics, metrics)


if __name__ == "__main__":
    run(main)
