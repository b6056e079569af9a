"""The `data`, `baseline`, `prune` and `quantize` sections of params.yaml: every key is required (params.yaml is the
one home of every value), every bad value is refused with an InputError naming its key, and each stage refuses it as
one line before it writes anything, even with all its inputs in place."""

from __future__ import annotations

import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lprnet.errors import InputError
from lprnet.pipeline.baseline_step import BaselineParams
from lprnet.pipeline.data_step import DataParams
from lprnet.pipeline.prune_step import PruneParams
from lprnet.pipeline.quantize_step import QuantizeParams
from tests.conftest import REPO, params_from_repo, repo_params

SECTIONS = {"data": DataParams, "baseline": BaselineParams, "prune": PruneParams, "quantize": QuantizeParams}
FOLDER = {"source": "folder", "folder": "plates"}  # the folder source's keys are checked with source=folder
NAN = math.nan
MISSING = object()

# (section, the key the error must name, overrides): each is one bad value, or a bad combination.
BAD = [
    ("data", "source", {"source": "camera"}),
    ("data", "other_sizes", {"other_sizes": "crop"}),
    ("data", "alphabet", {"alphabet": "greek"}),
    ("data", "seed", {"seed": -1}),
    ("data", "train_size", {"train_size": 0}),
    ("data", "calib_size", {"calib_size": 0}),
    ("data", "test_size", {"test_size": -3}),
    ("data", "folder", {**FOLDER, "folder": ""}),
    ("data", "calib_fraction", {**FOLDER, "calib_fraction": -0.2, "test_fraction": 0.9}),
    ("data", "test_fraction", {**FOLDER, "test_fraction": 0.9}),
    ("data", "finetune_fraction", {**FOLDER, "finetune_fraction": NAN}),
    ("baseline", "dropout", {"dropout": 1.0}),
    ("baseline", "dropout", {"dropout": -0.1}),
    ("baseline", "epochs", {"epochs": 0.0}),
    ("baseline", "epochs", {"epochs": NAN}),
    ("baseline", "batch_size", {"batch_size": 0}),
    ("baseline", "lr", {"lr": 0.0}),
    ("baseline", "weight_decay", {"weight_decay": -1e-4}),
    ("baseline", "eval_every", {"eval_every": 0}),
    ("baseline", "patience", {"patience": 0}),
    ("baseline", "seed", {"seed": -1}),
    ("prune", "ratio", {"ratio": 1.0}),
    ("prune", "ratio", {"ratio": -0.1}),
    ("prune", "ratio", {"ratio": NAN}),
    ("prune", "ratio", {"ratio": "automatic"}),
    ("prune", "auto_ratios", {"auto_ratios": [0.2, 0.2]}),
    ("prune", "criterion", {"criterion": "l3"}),
    ("prune", "scope", {"scope": "network"}),
    ("prune", "round_to", {"round_to": 0}),
    ("prune", "finetune_steps", {"finetune_steps": -1}),
    ("prune", "finetune_lr", {"finetune_lr": 0.0}),
    ("prune", "distill_temperature", {"distill_temperature": 0.0}),
    ("prune", "distill_alpha", {"distill_alpha": -0.5}),
    ("prune", "distill_alpha", {"distill_alpha": NAN}),
    ("prune", "distill_alpha", {"distill_alpha": True}),
    ("prune", "finetune_steps", {"distill": True, "finetune_steps": 0}),
    ("prune", "batch_size", {"batch_size": 0}),
    ("prune", "seed", {"seed": -1}),
    ("quantize", "float_fallback", {"float_fallback": "sometimes"}),
    ("quantize", "float_fallback", {"float_fallback": 1}),
    ("quantize", "qat_steps", {"qat_steps": -1}),
    ("quantize", "qat_lr", {"qat_lr": 0.0}),
    ("quantize", "qat_batch_size", {"qat_batch_size": 0}),
    ("quantize", "seed", {"seed": -1}),
]


def names(message: str, section: str, key: str) -> bool:
    """Whether `message` names `section.key` as the wrong key (not as in `data.source=folder`, a condition)."""
    return re.search(rf"\b{re.escape(section)}\.{re.escape(key)}(?![=\w])", message) is not None


def case_id(case) -> str:
    section, key, overrides = case
    shown = {k: "missing" if v is MISSING else v for k, v in overrides.items() if k not in FOLDER or k == key}
    return f"{section}.{key}=" + ",".join(f"{k}:{v}" for k, v in shown.items())


@pytest.mark.parametrize("case", BAD, ids=case_id)
def test_a_bad_value_is_refused_naming_its_key(case):
    section, key, overrides = case
    with pytest.raises(InputError) as refused:
        params_from_repo(section, SECTIONS[section], **overrides)
    assert names(str(refused.value), section, key), refused.value


def test_folder_keys_are_checked_only_for_the_folder_source_and_sizes_only_for_synthetic():
    params_from_repo("data", DataParams, folder="", test_fraction=0.9)  # synthetic: neither is read
    params_from_repo("data", DataParams, **FOLDER, train_size=0)  # folder: the sizes are not read
    # "auto" picks the source's alphabet.
    assert params_from_repo("data", DataParams, alphabet="auto").alphabet_name == "latin"
    assert params_from_repo("data", DataParams, **FOLDER, alphabet="auto").alphabet_name == "chinese68"


# ---------------------------------------------------------------------------------------------------------------
# Each stage, run in this process on real inputs: a bad value stops it before it writes anything.

STAGE_OUTPUTS = {
    "data": {"out": "prepared", "metrics": "data.json"},
    "baseline": {"model": "baseline.pt", "metrics": "baseline.json", "live": "training/baseline"},
    "prune": {"model": "pruned.pt", "metrics": "prune.json", "search": "prune_search.csv", "live": "training/prune"},
    "quantize": {"model": "quantized.pt", "metrics": "quantize.json", "fallback": "quantize_fallback.csv",
                 "live": "training/quantize"},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Everything the four stages read, small: a prepared folder, a model as baseline and as pruned model, its
    calibration, and a folder of labelled plates."""
    from lprnet.io import write_json_atomic
    from lprnet.model.alphabet import get_alphabet
    from lprnet.model.checkpoint import save_model
    from lprnet.model.data import save_split
    from lprnet.model.network import LPRNet, LPRNetConfig
    from lprnet.model.synth import render_split
    from lprnet.optimize.calibrate import calibrate, save_calibration

    root = tmp_path_factory.mktemp("inputs")
    latin = get_alphabet("latin")
    images, labels = render_split(seed=5, split="train", count=16, symbols=latin.symbols)
    for split, part in {"train": slice(0, 8), "calib": slice(8, 12), "test": slice(12, 16)}.items():
        save_split(root / "data" / f"{split}.npz", images[part], labels[part])
    write_json_atomic(root / "data/alphabet.json", {"alphabet": latin.name, "source": "synthetic"})
    torch.manual_seed(0)
    model = LPRNet(LPRNetConfig(num_classes=latin.num_classes)).eval()
    save_model(root / "baseline.pt", model, latin)
    save_model(root / "pruned.pt", model, latin)
    save_calibration(root / "calibration/torch.pt", calibrate(model, images[8:12], "minmax"))
    (root / "plates").mkdir()
    for label, image in zip(labels, images):
        Image.fromarray(np.ascontiguousarray(image[:, :, ::-1])).save(root / "plates" / f"{label}.png")
    return root


def stage_argv(stage: str, inputs: Path, params: Path, out: Path) -> list[str]:
    reads = {"data": {}, "baseline": {"data": inputs / "data"},
             "prune": {"baseline": inputs / "baseline.pt", "data": inputs / "data"},
             "quantize": {"pruned": inputs / "pruned.pt", "calibration": inputs / "calibration",
                          "data": inputs / "data", "baseline": inputs / "baseline.pt"}}[stage]
    paths = {**reads, **{name: out / file for name, file in STAGE_OUTPUTS[stage].items()}}
    return [f"stages/{stage}.py", "--params", str(params), *(f"--{k}={v}" for k, v in paths.items())]


def run_stage_in_process(stage: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "stages" / f"{stage}.py"), run_name="__main__")
    return exit_.value.code


def small_params(inputs: Path) -> dict:
    """The repository's params, with the work a stage would do if it went on made small."""
    params = {section: repo_params(section) for section in ("data", "baseline", "prune", "quantize", "bench", "budget")}
    params["data"].update(train_size=8, calib_size=4, test_size=4)
    params["prune"].update(finetune_steps=2, batch_size=4)
    params["bench"].update(warmup=0, runs=1, throughput_runs=1, throughput_seconds=0.01)
    return params


STAGE_CASES = ([(section, case) for case in BAD for section in [case[0]]]
               + [(stage, ("bench", "threads", {"threads": 0})) for stage in ("baseline", "prune", "quantize")]
               + [(section, (section, key, {key: MISSING})) for section, key in
                  [("data", "seed"), ("baseline", "epochs"), ("prune", "ratio"), ("quantize", "qat_steps")]])


@pytest.mark.parametrize("stage,case", STAGE_CASES, ids=lambda value: value if isinstance(value, str)
                         else case_id(value))
def test_a_stage_refuses_a_bad_value_in_one_line_before_writing_anything(tmp_path, inputs, monkeypatch, capsys,
                                                                          stage, case):
    section, key, overrides = case
    params = small_params(inputs)
    for name, value in overrides.items():
        if value is MISSING:
            del params[section][name]
        else:
            params[section][name] = str(inputs / value) if section == "data" and name == "folder" and value else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out = tmp_path / "out"
    code = run_stage_in_process(stage, stage_argv(stage, inputs, tmp_path / "params.yaml", out), monkeypatch)
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
    if MISSING in overrides.values():
        assert f"{section}: missing key(s) {key}" in stderr
    else:
        assert names(stderr, section, key), stderr
    assert not out.exists(), sorted(out.rglob("*"))
