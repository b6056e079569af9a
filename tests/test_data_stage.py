"""The `data` stage script on folders: pre-split subfolders, hash splits, and one-line errors without output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_data_stage(tmp_path: Path, folder: Path, **overrides) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", folder=str(folder), alphabet="latin", **overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages/data.py"), "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")],
                          capture_output=True, text=True)


def plates(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (94, 24), (200, 200, 200)).save(folder / name)


def test_presplit_subfolders_are_used_as_they_are(tmp_path):
    plates(tmp_path / "in/calib", ["AAA111.png"])
    plates(tmp_path / "in/finetune", ["BBB222.png", "BBB333.png"])
    plates(tmp_path / "in/test", ["CCC444.png", "CCC555.png", "CCC666.png"])
    result = run_data_stage(tmp_path, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"num_calib": 1, "num_train": 2, "num_test": 3}


def test_hash_split_covers_every_file_once(tmp_path):
    names = [f"A{i:05d}.png" for i in range(40)]
    plates(tmp_path / "in", names)
    assert run_data_stage(tmp_path, tmp_path / "in").returncode == 0
    from lprnet.model.data import load_prepared

    seen = [str(label) for split in ("train", "calib", "test") for label in load_prepared(tmp_path / "out", split)[1]]
    assert sorted(seen) == sorted(n[:-4] for n in names)


def test_unknown_character_stops_the_stage_naming_the_file(tmp_path):
    plates(tmp_path / "in", ["AB12345.png", "AB1234O.png"])
    result = run_data_stage(tmp_path, tmp_path / "in")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "AB1234O.png" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "metrics.json").exists()


def test_empty_folder_and_bad_fractions_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_data_stage(tmp_path, tmp_path / "empty")
    assert result.returncode == 1 and "no images" in result.stderr and str(tmp_path / "empty") in result.stderr
    plates(tmp_path / "in", ["AB12345.png"])
    result = run_data_stage(tmp_path, tmp_path / "in", test_fraction=0.9)
    assert result.returncode == 1 and "sum to 1" in result.stderr


def test_calibration_and_test_splits_are_disjoint(tmp_path):
    """Calibration never sees a test image: no file (folder profile) and no image (synthetic) is in both."""
    import hashlib

    from lprnet.model.data import load_prepared

    plates(tmp_path / "in", [f"A{i:05d}.png" for i in range(60)])
    assert run_data_stage(tmp_path, tmp_path / "in").returncode == 0
    calib, test = (set(load_prepared(tmp_path / "out", split)[1]) for split in ("calib", "test"))
    assert calib and test and not calib & test

    from lprnet.model import synth

    symbols = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    digests = {split: {hashlib.sha256(image.tobytes()).hexdigest() for image in synth.render_split(0, split, 200,
                                                                                                  symbols)[0]}
               for split in ("calib", "test")}
    assert not digests["calib"] & digests["test"]


def test_other_sizes_are_resized_or_refused_per_params(tmp_path):
    plates(tmp_path / "in", ["AB12345.png"])
    Image.new("RGB", (188, 48), (200, 200, 200)).save(tmp_path / "in/CD67890.png")
    resized = run_data_stage(tmp_path / "a", tmp_path / "in", test_fraction=1.0, calib_fraction=0.0,
                             finetune_fraction=0.0)
    assert resized.returncode == 0, resized.stderr
    assert "CD67890.png: 188x48 resized to 94x24" in resized.stderr
    refused = run_data_stage(tmp_path / "b", tmp_path / "in", other_sizes="refuse")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [f"error: {tmp_path / 'in/CD67890.png'}: 188x48 pixels, not 94x24 "
                                                   f"(data.other_sizes is refuse; set it to resize to accept such "
                                                   f"images)"]
    assert not (tmp_path / "b/out").exists() and not (tmp_path / "b/metrics.json").exists()
    unknown = run_data_stage(tmp_path / "c", tmp_path / "in", other_sizes="crop")
    assert unknown.returncode == 1 and "data.other_sizes: unknown value 'crop'" in unknown.stderr
