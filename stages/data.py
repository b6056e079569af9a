"""DVC stage `data`: render the synthetic splits, or read and split a folder of labelled plate images.

Writes train.npz, calib.npz, test.npz into --out and the split sizes into --metrics. With source=folder the
`finetune` share becomes train.npz (the split that training and fine-tuning read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lprnet.errors import InputError
from lprnet.io import atomic_dir, write_json_atomic
from lprnet.model import data, synth
from lprnet.model.alphabet import get_alphabet
from lprnet.model.network import INPUT_HEIGHT, INPUT_WIDTH
from lprnet.pipeline.stage import parse_args, read_section, run

SOURCES = ("synthetic", "folder")
OTHER_SIZES = ("resize", "refuse")
# Subfolder names accepted when a folder is already split; `finetune` and `train` are the same split.
SPLIT_FOLDERS = {"calib": "calib", "finetune": "train", "train": "train", "test": "test"}


@dataclass(frozen=True)
class DataParams:
    source: str
    folder: str
    alphabet: str  # "auto": latin for synthetic, chinese68 (the published set) for folder
    seed: int
    train_size: int
    calib_size: int
    test_size: int
    calib_fraction: float
    finetune_fraction: float
    test_fraction: float
    other_sizes: str = "resize"  # a folder image that is not 94x24: resize (with a warning) | refuse


def refuse_other_sizes(files: list[Path]) -> None:
    """Stop at the first image that is not INPUT_WIDTH x INPUT_HEIGHT (reading headers only)."""
    for path in files:
        try:
            with Image.open(path) as image:
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue  # unreadable: data.load_folder names it with its reason
        if size != (INPUT_WIDTH, INPUT_HEIGHT):
            raise InputError(f"{path}: {size[0]}x{size[1]} pixels, not {INPUT_WIDTH}x{INPUT_HEIGHT} "
                             f"(data.other_sizes is refuse; set it to resize to accept such images)")


def folder_splits(folder: Path, params: DataParams) -> dict[str, list[Path]]:
    subfolders = {name: folder / name for name in SPLIT_FOLDERS if (folder / name).is_dir()}
    if subfolders:
        splits = {"train": [], "calib": [], "test": []}
        for name, path in subfolders.items():
            splits[SPLIT_FOLDERS[name]] += data.list_images(path)
        return splits
    fractions = {"calib": params.calib_fraction, "train": params.finetune_fraction, "test": params.test_fraction}
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise InputError(f"data.calib_fraction, finetune_fraction and test_fraction must be >= 0 and sum to 1, "
                         f"got {fractions}")
    splits = {name: [] for name in fractions}
    for path in data.list_images(folder):
        splits[data.hash_split(path.name, fractions)].append(path)
    return splits


def main() -> None:
    args = parse_args(__doc__, ["out", "metrics"])
    params = read_section(args.params, "data", DataParams)
    if params.source not in SOURCES:
        raise InputError(f"data.source: unknown source {params.source!r}; valid: {', '.join(SOURCES)}")
    if params.other_sizes not in OTHER_SIZES:
        raise InputError(f"data.other_sizes: unknown value {params.other_sizes!r}; valid: {', '.join(OTHER_SIZES)}")
    alphabet_name = params.alphabet
    if alphabet_name == "auto":
        alphabet_name = "latin" if params.source == "synthetic" else "chinese68"
    alphabet = get_alphabet(alphabet_name)

    with atomic_dir(args.out) as out:
        sizes = {}
        if params.source == "synthetic":
            for split in ("train", "calib", "test"):
                count = getattr(params, f"{split}_size")
                if count < 1:
                    raise InputError(f"data.{split}_size must be at least 1, got {count}")
                images, labels = synth.render_split(params.seed, split, count, alphabet.symbols,
                                                    workers=os.cpu_count() or 1)
                data.save_split(out / f"{split}.npz", images, labels)
                sizes[split] = len(labels)
        else:
            if not params.folder:
                raise InputError("data.folder must name a folder of labelled images when data.source=folder")
            for split, files in folder_splits(Path(params.folder), params).items():
                if params.other_sizes == "refuse":
                    refuse_other_sizes(files)
                images, labels = data.load_folder(files, alphabet)
                data.save_split(out / f"{split}.npz", images, labels)
                sizes[split] = len(labels)
            if sizes["test"] == 0:
                raise InputError(f"{params.folder}: the test split is empty; add images or raise data.test_fraction")
        write_json_atomic(out / "alphabet.json", {"alphabet": alphabet.name, "source": params.source})
    write_json_atomic(args.metrics, {f"num_{k}": v for k, v in sizes.items()})


if __name__ == "__main__":
    run(main)
